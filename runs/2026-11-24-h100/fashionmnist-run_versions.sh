#!/usr/bin/env bash
# Usage: bash .gpu/run_versions.sh "v1 v2 v3 v4" "0 1 2" [extra train.py flags]
# Full default runs of fashionmnist versions on the real data, all sharing one GPU;
# results.json and history.jsonl of every run packed into $OUT/runs.tar.gz.
set -u
ROOT=$(pwd); DATA=$ROOT/.gpu/fmnist; R=/tmp/runs; mkdir -p $R
VERSIONS=$1; SEEDS=$2; shift 2
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $R/device.txt
python -c "import torch; print(torch.__version__)" >> $R/device.txt
start=$(date +%s)
for v in $VERSIONS; do
  for s in $SEEDS; do
    ( cd fashionmnist/$v && OMP_NUM_THREADS=1 python train.py --data-dir $DATA --seed $s --out $R/$v-seed$s "$@" \
        > $R/$v-seed$s.log 2>&1; echo "$v seed $s exit $?" >> $R/exits.txt ) &
  done
done
wait
echo "parallel runs: $(( $(date +%s) - start )) s" >> $R/exits.txt
cd $R && for f in */; do tail -c 3000 ${f%/}.log > ${f%/}.logtail; done
tar czf $OUT/runs.tar.gz --exclude='*.pth' --exclude='*.png' --exclude='*.log' .
cp $R/exits.txt $OUT/
