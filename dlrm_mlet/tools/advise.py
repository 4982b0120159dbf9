"""``dlrm-mlet advise``: will MLET pay on this data? A short tuned pilot on a subsample, and a verdict.

A map of synthetic regimes cannot answer for a user's data: the rare-lookup
share alone did not predict the outcome on data built otherwise
(``docs/results.md``). So the pilot measures it on the user's own processed
file: the first part of each day (DLRM's days, so the split keeps its shape;
Criteo-Kaggle's or Terabyte's, from the processed .npz or the memory-map day
files), its values renumbered as DLRM's preprocessing would number a file that
size; or, from an Avazu cache, rows drawn at random (its split is random, and
the file runs in time order, so its first rows would be its first hours only),
renumbered as ``preprocess_avazu`` numbers them. Then a tuned sweep
(``sweep.run_sweep``) of the arms that decide the question: baselines at d/4,
d and 4d, MLET (k) at d/4 and d, three lrs each around where tuned sweeps
found the optima, seed 0 for all, then seed 1, then an lr beyond any optimum
at its grid's edge, then seed 2 for close pairs, each step only while the time
asked for allows (its runs' measured times say). The verdict is the report's
rule (``pays.py``): the best baseline against the smallest MLET model whose
AUC leads it by at least one standard error, and the gain at equal d.

What a pilot cannot see is said with the verdict: it trains on a fraction of
the samples, so its rows are rarer than the full data's (both rare-lookup
shares are printed), and a few hours' tuning is not the full run's.
"""

import json
import math
import os
import sys
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, cast

import numpy as np

from ..data.avazu import subsample_avazu
from ..data.frequency import cap_rows, count_rows, rare_lookup_share
from ..data.kaggle import KAGGLE_PROCESSED
from ..data.days import KAGGLE_DAYS, kaggle_days
from ..data.processed import day_files, is_day_file, npz_shape, read_counts, read_row_ranges, training_split
from ..errors import MLETError
from ..files import StagedFiles, StrPath
from ..core.budget import format_bytes, training_bytes
from . import pays
from .pays import Regime
from .report import Arm, Stats, summarize, tuned
from .results_csv import Row, Run, read_rows
from .sweep import run_sweep
from .tuning import close_pairs, first_grid, next_lr

MIN_PILOT = 20_000  # samples: below this a pilot's AUCs are noise
RUNS_PLANNED = 30  # 5 arms x 3 lrs x 2 seeds: what the pilot's size is chosen to fit in the time asked for
STARTUP_SECONDS = 15.0  # a DLRM run's start and test, before its first measured run says otherwise
MS_PER_STEP = 6.0  # a first guess at batch 128, replaced by the pilot's own runs


def arms(d: int, k: int) -> List[Tuple[int, int]]:
    """The (d, k) arms a verdict needs: baselines at d/4, d, 4d; MLET at d/4 and d."""
    low = max(1, d // 4)
    return [(low, 0), (d, 0), (4 * d, 0), (low, k), (d, k)]


def centre_lrs(k: int) -> Tuple[float, ...]:
    """Three lrs around where tuned sweeps found an arm's optimum: its first grid's middle."""
    grid = first_grid("sgd", k)
    return tuple(grid[1:4]) if len(grid) > 3 else tuple(grid)


TAKES = ("DLRM's processed Criteo .npz (kaggleAdDisplayChallenge_processed.npz, terabyte_processed.npz), "
         "one of its memory-map day files (day_0_reordered.npz) or an Avazu cache folder")


def full_data(path: str) -> Dict[str, Any]:
    """What the pilot is a sample of: its kind, rows, days, table sizes, training split and rare-lookup share."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "meta.json")):
            raise MLETError(f"{path}: not an Avazu cache folder (no meta.json); give {TAKES}")
        kind, days, parts, split = "avazu", None, None, training_split(path)
        with open(os.path.join(path, "meta.json")) as handle:
            total = int(json.load(handle)["rows"])
        sizes = split.sizes
    elif is_day_file(path):
        split, files = training_split(path), day_files(path)
        days = [npz_shape(f, "X_cat")[0] for f in files]
        kind, sizes, total, parts = "criteo", split.sizes, sum(days), [(f, 0) for f in files]
    elif path.endswith(".bin"):
        raise MLETError(f"{path}: advise does not take DLRM's .bin files; give {TAKES}")
    elif os.path.isfile(path) and path.endswith(".npz"):
        sizes, members = read_counts(path)
        missing = [m for m in ("X_cat", "X_int", "y") if m not in members]
        if missing:
            raise MLETError(f"{path}: no {', '.join(missing)}; give {TAKES}")
        total = npz_shape(path, "X_cat")[0]
        kind, days = "criteo", kaggle_days(path, total)[0]
        parts = [(path, int(start)) for start in np.cumsum([0] + days[:-1])]
        split = training_split(path)
    else:
        raise MLETError(f"{path}: give {TAKES}")
    share = rare_lookup_share(count_rows(split.blocks(), cap_rows(split.sizes, -1)))
    return {"path": path, "kind": kind, "rows": total, "days": days, "parts": parts, "sizes": sizes,
            "train": split.rows, "share": share}


def pilot_samples(data: Mapping[str, Any], minutes: float, ms_per_step: float = MS_PER_STEP,
                  startup: float = STARTUP_SECONDS, jobs: int = 2) -> int:
    """The pilot's sample count: what lets ``RUNS_PLANNED`` runs fit in ``minutes`` (``jobs`` at once),
    at least ``MIN_PILOT`` and at most the data."""
    per_run = minutes * 60 * jobs / RUNS_PLANNED - startup
    train = per_run * 1000 / ms_per_step * 128
    return int(min(data["rows"], max(MIN_PILOT, train * 7 / 6)))


def write_pilot(data: Mapping[str, Any], samples: int, folder: str) -> str:
    """The pilot's data in ``folder``, in the data's own form (see the module's docstring)."""
    if data["kind"] == "avazu":
        target = os.path.join(folder, "avazu_processed")
        if not os.path.exists(target):
            os.makedirs(folder, exist_ok=True)
            rows = np.sort(np.random.default_rng(0).choice(data["rows"], samples, replace=False))
            subsample_avazu(data["path"], rows, target)
        return target
    target = os.path.join(folder, KAGGLE_PROCESSED)
    if os.path.exists(target):
        return target
    return _write_criteo_pilot(data, samples, folder, target)


def _write_criteo_pilot(data: Mapping[str, Any], samples: int, folder: str, target: str) -> str:
    """The first ``samples / rows`` of each of the data's days, values renumbered per table (DLRM's
    numbering of a file that size: only values seen, 0..n-1), as DLRM's processed Kaggle files: the
    pilot runs on DLRM's Kaggle loader, which splits by 7 days, so other data's training days are
    regrouped into 6 (its last day stays the test and validation day, as DLRM's Terabyte loaders
    split it: test its first half)."""
    fraction = samples / data["rows"]
    keep = [max(1, math.ceil(n * fraction)) for n in data["days"]]
    ranges: Dict[str, List[Tuple[int, int]]] = {}  # per file, so a compressed file is read through once
    for (f, start), n in zip(data["parts"], keep):
        ranges.setdefault(f, []).append((start, start + n))
    arrays = {name: np.concatenate([read_row_ranges(f, name, r) for f, r in ranges.items()])
              for name in ("X_cat", "X_int", "y")}
    per_file = keep if len(keep) == KAGGLE_DAYS else \
        [len(g) for g in np.array_split(np.arange(sum(keep[:-1])), KAGGLE_DAYS - 1)] + keep[-1:]
    x_cat = arrays["X_cat"]
    counts = np.zeros(x_cat.shape[1], dtype=np.int32)
    for f in range(x_cat.shape[1]):
        values, x_cat[:, f] = np.unique(x_cat[:, f], return_inverse=True)
        counts[f] = len(values)
    os.makedirs(folder, exist_ok=True)
    with StagedFiles(folder, "pilot", f"cannot write {folder}") as stage:
        np.savez(stage.path("train_day_count.npz"), total_per_file=np.array(per_file))
        # savez stores: memory-mappable. (numpy's stub has **arrays meet its allow_pickle: bool too)
        np.savez(stage.path(KAGGLE_PROCESSED), counts=counts, **arrays)  # type: ignore[arg-type]
        stage.publish([(stage.path(n), os.path.join(folder, n)) for n in ("train_day_count.npz", KAGGLE_PROCESSED)])
    return target


class Pilot:
    """The pilot's sweep under a deadline: each step runs only if the time its runs took so far says it fits."""

    def __init__(self, dlrm_dir: StrPath, processed: str, work: str, d: int, k: int, minutes: float, jobs: int,
                 quiet: bool) -> None:
        self.csv = os.path.join(work, "pilot.csv")
        self.plan, self.deadline, self.jobs = arms(d, k), time.monotonic() + minutes * 60, jobs
        folder = os.path.dirname(processed)
        # DLRM reads the processed data, never the raw file named beside it; Avazu's cache is memory-mapped
        data_set, raw, mmap = (("avazu", "train.csv", []) if os.path.isdir(processed)
                               else ("kaggle", "train.txt", ["--mlet-mmap-data"]))
        self.sweep = lambda runs: run_sweep(  # noqa: E731
            dlrm_dir, data_set, os.path.join(folder, raw), self.csv, (), (), (), runs=runs, jobs=jobs,
            quiet=quiet, work=os.path.join(work, "runs"), log=sys.stderr,
            extra_args=[f"--processed-data-file={processed}"] + mmap)
        self.skipped: List[str] = []  # the steps left out for lack of time

    def rows(self) -> List[Row]:
        return read_rows(self.csv)

    def arms(self) -> List[Arm]:
        return [a for a in summarize(self.rows()) if (a["d"], a["k"]) in self.plan]

    def seconds_per_run(self) -> Optional[float]:
        done = [float(r["train_seconds"]) for r in self.rows() if r["train_seconds"] not in ("", None)]
        return sorted(done)[len(done) // 2] if done else None

    def step(self, what: str, runs: Iterable[Run]) -> None:
        """Run ``runs`` when they fit before the deadline (their count over ``jobs``, at the median run's time).

        Once a step does not fit, none after it runs: each builds on the one before (a further seed
        for close pairs before every arm has its second would leave arms at one seed each)."""
        if self.skipped:
            self.skipped.append(what)
            return
        per = self.seconds_per_run()
        done = {(int(r["d"]), int(r["k"]), float(r["lr"]), int(r["seed"])) for r in self.rows()}
        runs = [r for r in runs if (r[0], r[1], float(r[2]), r[3]) not in done]
        if not runs:
            return
        if per is not None and time.monotonic() + math.ceil(len(runs) / self.jobs) * per > self.deadline:
            self.skipped.append(what)
            return
        self.sweep(runs)

    def run(self) -> List[Arm]:
        self.step("seed 0", [(d, k, lr, 0) for d, k in self.plan for lr in centre_lrs(k)])
        self.step("seed 1", [(d, k, lr, 1) for d, k in self.plan for lr in centre_lrs(k)])
        edges = [(a["d"], a["k"], lr, s) for a in self.arms() if (lr := next_lr(a)) is not None
                 for s in sorted({int(r["seed"]) for e in a["lrs"].values() for r in e["runs"]})]
        self.step("an lr beyond the edge of the grid", edges)
        close = sorted({(a["d"], a["k"], a["best"], 2) for pair in close_pairs(self.arms()) for a in pair})
        self.step("seed 2 for close arms", close)
        return self.arms()


def verdict(arms: Sequence[Arm], d: int) -> Tuple[str, Optional[Regime]]:
    """``(first line, entry)``: the report's rule on the pilot's arms, in plain words."""
    entries = pays.summarize_regimes([dict(a, rare_lookup_share=0.0) for a in arms], tuned)
    if not entries:
        return "verdict: none: the pilot has no tuned baseline (every run diverged?); see the runs below", None
    e = entries[0]
    best = e["best_baseline"]
    seeds = min(cast(Stats, tuned(a))["n"] for a in arms if tuned(a))  # None left out
    if seeds < 2:
        return (f"verdict: undecided: the pilot's time allowed one seed per arm, so no standard error tells a "
                f"gap from seed noise (best baseline d={best['d']}, test AUC {best['auc']:.4f}); give more "
                "--minutes or fewer --samples"), e
    gain = next((g for g in e["gains"] if g["d"] == d), None)
    at_d = "" if gain is None else (f"; at equal d={d} MLET gains {gain['gain']:+.4f} ± {gain['se']:.4f} AUC"
                                    + (" (within noise)" if abs(gain["gain"]) < 2 * gain["se"] else ""))
    if e["match"] and e["saving"] and e["saving"] > 1:
        m = e["match"]
        line = (f"verdict: MLET pays on this pilot: MLET d={m['d']} (k={m['k']}) beat the best baseline (d={best['d']}) "
                f"by {m['auc'] - best['auc']:+.4f} AUC, at least one standard error, with tables {e['saving']:.0f}x "
                f"smaller once folded{at_d}")
    else:
        n = e["narrowest"]
        scored = "" if n is None else f"d={n['d']} (k={n['k']}) scored {n['gap']:+.4f} ± {n['se']:.4f} against it"
        if n is not None and n["d"] >= best["d"]:  # no MLET model narrower than the best baseline was tried
            why = (f"the best baseline is already the narrowest width tried (d={best['d']}, test AUC "
                   f"{best['auc']:.4f}); MLET at {scored}")
        else:
            why = (f"no narrower MLET model matched the best baseline (d={best['d']}, test AUC {best['auc']:.4f})"
                   + ("" if n is None else f": the narrowest, {scored}"))
        line = f"verdict: MLET does not shrink the model on this pilot: {why}{at_d}"
    return line, e


def advise(path: StrPath, minutes: float, dlrm_dir: StrPath, d: int = 16, k: int = 64,
           work: Optional[StrPath] = None, samples: Optional[int] = None, jobs: int = 2,
           quiet: bool = False) -> Tuple[List[str], Optional[Regime]]:
    """Run the pilot and return the report's lines, the verdict first."""
    if minutes <= 0:
        raise MLETError(f"--minutes must be > 0, got {minutes}")
    if d < 4 or k <= d:
        raise MLETError(f"--d must be >= 4 and --k above it (MLET needs k >> d), got d={d} k={k}")
    if not os.path.isfile(os.path.join(dlrm_dir, "dlrm_s_pytorch.py")):
        raise MLETError(f"{dlrm_dir}: not a DLRM checkout (no dlrm_s_pytorch.py); set --dlrm-dir or DLRM_DIR")
    path = os.path.abspath(path)
    work = os.path.abspath(work or os.path.splitext(path)[0] + "_advise")
    started = time.monotonic()
    data = full_data(path)
    samples = min(data["rows"], samples or pilot_samples(data, minutes, jobs=jobs))
    folder = os.path.join(work, f"pilot-{samples}")
    processed = write_pilot(data, samples, folder)
    pilot = full_data(processed)
    left = minutes - (time.monotonic() - started) / 60
    runner = Pilot(dlrm_dir, processed, folder, d, k, max(left, 0.1), jobs, quiet)
    found = runner.run()
    line, entry = verdict(found, d)
    lines = [line, ""]
    whole = pilot["train"] >= data["train"]
    seen = ("it trained on all of your training samples, so only the tuning was short" if whole
            else f"it trained on {pilot['train']:,} of your {data['train']:,} training samples "
                 f"({pilot['train'] / data['train']:.1%}), so its rows were seen less often: rare-lookup share "
                 f"{pilot['share']:.3f} in the pilot, {data['share']:.3f} in your data (docs/results.md: how MLET's "
                 "gain moved with the sample count on a full-size law)")
    lines += [f"What the pilot could not see: {seen}. Its lrs were tuned around where tuned sweeps "
              "found the optima" + ("; not done for lack of time: " + ", ".join(runner.skipped)
                                    if runner.skipped else "") + ". It did not try the baseline with its own "
              "table learning rate (--mlet-table-lr-scale), which gained more than MLET on a law with Criteo-Kaggle's "
              "table sizes (docs/results.md): a gain at equal d here may be what a larger table step gives.", ""]
    lines += ["Pilot arms (test AUC at the lr chosen on validation, mean ± sd over seeds):", ""]
    for a in found:
        t = tuned(a)
        name = f"MLET d={a['d']} k={a['k']}" if a["k"] else f"baseline d={a['d']}"
        lines.append(f"  {name:<20} " + ("all runs diverged" if t is None else
                     f"lr {a['best']:<6g} AUC {t['auc']:.4f} ± {t['auc_sd']:.4f} ({t['n']} seed{'s' * (t['n'] > 1)})"
                     + ("  (the chosen lr is at the grid's edge)" if next_lr(a) is not None else "")))
    lines += ["", "The full run (one epoch of your data, batch 128, on this machine, at the pilot's step times):", ""]
    batches = math.ceil(data["train"] / 128)
    for a in found:
        steps = [float(r["train_ms_per_it"]) for e in a["lrs"].values() for r in e["runs"]
                 if r["train_ms_per_it"] not in ("", None)]
        table = sum(training_bytes(n, a["d"], a["k"]) for n in data["sizes"])
        seconds = batches * float(np.median(steps)) / 1000 if steps else None
        hours = ("-" if seconds is None else f"{seconds / 3600:.1f} h" if seconds >= 3600
                 else f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s")
        name = f"MLET d={a['d']} k={a['k']}" if a["k"] else f"baseline d={a['d']}"
        lines.append(f"  {name:<20} {hours:>7} training, embedding tables {format_bytes(table)} to train, "
                     f"{format_bytes(sum(n * a['d'] * 4 for n in data['sizes']))} served")
    lines += ["", f"Pilot data, runs and logs: {folder} (run again to resume or extend it)"]
    return lines, entry
