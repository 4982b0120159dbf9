"""Where MLET pays: tuned sweeps over data regimes and optimizers (writes map.csv here).

    python docs/results/map.py DATA_DIR [--jobs 2] [--only REGIME ...] [--phase sgd|optimizers|report|all]

Every regime is one synthetic dataset (``dlrm-mlet synth``: rows, table scale,
the frequency law's skew, latent rank 32) and one set of arms: baseline and
MLET k 64, 256 at d 4, 16, 64. Every arm gets its own learning-rate grid
(4 lrs, factors of 2, around where earlier sweeps found its optimum), seeds
0 and 1; while an arm's best lr (chosen on validation) is the smallest or
largest it tried, the next factor of 2 is added (at most 4 times); then,
wherever an MLET arm and the baseline of the same d differ by less than two
standard errors, both get seed 2 at their chosen lr. The optimizer phase does
the same with DLRM's ``--optimizer adagrad`` and ``rwsadagrad`` on two
regimes (k=64 alone on the second). A stopped run resumes where it stopped (finished rows are kept).
DLRM is found as for the quickstart (``DLRM_DIR``).

The report phase writes map.md, map.png (AUC against size, one panel per
regime) and map_pays.png (saving and gain against the rare-lookup share),
with the real Criteo-Kaggle and Avazu samples' tuned sweeps
(``criteo_sample_10k_tuned.csv``, ``avazu_sample_10k_tuned.csv``, whose rows
are given their regime name and measured share here, from ../shared/data
when it is there), and the package's map summary from the synthetic regimes
alone (what ``dlrm-mlet data`` compares a user's data with).
"""

import argparse
import os
import shutil
import sys
import tempfile

from dlrm_mlet.data.avazu import preprocess_avazu
from dlrm_mlet.data.kaggle import preprocess_kaggle
from dlrm_mlet.data.frequency import count_rows, rare_lookup_share
from dlrm_mlet.data.processed import training_split
from dlrm_mlet.dlrm.script import default_dlrm_dir
from dlrm_mlet.tools import pays
from dlrm_mlet.tools.report import report, summarize, tuned
from dlrm_mlet.tools.tuning import GRIDS, tune
from dlrm_mlet.tools.results_csv import read_rows, write_rows
from dlrm_mlet.tools.sweep import run_sweep
from dlrm_mlet.tools.synth import write_synthetic

HERE = os.path.dirname(os.path.abspath(__file__))
CSV = os.path.join(HERE, "map.csv")
RANK = 32
# name: (rows, table scale as a fraction of Criteo-Kaggle's, Zipf exponent), from frequent rows to rare ones
REGIMES = {
    "frequent": (200_000, 0.0005, 1.1),
    "dense": (200_000, 0.002, 1.1),  # the earlier embedded default's data
    "criteo-like": (200_000, 0.01, 1.1),
    "rare": (300_000, 0.05, 0.7),
    "rarest": (200_000, 0.1, 0.5),
}
DS, KS, SEEDS = (4, 16, 64), (64, 256), (0, 1)
EXTRA_SEED = 2
# Optimizer regimes and their MLET k: one where SGD-MLET gave no saving (both k), one rare, where k=64 alone
# to fit the time (on "dense", adaptive k=256 beat k=64 only at d=4 with rwsadagrad and lost at d=16 and 64).
OPTIMIZER_REGIMES = {"dense": KS, "rare": (64,)}
SHARED = os.path.join(HERE, "../../../shared/data")
SAMPLES = {  # regime name: (its tuned sweep here, data set, raw files in SHARED)
    "criteo-sample-10k": ("criteo_sample_10k_tuned.csv", "kaggle", ["criteo/train_examples.txt"]),
    "avazu-sample-10k": ("avazu_sample_10k_tuned.csv", "avazu", ["avazu/train", "avazu/test"]),
}


def data_for(data_dir, name):
    rows, scale, zipf = REGIMES[name]
    folder = os.path.join(data_dir, name)
    if not os.path.exists(os.path.join(folder, "train.txt")):
        write_synthetic(folder, rows, seed=0, scale=scale, rank=RANK, zipf=zipf, progress=False)
    return os.path.join(folder, "train.txt")


def sweep_regime(dlrm_dir, data_dir, regime, optimizer, jobs, ks=KS):
    raw = data_for(data_dir, regime)
    extra = [] if optimizer == "sgd" else [f"--optimizer={optimizer}"]
    go = lambda runs: run_sweep(dlrm_dir, "kaggle", raw, CSV, (), (), (), work=os.path.join(data_dir, f"work_{regime}"),  # noqa: E731
                                extra_args=extra, quiet=True, jobs=jobs, regime=regime, runs=runs)
    rows = lambda: [r for r in read_rows(CSV) if r["regime"] == regime and r["optimizer"] == optimizer]  # noqa: E731
    tune(go, rows, [(d, k) for d in DS for k in (0,) + ks], SEEDS, lambda k: GRIDS[optimizer][k],
         extra_seeds=(EXTRA_SEED,), wider=False)


def sample_share(data_set, raws):
    """The rare-lookup share of a real sample, preprocessed as its sweep's DLRM runs preprocessed it."""
    work = tempfile.mkdtemp()
    try:
        raw = os.path.join(work, "train.txt" if data_set == "kaggle" else "train.csv")
        with open(raw, "wb") as out:
            for path in raws:
                out.write(open(os.path.join(SHARED, path), "rb").read())
        if data_set == "kaggle":
            preprocess_kaggle(raw, quiet=True)
            processed = os.path.join(work, "kaggleAdDisplayChallenge_processed.npz")
        else:
            processed = preprocess_avazu(raw, os.path.join(work, "avazu_processed"), quiet=True)
        split = training_split(processed)
        return rare_lookup_share(count_rows(split.blocks(), split.sizes))
    finally:
        shutil.rmtree(work)


def grid_table(rows):
    """What each regime's sweep was and took: the generator's settings, its share, runs, seeds, lrs, hours."""
    lines = ["| regime | rows | table scale | Zipf | rare-lookup share | optimizer | runs (diverged) | seeds | lrs per arm "
             "| training hours |", "|" + "---|" * 10]
    groups = {}
    for r in rows:
        groups.setdefault((r["regime"], r["optimizer"]), []).append(r)
    order = lambda key: (key[1] != "sgd", key[1], float(groups[key][0]["rare_lookup_share"] or 0))  # noqa: E731
    for regime, optimizer in sorted(groups, key=order):
        runs = groups[regime, optimizer]
        n, scale, zipf = REGIMES.get(regime, ("-", "-", "-"))
        per_arm = {}
        for r in runs:
            per_arm.setdefault((r["d"], r["k"]), set()).add(r["lr"])
        lrs = sorted(len(v) for v in per_arm.values())
        hours = sum(float(r["train_seconds"] or 0) for r in runs) / 3600
        lines.append(f"| {regime} | {n:,} | {scale} | {zipf} | {float(runs[0]['rare_lookup_share']):.3f} | "
                     f"{optimizer} | {len(runs)} ({sum(r['status'] != 'ok' for r in runs)}) | "
                     f"{len({r['seed'] for r in runs})} | {lrs[0]}-{lrs[-1]} | {hours:.1f} |")
    return "\n".join(lines)


def write_report():
    samples = []
    for name, (csv_name, data_set, raws) in SAMPLES.items():
        path = os.path.join(HERE, csv_name)
        if os.path.exists(path) and all(os.path.exists(os.path.join(SHARED, r)) for r in raws):
            share = sample_share(data_set, raws)
            write_rows(path, [dict(r, regime=name, rare_lookup_share=share) for r in read_rows(path)])
        if os.path.exists(path):
            samples.append(path)
    text = report([CSV] + samples, os.path.join(HERE, "map.png"), title="Where MLET pays",
                  map_png=os.path.join(HERE, "map_pays.png"))
    with open(os.path.join(HERE, "map.md"), "w") as handle:
        handle.write("# Where MLET pays: the tuned map\n\nWritten by `map.py` (its docstring says how); "
                     "the real samples are 10,000 rows each, so their figures are noisy.\n\n"
                     "## The grid and what it took\n\nTraining hours: the runs' own wall time, summed (two "
                     "runs at a time on 2 cores).\n\n" + grid_table(read_rows(CSV)) + "\n\n" + text + "\n")
    pays.write_summary(pays.summarize_regimes(summarize(read_rows(CSV)), tuned))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=list(REGIMES))
    parser.add_argument("--phase", choices=("sgd", "optimizers", "report", "all"), default="all")
    args = parser.parse_args()
    dlrm_dir = os.environ.get("DLRM_DIR") or default_dlrm_dir()
    os.makedirs(args.data_dir, exist_ok=True)
    if args.phase in ("sgd", "all"):
        for regime in args.only:
            print(f"== {regime}: SGD", flush=True)
            sweep_regime(dlrm_dir, args.data_dir, regime, "sgd", args.jobs)
    if args.phase in ("optimizers", "all"):
        for regime in [r for r in OPTIMIZER_REGIMES if r in args.only]:
            for optimizer in ("adagrad", "rwsadagrad"):
                print(f"== {regime}: {optimizer}", flush=True)
                sweep_regime(dlrm_dir, args.data_dir, regime, optimizer, args.jobs, OPTIMIZER_REGIMES[regime])
    if args.phase in ("report", "all"):
        write_report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
