"""The glue between ``dlrm_s_pytorch.py`` and dlrm_mlet.

DLRM has no plugin hooks, so our patch adds a handful of one-line calls into
this module at the places that matter, and ``dlrm-mlet run`` installs the same
calls on an unmodified checkout (``launcher.py``). Either way DLRM's own code
decides nothing about MLET: every decision is here.

=====================  ================================================
DLRM call site         glue function
=====================  ================================================
``run()``, parser      ``add_arguments(parser)`` then ``configure(args)``
``create_emb``         ``builds_tables()`` / ``create_emb(...)``
dataset loaders        ``make_data_and_loaders(args, dp)``
``apply_emb``          ``apply_emb(...)`` (MLET tables as one autograd node)
``--load-model``       ``check_load(path)``, then ``loaded(ld_model, dlrm, path)``
resume (not inference) ``resume_schedule(lr_scheduler, ld_model)``
``--save-model``       ``save_model(model_metrics_dict, path, dlrm)``
``--save-onnx``        ``for_export(dlrm)``
resume skip loop       ``epoch_after_skip(k)``, ``skip_batch(...)``
after optimizer step   ``after_step(dlrm, writer, step)``
test scores (mlperf)   ``test_scores(scores, targets, step)``
=====================  ================================================

With ``--mlet-hidden-dim`` absent or 0, every function returns DLRM's own
behaviour unchanged: same tables, same RNG draws, same bytes on disk.
"""

import os
import sys
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .core import fused, tbe
from .dlrm.checkpoints import MLET_SUFFIX, fold_checkpoint
from .files import atomic_save, to_plain
from .errors import MLETError
from .core.convert import fold_model
from .core.folding import first_non_finite, fold_state_dict, mlet_prefixes
from .core.bag import MLETEmbeddingBag
from .core.grouped import grouped_forward
from .core.init import parse_proj_init, uniform_table_

FORMAT_VERSION = 1
DEFAULT_LOG_FREQ = 1024


@dataclass
class Config:
    hidden_dim: int = 0  # the largest k (0: MLET off)
    per_table: tuple = ()  # one k per table when given as a dash-separated list (0: plain)
    min_rows: int = 0
    proj_init: str = "normal"
    inference_only: bool = False
    log_freq: int = 0
    metrics_json: str = ""
    fused_update: str = ""  # "" (off), "torch" or "fbgemm"
    grad_accum: int = 1  # batches per optimizer step (DLRM's --mlperf-grad-accum-iter)

    @property
    def enabled(self):
        return self.hidden_dim > 0


config = Config()

# False under ``dlrm-mlet run``: without the patch's two lines in DLRM's resume
# loop (epoch_after_skip, skip_batch) resuming would skip or repeat data.
can_resume = True


def _fail(message):
    """Stop DLRM with one line, as DLRM's own checks do (``sys.exit("ERROR: ...")``)."""
    sys.exit(f"ERROR: {message}")


def add_arguments(parser):
    """Register the ``--mlet-*`` options on DLRM's parser.

    Values are parsed in ``configure`` rather than by argparse ``type=``, so a
    bad value gets our one-line error instead of DLRM's 60-line usage text.
    """
    group = parser.add_argument_group("MLET (dlrm-mlet)")
    group.add_argument(
        "--mlet-hidden-dim", default="0", metavar="K",
        help="train each table as n x K then K -> d (K >> d); 0 = off (default); "
        "K1-K2-...: one K per table (0 keeps that table plain)",
    )
    group.add_argument(
        "--mlet-min-rows", default="0", metavar="N",
        help="tables with fewer than N rows stay plain (default 0: all tables)",
    )
    group.add_argument(
        "--mlet-proj-init", default="normal", metavar="INIT",
        help="projection init: normal (N(0, 0.25^2)), normal-<std>, xavier, orthogonal",
    )
    group.add_argument(
        "--mlet-log-freq", default=None, metavar="N",
        help="log effective rank etc. to TensorBoard every N steps (default %d with MLET, "
        "0 = off; also works without MLET, for a baseline)" % DEFAULT_LOG_FREQ,
    )
    group.add_argument(
        "--mlet-metrics-json", default="", metavar="PATH",
        help="write test AUC, log loss and accuracy to PATH at every test (needs --mlperf-logging)",
    )
    group.add_argument(
        "--mlet-fused-update", nargs="?", const="torch", default="", metavar="fbgemm",
        help="apply SGD to the k-wide table rows without building sparse gradient tensors (same "
        "math and loss curve; needs --optimizer=sgd); =fbgemm: pool and update them with fbgemm's "
        "table-batched embedding, as TorchRec does (CPU, single process; needs fbgemm-gpu-cpu)",
    )
    group.add_argument(
        "--mlet-allow-narrow", action="store_true", default=False,
        help="allow K below --arch-sparse-feature-size (a bottleneck, not MLET)",
    )


def _int_option(args, name, minimum):
    raw = getattr(args, name.lstrip("-").replace("-", "_"))
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise MLETError(f"{name}: expected an integer >= {minimum}, got {raw!r}") from None
    if value < minimum:
        raise MLETError(f"{name}: expected an integer >= {minimum}, got {raw!r}")
    return value


def _hidden_dims(raw):
    """``K`` or ``K1-K2-...`` (one per table, like ``--arch-embedding-size``)."""
    text = str(raw).strip()
    try:
        values = tuple(int(v) for v in text.split("-")) if "-" in text.strip("-") else (int(text),)
    except ValueError:
        values = (-1,)
    if min(values) < 0:
        raise MLETError(f"--mlet-hidden-dim: expected an integer >= 0 or a dash-separated list of them, got {raw!r}")
    return values


def parse_config(args):
    """Check our options against DLRM's; raises MLETError naming the flag."""
    dims = _hidden_dims(args.mlet_hidden_dim)
    hidden = max(dims)
    per_table = dims if len(dims) > 1 else ()
    min_rows = _int_option(args, "--mlet-min-rows", 0)
    if args.mlet_log_freq is None:
        args.mlet_log_freq = DEFAULT_LOG_FREQ if hidden > 0 else 0
    log_freq = _int_option(args, "--mlet-log-freq", 0)
    metrics_json = args.mlet_metrics_json
    if metrics_json and not getattr(args, "mlperf_logging", False):
        raise MLETError("--mlet-metrics-json needs --mlperf-logging (DLRM keeps test scores only then)")
    try:
        proj_init = parse_proj_init(args.mlet_proj_init)
    except MLETError as error:
        raise MLETError(f"--mlet-proj-init: {error}") from None
    fused_update = getattr(args, "mlet_fused_update", "") or ""
    if fused_update not in ("",) + fused.BACKENDS:
        raise MLETError(f"--mlet-fused-update: expected no value or fbgemm, got {fused_update!r}")
    if hidden == 0:
        for flag, value, default in (("--mlet-min-rows", min_rows, 0), ("--mlet-proj-init", proj_init, "normal"),
                                     ("--mlet-fused-update", fused_update, "")):
            if value != default:
                raise MLETError(f"{flag} has no effect without --mlet-hidden-dim K (K > 0)")
        return Config(log_freq=log_freq, metrics_json=metrics_json)
    d = args.arch_sparse_feature_size
    narrow = min(k for k in dims if k > 0)
    if narrow < d and not args.mlet_allow_narrow:
        raise MLETError(
            f"--mlet-hidden-dim={narrow} is below --arch-sparse-feature-size={d}; MLET needs "
            "K >> d (pass --mlet-allow-narrow to train a bottleneck anyway)"
        )
    for flag in ("qr_flag", "md_flag"):
        if getattr(args, flag, False):
            raise MLETError(
                f"--mlet-hidden-dim cannot be combined with --{flag.replace('_', '-')}: "
                "both replace the embedding tables"
            )
    inference_only = bool(getattr(args, "inference_only", False))
    if getattr(args, "quantize_emb_with_bit", 32) in (4, 8) and not inference_only:
        raise MLETError(
            "--quantize-emb-with-bit quantizes tables for inference; with --mlet-hidden-dim "
            "train first, then quantize the folded checkpoint with --inference-only"
        )
    if fused_update and getattr(args, "optimizer", "sgd") != "sgd":
        raise MLETError(f"--mlet-fused-update applies plain SGD steps; it cannot be combined with "
                        f"--optimizer={args.optimizer}")
    if fused_update == "fbgemm":
        if getattr(args, "use_gpu", False):
            raise MLETError("--mlet-fused-update=fbgemm runs fbgemm's CPU kernels; drop it with --use-gpu "
                            "(plain --mlet-fused-update works on the GPU)")
        why = tbe.available()
        if why:
            raise MLETError(f"--mlet-fused-update=fbgemm: {why}")
    grad_accum = int(getattr(args, "mlperf_grad_accum_iter", 1) or 1) if getattr(args, "mlperf_logging", False) else 1
    return Config(hidden, per_table, min_rows, proj_init, inference_only, log_freq, metrics_json, fused_update,
                  grad_accum)


def configure(args):
    """Validate and remember our options, before DLRM does any work."""
    global config, monitor, _resume_rng
    try:
        config = parse_config(args)
    except MLETError as error:
        _fail(str(error))
    monitor = None
    _resume_rng = None
    if config.fused_update:
        fused.enable(config.fused_update)
    else:
        fused.disable()
    return config


monitor = None


def after_step(model, writer, step=None):
    """After each optimizer step: TensorBoard spectra every ``--mlet-log-freq`` steps."""
    global monitor
    if config.log_freq <= 0:
        return
    if monitor is None:
        from .tools.monitor import Monitor

        monitor = Monitor(config.log_freq)
    monitor.after_step(model, writer, step)


def make_data_and_loaders(args, dp):
    """DLRM's ``dp.make_criteo_data_and_loaders(args)``, plus our preprocessing and Avazu.

    Criteo-Kaggle: when the processed file is missing, ours writes it (numpy 2
    safe, malformed lines named, atomic) and DLRM then reads it as usual.
    Criteo-Terabyte, and Kaggle with ``--memory-map``: ``criteo.py`` writes
    DLRM's files the same way, with MLET on, or without ``--max-ind-range``
    (where stock preprocessing fails on numpy 2, #394); otherwise stock does.
    Avazu: our cached, memory-mapped dataset with DLRM's own batch format.
    Anything else goes to DLRM untouched.
    """
    from .dlrm import data

    try:
        if args.data_set == "avazu":
            return _avazu_loaders(args, dp, data)
        if args.data_set == "kaggle" and not args.memory_map:
            day_count, processed = data.kaggle_paths(args.raw_data_file, args.processed_data_file)
            args.processed_data_file = processed  # DLRM's default "" never counts as done
            if not (os.path.exists(processed) and os.path.exists(day_count)):
                print(f"Preprocessing {args.raw_data_file} into {processed}", flush=True)
                data.preprocess_kaggle(args.raw_data_file, processed, args.max_ind_range,
                                       args.data_sub_sample_rate)
        elif args.data_set in ("kaggle", "terabyte") and (config.enabled or args.max_ind_range <= 0):
            from .dlrm import criteo

            criteo.ensure_preprocessed(args)
            if config.enabled and criteo.uses_bin_files(args):
                _count_bin_samples(dp)
    except MLETError as error:
        _fail(str(error))
    return dp.make_criteo_data_and_loaders(args)


def _count_bin_samples(dp):
    """Give DLRM's ``CriteoBinDataset`` the ``num_samples`` its own MLPerf log call reads.

    At the pinned commit ``make_criteo_data_and_loaders`` logs
    ``train_data.num_samples``, which the class never sets, so
    ``--mlperf-bin-loader`` stops with an AttributeError. The samples are the
    file's int32 rows of 40 fields. Done only with MLET on (stock stays stock).
    """
    cls = dp.data_loader_terabyte.CriteoBinDataset
    if not hasattr(cls, "num_samples"):
        cls.num_samples = property(lambda self: os.fstat(self.file.fileno()).st_size // (4 * self.tot_fea))


def _avazu_loaders(args, dp, data):
    cache = args.processed_data_file or os.path.join(
        os.path.dirname(os.path.abspath(args.raw_data_file)), "avazu_processed")
    if not os.path.exists(os.path.join(cache, "meta.json")):
        print(f"Preprocessing {args.raw_data_file} into {cache}", flush=True)
        data.preprocess_avazu(args.raw_data_file, cache)
    else:
        print(f"Reading pre-processed data={cache}", flush=True)
    train = data.AvazuDataset(cache, "train", args.max_ind_range)
    test = data.AvazuDataset(cache, "test", args.max_ind_range)
    loader = lambda dataset, batch, workers: torch.utils.data.DataLoader(  # noqa: E731
        dataset, batch_size=batch, shuffle=False, num_workers=workers,
        collate_fn=dp.collate_wrapper_criteo_offset, pin_memory=False, drop_last=False)
    return (train, loader(train, args.mini_batch_size, args.num_workers),
            test, loader(test, args.test_mini_batch_size, args.test_num_workers))


def test_scores(scores, targets, step):
    """DLRM's test predictions (``--mlperf-logging``): log loss, and a metrics file.

    DLRM prints AUC and accuracy but not the test log loss, which the MLET
    papers report; sweeps read all three from ``--mlet-metrics-json``.
    """
    if not config.metrics_json:
        return
    import json

    import numpy as np
    import sklearn.metrics

    from .dlrm import distributed

    p = np.clip(np.asarray(scores, dtype=np.float64).reshape(-1), 1e-7, 1 - 1e-7)
    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    metrics = {
        "step": None if step is None else int(step),
        "samples": int(y.size),
        "auc": float(sklearn.metrics.roc_auc_score(y, p)) if 0 < y.sum() < y.size else None,
        "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
        "accuracy": float(np.mean(np.round(p) == y)),
    }
    print(f"MLET: test log loss {metrics['log_loss']:.6f}", flush=True)
    if distributed.is_distributed() and distributed.dist.get_rank() != 0:
        return
    try:
        _write_text(config.metrics_json, json.dumps(metrics, indent=1) + "\n")
    except OSError as error:
        _fail(f"--mlet-metrics-json: cannot write {config.metrics_json}: {error.strerror or error}")


def _write_text(path, text):
    import tempfile

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def builds_tables():
    """Whether ``create_emb`` should build MLET tables (training with MLET).

    ``--inference-only`` runs build DLRM's plain tables: a saved MLET
    checkpoint is folded on load, so inference, quantization and ONNX export
    all see a stock model.
    """
    return config.enabled and not config.inference_only


def make_table(n, d, index):
    """Table ``index``: MLET when it has a k and enough rows, else plain with DLRM's own init."""
    k = config.per_table[index] if config.per_table else config.hidden_dim
    if k > 0 and n >= config.min_rows:
        return MLETEmbeddingBag(n, d, k, mode="sum", sparse=True, proj_init=config.proj_init)
    table = nn.EmbeddingBag(n, d, mode="sum", sparse=True, _weight=torch.empty(n, d))
    uniform_table_(table.weight)
    return table


def create_emb(net, m, ln, weighted_pooling=None):
    """``DLRM_Net.create_emb`` for MLET runs (QR and MD tables are refused earlier).

    Keeps DLRM's contract: in distributed mode only this rank's tables
    (``net.local_emb_indices``), and one pooling-weight vector per table.
    """
    if config.per_table and len(config.per_table) != ln.size:
        _fail(f"--mlet-hidden-dim lists {len(config.per_table)} values for {ln.size} tables")
    emb_l, v_W_l = nn.ModuleList(), []
    local = getattr(net, "local_emb_indices", None)
    if local is not None and config.fused_update == "fbgemm":
        _fail("--mlet-fused-update=fbgemm is single-process only; in DLRM's distributed mode use "
              "--mlet-fused-update")
    for i in range(ln.size):
        if local is not None and i not in local:
            continue
        n = int(ln[i])
        emb_l.append(make_table(n, int(m), i))
        v_W_l.append(None if weighted_pooling is None else torch.ones(n, dtype=torch.float32))
    mlet = [t for t in emb_l if isinstance(t, MLETEmbeddingBag)]
    train_bytes = sum(p.numel() * p.element_size() for p in emb_l.parameters())
    folded_bytes = sum(t.num_embeddings * int(m) * 4 for t in emb_l)
    widths = "-".join(map(str, sorted({t.hidden_dim for t in mlet}))) or "-"
    print(
        f"MLET: {len(mlet)} of {len(emb_l)} tables trained as n x {widths} -> {m}; "
        f"embedding bytes {train_bytes / 2**20:.1f} MiB training, "
        f"{folded_bytes / 2**20:.1f} MiB once folded",
        flush=True,
    )
    return emb_l, v_W_l


def epoch_after_skip(k):
    """Stock DLRM skips a finished epoch with ``continue`` but never advances ``k``.

    A checkpoint saved after the first epoch therefore makes a resumed run
    loop forever. When resuming MLET training we advance; with MLET off the
    stock behaviour is kept, byte for byte.
    """
    return k + 1 if builds_tables() else k


def skip_batch(k, j, skip_upto_epoch, skip_upto_batch):
    """Whether to skip batch ``j`` of epoch ``k`` when resuming.

    Stock DLRM skips the first ``skip_upto_batch`` batches of *every* epoch, so
    a resumed multi-epoch run silently trains on less data. Resuming MLET
    training skips them in the saved epoch only, and after the last skipped
    batch puts back the numpy RNG state saved with the checkpoint, so the next
    batch is drawn as in the uninterrupted run (see ``numpy_rng_state``).
    """
    global _resume_rng
    if builds_tables():
        skip = k == skip_upto_epoch and j < skip_upto_batch
        if skip and j == skip_upto_batch - 1 and _resume_rng is not None:
            set_numpy_rng_state(_resume_rng)
            _resume_rng = None
        return skip
    return j < skip_upto_batch


def resume_schedule(lr_scheduler, ckpt):
    """Move DLRM's learning-rate scheduler to the step the resumed checkpoint was saved at.

    DLRM does not save its scheduler, so a resumed run would restart warm-up and
    decay from step 0 (the MLPerf schedule warms up over thousands of steps).
    Here it is stepped once per optimizer step the saved run took, as the
    uninterrupted run stepped it, so every later step gets the same rate.
    Resumed MLET runs only (stock kept as is).
    """
    if not builds_tables():
        return
    per_epoch = ckpt["nbatches"] // config.grad_accum
    steps = ckpt["epoch"] * per_epoch + ckpt["iter"] // config.grad_accum
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "lr_scheduler.step() before optimizer.step()"
        for _ in range(steps):
            lr_scheduler.step()


# The numpy RNG state of the checkpoint being resumed, until the skip loop ends.
_resume_rng = None


def numpy_rng_state():
    """numpy's global RNG state as plain values, saved in ``PATH.mlet``.

    DLRM's random data draws each batch from the global numpy RNG, reseeding
    only at batch 0, and its test loader does the same: after a mid-epoch test
    the next training batch comes from the state the test left. A resumed run
    regenerates the skipped batches instead, so without this state it would
    train on other data than the uninterrupted run.
    """
    import numpy as np

    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)}


def set_numpy_rng_state(state):
    import numpy as np

    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))


def _keep_loaded_rowwise_state(optimizer, args, kwargs):
    """Step pre-hook: keep the accumulators a resumed DLRM ``RWSAdagrad`` loaded.

    RWSAdagrad zeroes every ``momentum``/``sum`` on its first ``step`` because
    its ``momentum_initialized`` flag is an attribute, not optimizer state, and
    so is False again after ``load_state_dict``; a resumed run would restart
    Adagrad's accumulation from zero. Resumed MLET runs only (stock kept as is).
    """
    if (builds_tables() and getattr(optimizer, "momentum_initialized", True) is False
            and any("momentum" in s or "sum" in s for s in optimizer.state.values())):
        optimizer.momentum_initialized = True


_rowwise_hook = None


def apply_emb(lS_o, lS_i, emb_l, v_W_l):
    """``DLRM_Net.apply_emb`` for MLET training: same outputs, MLET tables grouped.

    One autograd node for all MLET tables (batched projections, sparse
    gradients built directly) instead of two per table: see
    ``table.grouped_forward``. DLRM's pooling-weight lookup is kept as is.
    """
    weights = [None if w is None else w.gather(0, i) for w, i in zip(v_W_l, lS_i)]
    return grouped_forward(list(emb_l), list(lS_i), list(lS_o), weights)


def has_mlet_tables(model):
    return any(isinstance(m, MLETEmbeddingBag) for m in model.modules())


def param_group_names(model, opt_state):
    """Parameter names behind the optimizer's indices, group by group.

    DLRM builds one group over ``parameters()`` in a single process, and three
    (tables, bottom MLP, top MLP) in distributed mode.
    """
    groups = opt_state["param_groups"]
    names = {id(p): name for name, p in model.named_parameters()}
    if len(groups) == 1:
        return [list(names.values())]
    emb = [names[id(p)] for table in model.emb_l for p in table.parameters()]
    bot = [names[id(p)] for p in model.bot_l.parameters()]
    top = [names[id(p)] for p in model.top_l.parameters()]
    return [emb, bot, top]


def save_model(ckpt, path, model):
    """DLRM's ``torch.save(model_metrics_dict, args.save_model)``, made safe and folded.

    Without MLET: the same bytes DLRM writes, only atomically. With it:
    ``PATH.mlet`` holds the unfolded training checkpoint (to resume MLET
    training) and ``PATH`` the folded stock checkpoint, each written
    atomically. In distributed mode see ``distributed.py``: per-rank shards,
    and one complete folded checkpoint written by rank 0.
    """
    from .dlrm import distributed

    if not builds_tables():
        try:
            atomic_save(ckpt, path)
        except MLETError as error:
            _fail(f"--save-model: {error}")
        return
    record = {
        "format": FORMAT_VERSION,
        "hidden_dim": "-".join(map(str, config.per_table)) if config.per_table else config.hidden_dim,
        "min_rows": config.min_rows,
        "proj_init": config.proj_init,
        "numpy_rng": numpy_rng_state(),
    }
    if ckpt.get("opt_state_dict") is not None:
        record["param_groups"] = param_group_names(model, ckpt["opt_state_dict"])
    try:
        # Everything is checked and folded before anything is written: a diverged
        # run must not replace the last good checkpoint (nor any rank its shard).
        if distributed.is_distributed():
            rank = distributed.dist.get_rank()
            record.update(world_size=distributed.dist.get_world_size(), rank=rank,
                          local_emb_indices=list(model.local_emb_indices))
            training = dict(to_plain(ckpt), mlet=record)
            bad = first_non_finite(training["state_dict"])
            verdicts = [None] * distributed.dist.get_world_size()
            distributed.dist.all_gather_object(verdicts, bad and (_global_name(bad[0], model), bad[1], rank))
            bad = next((v for v in verdicts if v), None)
            if bad:
                _fail(diverged(ckpt, path, f"{bad[0]} row {bad[1]} on rank {bad[2]}"))
            folded = distributed.gather_folded_checkpoint(training, model)
            atomic_save(training, distributed.shard_path(path + MLET_SUFFIX, rank))
            if rank == 0:
                atomic_save(folded, path)
            distributed.dist.barrier()
        else:
            training = dict(to_plain(ckpt), mlet=record)
            bad = first_non_finite(training["state_dict"])
            if bad:
                _fail(diverged(ckpt, path, f"{bad[0]} row {bad[1]}"))
            folded = fold_checkpoint(training)
            atomic_save(training, path + MLET_SUFFIX)
            atomic_save(folded, path)
    except MLETError as error:
        _fail(f"--save-model: {error}")
    print(f"MLET: wrote folded stock checkpoint {path} and MLET checkpoint {path}{MLET_SUFFIX}")


def diverged(ckpt, path, where):
    """The line a save stops DLRM with when a parameter is NaN or inf: what, when, what to change."""
    epoch, it = ckpt.get("epoch", 0), ckpt.get("iter", 0)
    groups = (ckpt.get("opt_state_dict") or {}).get("param_groups") or [{}]
    lr = f" (now {groups[0]['lr']:g})" if "lr" in groups[0] else ""
    return (f"--save-model: training diverged: {where} is not finite (nan or inf) at epoch {epoch}, "
            f"iter {it} (step {ckpt.get('nbatches', 0) * epoch + it}); nothing was saved, {path} and "
            f"{path}{MLET_SUFFIX} keep the last good checkpoint; lower --learning-rate{lr}, or K "
            "(--mlet-hidden-dim)")


def _global_name(key, model):
    """A distributed state-dict key with DLRM's global table number (keys count per rank)."""
    head, dot, rest = key.partition(".")
    if head in ("emb_l", "v_W_l") and rest.split(".")[0].isdigit():
        local, _, tail = rest.partition(".")
        return f"{head}.{model.local_emb_indices[int(local)]}" + (f".{tail}" if tail else "")
    return key.replace(".module.", ".", 1)


def check_load(path):
    """Before DLRM's own ``torch.load`` of ``--load-model``: refuse unsafe files in one line.

    DLRM loads with weights-only unpickling, which also refuses such files but
    with a traceback; and stock DLRM's numpy scalars fail there too. With MLET
    off this does nothing (stock behaviour).
    """
    if not config.enabled:
        return
    from .files import check_safe_to_load

    try:
        if check_safe_to_load(path):
            raise MLETError(
                "it holds numpy scalars, which torch >= 2.6 refuses to load by default; use a "
                "checkpoint dlrm-mlet wrote (plain numbers), or set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 "
                "only if you trust the file"
            )
    except MLETError as error:
        message = str(error)
        _fail(f"--load-model={path}: {message[len(path) + 2:] if message.startswith(path) else message}")


def loaded(ckpt, model, path):
    """Adapt a checkpoint DLRM just loaded to the model it will load into.

    * MLET model, MLET checkpoint: checked table by table (shapes named).
    * MLET model, folded checkpoint: refused; resuming needs ``PATH.mlet``.
    * plain model (``--inference-only``, or MLET off), MLET checkpoint: folded
      here, state and optimizer, so DLRM loads a stock checkpoint.
    * plain model, plain checkpoint: returned untouched (stock behaviour).
    """
    try:
        return _loaded(ckpt, model, path)
    except MLETError as error:
        _fail(f"--load-model={path}: {error}")


def _loaded(ckpt, model, path):
    from .dlrm import distributed
    from .files import load_checkpoint

    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise MLETError("not a DLRM checkpoint (no 'state_dict' entry)")
    saved_world = ckpt.get("mlet", {}).get("world_size", 1)
    world = distributed.dist.get_world_size() if distributed.is_distributed() else 1
    if saved_world != world:
        raise MLETError(
            f"saved by {saved_world} ranks, loaded by {world}; resume with "
            f"--nproc_per_node={saved_world}, or load the folded checkpoint instead"
        )
    if world > 1 and distributed.dist.get_rank() > 0:
        ckpt = load_checkpoint(distributed.shard_path(path, distributed.dist.get_rank()))
    state = ckpt["state_dict"]
    ckpt_is_mlet = bool(mlet_prefixes(state))
    if has_mlet_tables(model):
        if not can_resume:
            raise MLETError(
                "dlrm-mlet run cannot resume MLET training: DLRM's resume loop needs the patch "
                "(it skips batches in every epoch and never leaves a skipped epoch); "
                "run the patched script (dlrm-mlet patch DLRM_DIR) to resume"
            )
        if not ckpt_is_mlet:
            raise MLETError(
                f"this is a folded (stock) checkpoint and cannot resume MLET training; "
                f"load {path}{MLET_SUFFIX} instead, or add --inference-only"
            )
        check_shapes(state, model.state_dict())
        if ckpt.get("iter", 0) >= ckpt.get("nbatches", float("inf")):
            # Saved at the end of an epoch: resume at the start of the next one.
            ckpt = dict(ckpt, epoch=ckpt["epoch"] + 1, iter=0)
        global _resume_rng, _rowwise_hook
        _resume_rng = ckpt.get("mlet", {}).get("numpy_rng")
        if _rowwise_hook is None:
            from torch.optim.optimizer import register_optimizer_step_pre_hook

            _rowwise_hook = register_optimizer_step_pre_hook(_keep_loaded_rowwise_state)
        return ckpt
    if ckpt_is_mlet:
        if world > 1:
            raise MLETError("an MLET shard cannot be folded on load; load the folded checkpoint")
        print(f"MLET: folding the MLET checkpoint {path} into plain tables on load")
        ckpt = fold_checkpoint(ckpt) if ckpt.get("opt_state_dict") is not None else dict(
            ckpt, state_dict=fold_state_dict(state))
        check_shapes(ckpt["state_dict"], model.state_dict())
    return ckpt


def check_shapes(saved, expected):
    """Refuse a checkpoint of another architecture, naming what differs."""
    problems = []
    for key in expected:
        if key not in saved:
            problems.append(f"{key} missing")
        elif tuple(saved[key].shape) != tuple(expected[key].shape):
            problems.append(
                f"{key} is {'x'.join(map(str, saved[key].shape))} in the file, "
                f"{'x'.join(map(str, expected[key].shape))} in this model"
            )
    problems += [f"{key} unexpected" for key in saved if key not in expected]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise MLETError(
            "checkpoint does not match this model's architecture: " + "; ".join(problems[:3]) + more
        )


def for_export(model):
    """Fold MLET tables before ``--save-onnx`` so the exported graph is stock."""
    count = sum(isinstance(m, MLETEmbeddingBag) for m in model.emb_l)
    try:
        model = fold_model(model)
    except MLETError as error:
        _fail(f"--save-onnx: {error}")
    if count:
        print(f"MLET: folded {count} tables for ONNX export")
    return model
