#!/usr/bin/env bash
# On the GPU machine, from the repository root (data: .gpu/fashion-mnist, carried):
#   bash runs/2026-12-06-h100-fashionmnist-v12/run.sh BUDGET_S START_BY_S LANE ...
# LANE: jobs separated by commas, run one after the other; the lanes run in parallel on the one GPU.
# JOB: reg:ARM:SEED (python regularize.py --arms ARM --seeds SEED), lc:FRACTION:SEED (python
# learning_curve.py --fractions FRACTION --seeds SEED) or rep:SEED (python train.py --seed SEED
# --no-human-baseline: regularize.py's +smoothing run once more, to compare bit for bit).
# A job starts only before START_BY_S seconds have passed and when the lane's previous job, 10%
# slower, would still end before BUDGET_S; every job is stopped with SIGINT
# (Ctrl-C: results.json says "interrupted") at BUDGET_S. v12 has no --resume, so a job either
# completes within one call or is lost: choose lanes that fit. Records (no weights; plots of
# each arm's seed 0 only) go to $OUT/records.tgz; the tables are summarised where the records land.
set -u
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # a few runs share 16 cores
BUDGET=$1; START_BY=$2; shift 2; SECONDS=0
W=${WORK:-/tmp/v12}; mkdir -p "$W/logs"
V=$PWD/fashionmnist/v12-step4
DATA=$PWD/.gpu/fashion-mnist
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$W/gpu.txt" 2>&1
job() {
  IFS=: read -r kind what seed <<< "$1"
  local left=$((BUDGET - SECONDS)) start=$SECONDS log
  case $kind in
    reg) log=reg-$what-s$seed
         (cd "$V" && timeout -s INT $left python regularize.py --arms "$what" --seeds "$seed" \
           --out "$W/regularize" --data-dir "$DATA" ${EXTRA:-}) > "$W/logs/$log.log" 2>&1 ;;
    lc)  log=lc-$what-s$seed
         (cd "$V" && timeout -s INT $left python learning_curve.py --fractions "$what" --seeds "$seed" \
           --out "$W/learning_curve" --data-dir "$DATA" ${EXTRA:-}) > "$W/logs/$log.log" 2>&1 ;;
    rep) log=repeat-s$what
         (cd "$V" && timeout -s INT $left python train.py --seed "$what" --no-human-baseline \
           --out "$W/repeat/seed$what" --overwrite --data-dir "$DATA" ${EXTRA:-}) > "$W/logs/$log.log" 2>&1 ;;
  esac
  echo "$log: exit $?, $((SECONDS - start)) s (started at $start s)"
}
lane() {  # a job starts before START_BY and only if the lane's last job, 10% slower, still fits
  IFS=, read -ra jobs <<< "$1"; local last=0 t
  for j in "${jobs[@]}"; do
    if [ $SECONDS -ge "$START_BY" ] || [ $((SECONDS + last * 11 / 10)) -ge "$BUDGET" ]; then
      echo "not started: $j (at $SECONDS s)"; continue
    fi
    t=$SECONDS; job "$j"; last=$((SECONDS - t))
  done
}
for l in "$@"; do lane "$l" & done
wait
find "$W" -name '*.png' ! -path '*/seed0/*' -delete
cd "$W" && tar czf "$OUT/records.tgz" --exclude='*.pth' .
for f in "$W"/logs/*.log; do
  echo "$(basename "$f"): $(grep -aE '^Test accuracy' "$f" | tail -1 | cut -c1-120)"
done
