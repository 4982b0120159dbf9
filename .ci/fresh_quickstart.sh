#!/usr/bin/env bash
# A fresh machine, as the README promises it: a new virtual environment with only
# Python, a clean clone of this repository, and run_scripts/quickstart.sh alone.
# A missing install step fails here even when this machine has everything installed.
# Skipped (with a line saying so) when no DLRM checkout is on this machine: the
# quickstart would try to clone it, and CI has no internet beyond package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
DLRM_DIR=${DLRM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dlrm-mlet/dlrm}
if [ ! -f "$DLRM_DIR/dlrm_s_pytorch.py" ]; then
  echo "fresh-machine quickstart skipped: no DLRM checkout at $DLRM_DIR"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python -m venv "$tmp/venv"
git clone -q "$PWD" "$tmp/clone"
echo "== fresh venv $tmp/venv, clean clone $tmp/clone: run_scripts/quickstart.sh with ROWS=20000"
touch "$tmp/started"
(cd "$tmp/clone" && env -u PYTHONPATH -u VIRTUAL_ENV PATH="$tmp/venv/bin:$PATH" DLRM_DIR="$DLRM_DIR" \
  ROWS=20000 WORK="$tmp/run" run_scripts/quickstart.sh > "$tmp/quickstart.log" 2>&1) || {
  tail -40 "$tmp/quickstart.log"; echo "fresh-machine quickstart FAILED"; exit 1; }
changed=$(find "$DLRM_DIR" -newer "$tmp/started" | head -3)
if [ -n "$changed" ]; then echo "fresh-machine quickstart FAILED: it wrote into DLRM_DIR: $changed"; exit 1; fi
sed -n '/^model /,/^oracle/p' "$tmp/quickstart.log"
echo "fresh-machine quickstart passed"
