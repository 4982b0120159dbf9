"""The ``--mlet-*`` options on DLRM's command line: registered, parsed, checked against DLRM's.

DLRM builds its parser inside ``run()`` and has no plugin hook, so the patch
calls ``add_arguments`` on it and ``configure`` right after ``parse_args``;
everything MLET decides later reads the ``Config`` made here.
"""

import argparse
import importlib.util
import os
import sys
from types import TracebackType
from typing import Optional, Type

from ..core import budget, rules
from ..core.options import add_table_arguments, parse_table_options
from ..engine import fused, tbe
from ..errors import MLETError, integer
from ..files import check_writable
from . import onnx_serving, resumable
from .checkpoints import MLET_SUFFIX
from .session import Config, fail, session

DEFAULT_LOG_FREQ = 1024
AUTO = "auto"  # --mlet-fused-update left out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``--mlet-*`` options on DLRM's parser.

    The table options (``--mlet-hidden-dim``, ``--mlet-min-rows``,
    ``--mlet-proj-init``, ``--mlet-table-dtype``) are the core's, shared with the TorchRec trainer.
    Values are parsed in ``configure`` rather than by argparse ``type=``, so a
    bad value gets our one-line error instead of DLRM's 60-line usage text.
    """
    group = parser.add_argument_group("MLET (dlrm-mlet)")
    add_table_arguments(group)
    group.add_argument(
        "--mlet-log-freq", default=None, metavar="N",
        help="log effective rank etc. to TensorBoard every N steps (default %d with MLET, "
        "0 = off; also works without MLET, for a baseline)" % DEFAULT_LOG_FREQ,
    )
    group.add_argument(
        "--mlet-metrics-json", default="", metavar="PATH",
        help="write test AUC, log loss and accuracy, the same on the validation split, and test metrics by "
        "training-frequency bucket to PATH at every test (needs --mlperf-logging)",
    )
    group.add_argument(
        "--mlet-fused-update", nargs="?", const="torch", default=AUTO, metavar="off|fbgemm",
        help="how the MLET tables and projections are updated. Default (auto): with --optimizer=sgd, SGD "
        "applied by the optimizer's step straight to the rows (no sparse gradient tensors; the same math "
        "and loss curve, fewer tensors a step); other optimizers: sparse gradients. Given without a value: "
        "that SGD update, refused with other optimizers; =off: sparse gradients for the optimizer; "
        "=fbgemm: fbgemm's table-batched embedding pools and updates the tables, as TorchRec does "
        "(CPU, single process; needs fbgemm-gpu-cpu)",
    )
    group.add_argument(
        "--mlet-memory-budget", default="", metavar="SIZE",
        help="pick a K per table (at most --mlet-hidden-dim, at least d, else plain) so that training "
        "embedding bytes (tables in their dtype, projections, optimizer state) fit in SIZE, e.g. 24GiB; "
        "prints the plan first (dlrm-mlet plan prints it without training)",
    )
    group.add_argument(
        "--mlet-budget-rule", default=budget.DEFAULT_RULE, metavar="RULE",
        help=f"which tables the budget gives the large K: {budget.RULE_HELP} (default %(default)s)",
    )
    group.add_argument(
        "--mlet-onnx-serving", default="", metavar="fp32|int8",
        help="with --inference-only --load-model: score the model as ONNX Runtime serves its ONNX export "
        "(as --save-onnx writes it); int8: tables row-wise int8 as --quantize-emb-with-bit 8 packs them, the "
        "MLPs by ONNX Runtime's dynamic quantization (dlrm-mlet onnx-int8 does the same to a file)",
    )
    group.add_argument(
        "--mlet-mmap-data", action="store_true", default=False,
        help="read DLRM's processed Criteo file (--processed-data-file, Kaggle or Terabyte without --memory-map) "
        "memory-mapped and make each batch in one gather: the same batches as DLRM's loader, bit for bit, "
        "without loading the file (a compressed file is first rewritten uncompressed beside it, once); "
        "also works without MLET",
    )
    group.add_argument(
        "--mlet-checkpoint", default="", metavar="PATH",
        help="keep a resumable checkpoint of the run in PATH, written every --mlet-checkpoint-every batches and "
        "at the end of each epoch; started again with PATH there, the run resumes from it exactly (same data "
        "order, same result as if never stopped). MLET runs keep their unfolded training state there "
        "(dlrm-mlet fold makes it a stock file); also works without MLET",
    )
    group.add_argument(
        "--mlet-checkpoint-every", default="0", metavar="N",
        help="batches between --mlet-checkpoint writes, a multiple of --print-freq (0: at epoch ends only)",
    )
    group.add_argument(
        "--mlet-table-lr-scale", default="1", metavar="S",
        help="train the embedding tables at S times --learning-rate (their own optimizer group; DLRM's lr "
        "schedule scales it too); also works without MLET, for a baseline with its own table step",
    )
    group.add_argument(
        "--mlet-proj-lr-scale", default="1", metavar="S",
        help="train the MLET projections at S times --learning-rate; 0 keeps them at their initial values",
    )
    group.add_argument(
        "--mlet-allow-narrow", action="store_true", default=False,
        help="allow K below --arch-sparse-feature-size (a bottleneck, not MLET)",
    )


def parse_config(args: argparse.Namespace) -> Config:
    """Check our options against DLRM's; raises MLETError naming the flag."""
    dims, min_rows, proj_init, table_dtype = parse_table_options(args)
    hidden = max(dims)
    per_table = dims if len(dims) > 1 else ()
    if args.mlet_log_freq is None:
        args.mlet_log_freq = DEFAULT_LOG_FREQ if hidden > 0 else 0
    log_freq = integer(args.mlet_log_freq, "--mlet-log-freq", 0, text=True)
    metrics_json = args.mlet_metrics_json
    if metrics_json and not getattr(args, "mlperf_logging", False):
        raise MLETError("--mlet-metrics-json needs --mlperf-logging (DLRM keeps test scores only then)")
    fused_update = getattr(args, "mlet_fused_update", AUTO) or AUTO
    if fused_update not in (AUTO, "off") + fused.BACKENDS:
        raise MLETError(f"--mlet-fused-update: expected no value, off or fbgemm, got {fused_update!r}")
    memory_budget = budget.parse_size(args.mlet_memory_budget) if args.mlet_memory_budget else 0
    onnx_serving = _onnx_serving(args)
    rule = budget.rule_name(args.mlet_budget_rule, "--mlet-budget-rule")
    run = _run_options(args)
    if hidden == 0:
        if run["proj_lr_scale"] != 1.0:
            raise MLETError("--mlet-proj-lr-scale has no effect without --mlet-hidden-dim K (K > 0)")
        for flag, given in (("--mlet-fused-update", fused_update != AUTO), ("--mlet-memory-budget", memory_budget),
                            ("--mlet-budget-rule", rule != budget.DEFAULT_RULE)):
            if given:
                raise MLETError(f"{flag} has no effect without --mlet-hidden-dim K (K > 0)")
        return Config(log_freq=log_freq, metrics_json=metrics_json, onnx_serving=onnx_serving, **run)
    if memory_budget and per_table:
        raise MLETError("--mlet-memory-budget picks the K per table; give one --mlet-hidden-dim K as its cap, "
                        "not a list")
    if rule != budget.DEFAULT_RULE and not memory_budget:
        raise MLETError("--mlet-budget-rule has no effect without --mlet-memory-budget")
    _check_against_dlrm(args, dims, fused_update, table_dtype)
    # The default: the optimizer's rule applied at its step to the packed tables (benchmarks/whole_run.py).
    auto = "torch" if getattr(args, "optimizer", "sgd") in rules.RULES else ""
    fused_update = {AUTO: auto, "off": ""}.get(fused_update, fused_update)
    inference_only = bool(getattr(args, "inference_only", False))
    grad_accum = int(getattr(args, "mlperf_grad_accum_iter", 1) or 1) if getattr(args, "mlperf_logging", False) else 1
    return Config(hidden_dim=hidden, per_table=per_table, min_rows=min_rows, proj_init=proj_init,
                  inference_only=inference_only, log_freq=log_freq, metrics_json=metrics_json,
                  fused_update=fused_update, grad_accum=grad_accum, table_dtype=table_dtype,
                  memory_budget=memory_budget, budget_rule=rule, optimizer=getattr(args, "optimizer", "sgd"),
                  onnx_serving=onnx_serving, **run)


def _scale(args, name, flag):
    text = getattr(args, name, "1")
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise MLETError(f"{flag}: expected a number >= 0, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise MLETError(f"{flag}: expected a number >= 0, got {text!r}")
    return value


def _run_options(args):
    """The options that hold with or without MLET: data reading, resumable checkpoints, per-group lrs."""
    mmap_data = bool(getattr(args, "mlet_mmap_data", False))
    if mmap_data and (getattr(args, "data_generation", "dataset") != "dataset"
                      or getattr(args, "data_set", "kaggle") not in ("kaggle", "terabyte")
                      or getattr(args, "memory_map", False)):
        raise MLETError("--mlet-mmap-data reads DLRM's processed Criteo file: it needs --data-generation=dataset, "
                        "--data-set=kaggle or terabyte, and no --memory-map")
    checkpoint = getattr(args, "mlet_checkpoint", "") or ""
    every = integer(getattr(args, "mlet_checkpoint_every", "0") or "0", "--mlet-checkpoint-every", 0, text=True)
    if every and not checkpoint:
        raise MLETError("--mlet-checkpoint-every has no effect without --mlet-checkpoint PATH")
    print_freq = int(getattr(args, "print_freq", 1) or 1)
    if every % print_freq:
        raise MLETError(f"--mlet-checkpoint-every={every} must be a multiple of --print-freq={print_freq} "
                        "(a resumed run then prints the same losses)")
    if checkpoint and getattr(args, "inference_only", False):
        raise MLETError("--mlet-checkpoint keeps a training run's state; drop it with --inference-only")
    table_scale = _scale(args, "mlet_table_lr_scale", "--mlet-table-lr-scale")
    proj_scale = _scale(args, "mlet_proj_lr_scale", "--mlet-proj-lr-scale")
    return {"mmap_data": mmap_data, "checkpoint": checkpoint, "checkpoint_every": every,
            "table_lr_scale": table_scale, "proj_lr_scale": proj_scale, "nepochs": int(getattr(args, "nepochs", 1)),
            "save_model": getattr(args, "save_model", "") or ""}


def _onnx_serving(args):
    """``--mlet-onnx-serving``'s precision ('' if not given), refused where ONNX Runtime cannot score the run."""
    precision = getattr(args, "mlet_onnx_serving", "")
    if not precision:
        return ""
    if precision not in onnx_serving.PRECISIONS:
        raise MLETError(f"--mlet-onnx-serving: expected fp32 or int8, got {precision!r}")
    if not (getattr(args, "inference_only", False) and getattr(args, "load_model", "")):
        raise MLETError("--mlet-onnx-serving scores a saved model: give it with --inference-only --load-model=PATH")
    for flag, given in (("--use-gpu", getattr(args, "use_gpu", False)),
                        ("--quantize-emb-with-bit", getattr(args, "quantize_emb_with_bit", 32) in (4, 8))):
        if given:
            raise MLETError(f"--mlet-onnx-serving runs the model in ONNX Runtime on the CPU; drop {flag}")
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise MLETError(f"--mlet-onnx-serving needs {' and '.join(missing)}: pip install {' '.join(missing)}")
    return precision


def _check_against_dlrm(args, dims, fused_update, table_dtype):
    """The DLRM options MLET cannot be combined with (or only with care), each refused naming the flags."""
    d = args.arch_sparse_feature_size
    narrow = min(k for k in dims if k > 0)
    if narrow < d and not args.mlet_allow_narrow:
        raise MLETError(
            f"--mlet-hidden-dim={narrow} is below --arch-sparse-feature-size={d}; MLET needs "
            "K >> d (pass --mlet-allow-narrow to train a bottleneck anyway)"
        )
    compressed = [f"--{flag.replace('_', '-')}" for flag in ("qr_flag", "md_flag") if getattr(args, flag, False)]
    if compressed and args.mlet_memory_budget:
        raise MLETError(f"--mlet-memory-budget plans plain tables' K; it cannot be combined with {compressed[0]} "
                        "(give --mlet-hidden-dim K, or one K per table)")
    if compressed and fused_update == "fbgemm":
        raise MLETError(f"--mlet-fused-update=fbgemm trains plain tables only; drop it with {compressed[0]}")
    inference_only = bool(getattr(args, "inference_only", False))
    if getattr(args, "quantize_emb_with_bit", 32) in (4, 8) and not inference_only:
        raise MLETError(
            "--quantize-emb-with-bit quantizes tables for inference; with --mlet-hidden-dim "
            "train first, then quantize the folded checkpoint with --inference-only"
        )
    optimizer = getattr(args, "optimizer", "sgd")
    if fused_update == "fbgemm" and rules.RULES.get(optimizer) is not rules.SGD:
        raise MLETError(f"--mlet-fused-update=fbgemm applies plain SGD steps; it cannot be combined with "
                        f"--optimizer={optimizer}")
    if fused_update == "torch" and optimizer not in rules.RULES:
        raise MLETError(f"--mlet-fused-update applies {', '.join(r.optimizer for r in rules.RULES.values())} at the "
                        f"step, not --optimizer={optimizer}")
    if fused_update == "fbgemm":
        if table_dtype != "fp32":
            raise MLETError(f"--mlet-fused-update=fbgemm trains fp32 tables; drop it with "
                            f"--mlet-table-dtype={table_dtype} (half tables have their own update)")
        if getattr(args, "use_gpu", False):
            raise MLETError("--mlet-fused-update=fbgemm runs fbgemm's CPU kernels; drop it with --use-gpu "
                            "(plain --mlet-fused-update works on the GPU)")
        why = tbe.available()
        if why:
            raise MLETError(f"--mlet-fused-update=fbgemm: {why}")


INTERRUPTED = ("interrupted: every checkpoint on disk is complete (a save under way when it came was "
               "rolled back, leaving the previous file)")


def interrupted_line() -> str:
    """The Ctrl-C line: what is on disk, and how to go on from it."""
    config = session.config
    if config.checkpoint:
        how = f"; run the same command again to resume from {config.checkpoint}"
    elif config.save_model:
        resume = config.save_model + (MLET_SUFFIX if config.enabled else "")
        how = f"; to resume from the last save, add --load-model={resume}"
    else:
        how = ""
    return f"ERROR: {INTERRUPTED}{how}"


def _interrupted_in_one_line(previous):
    """Ctrl-C ends the run with one line, not a traceback; anything else is reported as before."""
    if getattr(previous, "one_line_interrupt", False):
        return previous

    def hook(kind: Type[BaseException], value: BaseException, traceback: Optional[TracebackType]) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.stderr.write(interrupted_line() + "\n")
        else:
            previous(kind, value, traceback)

    hook.one_line_interrupt = True
    return hook


def configure(args: argparse.Namespace) -> Config:
    """Validate and remember our options, before DLRM does any work.

    A new run starts from a clean session (no monitor, no resume state); the
    fused-update choice is not set here but on the tables ``create_emb`` builds.
    """
    try:
        config = parse_config(args)
    except MLETError as error:
        fail(str(error))
    sys.excepthook = _interrupted_in_one_line(sys.excepthook)
    if getattr(args, "save_model", ""):
        try:
            check_writable(args.save_model, os.path.basename(args.save_model) + MLET_SUFFIX)
        except MLETError as error:
            fail(f"--save-model: {error}")
    session.start(config)
    resumable.check(args)
    return config
