#!/usr/bin/env bash
# The #15 training-memory evidence in this folder, from a fresh clone with DLRM at DLRM_DIR:
#   docs/results/memory.sh [DATA_DIR]     (about 30 minutes on 2 cores)
# On the embedded default of docs/results/tuned.sh (same data, same generator call):
#  1. fp16 and bf16 k-wide tables against fp32, MLET d=16 k=256, at the learning rates around
#     the tuned one (0.1-0.2 at k=256, README) so each dtype's own best is chosen on validation;
#  2. the two --mlet-memory-budget rules at one budget (16 MiB: k=256 everywhere would take 53.8 MiB,
#     the plain d=16 tables 3.3 MiB; uniform gives every table k=72), each at its best lr on validation.
# Every run is one DLRM run; a sweep that stops resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")"
DATA=${1:-../../../data/memory}
SYNTH=${SYNTH:-../../../data/tuned/synth}
COMMON=(--d 16 --k 256 --seeds 0,1,2 --jobs 2 --quiet --no-baseline)
[ -f "$SYNTH/train.txt" ] ||
  python -m dlrm_mlet synth "$SYNTH" --rows 200000 --seed 0 --scale 0.002 --rank 32 --quiet
sweep() {  # OUT.csv [sweep options]
  python -m dlrm_mlet sweep --raw-data-file "$SYNTH/train.txt" --out "$1" --work "$DATA/work_${1%.csv}" "${@:2}"
}
for dtype in fp32 fp16 bf16; do
  sweep "synthetic_table_${dtype}.csv" "${COMMON[@]}" --lrs 0.05,0.1,0.2,0.4 -- "--mlet-table-dtype=$dtype"
done
for rule in uniform rare; do
  sweep "synthetic_budget_${rule}.csv" "${COMMON[@]}" --lrs 0.1,0.2,0.4,0.8 -- --mlet-memory-budget=16MiB \
    "--mlet-budget-rule=$rule"
done
python -m dlrm_mlet plan --budget 16MiB --mlet-hidden-dim 256 --arch-sparse-feature-size 16 --quiet \
  --processed-data-file "$SYNTH/kaggleAdDisplayChallenge_processed.npz" --rule rare > synthetic_budget_rare_plan.txt
python -m dlrm_mlet plan --budget 16MiB --mlet-hidden-dim 256 --arch-sparse-feature-size 16 --quiet \
  --processed-data-file "$SYNTH/kaggleAdDisplayChallenge_processed.npz" --rule uniform > synthetic_budget_uniform_plan.txt
for name in synthetic_table_fp32 synthetic_table_fp16 synthetic_table_bf16 synthetic_budget_uniform \
    synthetic_budget_rare; do
  python -m dlrm_mlet report "$name.csv" --force --markdown "$name.md" --plot "$DATA/$name.png" --quiet >/dev/null
done
python compare.py synthetic_table_fp32.csv synthetic_table_fp16.csv synthetic_table_bf16.csv \
  --title "Embedded default, 200k rows: MLET d=16 k=256 tables in fp32, fp16 and bf16" > synthetic_table_dtype.md
python compare.py synthetic_budget_uniform.csv synthetic_budget_rare.csv \
  --title "Embedded default, 200k rows: the two --mlet-memory-budget rules at 16 MiB, k <= 256" \
  > synthetic_budget_rules.md
echo "done"
