#!/usr/bin/env bash
# Analyse a run's training diagnostics (seed 004). Reads $DIAGNOSTICS_DIR/train_diagnostics.jsonl,
# else results/diagnostics/ of this version (main.py's default). Extra flags go to the analyzer,
# e.g. --file OUT/diagnostics/val_diagnostics.jsonl or --plot curves.png. Exit code 1: issue diagnosed.
set -euo pipefail
VERSION_DIR="$(cd "$(dirname "$0")/../.." && pwd)"
python "$VERSION_DIR/scripts/analyze_diagnostics.py" --file "${DIAGNOSTICS_DIR:-$VERSION_DIR/results/diagnostics}/train_diagnostics.jsonl" "$@"
