#!/usr/bin/env bash
# imagenette v7 on the GPU machine: every job of JOBFILE at once, on one GPU, each resumable.
# Usage: run_v7.sh OUT SECONDS JOBFILE
#   JOBFILE: one job per line, "NAME VERSION FLAGS...", e.g. "base-r18-s0 v7a --seed 0".
# A run not finished in SECONDS gets Ctrl-C (SIGINT: it keeps its history and resume.pth)
# and goes on from its last finished epoch at the next call (--resume); completed runs are
# skipped. results.json records resumed_after_epoch.
set -u
out=$(realpath -m "$1"); limit=$2; jobs=$3
data="--data-dir $(pwd)/.gpu/imagenette --train-fraction 1.0"
while read -r name version flags; do
  case "$name" in ""|\#*) continue;; esac
  dir=$out/$name; mkdir -p "$dir"
  if [ -f "$dir/results.json" ] && grep -q '"status": "completed"' "$dir/results.json"; then continue; fi
  (cd "imagenette/v7/$version" && OMP_NUM_THREADS=1 timeout -s INT "$limit" python train.py $data $flags \
     --out "$dir" --resume >> "$out/$name.log" 2>&1) &
done < "$jobs"
wait
