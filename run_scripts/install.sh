#!/usr/bin/env bash
# Installs what the run scripts need into the current Python ($PYTHON, else python),
# so that each of them works on a fresh machine with nothing typed before it.
#
#   run_scripts/install.sh [--pin-torch] EXTRAS
#
# EXTRAS is the pip extras list of this project, e.g. "dlrm" or "test,plot".
# torch: the pin below is installed when torch is missing (an unpinned torch pulls a
# multi-GB CUDA build). An installed torch >= 2.5 is kept, so a GPU build you chose
# stays; --pin-torch (the tests) installs the pin whatever is there.
# Exit status 2 with one line on stderr when something cannot be installed.
set -euo pipefail
TORCH_PIN="torch==2.13.0"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}

pin=0
if [ "${1:-}" = "--pin-torch" ]; then pin=1; shift; fi
extras=${1:?usage: install.sh [--pin-torch] EXTRAS}

fail() { echo "error: $1" >&2; exit 2; }
command -v "$PY" >/dev/null 2>&1 || fail "no '$PY' on PATH; set PYTHON to a Python 3.9+ interpreter"
"$PY" -m pip --version >/dev/null 2>&1 ||
  fail "$PY has no pip; install it ($PY -m ensurepip) or use a virtual environment ($PY -m venv ENV)"
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check "$@"; }

have_torch() {
  "$PY" - <<'PYTHON' 2>/dev/null
import torch, sys
major, minor = (int(part) for part in torch.__version__.split(".")[:2])
sys.exit(0 if (major, minor) >= (2, 5) else 1)
PYTHON
}
if [ "$pin" = 1 ] || ! have_torch; then
  pip_install "$TORCH_PIN" || fail "could not install $TORCH_PIN into $PY (see pip's message above)"
fi
pip_install -e "$ROOT[$extras]" || fail "could not install dlrm-mlet[$extras] into $PY (see pip's message above)"
