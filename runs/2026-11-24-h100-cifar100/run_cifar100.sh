#!/bin/bash
# Device-side helper for the full-data CIFAR-100 runs (issue 13). Not part of the repository.
# stage N      : keep the carried part N outside the repo (the tree is re-synced between calls)
# launch       : assemble + verify the archive, unpack, decode once, start v2 (120 ep) and v1 (30 ep)
# wait         : wait (up to ~560 s) for the runs, then pack the records into $OUT
set -u
STAGE=/tmp/stage; DATA=/tmp/data; RUNS=/tmp/runs
export CIFAR100_CACHE_DIR=/tmp/c100cache PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
case "$1" in
stage)
  mkdir -p $STAGE && cp .gpu/c100/part0$2 $STAGE/ && ls -la $STAGE && df -h /tmp | tail -1 ;;
launch)
  cp .gpu/c100/part02 $STAGE/ && cat $STAGE/part00 $STAGE/part01 $STAGE/part02 > /tmp/c100.tar.gz
  echo "ae2c7fd3981ab48bc905c1780e168485dd0f25e1bbc86bf8c0f6bf4497af9a20  /tmp/c100.tar.gz" | sha256sum -c || exit 1
  mkdir -p $DATA $RUNS && tar xzf /tmp/c100.tar.gz -C $DATA && du -sb $DATA/cifar100
  cd cifar100/v2-diagnostics
  time python -c "from scripts.data import load_cifar100 as l; d=l('$DATA/cifar100'); print(d.train_images.shape, d.test_images.shape, d.source)"
  setsid nohup python main.py --dataset cifar100 --device cuda --batch_size 512 --num_epochs 120 \
      --data-dir $DATA/cifar100 --out $RUNS/v2_full > $RUNS/v2_full.log 2>&1 < /dev/null &
  cd ../v1-baseline
  setsid nohup python main.py --dataset cifar100 --device cuda --batch_size 512 --num_epochs 30 --num_workers 4 \
      --data-dir $DATA/cifar100 --out $RUNS/v1_e30 > $RUNS/v1_e30.log 2>&1 < /dev/null &
  sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv; grep -a "epoch " $RUNS/*.log | tail -4
  exec bash "$0" wait 400 ;;
wait)
  end=$((SECONDS + ${2:-540}))
  while [ $SECONDS -lt $end ] && pgrep -f "main.py --dataset" > /dev/null; do sleep 15; done
  for r in v2_full v1_e30; do echo "== $r"; grep -a "\] epoch \|best val\|error\|Error" $RUNS/$r.log | tail -3; done
  cd $RUNS && tar czf $OUT/records.tgz --exclude='*.pth' --exclude='*.partial' . && ls -la $OUT ;;
bug2)
  # v1 with only its clipping bug fixed (validation still augmented), next to v2 with v1's scheduler
  cp .gpu/c100/part02 $STAGE/ && cat $STAGE/part00 $STAGE/part01 $STAGE/part02 > /tmp/c100.tar.gz
  echo "ae2c7fd3981ab48bc905c1780e168485dd0f25e1bbc86bf8c0f6bf4497af9a20  /tmp/c100.tar.gz" | sha256sum -c || exit 1
  mkdir -p $DATA $RUNS && tar xzf /tmp/c100.tar.gz -C $DATA
  rm -rf cifar100/v1-clipfix && cp -r cifar100/v1-baseline cifar100/v1-clipfix
  sed -i 's/^        grad_norms.append(nn.utils.clip_grad_norm_/        scaler.unscale_(optimizer)\n&/' cifar100/v1-clipfix/scripts/train_utils.py
  diff -u cifar100/v1-baseline/scripts/train_utils.py cifar100/v1-clipfix/scripts/train_utils.py | tee $RUNS/v1_clipfix.diff
  (cd cifar100/v1-clipfix && python -c "from scripts.data import load_cifar100 as l; l('$DATA/cifar100')")
  (cd cifar100/v1-clipfix && python main.py --dataset cifar100 --device cuda --batch_size 512 --num_epochs 30 \
      --num_workers 8 --data-dir $DATA/cifar100 --out $RUNS/v1_clipfix_e30 > $RUNS/v1_clipfix_e30.log 2>&1) &
  (cd cifar100/v2-diagnostics && python main.py --dataset cifar100 --device cuda --batch_size 512 --num_epochs 30 \
      --scheduler plateau --num_workers 8 --data-dir $DATA/cifar100 --out $RUNS/v2_plateau_e30 > $RUNS/v2_plateau_e30.log 2>&1) &
  wait
  for r in v1_clipfix_e30 v2_plateau_e30; do grep -a "best val\|rror" $RUNS/$r.log | tail -2; done
  cd $RUNS && tar czf $OUT/records2.tgz --exclude='*.pth' --exclude='*.partial' v1_clipfix* v2_plateau* && ls -la $OUT ;;
esac
