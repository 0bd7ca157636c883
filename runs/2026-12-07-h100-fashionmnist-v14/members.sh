#!/usr/bin/env bash
# On the GPU machine, from the repository root (data: runs/fm-data.sh):
#   [MPS=1] MEMBER_FLAGS="--lr ... --channels ..." bash runs/2026-12-07-h100-fashionmnist-v14/members.sh LIMIT_S
# run.sh's three 5-member ensembles (seeds 0-2) with every member in a process of its own: 15 processes
# side by side (train.py --only-member K), each member moved into its ensemble's folder, then per seed the
# ensemble run (--resume: keeps the five, trains none) measures the levers on validation and reads the
# test set once. run.sh trains the five one after another in one process: 200 epochs, too long for one
# 10-minute call. The "leave it training" members are not in here (run.sh has them). A member cut by the
# SIGINT at LIMIT_S is not moved: the next call on the same warm machine trains it again.
set -u
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
LIMIT=$1; FLAGS=${MEMBER_FLAGS:-}; MEMBERS=${MEMBERS:-5}; SEEDS=${SEEDS:-0 1 2}  # SEEDS="0": one ensemble
# TOTAL: the whole script's seconds (default 2 x LIMIT); the ensembles get what the members left of it,
# so that the records are packed before the call's own limit kills everything (10 minutes a call).
TOTAL=${TOTAL:-$((2 * LIMIT))}
W=${WORK:-/tmp/v14}; mkdir -p "$W/logs"
V=fashionmnist/v14-step6
DATA=$PWD/.gpu/fashion-mnist
source runs/fm-data.sh || exit 2  # the data from what the call carried (.gpu/fm-xz, or two halves)
# A member process runs v13's checks except the three slow ones; the ensemble run afterwards runs all.
SKIP="--no-input-independent-baseline --no-overfit-test --no-batch-independence-test"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$W/gpu.txt" 2>&1
source runs/mps.sh
Q=${QUICK:+--quick}  # QUICK=1 (with MEMBERS=2): every code path in minutes on a CPU (a test of this script)
SECONDS=0
done_member() { [ -f "$1/results.json" ] && grep -q '"status": "completed"' "$1/results.json"; }
for S in $SEEDS; do
  for ((K = 0; K < MEMBERS; K++)); do
    done_member "$W/ens-seed$S/members/member-$K" || (cd $V && timeout -s INT "$LIMIT" python train.py $Q \
      --seed $S --members "$MEMBERS" --only-member $K --overwrite --out "$W/parts/seed$S-member$K" \
      --data-dir "$DATA" $SKIP $FLAGS) > "$W/logs/seed$S-member$K.log" 2>&1 &
  done
done
wait
echo "members: ${SECONDS} s"
# The members' records at once, so that a call cut during the ensembles still brings them back.
(cd "$W" && find . -type f ! -name '*.pth' ! -name '*.pt' ! -name '*.png' | tar czf "$OUT/records.tgz" -T -)
ENS_LIMIT=$((TOTAL - SECONDS)); [ "$ENS_LIMIT" -ge 30 ] || ENS_LIMIT=30
for S in $SEEDS; do
  for ((K = 0; K < MEMBERS; K++)); do
    part=$W/parts/seed$S-member$K/members/member-$K
    if done_member "$part"; then
      mkdir -p "$W/ens-seed$S/members" && rm -rf "$W/ens-seed$S/members/member-$K" \
        && mv "$part" "$W/ens-seed$S/members/"
    fi
  done
  (cd $V && timeout -s INT "$ENS_LIMIT" python train.py $Q --seed $S --members "$MEMBERS" --resume \
    --out "$W/ens-seed$S" --data-dir "$DATA" $FLAGS) > "$W/logs/ens-seed$S.log" 2>&1 &
done
wait
mps_stop
echo "members and ensembles: ${SECONDS} s"
for f in "$W"/logs/*.log; do
  echo "$(basename "$f"): $(tr '\r' '\n' < "$f" | grep -aE '^epoch +[0-9]+/|^member .*(kept|trained)|test' \
    | tail -1 | cut -c1-110)"
done
(cd $V && python ensemble.py $(for S in $SEEDS; do echo "$W/ens-seed$S"; done) --out "$W/levers") > "$W/logs/levers.txt" 2>&1
cat "$W/logs/levers.txt"
# Records without weights or saved outputs, in three archives so that each stays under the 16 MiB a
# returned file may have: the records, the ensembles' plots, the members' plots (fifteen sets).
cd "$W" && find . -type f ! -name '*.pth' ! -name '*.pt' ! -name '*.png' | tar czf "$OUT/records.tgz" -T -
find . -type f -name '*.png' ! -path '*/members/*' ! -path './parts/*' | tar czf "$OUT/plots.tgz" -T -
find . -type f -name '*.png' \( -path '*/members/*' -o -path './parts/*' \) | tar czf "$OUT/plots-members.tgz" -T -
ls -la "$OUT"
