#!/usr/bin/env bash
# The paper's Avazu experiment (see sweep.sh for the settings):
#   run_scripts/avazu.sh /path/to/train.csv [results.csv] [DLRM args...]
DATA_SET=avazu exec "$(dirname "$0")/sweep.sh" "$@"
