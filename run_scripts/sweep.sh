#!/usr/bin/env bash
# The paper's experiment on one dataset: baseline and MLET over d, k and the learning
# rate into one CSV, then the report (each arm at its validation-chosen lr) beside it.
#
#   DATA_SET=kaggle|avazu run_scripts/sweep.sh RAW_FILE [results.csv] [DLRM args...]
#
# DS (4,8,16,32,64), KS (64,128,256,512), LRS (0.05,...,1.6), SEEDS (0), EPOCHS (1) change
# the grid, JOBS (1) runs that many DLRM processes at once;
# ORACLE=synth.json adds a synthetic dataset's oracle AUC; DLRM_DIR as for the
# quickstart. An interrupted sweep resumes: finished runs are kept in the CSV.
set -euo pipefail
"$(dirname "$0")/install.sh" "dlrm,plot"
DATA_SET=${DATA_SET:-kaggle}
RAW=${1:?usage: [DATA_SET=kaggle|avazu] sweep.sh RAW_FILE [results.csv] [DLRM args...]}
OUT=${2:-results/$DATA_SET.csv}
shift $(( $# >= 2 ? 2 : 1 ))
mkdir -p "$(dirname "$OUT")"
python -m dlrm_mlet sweep --data-set "$DATA_SET" --raw-data-file "$RAW" --out "$OUT" \
  --d "${DS:-4,8,16,32,64}" --k "${KS:-64,128,256,512}" --seeds "${SEEDS:-0}" --epochs "${EPOCHS:-1}" \
  ${LRS:+--lrs "$LRS"} --jobs "${JOBS:-1}" \
  -- "$@"
python -m dlrm_mlet report "$OUT" --force --markdown "${OUT%.csv}.md" ${ORACLE:+--oracle "$ORACLE"}
