#!/usr/bin/env bash
# Full default runs of fashionmnist v9-step1 and v10-step2, seeds 42 (default), 0, 1, 2,
# eight runs sharing one GPU; then the benchmark alone. Results packed into $OUT.
set -u
ROOT=$(pwd); DATA=$ROOT/.gpu/fmnist; R=/tmp/runs; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/device.txt
python -c "import torch; print(torch.__version__)" >> $OUT/device.txt
start=$(date +%s)
for v in v9-step1 v10-step2; do
  for s in 42 0 1 2; do
    ( cd fashionmnist/$v && OMP_NUM_THREADS=2 python train.py --data-dir $DATA --seed $s --out $R/$v-seed$s \
        > $R/$v-seed$s.log 2>&1; echo "$v seed $s exit $?" >> $R/exits.txt ) &
  done
done
wait
echo "parallel runs: $(( $(date +%s) - start )) s" >> $R/exits.txt
# the seed-42 v10 run alone, for a timing that is not shared with seven others
( cd fashionmnist/v10-step2 && python train.py --data-dir $DATA --out $R/v10-step2-seed42-alone > $R/v10-step2-seed42-alone.log 2>&1; echo "v10 alone exit $?" >> $R/exits.txt )
python fashionmnist/benchmark.py --devices cuda --data-dir $DATA --out $R/bench > $R/bench.log 2>&1; echo "bench exit $?" >> $R/exits.txt
cd $R && tar czf $OUT/runs.tar.gz --exclude='*.pth' --exclude='*.png' .
cp $R/exits.txt $OUT/
