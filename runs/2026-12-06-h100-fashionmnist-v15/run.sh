#!/usr/bin/env bash
# On the GPU machine, from the repository root (data: .gpu/fashion-mnist, carried):
#   bash runs/2026-12-06-h100-fashionmnist-v15/run.sh BUDGET_S
# Every step runs ALONE on the GPU, one after the other, in the order of what the issue needs first;
# a step starts only if its estimate fits in what is left of BUDGET_S. Records (no weights) go to
# $OUT/records.tgz.
#  1. the goal: python train.py --seed S, S = 0..4 (seed 0 with every check and the profile,
#     seeds 1-4 without the slow checks: they do not change the training, only its preamble)
#  2. ../benchmark.py --skip-v10 --devices cuda: v6's, v12's and v15's loops in one run
#  3. speed_table.py: seconds per epoch of each row (one change at a time)
#  4. --compile, seeds 0..4: the goal once more with torch.compile (compile time apart)
set -u
BUDGET=$1; SECONDS=0
W=${WORK:-/tmp/v15}; mkdir -p "$W/logs"
V=fashionmnist/v15-speed
DATA=$PWD/.gpu/fashion-mnist
QUIET="--no-human-baseline --no-input-independent-baseline --no-overfit-test --no-batch-independence-test --no-profile"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$W/gpu.txt" 2>&1
fits() { [ $((BUDGET - SECONDS)) -gt "$1" ] || { echo "skipped: $2 (needs ~$1 s, $((BUDGET - SECONDS)) s left)"; false; }; }
step() {  # step NAME COMMAND...: run in the version folder, console to logs/NAME.log
  local name=$1; shift; local start=$SECONDS
  (cd $V && timeout -s INT $((BUDGET - SECONDS)) "$@") > "$W/logs/$name.log" 2>&1
  echo "$name: exit $?, $((SECONDS - start)) s"
}
fits 60 "goal seed 0" && step goal-s0 python train.py --seed 0 --out "$W/goal-s0" --data-dir "$DATA"
for S in 1 2 3 4; do
  fits 40 "goal seed $S" && step goal-s$S python train.py --seed $S --out "$W/goal-s$S" --data-dir "$DATA" $QUIET
done
fits 120 "benchmark" && step benchmark python ../benchmark.py --skip-v10 --devices cuda --data-dir "$DATA" \
  --out "$W/benchmark"
fits 150 "speed table" && step speed-table python speed_table.py --out "$W/speed_table" -- --data-dir "$DATA"
for S in 0 1 2 3 4; do
  fits 80 "compile seed $S" && step compile-s$S python train.py --seed $S --compile --out "$W/compile-s$S" \
    --data-dir "$DATA" $QUIET
done
echo "total: $SECONDS s"
for f in "$W"/logs/goal-*.log "$W"/logs/compile-*.log; do
  [ -f "$f" ] && echo "$(basename "$f"): $(tr '\r' '\n' < "$f" | grep -aE 'test acc|train_time|Test' | tail -2 | tr '\n' ' ' | cut -c1-200)"
done
tail -25 "$W/logs/speed-table.log" 2>/dev/null
cd "$W" && find . -type f ! -name '*.pth' ! -name '*.pt' | tar czf "$OUT/records.tgz" -T -
ls -la "$OUT"
