#!/usr/bin/env bash
# On the GPU machine, from the repository root (data: .gpu/fashion-mnist, carried):
#   [MPS=1] bash runs/2026-12-06-h200-fashionmnist-v12/run.sh BUDGET_S START_BY_S LANE ...
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
# MPS=1: start NVIDIA's multi-process service (a user-space daemon; the GPU's settings stay as
# they are), so that the lanes' small kernels run side by side instead of in time slices. A
# 1-tensor probe must pass through it, else the daemon is stopped and the lanes run without.
if [ "${MPS:-0}" = 1 ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  if nvidia-cuda-mps-control -d && timeout 60 python -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
    echo "mps: on" | tee -a "$W/gpu.txt"
  else
    echo quit | nvidia-cuda-mps-control 2>/dev/null; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    echo "mps: failed, off" | tee -a "$W/gpu.txt"
  fi
fi
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
[ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ] && echo quit | nvidia-cuda-mps-control
find "$W" -name '*.png' ! -path '*/seed0/*' -delete
cd "$W" && tar czf "$OUT/records.tgz" --exclude='*.pth' .
for f in "$W"/logs/*.log; do
  echo "$(basename "$f"): $(grep -aE '^Test accuracy' "$f" | tail -1 | cut -c1-120)"
done
