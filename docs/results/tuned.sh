#!/usr/bin/env bash
# The tuned evidence in this folder (#14), from a fresh clone with DLRM at DLRM_DIR:
#   docs/results/tuned.sh [DATA_DIR]     (about 2 hours on 2 cores)
# Every (d, k, lr, seed) is one DLRM run; a sweep that stops resumes where it stopped.
# Criteo-Kaggle and Avazu samples are read from ../shared/data (never copied here);
# they are skipped when absent.
set -euo pipefail
cd "$(dirname "$0")"
DATA=${1:-../../../data/tuned}
SHARED=${SHARED:-../../../shared/data}
GRID=(--d 4,16,64 --k 64,256 --lrs 0.05,0.1,0.2,0.4,0.8,1.6 --seeds 0,1,2 --jobs 2 --quiet)
sweep() {  # RAW_FILE OUT.csv [sweep options]
  python -m dlrm_mlet sweep --raw-data-file "$1" --out "$2" --work "$DATA/work_${2%.csv}" "${@:3}"
}

# The embedded default generator, sized so that the tuned baseline improves from d=4 to d=16:
# 200,000 rows, tables at 1/500 of Criteo-Kaggle's sizes, a rank-32 latent click model.
[ -f "$DATA/synth/train.txt" ] ||
  python -m dlrm_mlet synth "$DATA/synth" --rows 200000 --seed 0 --scale 0.002 --rank 32 --quiet
sweep "$DATA/synth/train.txt" synthetic_tuned.csv "${GRID[@]}"
# The projection-init scale: xavier's std sqrt(2/(d+k)) instead of the authors' 0.25 makes the
# folded table's effective step about 2x the table's instead of k/16 x; the widths that diverge.
sweep "$DATA/synth/train.txt" synthetic_tuned_xavier.csv --d 4,16,64 --k 256 --lrs 0.1,0.2,0.4,0.8,1.6 \
  --seeds 0,1,2 --jobs 2 --quiet --no-baseline -- --mlet-proj-init=xavier
if [ -f "$SHARED/criteo/train_examples.txt" ]; then
  mkdir -p "$DATA/criteo" && cp "$SHARED/criteo/train_examples.txt" "$DATA/criteo/train.txt"
  sweep "$DATA/criteo/train.txt" criteo_sample_10k_tuned.csv "${GRID[@]}"
fi
if [ -f "$SHARED/avazu/train" ]; then
  mkdir -p "$DATA/avazu" && cat "$SHARED/avazu/train" "$SHARED/avazu/test" > "$DATA/avazu/train.csv"
  sweep "$DATA/avazu/train.csv" avazu_sample_10k_tuned.csv --data-set avazu "${GRID[@]}"
  # The baseline's best lr was the grid's largest (1.6) at d=4 and 16: one more doubling, for every arm.
  sweep "$DATA/avazu/train.csv" avazu_sample_10k_tuned.csv --data-set avazu "${GRID[@]}" --lrs 3.2
fi
# Three epochs, a subset: the narrow and the middle width, the baseline and k=256.
sweep "$DATA/synth/train.txt" synthetic_tuned.csv --epochs 3 \
  --d 4,16 --k 256 --lrs 0.05,0.1,0.2,0.4,0.8 --seeds 0,1 --jobs 2 --quiet

python -m dlrm_mlet report synthetic_tuned.csv --force --oracle "$DATA/synth/synth.json" --markdown synthetic_tuned.md \
  --title "Embedded default, 200k rows" --quiet >/dev/null
cp "$DATA/synth/synth.json" synthetic_tuned_synth.json
for name in synthetic_tuned_xavier criteo_sample_10k_tuned avazu_sample_10k_tuned; do
  [ -f "$name.csv" ] && python -m dlrm_mlet report "$name.csv" --force --markdown "$name.md" --quiet >/dev/null
done
echo "done: $(ls *_tuned.*)"
