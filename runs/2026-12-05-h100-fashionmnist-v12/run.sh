#!/usr/bin/env bash
# On the GPU machine, from the repository root:
#   bash runs/2026-12-05-h100-fashionmnist-v12/run.sh LIMIT_S JOB ...
# JOB: reg:ARM:SEED (one regularize.py arm and seed) or lc:FRACTION:SEED (one learning-curve point).
# All jobs run in parallel on the one GPU, each stopped with SIGINT (Ctrl-C: history kept) at LIMIT_S; then both tables are summarised
# from what completed, and the records (no weights; plots of seed 0 only) go to $OUT/records.tgz.
set -u
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # up to eight runs share 16 cores
LIMIT=$1; shift
W=${WORK:-/tmp/v12}; mkdir -p "$W/logs"
V=fashionmnist/v12-step4
DATA=$PWD/.gpu/fashion-mnist
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$W/gpu.txt" 2>&1
for job in "$@"; do
  IFS=: read -r kind what seed <<< "$job"
  if [ "$kind" = reg ]; then
    (cd $V && timeout -s INT "$LIMIT" python regularize.py --arms "$what" --seeds "$seed" --out "$W/regularize" \
      --data-dir "$DATA" ${EXTRA:-}) > "$W/logs/reg-$what-s$seed.log" 2>&1 &
  else
    (cd $V && timeout -s INT "$LIMIT" python learning_curve.py --fractions "$what" --seeds "$seed" \
      --out "$W/learning_curve" --data-dir "$DATA" ${EXTRA:-}) > "$W/logs/lc-$what-s$seed.log" 2>&1 &
  fi
done
wait
# The learning curve's 100% point is the default recipe's seed-0 run (regularize.py's +smoothing arm).
if [ -f "$W/regularize/+smoothing/seed0/results.json" ] && [ ! -e "$W/learning_curve/fraction1/seed0" ]; then
  mkdir -p "$W/learning_curve/fraction1" && cp -r "$W/regularize/+smoothing/seed0" "$W/learning_curve/fraction1/"
fi
(cd $V && python regularize.py --summarise --out "$W/regularize") > "$W/logs/regularize-summary.txt" 2>&1
(cd $V && python learning_curve.py --summarise --out "$W/learning_curve") > "$W/logs/learning-curve-summary.txt" 2>&1
find "$W" -name '*.png' ! -path '*/+smoothing/seed0/*' ! -name 'learning_curve.png' -delete
cd "$W" && tar czf "$OUT/records.tgz" --exclude='*.pth' .
for f in "$W"/logs/*.log; do
  echo "$(basename "$f"): $(grep -E '^epoch +[0-9]+/' "$f" | tail -1 | cut -c1-120)"
done
tail -15 "$W/logs/regularize-summary.txt" "$W/logs/learning-curve-summary.txt"
