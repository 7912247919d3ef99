#!/usr/bin/env bash
# The proposal run: scripts/train_mini.sh proposal (its header says how).
exec "$(dirname "$0")/train_mini.sh" proposal "$@"
