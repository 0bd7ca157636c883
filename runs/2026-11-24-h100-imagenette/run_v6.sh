#!/usr/bin/env bash
# imagenette v6 A/B on the GPU machine: v6a and v6b, seeds given, in parallel, each resumable.
# Usage: run_v6.sh OUT "SEEDS" SECONDS  (a run not finished in SECONDS is interrupted and goes
# on from its resume.pth at the next call; results.json then records resumed_after_epoch)
set -u
out=$1; seeds=$2; limit=$3
data="--data-dir $(pwd)/.gpu/imagenette --train-fraction 1.0"
for side in v6a v6b; do
  for s in $seeds; do
    dir=$out/$side/seed$s; mkdir -p $dir
    if [ -f $dir/results.json ] && grep -q '"status": "completed"' $dir/results.json; then continue; fi
    (cd imagenette/v6/$side && timeout -s INT $limit python train.py $data --seed $s --out $dir --resume \
       >> $out/$side-seed$s.log 2>&1) &
  done
done
wait
