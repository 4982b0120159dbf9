"""The smallest stock model: size against AUC for every compression stock DLRM loads (writes frontier_*.csv here).

    python docs/results/frontier.py DATA_DIR [--jobs 2] [--only criteo-like criteo-sample-10k avazu-sample-10k] [--seeds 0 1 2]

On each dataset (the embedded default, ``dlrm-mlet synth`` at 200,000 rows, the
map's ``criteo-like`` regime; and the real Criteo-Kaggle and Avazu samples of
../shared/data when they are there), seeds 0-2, each arm on its own lr grid
(3 lrs, factors of 2, extended at its edge as the map extends it, at most twice):

- plain tables, d 4, 16, 64, and MLET k 64 at d 4, 16, each scored in fp32 and
  as stock DLRM serves them with int8 and int4 tables (``sweep --quantize 8,4``);
- DLRM's QR tables (``--qr-flag``, mult, 4 collisions, threshold 200) at d 16, 64,
  and QR+MLET (K 64) at d 16;
- DLRM's mixed-dimension tables (``--md-flag``, temperature 0.3, threshold 0 so
  every table is one: stock cannot build an MD table at or below the threshold)
  at d 16, 64, and MD+MLET (K 64) at d 16.

Stock DLRM refuses int8/int4 with QR or MD tables, so those are fp32 only.
The plain models are also served as their ONNX export in ONNX Runtime, int8
(``sweep --quantize onnx``), at each arm's lr tuned in fp32 (its seeds
trained again for it: a DLRM run on the CPU repeats exactly, which the sweep
checks), not on a grid of its own: int8 moved DLRM's AUC by under 0.001, so
the fp32 choice stands for it.
Then ``dlrm-mlet frontier`` writes frontier.md and frontier.png from the CSVs.
A stopped run resumes where it stopped. DLRM is found as for the quickstart.
"""

import argparse
import os
import sys

from dlrm_mlet.dlrm.script import default_dlrm_dir
from dlrm_mlet.tools.frontier import frontier
from dlrm_mlet.tools.report import summarize
from dlrm_mlet.tools.results_csv import read_rows
from dlrm_mlet.tools.sweep import run_sweep, tables_of
from dlrm_mlet.tools.synth import write_synthetic
from dlrm_mlet.tools.tuning import tune
from map import REGIMES, RANK, SHARED

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = (0, 1, 2)
MAX_EXTENSIONS = 2
GRID = {0: (0.4, 0.8, 1.6), 64: (0.2, 0.4, 0.8)}  # the map's tuned optima at batch 128 lie inside these
QR = ["--qr-flag", "--qr-operation=mult", "--qr-collisions=4", "--qr-threshold=200"]
MD = ["--md-flag", "--md-temperature=0.3", "--md-threshold=0"]
# (DLRM arguments, quantized serving, {d: ks})
CONFIGS = [
    ([], (8, 4), {4: (0, 64), 16: (0, 64), 64: (0,)}),
    (QR, (), {16: (0, 64), 64: (0,)}),
    (MD, (), {16: (0, 64), 64: (0,)}),
]
DATASETS = {  # name: (data set, raw files in SHARED, or None for the generator)
    "criteo-like": ("kaggle", None),
    "criteo-sample-10k": ("kaggle", ["criteo/train_examples.txt"]),
    "avazu-sample-10k": ("avazu", ["avazu/train", "avazu/test"]),
}


def raw_file(data_dir, name):
    """The dataset's raw file under ``data_dir`` (generated, or the shared sample's files joined); None if absent."""
    data_set, parts = DATASETS[name]
    folder = os.path.join(data_dir, name)
    os.makedirs(folder, exist_ok=True)
    raw = os.path.join(folder, "train.txt" if data_set == "kaggle" else "train.csv")
    if os.path.exists(raw):
        return raw
    if parts is None:
        rows, scale, zipf = REGIMES[name]
        write_synthetic(folder, rows, seed=0, scale=scale, rank=RANK, zipf=zipf, progress=False)
        return raw
    if not all(os.path.exists(os.path.join(SHARED, p)) for p in parts):
        return None
    with open(raw + ".part", "wb") as out:
        for p in parts:
            with open(os.path.join(SHARED, p), "rb") as handle:
                out.write(handle.read())
    os.replace(raw + ".part", raw)
    return raw


def sweep_config(dlrm_dir, data_dir, name, out_csv, args, quantize, widths, jobs, seeds=SEEDS):
    data_set, _ = DATASETS[name]
    raw = raw_file(data_dir, name)
    go = lambda runs: run_sweep(dlrm_dir, data_set, raw, out_csv, (), (), (), regime=name, runs=runs,  # noqa: E731
                                extra_args=args, quantize=quantize, quiet=True, jobs=jobs,
                                work=os.path.join(data_dir, name, "work"))
    tables = tables_of(args)
    rows = lambda: [r for r in read_rows(out_csv) if r["tables"] == tables and r["regime"] == name]  # noqa: E731
    tune(go, rows, [(d, k) for d, ks in widths.items() for k in ks], seeds, GRID.get, max_extensions=MAX_EXTENSIONS)


def sweep_onnx(dlrm_dir, data_dir, name, out_csv, jobs, seeds=SEEDS):
    """The plain arms' tuned models (fp32's lr) scored as ONNX Runtime serves them int8."""
    data_set, _ = DATASETS[name]
    arms = [a for a in summarize(read_rows(out_csv)) if a["tables"] == "plain" and a["regime"] == name
            and a["best"] is not None]
    run_sweep(dlrm_dir, data_set, raw_file(data_dir, name), out_csv, (), (), (), regime=name, quiet=True,
              runs=[(a["d"], a["k"], a["best"], s) for a in arms for s in seeds], quantize=("onnx",), jobs=jobs,
              work=os.path.join(data_dir, name, "work"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=list(DATASETS))
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    args = parser.parse_args()
    dlrm_dir = os.environ.get("DLRM_DIR") or default_dlrm_dir()
    csvs = []
    for name in args.only:
        if raw_file(args.data_dir, name) is None:
            print(f"== {name}: skipped (its sample is not in {SHARED})", flush=True)
            continue
        out_csv = os.path.join(HERE, f"frontier_{name}.csv")
        for dlrm_args, quantize, widths in CONFIGS:
            print(f"== {name}: {tables_of(dlrm_args)}", flush=True)
            sweep_config(dlrm_dir, args.data_dir, name, out_csv, dlrm_args, quantize, widths, args.jobs, args.seeds)
        print(f"== {name}: ONNX Runtime int8 at the tuned lrs", flush=True)
        sweep_onnx(dlrm_dir, args.data_dir, name, out_csv, args.jobs, args.seeds)
        csvs.append(out_csv)
    text = frontier(csvs, os.path.join(HERE, "frontier.png"), title="Served size against AUC")
    with open(os.path.join(HERE, "frontier.md"), "w") as handle:
        handle.write("# The smallest stock model: size against AUC\n\nWritten by `frontier.py` (its docstring "
                     "says how); the real samples are 10,000 rows each, so their figures are noisy.\n\n"
                     + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
