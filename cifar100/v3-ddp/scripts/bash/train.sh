#!/usr/bin/env bash
# The seed's training command; extra flags are passed on (e.g. --num_epochs 30 --data-dir DIR --out DIR).
set -euo pipefail
python "$(dirname "$0")/../../main.py" --dataset cifar100 --device cuda --batch_size 512 --num_epochs 120 "$@"
