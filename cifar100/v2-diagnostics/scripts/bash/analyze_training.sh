#!/usr/bin/env bash
# Analyse a run's training diagnostics (seed 004). Reads the run given first (a run folder, outputs/,
# outputs/latest or a JSONL file), else $DIAGNOSTICS_DIR/train_diagnostics.jsonl, else this version's
# newest run (outputs/latest). Extra flags go to the analyzer, e.g. --file OUT/diagnostics/val_diagnostics.jsonl
# or --plot curves.png. Exit code 1: issue diagnosed.
set -euo pipefail
VERSION_DIR="$(cd "$(dirname "$0")/../.." && pwd)"
RUN=()
if [[ $# -gt 0 && $1 != -* ]]; then
    RUN=("$1")
    shift
elif [[ -n ${DIAGNOSTICS_DIR:-} && " $* " != *" --file "* && " $* " != *" --file="* ]]; then
    RUN=("$DIAGNOSTICS_DIR/train_diagnostics.jsonl")
fi
# ${RUN[@]+...}: an empty array under set -u stops bash 3.2 (macOS); the analyzer's default is outputs/latest
python "$VERSION_DIR/scripts/analyze_diagnostics.py" ${RUN[@]+"${RUN[@]}"} "$@"
