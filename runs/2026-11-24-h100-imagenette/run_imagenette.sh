#!/usr/bin/env bash
# Full imagenette runs on the GPU machine, on the 40% subset exported by
#   python -m shared.imagenette export-subset .gpu/imagenette --data-dir <imagenette2-160>
# (hence --train-fraction 1.0: the same 3,785 images, fingerprint 933b270dbaae71b6).
# Usage: run_imagenette.sh OUT "VERSIONS" "SEEDS" [parallel]
set -u
out=$1; versions=$2; seeds=$3; mode=${4:-serial}
data="--data-dir $(pwd)/.gpu/imagenette --train-fraction 1.0"
for v in $versions; do
  for s in $seeds; do
    cmd="cd imagenette/$v && python train.py $data --seed $s --out $out/$v/seed$s > $out/$v-seed$s.log 2>&1"
    mkdir -p "$out/$v"
    if [ "$mode" = parallel ]; then (eval "$cmd") & else (eval "$cmd"); fi
  done
done
wait
