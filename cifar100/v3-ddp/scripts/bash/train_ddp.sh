#!/usr/bin/env bash
# The seed's training command on NPROC GPUs of this machine (default: all visible); extra flags are passed on.
#   NPROC=2 bash scripts/bash/train_ddp.sh --num_epochs 30 --data-dir DIR --out DIR
set -euo pipefail
NPROC="${NPROC:-$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')}"
torchrun --standalone --nproc_per_node="$NPROC" "$(dirname "$0")/../../main.py" \
    --dataset cifar100 --device cuda --batch_size 512 --num_epochs 120 "$@"
