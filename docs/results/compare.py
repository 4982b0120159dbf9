"""Compare sweeps of the same arm run with different options (one CSV per option), as markdown.

    python compare.py REFERENCE.csv OTHER.csv [...] [--title T] > OUT.md

Each CSV holds one option's runs of the same (d, k) over the same learning
rates and seeds (``dlrm-mlet sweep ... -- --option``; sweeps key runs by
(d, k, lr, seed), so options need files of their own). Per file: the learning
rate chosen on validation (``report.summarize``'s rule: best mean validation
AUC among lrs where no seed diverged), its test AUC and log loss, and, against
the first file, the per-seed paired difference of test AUC (same seed: same
data order and the same initial draws), mean and standard error.
"""

import argparse
import math
import os
import statistics
import sys

from dlrm_mlet.tools.report import summarize
from dlrm_mlet.tools.results_csv import read_rows


def arm_of(path):
    arms = [a for a in summarize(read_rows(path)) if a["k"]]
    if len(arms) != 1:
        sys.exit(f"{path}: expected the runs of one MLET arm, found {len(arms)}")
    return arms[0]


def per_seed(arm):
    runs = arm["lrs"][arm["best"]]["runs"] if arm["best"] is not None else []
    return {int(r["seed"]): float(r["test_auc"]) for r in runs}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csvs", nargs="+")
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    arms = [(os.path.splitext(os.path.basename(p))[0], arm_of(p)) for p in args.csvs]
    reference = per_seed(arms[0][1])
    lines = [f"# {args.title}", ""] if args.title else []
    lines += ["| sweep | d | k | tuned lr | diverged runs (all lrs) | test AUC | test log loss | "
              f"paired test AUC difference vs {arms[0][0]} (mean, se, seeds) | training embedding MiB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, arm in arms:
        diverged = sum(e["diverged"] for e in arm["lrs"].values())
        total = sum(len(e["runs"]) for e in arm["lrs"].values())
        size = f"{arm['training_bytes'] / 2**20:.1f}" if arm["training_bytes"] else "-"
        if arm["tuned"] is None:
            lines.append(f"| {name} | {arm['d']} | {arm['k']} | none ({arm['why_none']}) | {diverged}/{total} "
                         f"| - | - | - | {size} |")
            continue
        t = arm["tuned"]
        mine = per_seed(arm)
        diffs = [mine[s] - reference[s] for s in sorted(mine) if s in reference]
        if name == arms[0][0] or not diffs:
            paired = "-"
        else:
            se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
            paired = f"{statistics.mean(diffs):+.4f}, {se:.4f}, {len(diffs)}"
        lines.append(f"| {name} | {arm['d']} | {arm['k']} | {arm['best']:g} | {diverged}/{total} | "
                     f"{t['auc']:.4f} ± {t['auc_sd']:.4f} (n={t['n']}) | {t['loss']:.4f} ± {t['loss_sd']:.4f} | "
                     f"{paired} | {size} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
