"""The paper's experiment, tuned: accuracy against inference-time embedding size.

``run_sweep`` trains patched DLRM (DLRM's Kaggle bench architecture, bottom MLP
ending in ``d``) once per (d, k, learning rate, seed), ``k = 0`` being the plain
baseline, and appends one row per run to a CSV: validation and test AUC,
accuracy and log loss, test metrics by frequency bucket (all from
``--mlet-metrics-json``), training time, and the embedding bytes at training
and at inference. A finished row is never run again, so an interrupted sweep
resumes where it stopped. A run that diverges (non-finite loss or weights, or
predictions that collapsed to one value) is a row with status ``diverged`` and the reason,
so the report can show it and never average it in. ``report.py`` chooses each
arm's learning rate on the validation split and reports its test metrics.
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Dict, Iterable, List, Optional, Sequence, TextIO, Tuple, cast

from ..checkpoint_io import load_checkpoint
from ..core.folding import mlet_table_bytes
from ..dlrm.checkpoints import MLET_SUFFIX
from ..data.criteo import criteo_layout
from ..data.frequency import cap_rows, count_rows, rare_lookup_share
from ..dlrm import space
from ..dlrm.patching import is_patched_checkout, patch_checkout
from ..data.processed import training_split
from ..errors import MLETError
from ..files import StagedFiles, StrPath, atomic_write_text
from ..progress import progress_bar
from . import serving
from .results_csv import SERVED_FIELDS, Run, read_rows, run_key, update_rows

DENSE_FEATURES = {"kaggle": 13, "avazu": 1}
# --mlet-* options that hold without MLET too: every arm gets them, the baselines included
EVERY_ARM = ("--mlet-mmap-data", "--mlet-table-lr-scale")
# DLRM's own words when a run's numbers are not finite (loss prints, BCE's input check, our save check)
_DIVERGED = re.compile(r"loss (nan|inf)|training diverged|elements of input should be between 0 and 1", re.IGNORECASE)


def bench_args(data_set: str, d: int, lr: float = 0.1) -> List[str]:
    """DLRM's reference Kaggle command (bench/dlrm_s_criteo_kaggle.sh) at width ``d``, learning rate ``lr``."""
    return [
        f"--arch-sparse-feature-size={d}", f"--arch-mlp-bot={DENSE_FEATURES[data_set]}-512-256-64-{d}",
        "--arch-mlp-top=512-256-1", "--data-generation=dataset", f"--data-set={data_set}",
        "--loss-function=bce", "--round-targets=True", f"--learning-rate={lr}",
        "--mini-batch-size=128", "--print-freq=1024", "--print-time", "--test-freq=1000000000",
        "--test-mini-batch-size=16384", "--mlperf-logging",
    ]


def patched_copy(dlrm_dir: StrPath, work: StrPath) -> str:
    """A patched copy of the user's checkout under ``work`` (theirs stays as it is)."""
    dest = os.path.join(work, "dlrm-patched")
    if not (os.path.isfile(os.path.join(dest, "dlrm_s_pytorch.py")) and is_patched_checkout(dest)):
        if not os.path.isfile(os.path.join(dlrm_dir, "dlrm_s_pytorch.py")):
            raise MLETError(f"{dlrm_dir}: not a DLRM checkout (no dlrm_s_pytorch.py); set --dlrm-dir or DLRM_DIR")
        with StagedFiles(work, "dlrm-patched", f"cannot write {dest}") as stage:
            shutil.copytree(dlrm_dir, stage.path("dlrm-patched"))
            patch_checkout(stage.path("dlrm-patched"))
            stage.publish([(stage.path("dlrm-patched"), dest)])
    return os.path.join(dest, "dlrm_s_pytorch.py")


def embedding_bytes(model_path: str) -> Tuple[int, int]:
    """(inference, training) bytes of the embedding tables of a saved run."""
    state = load_checkpoint(model_path)["state_dict"]
    inference = sum(v.numel() * v.element_size() for k, v in state.items() if k.startswith("emb_l."))
    training = inference
    if os.path.exists(model_path + MLET_SUFFIX):
        trained, folded = mlet_table_bytes(load_checkpoint(model_path + MLET_SUFFIX)["state_dict"])
        training = inference - folded + trained
    return inference, training


def run_one(script: str, data_set: str, data_args: List[str], d: int, k: int, lr: float, seed: int, epochs: int,
            work: str, extra_args: Sequence[str], threads: Optional[int] = None, regime: str = "",
            quantize: Iterable[serving.Precision] = (), checkpoint_every: int = 0) -> Dict[str, Any]:
    """One DLRM run in its own folder under ``work``; its CSV row (``diverged`` with the reason).

    With ``checkpoint_every`` the run keeps a resumable checkpoint there
    (``--mlet-checkpoint``, every that many batches): a run stopped and started
    again resumes from it, its log and training seconds carried on; otherwise
    a run that was interrupted starts afresh. The saved model is then scored as
    stock DLRM serves it at each of ``quantize``'s precisions (``serving.py``).
    The run's checkpoints are deleted once their sizes are read (a k=256 one
    is k/d times the folded model); its log stays.
    """
    optimizer = optimizer_of(extra_args)
    name = f"d{d}_k{k}_lr{lr}_s{seed}_e{epochs}" + ("" if optimizer == "sgd" else f"_{optimizer}")
    tables = tables_of(extra_args)
    name += "" if tables == "plain" else "_" + re.sub(r"[^\w.]+", "-", tables)
    work = os.path.join(work, "runs", name)
    resume = os.path.join(work, "resume.pt")
    elapsed = os.path.join(work, "elapsed.json")
    if os.path.isdir(work) and not (checkpoint_every and os.path.exists(resume)):
        shutil.rmtree(work)  # a run that was interrupted with nothing to resume from: start it afresh
    os.makedirs(work, exist_ok=True)
    metrics, model, log = (os.path.join(work, name) for name in ("metrics.json", "model.pt", "run.log"))
    # What every DLRM command of this run shares: the model, the data, the seed (--mlet-* for training only,
    # but for those that hold without MLET)
    common = bench_args(data_set, d, lr) + data_args + [
        f"--numpy-rand-seed={seed}", f"--tensor-board-filename={os.path.join(work, 'tb', f'd{d}_k{k}_lr{lr}_s{seed}')}",
    ] + [a for a in extra_args if not a.startswith("--mlet-") or a.startswith(EVERY_ARM)]
    args = common + [f"--nepochs={epochs}", f"--mlet-metrics-json={metrics}", f"--save-model={model}"] + (
        [f"--mlet-hidden-dim={k}"] + [a for a in extra_args if a.startswith("--mlet-") and not a.startswith(EVERY_ARM)]
        if k else [])
    if checkpoint_every:
        args += [f"--mlet-checkpoint={resume}", f"--mlet-checkpoint-every={checkpoint_every}"]
    # what earlier, stopped invocations of this run took (its seconds, its peak memory)
    before = json.load(open(elapsed)) if os.path.exists(elapsed) and os.path.exists(resume) else {}
    start = time.perf_counter()
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    with open(log, "a") as out:
        proc = subprocess.Popen([sys.executable, script] + args, cwd=work, stdout=out, stderr=subprocess.STDOUT,
                                env=env)
        cast(Any, proc).label = f"d={d} k={k} lr={lr} seed={seed}"  # our own attribute, which _stop_children prints
        _CHILDREN.add(proc)
        try:
            returncode, peak_kib = _wait(proc, lambda peak: _record(elapsed, before, time.perf_counter() - start, peak))
        except BaseException:
            proc.kill()  # a stopped sweep leaves no training behind
            proc.wait()
            raise
        finally:
            _CHILDREN.discard(proc)
    seconds = before.get("seconds", 0.0) + time.perf_counter() - start
    peak_kib = max(peak_kib, before.get("peak_kib", 0))
    text = open(log).read()
    row = {"dataset": data_set, "regime": regime, "optimizer": optimizer, "tables": tables, "d": d, "k": k,
           "lr": lr, "seed": seed, "epochs": epochs, "status": "ok", "note": "", "train_seconds": round(seconds, 2),
           "peak_memory_mib": round(peak_kib / 1024)}
    if returncode != 0 or not os.path.exists(metrics):
        sign = _DIVERGED.search(text)
        tail = (text.strip().splitlines() or ["no output"])[-1]
        if sign is None:
            _record(elapsed, before, time.perf_counter() - start, peak_kib)
            raise MLETError(f"run d={d} k={k} lr={lr} seed={seed} failed ({tail}); full log: {log}")
        return {**row, "status": "diverged", "note": tail[:200] if "diverged" in tail else sign.group(0)}
    result = json.load(open(metrics))
    val = result.get("validation") or {}
    row.update({f"test_{m}": result[m] for m in ("auc", "log_loss", "accuracy")})
    row.update({f"val_{m}": val.get(m) for m in ("auc", "log_loss", "accuracy")})
    for bucket in (result.get("buckets") or {}).get("test", []):
        row.update({f"test_{bucket['bucket']}_{m}": bucket[m] for m in ("samples", "auc", "log_loss")})
    times = [float(x) for x in re.findall(r"([\d.]+) ms/it", text)]
    row["train_ms_per_it"] = round(sum(times) / len(times), 3) if times else ""
    reason = _collapsed(result, val)
    if os.path.exists(model):
        row["inference_embedding_bytes"], row["training_embedding_bytes"] = embedding_bytes(model)
        for precision in () if reason else quantize:
            row.update(serving.score(script, common, model, precision, work, env))
            row[serving.fields(precision)[-1]] = serving.quantized_bytes(load_checkpoint(model)["state_dict"],
                                                                        precision)
    for saved in (model, model + MLET_SUFFIX, resume, elapsed):
        if os.path.exists(saved):
            os.remove(saved)
    row = {key: "" if value is None else value for key, value in row.items()}
    return {**row, "status": "diverged", "note": reason} if reason else row


def _record(path, before, seconds, peak_kib):
    """What a stopped invocation of a run took, added to what the earlier ones took."""
    atomic_write_text(path, json.dumps({"seconds": before.get("seconds", 0.0) + seconds,
                                        "peak_kib": max(peak_kib, before.get("peak_kib", 0))}) + "\n")


def _wait(proc, record):
    """``(return code, peak anonymous KiB)`` of a child process (its own, not the sweep's);
    ``record(peak)`` every minute, so a sweep killed outright still knows what the run took.

    Anonymous memory (``RssAnon``, sampled every half second) is what must fit:
    the pages of a memory-mapped data file also count as resident but are the
    kernel's page cache, shared between runs and dropped under pressure.
    Where ``/proc`` has no such line, the peak resident size (``ru_maxrss``).
    """
    peak, polls = 0, 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, peak or usage.ru_maxrss
        peak = max(peak, _anonymous_kib(proc.pid))
        polls += 1
        if polls % 120 == 0:
            record(peak)
        time.sleep(0.5)


_CHILDREN: "set[subprocess.Popen]" = set()  # the DLRM runs under way, for the SIGTERM handler to stop


def _stop_children(signum, frame):
    """SIGTERM (``kill``, ``timeout``, job schedulers) or SIGHUP (a closed terminal): stop the runs under
    way, then the sweep.

    Each run's resumable checkpoint stays (its writes are atomic), so the sweep
    started again resumes them. SIGKILL cannot be caught: a run then goes on
    alone until it ends.
    """
    for proc in list(_CHILDREN):
        proc.terminate()
        print(f"interrupted: {proc.label} (run the sweep again to resume it"
              f"{' from its checkpoint' if '--mlet-checkpoint-every' in ' '.join(proc.args) else ''})",
              file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


def _anonymous_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as handle:
            return next((int(line.split()[1]) for line in handle if line.startswith("RssAnon:")), 0)
    except OSError:
        return 0


def _replace(rows, row):
    """``rows`` with ``row`` in place of a run with its key (one retrained for a serving precision it lacked).

    The earlier run's other precisions are kept only when the retrained model
    scores as that one did (the same test AUC, log loss to 1e-8: its sum's
    order may change the last digits): they were measured on that model.
    """
    key = run_key(row)
    old = next((r for r in rows if run_key(r) == key), None)
    if old is not None:
        same = old["status"] == row["status"] == "ok" and float(old["test_auc"]) == float(row["test_auc"]) and \
            math.isclose(float(old["test_log_loss"]), float(row["test_log_loss"]), rel_tol=1e-8)
        kept = {f: old[f] for f in SERVED_FIELDS if same and old.get(f) not in ("", None) and row.get(f) in ("", None)}
        row = {**row, **kept}
        if not same:
            print(f"note: d={row['d']} k={row['k']} lr={row['lr']} seed={row['seed']} retrained to a different "
                  "model; its earlier serving figures are dropped", flush=True)
    return [r for r in rows if run_key(r) != key] + [row]


def tables_of(args: Sequence[str]) -> str:
    """The CSV's ``tables``: ``plain``, or DLRM's QR or MD settings among ``args`` (DLRM's defaults filled in),
    and the tables' and projections' lr scales when not 1."""
    parts = []
    if "--qr-flag" in args:
        parts.append(f"qr {_option(args, '--qr-operation', 'mult')} c{_option(args, '--qr-collisions', '4')} "
                     f"t{_option(args, '--qr-threshold', '200')}")
    if "--md-flag" in args:
        parts.append(f"md T{_option(args, '--md-temperature', '0.3')} t{_option(args, '--md-threshold', '200')}"
                     + (" round" if "--md-round-dims" in args else ""))
    for flag, what in (("--mlet-table-lr-scale", "table"), ("--mlet-proj-lr-scale", "proj")):
        scale = float(_option(args, flag, "1"))
        if scale != 1.0:
            parts.append(f"{what} lr x{scale:g}")
    return " + ".join(parts) or "plain"


def optimizer_of(args: Sequence[str]) -> str:
    """DLRM's ``--optimizer`` among ``args`` (its default: sgd)."""
    return _option(args, "--optimizer", "sgd")


def _option(args, flag, default=None):
    """The value of ``flag`` in a DLRM argument list (``--flag=v`` or ``--flag v``)."""
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
    return default


def data_statistic(data_set: str, raw_data_file: str, extra_args: Sequence[str], work: StrPath) -> Dict[str, Any]:
    """The data the runs trained on, counted once (cached in ``work``): its rare-lookup share and training samples."""
    cache = os.path.join(work, "data_statistic.json")
    if os.path.exists(cache):
        with open(cache) as handle:
            return json.load(handle)
    processed = processed_file(data_set, raw_data_file, extra_args)
    max_ind_range = int(_option(extra_args, "--max-ind-range", -1))
    split = training_split(processed)
    share = rare_lookup_share(count_rows(split.blocks(), cap_rows(split.sizes, max_ind_range), max_ind_range))
    found = {"rare_lookup_share": share, "train_samples": split.rows, "processed": processed}
    atomic_write_text(cache, json.dumps(found) + "\n")
    return found


def processed_file(data_set: str, raw_data_file: str, extra_args: Sequence[str]) -> str:
    """Where the runs' processed data is: ``--processed-data-file`` among ``extra_args``, else DLRM's default."""
    return _option(extra_args, "--processed-data-file") or (
        os.path.join(os.path.dirname(os.path.abspath(raw_data_file)), "avazu_processed") if data_set == "avazu"
        else criteo_layout(data_set, raw_data_file)["processed"])


def _collapsed(test, val):
    """Why a run that finished counts as diverged: predictions that are all one value, or not finite.

    A low but finite AUC is an ordinary result, eligible for lr selection.
    """
    for split, metrics in (("test", test), ("val", val)):
        if metrics.get("constant"):
            return f"{split} predictions all equal: the model collapsed"
        if metrics and metrics.get("auc") is None and metrics.get("log_loss") is not None and \
                not math.isfinite(metrics["log_loss"]):
            return f"{split} predictions not finite"
    return ""


def run_sweep(dlrm_dir: StrPath, data_set: str, raw_data_file: str, out_csv: StrPath, ds: Sequence[int],
              ks: Sequence[int], seeds: Sequence[int], lrs: Sequence[float] = (0.1,), epochs: int = 1,
              work: Optional[StrPath] = None, extra_args: Sequence[str] = (), quiet: bool = False, jobs: int = 1,
              baseline: bool = True, regime: str = "", runs: Optional[Sequence[Run]] = None,
              quantize: Sequence[serving.Precision] = (), checkpoint_every: int = 0,
              log: Optional[TextIO] = None) -> List[Dict[str, Any]]:
    """Train every missing (d, k, lr, seed) and append it to ``out_csv``; returns all rows.

    ``extra_args`` go to every run, except ``--mlet-*`` ones, which the
    baseline (``k = 0``) runs leave out. ``baseline=False`` trains only the
    MLET arms (to compare an MLET option against baselines in another CSV).
    ``runs``, a list of ``(d, k, lr, seed)``, replaces the grid (each arm its
    own lrs). Rows carry ``regime`` (a label: one CSV can hold several
    datasets), DLRM's ``--optimizer``, the tables' QR/MD settings (so one
    CSV holds several configurations) and the data's rare-lookup share.
    ``quantize`` (``serving.PRECISIONS``: 8, 4, onnx) also scores each
    model as served quantized; a finished run without a precision asked for
    is trained again to score it (DLRM's CPU runs repeat exactly).

    A line per finished run goes to ``log`` (stdout by default) when ``quiet``
    or not on a terminal.

    ``checkpoint_every`` (batches): each run keeps a resumable checkpoint, so
    a sweep stopped during a long run resumes that run where it stopped.

    ``jobs`` runs at once, each with ``cores / jobs`` threads: at batch 128 a
    DLRM step is mostly single-threaded Python, so two runs on two cores
    finish sooner than one run on both.
    """
    if data_set not in DENSE_FEATURES:
        raise MLETError(f"--data-set must be one of {', '.join(DENSE_FEATURES)}, got {data_set!r}")
    if not (os.path.isfile(raw_data_file) or os.path.exists(processed_file(data_set, raw_data_file, extra_args))):
        raise MLETError(f"{raw_data_file}: no such file (nor the processed file DLRM would read instead)")
    extra_args = [a for a in extra_args if a != "--"]
    if any(a.startswith("--mlet-checkpoint") for a in extra_args):
        raise MLETError("the sweep keeps each run's checkpoint itself: give --checkpoint-every N, not --mlet-checkpoint")
    if any(a.startswith("--learning-rate") for a in extra_args):
        raise MLETError("give learning rates with --lrs, not --learning-rate after --")
    serving.check(quantize, {d for d, *_ in runs} if runs is not None else ds, extra_args)
    if not os.path.isfile(os.path.join(dlrm_dir, "dlrm_s_pytorch.py")):
        raise MLETError(f"{dlrm_dir}: not a DLRM checkout (no dlrm_s_pytorch.py); set --dlrm-dir or DLRM_DIR")
    work = os.path.abspath(work or os.path.splitext(out_csv)[0] + "_work")
    os.makedirs(work, exist_ok=True)
    script = patched_copy(dlrm_dir, work)
    rows = read_rows(out_csv)
    optimizer, tables = optimizer_of(extra_args), tables_of(extra_args)
    wanted = [serving.fields(p)[1] for p in quantize]
    done = {run_key(r) for r in rows if r["status"] != "ok" or all(r.get(f) not in ("", None) for f in wanted)}
    grid = runs if runs is not None else [
        (d, k, lr, s) for s in seeds for lr in lrs for d in ds for k in sorted(({0} if baseline else set()) | set(ks))]
    plan = [(d, k, lr, s) for d, k, lr, s in grid
            if (data_set, regime, optimizer, tables, d, k, float(lr), s, epochs) not in done]
    if plan and os.path.exists(processed_file(data_set, raw_data_file, extra_args)):
        space.check_runs(work, training_split(processed_file(data_set, raw_data_file, extra_args)).sizes,
                         {(d, k) for d, k, _, _ in plan}, optimizer, bool(checkpoint_every))
    data_args = [f"--raw-data-file={os.path.abspath(raw_data_file)}"]
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _stop_children) for sig in (signal.SIGTERM, signal.SIGHUP)} if main else {}
    try:
        with progress_bar(len(plan), "sweep", quiet=quiet, unit=" runs") as bar, ThreadPoolExecutor(jobs) as pool:
            submit = lambda d, k, lr, seed: pool.submit(  # noqa: E731
                run_one, script, data_set, data_args, d, k, lr, seed, epochs, work, extra_args, threads, regime, quantize,
                checkpoint_every)
            futures = [submit(*plan[0])] if plan else []
            if jobs > 1 and futures:
                futures[0].exception()  # the first run preprocesses the data: the others wait for its files
            futures += [submit(*run) for run in plan[1:]]
            try:
                for run in as_completed(futures):
                    row = run.result()
                    found = data_statistic(data_set, raw_data_file, extra_args, work)
                    row.update(rare_lookup_share=found["rare_lookup_share"], train_samples=found["train_samples"])
                    rows = update_rows(out_csv, lambda current: _replace(current, row))
                    bar.update()
                    if quiet or not sys.stderr.isatty():
                        auc = lambda v: "-" if v in ("", None) else f"{float(v):.4f}"  # noqa: E731
                        result = (f"val AUC {auc(row['val_auc'])}, test AUC {auc(row['test_auc'])}"
                                  if row["status"] == "ok" else f"diverged ({row['note']})")
                        print(f"d={row['d']} k={row['k']} lr={row['lr']} seed={row['seed']}: {result}, "
                              f"{row['train_seconds']} s", file=log or sys.stdout, flush=True)
            finally:
                for run in futures:
                    run.cancel()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return rows
