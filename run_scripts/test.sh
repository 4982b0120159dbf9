#!/usr/bin/env bash
# The one test command: installs what the tests need into the current Python,
# then runs pytest. Extra arguments go to pytest (e.g. -k fold, -x).
# DLRM integration tests need a facebookresearch/dlrm checkout at the pinned
# commit in $DLRM_DIR or ${XDG_CACHE_HOME:-~/.cache}/dlrm-mlet/dlrm; without
# one they are skipped with a message saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
pip() { python -m pip install --quiet --disable-pip-version-check "$@"; }
# Pinned: an unpinned torch pulls a multi-GB CUDA build (the pin lives in install.sh).
run_scripts/install.sh --pin-torch "test,plot"
# TorchRec on CPU: fbgemm's CPU build, then torchrec without its CUDA fbgemm-gpu dependency.
pip "fbgemm-gpu-cpu==1.8.0" -e ".[torchrec]"
pip --no-deps "torchrec==1.8.0"
# numpy 1, beside (not instead of) the installed numpy: the reference for the
# Criteo preprocessing test, which must give the tables numpy 1 DLRM gives.
NUMPY1="${XDG_CACHE_HOME:-$HOME/.cache}/dlrm-mlet/numpy1"
[ -d "$NUMPY1/numpy" ] || pip --target "$NUMPY1" "numpy==1.26.4" || echo "numpy 1 reference not installed; that test will skip"
export DLRM_MLET_NUMPY1="$NUMPY1"
exec python -m pytest -ra "$@"
