#!/usr/bin/env bash
# Each network alone on the GPU for 3 epochs with the picked recipe (stem without max-pool): the seconds per
# epoch behind "a 100-epoch run takes N minutes on one H100".
set -u
out=$(realpath -m "$1"); data="--data-dir $(pwd)/.gpu/imagenette --train-fraction 1.0"
for v in v7a v7b v7c; do for stem in no-maxpool; do
  (cd imagenette/v7/$v && python train.py $data --epochs 3 --$stem --out "$out/$v-$stem" > "$out/$v-$stem.log" 2>&1)
done; done
