#!/usr/bin/env bash
# The main job, end to end: plain DLRM at d and at 4d against MLET DLRM at d, on
# the embedded default dataset; the MLET model is saved folded and loaded by
# *unpatched* DLRM, which must print the AUC the MLET run printed.
#
#   DLRM_DIR=/path/to/dlrm run_scripts/quickstart.sh
#
# It first installs what it needs into the current Python (run_scripts/install.sh:
# dlrm-mlet and DLRM's run-time needs; torch pinned when missing), so nothing has
# to be typed before it on a fresh machine.
# Settings (environment): DLRM_DIR (default ${XDG_CACHE_HOME:-~/.cache}/dlrm-mlet/dlrm,
# cloned at the pinned commit if absent and the internet is reachable), PYTHON (python),
# WORK (./quickstart-run), ROWS (200000), D (4), K (256), SEED (0), EPOCHS (1).
# The user's checkout is never written to: patched and unpatched copies are made under WORK.
set -euo pipefail

PINNED=090956ee2319ddd349a42232958aefccfe3f7b0a
HERE=$(cd "$(dirname "$0")" && pwd)
DLRM_DIR=${DLRM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dlrm-mlet/dlrm}
WORK=${WORK:-$PWD/quickstart-run}
ROWS=${ROWS:-200000}
D=${D:-4}
K=${K:-256}
SEED=${SEED:-0}
EPOCHS=${EPOCHS:-1}
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
  $PY -m dlrm_mlet synth "$DATA" --rows "$ROWS" --seed "$SEED"
fi

# DLRM's reference Kaggle command (bench/dlrm_s_criteo_kaggle.sh), bottom MLP ending in d.
common=(
  --arch-mlp-top=512-256-1 --data-generation=dataset --data-set=kaggle
  --raw-data-file="$DATA/train.txt" --processed-data-file="$DATA/kaggleAdDisplayChallenge_processed.npz"
  --loss-function=bce --round-targets=True --learning-rate=0.1 --mini-batch-size=128
  --print-freq=256 --print-time --test-freq=1000000000 --test-mini-batch-size=16384
  --mlperf-logging --nepochs="$EPOCHS" --numpy-rand-seed="$SEED"
)
arch() { echo "--arch-sparse-feature-size=$1 --arch-mlp-bot=13-512-256-64-$1"; }
# Patched runs also log effective rank etc. to TensorBoard (tb/), the baselines too.
patched() { $PY "$WORK/dlrm-patched/dlrm_s_pytorch.py" "$@" --mlet-log-freq=128; }

cd "$WORK"
for d in "$D" "$D4"; do
  echo "== baseline: d=$d"
  # shellcheck disable=SC2046
  patched $(arch "$d") "${common[@]}" --save-model="$WORK/baseline_d$d.pt" \
    --tensor-board-filename="tb/baseline_d$d" | tee "$WORK/baseline_d$d.log"
done
echo "== MLET: d=$D, k=$K"
# shellcheck disable=SC2046
patched $(arch "$D") "${common[@]}" --mlet-hidden-dim="$K" --save-model="$WORK/mlet_d${D}_k$K.pt" \
  --tensor-board-filename="tb/mlet_d${D}_k$K" | tee "$WORK/mlet.log"
echo "== unpatched DLRM (a copy of $DLRM_DIR) loads the folded MLET model"
# shellcheck disable=SC2046
$PY "$WORK/dlrm-stock/dlrm_s_pytorch.py" $(arch "$D") "${common[@]}" \
  --load-model="$WORK/mlet_d${D}_k$K.pt" --inference-only | tee "$WORK/stock_load.log"

$PY - "$WORK" "$D" "$D4" "$K" <<'PYTHON'
import json, re, sys
from dlrm_mlet.files import load_checkpoint
from dlrm_mlet.core.folding import mlet_table_bytes

work, d, d4, k = sys.argv[1:]

def last(log, pattern):
    found = re.findall(pattern, open(f"{work}/{log}").read())
    return found[-1] if found else "n/a"

def metrics(log):
    return last(log, r"(?<!best )auc (\d\.\d+),"), last(log, r"(?<!best )accuracy (\d+\.\d+) %")

def table_bytes(path):
    state = load_checkpoint(path)["state_dict"]
    return sum(v.numel() * v.element_size() for key, v in state.items() if key.startswith("emb_l."))

mlet = f"{work}/mlet_d{d}_k{k}.pt"
training, _ = mlet_table_bytes(load_checkpoint(mlet + ".mlet")["state_dict"])
rows = [(f"baseline d={w}", *metrics(f"baseline_d{w}.log"), table_bytes(f"{work}/baseline_d{w}.pt"),
         table_bytes(f"{work}/baseline_d{w}.pt")) for w in (d, d4)]
rows += [(f"MLET d={d} k={k}", *metrics("mlet.log"), training, table_bytes(mlet)),
         ("MLET, folded, in stock DLRM", *metrics("stock_load.log"), None, table_bytes(mlet))]
oracle = json.load(open(f"{work}/data/synth.json"))
print(f"\n{'model':<30} {'test AUC':>9} {'accuracy %':>11} {'train emb MiB':>14} {'infer emb MiB':>14}")
for name, auc, acc, train, infer in rows:
    train = "" if train is None else f"{train / 2**20:.2f}"
    print(f"{name:<30} {auc:>9} {acc:>11} {train:>14} {infer / 2**20:>14.2f}")
print(f"{'oracle (true probabilities)':<30} {oracle['oracle_auc']:>9.4f}")
if rows[2][1:3] != rows[3][1:3] or "n/a" in rows[2][1:3]:
    sys.exit(f"error: unpatched DLRM scored the folded model {rows[3][1:3]}, the MLET run {rows[2][1:3]}")
print(f"\nTensorBoard: tensorboard --logdir {work}/tb   Checkpoint: dlrm-mlet inspect {mlet}")
PYTHON
