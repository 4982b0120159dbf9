#!/usr/bin/env bash
# The paper's Criteo-Kaggle experiment (see sweep.sh for the settings):
#   run_scripts/criteo_kaggle.sh /path/to/train.txt [results.csv] [DLRM args...]
DATA_SET=kaggle exec "$(dirname "$0")/sweep.sh" "$@"
