#!/usr/bin/env bash
# The main job, end to end: plain DLRM at d and at 4d against MLET DLRM at d, on
# the embedded default dataset, each arm at its own learning rate chosen on the
# validation split (a small grid per arm: MLET's best SGD lr is lower, since the
# projection multiplies the table's step). The MLET model is then trained once more
# at its chosen lr and saved folded, and *unpatched* DLRM loads it and must print
# the AUC the MLET run printed.
#
#   DLRM_DIR=/path/to/dlrm run_scripts/quickstart.sh
#
# It first installs what it needs into the current Python (run_scripts/install.sh:
# dlrm-mlet and DLRM's run-time needs; torch pinned when missing), so nothing has
# to be typed before it on a fresh machine.
# Settings (environment): DLRM_DIR (default ${XDG_CACHE_HOME:-~/.cache}/dlrm-mlet/dlrm,
# cloned at the pinned commit if absent and the internet is reachable), PYTHON (python),
# WORK (./quickstart-run), ROWS (200000), D (4), K (64), SEED (0), EPOCHS (1),
# BASELINE_LRS (0.8,1.6,3.2), MLET_LRS (0.2,0.4,0.8): grids around each arm's optimum on this data
# in the tuned map (docs/results/map.md, regime criteo-like), where k=64 was MLET's better k at d=4.
# The data: tables at 1/100 of Criteo-Kaggle's sizes with its skew, so that a few
# percent of training lookups land on rows seen at most 10 times, as in full-size
# Criteo-Kaggle (docs/results/criteo_regime.md); dlrm-mlet data prints that share.
# The user's checkout is never written to: patched and unpatched copies are made under WORK.
set -euo pipefail

PINNED=090956ee2319ddd349a42232958aefccfe3f7b0a
HERE=$(cd "$(dirname "$0")" && pwd)
DLRM_DIR=${DLRM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dlrm-mlet/dlrm}
WORK=${WORK:-$PWD/quickstart-run}
ROWS=${ROWS:-200000}
D=${D:-4}
K=${K:-64}
SEED=${SEED:-0}
EPOCHS=${EPOCHS:-1}
BASELINE_LRS=${BASELINE_LRS:-0.8,1.6,3.2}
MLET_LRS=${MLET_LRS:-0.2,0.4,0.8}
PY=${PYTHON:-python}
D4=$((4 * D))

if [ ! -f "$DLRM_DIR/dlrm_s_pytorch.py" ]; then
  if [ -e "$DLRM_DIR" ] && [ -n "$(ls -A "$DLRM_DIR" 2>/dev/null)" ]; then
    echo "error: $DLRM_DIR is not a DLRM checkout (no dlrm_s_pytorch.py); set DLRM_DIR to a checkout of facebookresearch/dlrm at $PINNED" >&2
    exit 2
  fi
  echo "== no DLRM checkout at $DLRM_DIR: cloning facebookresearch/dlrm at $PINNED"
  if ! { GIT_TERMINAL_PROMPT=0 timeout 300 git clone -q https://github.com/facebookresearch/dlrm "$DLRM_DIR" 2>/dev/null &&
         git -C "$DLRM_DIR" checkout -q "$PINNED" 2>/dev/null; }; then
    rm -rf "$DLRM_DIR"
    echo "error: no DLRM at $DLRM_DIR and it could not be cloned; set DLRM_DIR to a checkout of facebookresearch/dlrm at $PINNED (git clone https://github.com/facebookresearch/dlrm && git -C dlrm checkout $PINNED)" >&2
    exit 2
  fi
fi
echo "== installing dlrm-mlet and DLRM's run-time needs into $(command -v "$PY" || echo "$PY")"
PYTHON=$PY "$HERE/install.sh" dlrm

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

# Working copies: DLRM writes into its own folder (dlrm.log with --mlperf-logging), so even
# the unpatched runs use a copy and your checkout stays exactly as it is.
echo "== working copies: $WORK/dlrm-patched (patched) and $WORK/dlrm-stock (unpatched)"
rm -rf "$WORK/dlrm-patched" "$WORK/dlrm-stock"
cp -r "$DLRM_DIR" "$WORK/dlrm-patched"
cp -r "$DLRM_DIR" "$WORK/dlrm-stock"
$PY -m dlrm_mlet patch "$WORK/dlrm-patched"

DATA=$WORK/data
if [ ! -f "$DATA/train.txt" ]; then
  echo "== embedded default dataset: $ROWS rows"
  $PY -m dlrm_mlet synth "$DATA" --rows "$ROWS" --seed "$SEED" --scale 0.01 --rank 32
fi

# Each arm over its own small lr grid; runs two at a time, and a stopped sweep resumes.
sweep() { $PY -m dlrm_mlet sweep --raw-data-file "$DATA/train.txt" --out "$WORK/tuned.csv" --work "$WORK/sweep" \
            --dlrm-dir "$DLRM_DIR" --seeds "$SEED" --epochs "$EPOCHS" --jobs 2 --quiet "$@"; }
echo "== baselines d=$D and d=$D4, lr $BASELINE_LRS"
sweep --d "$D,$D4" --k 0 --lrs "$BASELINE_LRS"
echo "== MLET d=$D k=$K, lr $MLET_LRS"
sweep --d "$D" --k "$K" --no-baseline --lrs "$MLET_LRS"
$PY -m dlrm_mlet data "$DATA/kaggleAdDisplayChallenge_processed.npz" --quiet | grep "^rare-lookup share"
LR=$($PY - "$WORK/tuned.csv" "$D" "$K" <<'PYTHON'
import sys
from dlrm_mlet.tools.report import summarize
from dlrm_mlet.tools.results_csv import read_rows

arm = next(a for a in summarize(read_rows(sys.argv[1])) if a["d"] == int(sys.argv[2]) and a["k"] == int(sys.argv[3]))
if arm["best"] is None:
    sys.exit(f"error: every learning rate of MLET d={sys.argv[2]} k={sys.argv[3]} diverged; try lower MLET_LRS")
print(arm["best"])
PYTHON
)

# DLRM's reference Kaggle command (bench/dlrm_s_criteo_kaggle.sh), bottom MLP ending in d.
common=(
  --arch-mlp-top=512-256-1 --data-generation=dataset --data-set=kaggle
  --raw-data-file="$DATA/train.txt" --processed-data-file="$DATA/kaggleAdDisplayChallenge_processed.npz"
  --loss-function=bce --round-targets=True --mini-batch-size=128
  --print-freq=256 --print-time --test-freq=1000000000 --test-mini-batch-size=16384
  --mlperf-logging --nepochs="$EPOCHS" --numpy-rand-seed="$SEED"
)
arch() { echo "--arch-sparse-feature-size=$1 --arch-mlp-bot=13-512-256-64-$1"; }

# A DLRM run, its output (DLRM's and MLPerf's log lines) in a log file; its last test line shown, or
# the log's tail when it fails.
logged() {
  local log=$1; shift
  if ! "$@" > "$log" 2>&1; then tail -30 "$log"; echo "error: the run failed; its log: $log" >&2; exit 1; fi
  grep -E "^recall .* auc " "$log" | tail -1 | sed -E 's/.* (auc [0-9.]+), best auc [0-9.]+, (accuracy [0-9.]+ %).*/   \1, \2/'
}

cd "$WORK"
echo "== MLET d=$D k=$K at its chosen lr $LR, saved folded (patched DLRM, TensorBoard logs in tb/; log: mlet.log)"
# shellcheck disable=SC2046
logged "$WORK/mlet.log" $PY "$WORK/dlrm-patched/dlrm_s_pytorch.py" $(arch "$D") "${common[@]}" --learning-rate="$LR" \
  --mlet-hidden-dim="$K" --mlet-log-freq=128 --save-model="$WORK/mlet_d${D}_k$K.pt" \
  --tensor-board-filename="tb/mlet_d${D}_k$K"
echo "== unpatched DLRM (a copy of $DLRM_DIR) loads the folded MLET model (log: stock_load.log)"
# shellcheck disable=SC2046
logged "$WORK/stock_load.log" $PY "$WORK/dlrm-stock/dlrm_s_pytorch.py" $(arch "$D") "${common[@]}" \
  --learning-rate="$LR" --load-model="$WORK/mlet_d${D}_k$K.pt" --inference-only

$PY - "$WORK" "$D" "$K" <<'PYTHON'
import json, re, sys
from dlrm_mlet.tools.report import summarize, tuned
from dlrm_mlet.tools.results_csv import read_rows

work, d, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def last(log, pattern):
    found = re.findall(pattern, open(f"{work}/{log}").read())
    return float(found[-1]) if found else None

def fmt(x, spec=".4f"):
    return "n/a" if x is None else format(x, spec)

print(f"\n{'model':<32} {'lr':>6} {'val AUC':>8} {'test AUC':>9} {'train emb MiB':>14} {'infer emb MiB':>14}")
for arm in summarize(read_rows(f"{work}/tuned.csv")):
    s, name = tuned(arm), (f"MLET d={arm['d']} k={arm['k']}" if arm["k"] else f"baseline d={arm['d']}")
    print(f"{name:<32} {fmt(arm['best'], 'g'):>6} {fmt(s and s['val_auc']):>8} {fmt(s and s['auc']):>9} "
          f"{arm['training_bytes'] / 2**20:>14.2f} {arm['inference_bytes'] / 2**20:>14.2f}")
saved = last("mlet.log", r"(?<!best )auc (\d\.\d+),")
stock = last("stock_load.log", r"(?<!best )auc (\d\.\d+),")
print(f"{'MLET, saved folded (its run)':<32} {'':>6} {'':>8} {fmt(saved):>9}")
print(f"{'MLET, folded, in stock DLRM':<32} {'':>6} {'':>8} {fmt(stock):>9}")
oracle = json.load(open(f"{work}/data/synth.json"))
print(f"{'oracle (true probabilities)':<32} {'':>6} {'':>8} {oracle['oracle_auc']:>9.4f}")
print("\nEach arm at its lr chosen on validation, one seed; the tuned map with error bars: docs/results/map.md")
if saved is None or saved != stock:
    sys.exit(f"error: unpatched DLRM scored the folded model {fmt(stock)}, the MLET run {fmt(saved)}")
print(f"\nTensorBoard: tensorboard --logdir {work}   Checkpoint: dlrm-mlet inspect {work}/mlet_d{d}_k{k}.pt")
PYTHON
