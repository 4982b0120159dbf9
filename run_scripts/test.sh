#!/usr/bin/env bash
# The one test command: installs what the tests need into the current Python,
# then runs pytest. Extra arguments go to pytest (e.g. -k fold, -x).
# DLRM integration tests need a facebookresearch/dlrm checkout at the pinned
# commit in $DLRM_DIR or ${XDG_CACHE_HOME:-~/.cache}/dlrm-mlet/dlrm; without
# one they are skipped with a message saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
# Pinned: an unpinned torch pulls a multi-GB CUDA build.
python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python -m pip install --quiet --disable-pip-version-check -e ".[test]"
exec python -m pytest -ra "$@"
