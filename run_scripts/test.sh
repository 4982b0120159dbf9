#!/usr/bin/env bash
# The one test command: installs what the tests need into the current Python,
# then runs pytest; then the TorchRec tests again with the other TorchRec release
# the project supports, in a virtual environment of their own. Extra arguments go
# to both pytest runs (e.g. -k fold, -x).
# DLRM integration tests need a facebookresearch/dlrm checkout at the pinned
# commit in $DLRM_DIR or ${XDG_CACHE_HOME:-~/.cache}/dlrm-mlet/dlrm; without
# one they are skipped with a message saying so.
# Settings: TORCHREC_19 (1; 0 skips the second TorchRec pass), TORCHREC_19_VENV
# (${XDG_CACHE_HOME:-~/.cache}/dlrm-mlet/venv-torchrec-1.9, kept between runs).
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
status=0
python -m pytest -ra "$@" || status=$?
echo "== type check (mypy, configured in pyproject.toml)"
python -m mypy || status=$?

# TorchRec 1.9 needs torch 2.14 (fbgemm-gpu-cpu 1.9.0 does not load with torch 2.13): a CUDA
# build of about 5.5 GB, installed once into its own venv; CPU only here as everywhere.
if [ "${TORCHREC_19:-1}" = 1 ]; then
  VENV19=${TORCHREC_19_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/dlrm-mlet/venv-torchrec-1.9}
  if [ ! -x "$VENV19/bin/python" ] || ! "$VENV19/bin/python" -c "import torchrec, torch" 2>/dev/null; then
    echo "== TorchRec 1.9: a venv with torch 2.14.1, fbgemm-gpu-cpu 1.9.0, torchrec 1.9.2 at $VENV19"
    rm -rf "$VENV19"
    python -m venv "$VENV19"
    "$VENV19/bin/python" -m pip install --quiet --disable-pip-version-check torch==2.14.1 "fbgemm-gpu-cpu==1.9.0"
    "$VENV19/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[test,torchrec]"
    "$VENV19/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "torchrec==1.9.2"
  else
    "$VENV19/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .
  fi
  echo "== the TorchRec tests with torch $("$VENV19/bin/python" -c 'import torch; print(torch.__version__)'), torchrec $("$VENV19/bin/python" -c 'import torchrec; print(torchrec.__version__)')"
  "$VENV19/bin/python" -m pytest -ra tests/test_torchrec.py tests/test_torchrec_sharding.py tests/test_torchrec_memory.py tests/test_torchrec_quantize.py \
    tests/test_convert.py "$@" || status=$?
fi
exit $status
