"""Does MLET pay at the size the paper claims? The curve to full Criteo-Kaggle size, tuned and at the paper's protocol, and the controls.

    python docs/results/full_size.py DATA_DIR [--phase curve|controls|full|report|all] [--sizes 1% 10%] [--jobs 2]

Data (``dlrm-mlet synth --processed --scale 1 --rank 32 --support calibrated``):
the generator's law at Criteo-Kaggle's size (its 26 published table sizes,
each table's support calibrated so that 45,840,617 samples see about that
many values: ``criteo_regime.md``'s reading (b)), a rank-32 latent click
model as in the map; the first 1 %, 10 % and 100 % of its samples, each
written as DLRM's processed Kaggle file (7 days, the last halved into test and
validation), read with ``--mlet-mmap-data``.

Every run is patched DLRM's Kaggle bench model (``dlrm-mlet sweep``), SGD at
batch 128, one epoch, into ``full_size.csv`` (its ``regime`` is the size, its
``train_samples`` the training split's samples):

* curve, at 1 % and 10 %: baseline d 4, 16, 64; MLET k 64 and 256 at d 4, 16;
  each arm tuned (``dlrm_mlet/tools/tuning.py``: 4 lrs, grown by factors of 2
  at the edge, seeds 0 and 1, seed 2 for both arms of every pair within two
  standard errors), and the paper's protocol beside it: every arm at lr 0.1,
  seed 0.
* controls, at 1 % and 10 %, tuned the same way: (a) the baseline with its own
  table step, ``--mlet-table-lr-scale`` 4 and 16 (64 when 16 is best), each
  scale's dense lr tuned: a 2-D grid; (b) MLET k=64 with its projection frozen
  at its init (``--mlet-proj-lr-scale=0``); (c) at 10 %, Adagrad for baseline
  and MLET k=64.
* full, at 100 %: baseline d 16, 64 and 4, MLET k=64 at d 4 and 16, each at the
  two lrs that bracket its 10 % optimum (the chosen lr and its better
  neighbour), and at lr 0.1 (first: it needs no curve); seed 0; where an arm's best
  lr at 100 % is the largest (or smallest) it tried, one more lr beyond it (twice at most)
  (``--second-seed`` adds seed 1 at each arm's chosen lr where a gap is within two
  standard errors; one seed has none, so at first that is every MLET arm and the
  baselines it is compared with).
  One 100 % run at a time (a 10 % run may go beside it): a k=64 or d=64 model holds 8 GB of tables.

Runs checkpoint every 8,192 (10 %) or 65,536 (100 %) batches and a stopped
script resumes them there (finished rows are kept). DLRM is found as for the
quickstart (``DLRM_DIR``). The report phase writes ``full_size.md`` and
``full_size.png``.
"""

import argparse
import os
import sys

from dlrm_mlet.data.kaggle import KAGGLE_PROCESSED
from dlrm_mlet.dlrm.script import default_dlrm_dir
from dlrm_mlet.tools.report import summarize
from dlrm_mlet.tools.results_csv import read_rows
from dlrm_mlet.tools.sweep import run_sweep, tables_of
from dlrm_mlet.tools.synth_processed import write_processed
from dlrm_mlet.tools.tuning import first_grid, next_lr, tune

HERE = os.path.dirname(os.path.abspath(__file__))
CSV = os.path.join(HERE, "full_size.csv")
SIZES = {"1%": 458_406, "10%": 4_584_062, "100%": 45_840_617}
RANK, DATA_SEED = 32, 0
BASE_D, MLET_D, KS = (4, 16, 64), (4, 16), (64, 256)
SEEDS, EXTRA_SEEDS = (0, 1), (2,)
PAPER_LR = 0.1
# batches, multiples of the sweep's --print-freq; at 100 % a checkpoint holds 8 GB of tables: one every
# 5 minutes or so of training here (about 5 ms a batch), not every minute
CHECKPOINT_EVERY = {"1%": 0, "10%": 8192, "100%": 65536}
TABLE_SCALES, MORE_TABLE_SCALE = (4, 16), 64
FULL_ARMS = ((16, 0), (64, 0), (4, 64), (16, 64), (4, 0))  # d=4 last: the gain at equal d=4
FULL_EDGE_STEPS = 2  # at 100 %, lrs added beyond an edge optimum, at most (each run about 40 minutes)


def regime(size):
    return f"full law, {size}"


def data(data_dir, size):
    """The size's processed data (written once): ``(raw path DLRM names it by, DLRM arguments)``."""
    folder = os.path.join(data_dir, f"law-{size.rstrip('%')}pct")
    if not os.path.exists(os.path.join(folder, KAGGLE_PROCESSED)):
        print(f"== writing {SIZES[size]:,} samples to {folder}", flush=True)
        write_processed(folder, SIZES[size], seed=DATA_SEED, scale=1.0, rank=RANK, support="calibrated",
                        progress=False)
    return os.path.join(folder, "train.txt"), [f"--processed-data-file={os.path.join(folder, KAGGLE_PROCESSED)}",
                                               "--mlet-mmap-data"]


def sweeper(dlrm_dir, data_dir, size, extra=(), jobs=1):
    raw, data_args = data(data_dir, size)
    return lambda runs: run_sweep(dlrm_dir, "kaggle", raw, CSV, (), (), (), runs=runs, regime=regime(size),  # noqa: E731
                                  extra_args=data_args + list(extra), quiet=True, jobs=jobs,
                                  work=os.path.join(data_dir, f"work-{size.rstrip('%')}pct"),
                                  checkpoint_every=CHECKPOINT_EVERY[size])


def rows_of(size, optimizer="sgd", tables=("plain",)):
    return [r for r in read_rows(CSV) if r["regime"] == regime(size) and r["optimizer"] == optimizer
            and r["tables"] in tables]


def curve(dlrm_dir, data_dir, size, jobs):
    go = sweeper(dlrm_dir, data_dir, size, jobs=jobs)
    plan = [(d, 0) for d in BASE_D] + [(d, k) for d in MLET_D for k in KS]
    go([(d, k, PAPER_LR, 0) for d, k in plan])  # the paper's protocol: a few runs, first
    tune(go, lambda: rows_of(size), plan, SEEDS, lambda k: first_grid("sgd", k), extra_seeds=EXTRA_SEEDS)


def _best_scale(size):
    """Per d, the table-lr scale of the first grid (1: the plain baseline) whose best arm has the highest
    validation AUC. Only the first grid's: the larger scale it adds must not move its own edge."""
    best = {}
    for arm in summarize(rows_of(size, tables=["plain"] + [f"table lr x{s:g}" for s in TABLE_SCALES])):
        if arm["k"] == 0 and arm["tuned"]:
            best.setdefault(arm["d"], []).append((arm["tuned"]["val_auc"], arm["tables"]))
    return {d: max(found)[1] for d, found in best.items()}


def controls(dlrm_dir, data_dir, size, jobs):
    """Each control tuned as the arms are; its extra seeds where it is close to the curve's arms."""
    def control(extra, plan, optimizer="sgd", against_curve=True):
        label = tables_of(extra)
        # the curve's arms of the other kind (MLET for a baseline control, baselines for an MLET one)
        rivals = lambda: [r for r in rows_of(size) if (int(r["k"]) > 0) != (plan[0][1] > 0)] if against_curve else []  # noqa: E731
        tune(sweeper(dlrm_dir, data_dir, size, extra, jobs), lambda: rows_of(size, optimizer, (label,)), plan,
             SEEDS, lambda k: first_grid(optimizer, k), extra_seeds=EXTRA_SEEDS, rivals=rivals)

    for scale in TABLE_SCALES:  # (a) the baseline with its own table step: a 2-D grid
        control([f"--mlet-table-lr-scale={scale}"], [(d, 0) for d in BASE_D])
    edge = [d for d, tables in _best_scale(size).items() if tables == f"table lr x{TABLE_SCALES[-1]:g}"]
    if edge:  # the best scale is the largest tried: one more factor of 4
        control([f"--mlet-table-lr-scale={MORE_TABLE_SCALE}"], [(d, 0) for d in edge])
    control(["--mlet-proj-lr-scale=0"], [(d, 64) for d in MLET_D])  # (b) the projection frozen at its init
    if size == "10%":  # (c) Adagrad for both arms
        control(["--optimizer=adagrad"], [(d, 0) for d in BASE_D] + [(d, 64) for d in MLET_D], "adagrad", False)


def _settled(arm):
    """Whether a 10 % arm is tuned as the curve tunes it: 3 lrs or more, its optimum inside them, every seed."""
    return len(arm["lrs"]) >= 3 and next_lr(arm) is None and arm["lrs"][arm["best"]]["stats"]["n"] >= len(SEEDS)


def bracket(arm):
    """The chosen lr and its better neighbour (by validation AUC): the two lrs around the optimum."""
    tried = sorted(arm["lrs"])
    i = tried.index(arm["best"])
    neighbours = [lr for lr in (tried[i - 1] if i else None, tried[i + 1] if i + 1 < len(tried) else None)
                  if lr is not None and arm["lrs"][lr]["stats"]]
    if not neighbours:
        return [arm["best"]]
    return sorted([arm["best"], max(neighbours, key=lambda lr: arm["lrs"][lr]["stats"]["val_auc"])])


def full(dlrm_dir, data_dir, jobs, second_seed=False):
    go = sweeper(dlrm_dir, data_dir, "100%", jobs=jobs)
    go([(d, k, PAPER_LR, 0) for d, k in FULL_ARMS])  # the paper's protocol needs no curve: it goes first
    arms = {(a["d"], a["k"]): a for a in summarize(rows_of("10%")) if _settled(a)}
    missing = [arm for arm in FULL_ARMS if arm not in arms]
    if missing:
        raise SystemExit(f"full: the 10 % curve has not tuned (d, k) {missing} yet; run --phase curve --sizes 10% first")
    go([(d, k, lr, 0) for d, k in FULL_ARMS for lr in bracket(arms[d, k])])
    for _ in range(FULL_EDGE_STEPS):  # an optimum at the edge of what 100 % tried: one more lr beyond it
        edge = [(a["d"], a["k"], next_lr(a), 0) for a in summarize(rows_of("100%"))
                if (a["d"], a["k"]) in FULL_ARMS and next_lr(a)]
        if not edge:
            break
        go(edge)
    if second_seed:
        from dlrm_mlet.tools.tuning import close_pairs

        close = {(a["d"], a["k"], a["best"], 1) for pair in close_pairs(summarize(rows_of("100%"))) for a in pair}
        go(sorted(close))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--phase", choices=("curve", "controls", "full", "report", "all"), default="all")
    parser.add_argument("--sizes", nargs="*", default=["1%", "10%"], choices=["1%", "10%"])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once at 1 %% and 10 %% (100 %%: one)")
    parser.add_argument("--second-seed", action="store_true", help="full: seed 1 where a gap is within 2 se")
    args = parser.parse_args()
    dlrm_dir = os.environ.get("DLRM_DIR") or default_dlrm_dir()
    os.makedirs(args.data_dir, exist_ok=True)
    for size in args.sizes:
        if args.phase in ("curve", "all"):
            print(f"== curve at {size}", flush=True)
            curve(dlrm_dir, args.data_dir, size, args.jobs)
        if args.phase in ("controls", "all"):
            print(f"== controls at {size}", flush=True)
            controls(dlrm_dir, args.data_dir, size, args.jobs)
    if args.phase in ("full", "all"):
        print("== full size", flush=True)
        full(dlrm_dir, args.data_dir, 1, args.second_seed)
    if args.phase in ("report", "all"):
        from full_size_report import write_report

        write_report(CSV, HERE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
