#!/usr/bin/env bash
# On the GPU machine, from the repository root (data: runs/fm-data.sh):
#   [MPS=1] MEMBER_FLAGS="--lr ... --channels ..." bash runs/2026-12-07-h100-fashionmnist-v14/run.sh LIMIT_S
# v14's plan (its FAZIT.md): three 5-member ensembles (seeds 0-2) and three "leave it training" members
# (twice the epochs, --members 1 --no-test), six processes side by side on the one GPU. MEMBER_FLAGS: the
# members' other flags (v13's choice is train.py's defaults since 2026-12-07). Every process runs with --resume:
# the next call on the same warm machine keeps the finished members (a member cut by the SIGINT at
# LIMIT_S is trained again from its start). When all six are complete, ensemble.py's lever table.
# Records without weights go to $OUT/records.tgz.
set -u
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
LIMIT=$1; FLAGS=${MEMBER_FLAGS:-}; LONG_EPOCHS=${LONG_EPOCHS:-80}
W=${WORK:-/tmp/v14}; mkdir -p "$W/logs"
V=fashionmnist/v14-step6
DATA=$PWD/.gpu/fashion-mnist
source runs/fm-data.sh || exit 2  # the data from what the call carried (.gpu/fm-xz, or two halves)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$W/gpu.txt" 2>&1
source runs/mps.sh
Q=${QUICK:+--quick}  # QUICK=1: every code path in minutes on a CPU (a test of this script)
SECONDS=0
complete() { [ -f "$1/results.json" ] && grep -q '"status": "completed"' "$1/results.json"; }
for S in 0 1 2; do
  complete "$W/ens-seed$S" || (cd $V && timeout -s INT "$LIMIT" python train.py $Q --seed $S --resume \
    --out "$W/ens-seed$S" --data-dir "$DATA" $FLAGS) > "$W/logs/ens-seed$S.log" 2>&1 &
  complete "$W/long-seed$S" || (cd $V && timeout -s INT "$LIMIT" python train.py $Q --seed $S --resume \
    --epochs "$LONG_EPOCHS" --members 1 --no-test --out "$W/long-seed$S" --data-dir "$DATA" $FLAGS) \
    > "$W/logs/long-seed$S.log" 2>&1 &
done
wait
mps_stop
echo "runs: ${SECONDS} s"
for f in "$W"/logs/*-seed*.log; do
  echo "$(basename "$f"): $(tr '\r' '\n' < "$f" | grep -aE '^epoch +[0-9]+/|=== Member' | tail -1 | cut -c1-110)"
done
if complete "$W/ens-seed0" && complete "$W/ens-seed1" && complete "$W/ens-seed2" && complete "$W/long-seed0" \
   && complete "$W/long-seed1" && complete "$W/long-seed2"; then
  (cd $V && python ensemble.py "$W"/ens-seed{0,1,2} --long "$W"/long-seed{0,1,2} --out "$W/levers") \
    > "$W/logs/levers.txt" 2>&1
  cat "$W/logs/levers.txt"
fi
# Records without weights or saved outputs; plots small enough to come back (16 MiB per file).
cd "$W" && find . -type f ! -name '*.pth' ! -name '*.pt' | tar czf "$OUT/records.tgz" -T -
ls -la "$OUT"
