"""Which regime full-size Criteo-Kaggle is in: its rare-lookup share under the generator's frequency law.

    python docs/results/criteo_regime.py [--sample ../shared/data/criteo/train_examples.txt]   (about a minute)

Writes criteo_regime.md here. The full data cannot be counted here, so its
rare-lookup share is derived from published facts (45,840,617 samples, 26
tables of Criteo-Kaggle's published sizes, the generator's measured missing
rates) and the generator's law, P(id) ~ (id + 1)^-1.1. The law is first checked
where it can be: on the first 10,000 real rows (when the sample is there), its
expected distinct values and rare-lookup share against the measured ones.

Expected counts are exact sums over rows of Poisson expectations
(``dlrm_mlet/tools/synth_law.py``, which ``dlrm-mlet synth --support calibrated``
generates from).
"""

import argparse
import os
import shutil
import sys
import tempfile

from dlrm_mlet.data.kaggle import preprocess_kaggle
from dlrm_mlet.data.frequency import count_rows, profile
from dlrm_mlet.data.processed import training_split
from dlrm_mlet.tools.synth_law import CRITEO_SAMPLES as SAMPLES, calibrated_supports, expected, law_share, missing_rates
from dlrm_mlet.tools.synth_model import CRITEO_TABLE_SIZES, ZIPF_EXPONENT, table_sizes

HERE = os.path.dirname(os.path.abspath(__file__))


def sample_check(path):
    """Measured against expected on the real sample: (rows, measured share, expected share, distinct pairs)."""
    work = tempfile.mkdtemp()
    try:
        shutil.copy(path, os.path.join(work, "train.txt"))
        preprocess_kaggle(os.path.join(work, "train.txt"), quiet=True)
        split = training_split(os.path.join(work, "kaggleAdDisplayChallenge_processed.npz"))
        info = profile(count_rows(split.blocks(), split.sizes))
        rows = sum(1 for _ in open(path))
        rates = missing_rates()
        distinct = [(sum(1 for v in _column(path, f) if v), expected(n, rows * (1 - rates[f]))[0])
                    for f, n in enumerate(CRITEO_TABLE_SIZES)]
        return rows, info["overall"]["rare_lookup_share"], law_share(CRITEO_TABLE_SIZES, rows)[0], distinct
    finally:
        shutil.rmtree(work)


def _column(path, f):
    return {line.rstrip("\n").split("\t")[14 + f] for line in open(path)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", default=os.path.join(HERE, "../../../shared/data/criteo/train_examples.txt"))
    args = parser.parse_args()
    lines = ["# Which regime full-size Criteo-Kaggle is in", "",
             f"Written by `criteo_regime.py` (the method is in its docstring). The generator's law: P(id) ~ "
             f"(id + 1)^-{ZIPF_EXPONENT} over each table's rows.", ""]
    if os.path.exists(args.sample):
        rows, measured, law, distinct = sample_check(args.sample)
        lines += ["## The law against real rows", "",
                  f"On the first {rows:,} real Criteo-Kaggle rows (DLRM's split: the first 6/7 are training): "
                  f"rare-lookup share measured **{measured:.3f}**, the law expects **{law:.3f}**; distinct values "
                  f"over the 26 tables measured {sum(d[0] for d in distinct):,}, the law expects "
                  f"{sum(d[1] for d in distinct):,.0f}.", ""]
    else:
        lines += [f"(The real sample {args.sample} is absent: the check against real rows was skipped.)", ""]
    fixed, fixed_tables = law_share(CRITEO_TABLE_SIZES, SAMPLES)
    supports, reached = zip(*calibrated_supports(CRITEO_TABLE_SIZES, SAMPLES))
    calibrated, calibrated_tables = law_share(CRITEO_TABLE_SIZES, SAMPLES, [int(s) for s in supports])
    lines += ["## Full size, from published facts", "",
              f"{SAMPLES:,} samples, 26 tables, {sum(CRITEO_TABLE_SIZES):,} rows. Two readings of the law:", "",
              "- **(a) support = the published size**: every table's rows are the published count. This reading "
              "expects only a fraction of those rows to be seen at all, while a published size counts values that "
              "were seen: it puts too little mass on rare rows, so its share is a lower bound.",
              "- **(b) calibrated support**: each table's support is widened until the expected number of distinct "
              "values seen in the full data equals the published size (tables over 1,000 rows; capped at 10^4 x). "
              "Where even the cap falls short, the real tail is heavier than the law, and the share is again a "
              "lower bound.", "",
              "| table | published rows | (a) share of its lookups on rows seen <= 10 times | (b) support | (b) share |",
              "|---|---|---|---|---|"]
    for f, n in enumerate(CRITEO_TABLE_SIZES):
        if n > 1000:
            note = "" if reached[f] else " (cap: heavier tail)"
            lines.append(f"| C{f + 1} | {n:,} | {fixed_tables[f]:.3f} | {supports[f]:,.0f}{note} | "
                         f"{calibrated_tables[f]:.3f} |")
    lines += ["", f"Overall rare-lookup share of full Criteo-Kaggle: **(a) {fixed:.3f}**, **(b) {calibrated:.3f}** "
                  "(both lower bounds; tables of at most 1,000 rows add nothing rare).", ""]
    scale, rows = 0.01, 200_000
    default, _ = law_share(table_sizes(scale), rows)
    lines += ["## The embedded default", "",
              f"The quickstart's data ({rows:,} rows, tables at {scale} of Criteo-Kaggle's sizes, the same law): "
              f"the law expects a rare-lookup share of {default:.3f} (`dlrm-mlet data` measures it on the "
              "processed file). It is the nearest a few-minute dataset comes to full Criteo-Kaggle's regime here.",
              ""]
    with open(os.path.join(HERE, "criteo_regime.md"), "w") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
