#!/usr/bin/env bash
# On the GPU machine, from the repository root, data in .gpu/imagenette (the exported 40% subset and
# val/; it arrives in parts: `bash runs/carry.sh join inet .gpu/imagenette`, ../carry.sh):
#   [MPS=1] [SEEDS="0 1 2"] [MEMBERS=3] bash runs/2026-12-07-h100-imagenette-v8/members.sh LIMIT_S
# imagenette/v8's step 1 (its FAZIT.md) as one session's work: SEEDS independent ensembles of MEMBERS
# members, every member a run of its own side by side (member k of the ensemble of seed S is the run
# `--seed S+1000k --members 1 --no-test`, bitwise: test_member_k_is_the_single_member_run_of_its_seed),
# each cut with SIGINT at LIMIT_S and going on from its last epoch in the next call (--resume, same warm
# machine: the weights do not come back). When all of a seed's members are complete, its ensemble run
# (--members 0 --add-members) builds the table on validation, chooses, and reads the test labels once;
# then ensemble.py's lever table over the seeds. Records without weights to $OUT/records.tgz.
set -u
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
LIMIT=$1; SEEDS=${SEEDS:-0 1 2}; MEMBERS=${MEMBERS:-3}; FLAGS=${V8_FLAGS:-}
W=${WORK:-/tmp/v8}; mkdir -p "$W/logs"
V=imagenette/v8
DATA=${DATA:-$PWD/.gpu/imagenette}
[ -d "$DATA/val" ] || { echo "members.sh: no Imagenette subset in $DATA (runs/carry.sh join inet $DATA)" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$W/gpu.txt" 2>&1
source runs/mps.sh
Q=${QUICK:+--quick}  # QUICK=1: every code path in minutes on a CPU (a test of this script)
SECONDS=0
complete() { [ -f "$1/results.json" ] && grep -q '"status": "completed"' "$1/results.json"; }
part() { echo "$W/parts/seed$1-member$2"; }
for S in $SEEDS; do
  for ((K = 0; K < MEMBERS; K++)); do
    P=$(part "$S" "$K")
    complete "$P" || (cd $V && timeout -s INT "$LIMIT" python train.py $Q --seed $((S + 1000 * K)) --members 1 \
      --no-test $([ -f "$P/results.json" ] && echo --resume) --out "$P" --data-dir "$DATA" --train-fraction 1.0 \
      $FLAGS) > "$W/logs/seed$S-member$K.log" 2>&1 &
  done
done
wait
echo "members: ${SECONDS} s"
ready=()
for S in $SEEDS; do
  parts=(); for ((K = 0; K < MEMBERS; K++)); do complete "$(part "$S" "$K")" && parts+=("$(part "$S" "$K")/members/member-0"); done
  if [ ${#parts[@]} -eq "$MEMBERS" ] && ! complete "$W/ens-seed$S"; then
    (cd $V && python train.py $Q --seed "$S" --members 0 --add-members "${parts[@]}" --out "$W/ens-seed$S" \
      --overwrite --data-dir "$DATA" --train-fraction 1.0 $FLAGS) > "$W/logs/ens-seed$S.log" 2>&1 &
  fi
done
wait
mps_stop
echo "members and ensembles: ${SECONDS} s"
for f in "$W"/logs/*.log; do
  echo "$(basename "$f"): $(tr '\r' '\n' < "$f" | grep -aE '^epoch +[0-9]+/|Test accuracy|error' | tail -1 | cut -c1-110)"
done
for S in $SEEDS; do complete "$W/ens-seed$S" && ready+=("$W/ens-seed$S"); done
if [ ${#ready[@]} -ge 2 ]; then
  (cd $V && python ensemble.py "${ready[@]}" --out "$W/levers") > "$W/logs/levers.txt" 2>&1; cat "$W/logs/levers.txt"
fi
# Records without weights, resume states or saved outputs; plots small enough to come back.
cd "$W" && find . -type f ! -name '*.pth' ! -name '*.pt' | tar czf "$OUT/records.tgz" -T -
ls -la "$OUT"
