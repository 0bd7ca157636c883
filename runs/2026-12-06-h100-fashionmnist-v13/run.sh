#!/usr/bin/env bash
# On the GPU machine, from the repository root (data: runs/fm-data.sh):
#   [MPS=1] bash runs/2026-12-06-h100-fashionmnist-v13/run.sh search LIMIT_S SHARDS [TRIALS]  # trials 0..TRIALS-1 (24)
#   bash runs/2026-12-06-h100-fashionmnist-v13/run.sh confirm LIMIT_S [K]  # best K (3) + v12's defaults x seeds 0-2
# Every process shares the one GPU; one that runs past LIMIT_S gets SIGINT (Ctrl-C: records kept, no
# half trial recorded). `confirm` trains its 12 runs in parallel with exactly the argv that
# `search.py --confirm` would use, then runs `search.py --confirm`, which finds them done, picks on
# validation and reads the test set once for the chosen arm. Records (no weights) go to $OUT/records.tgz.
set -u
# 2026-12-06 ran this with one thread each and 12 shards: 20.8 s per epoch per process, no trial finished
# (README.md). Three or four shards with two threads each, as v12's records ran at 5.3 s per epoch.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
PHASE=$1; LIMIT=$2
W=${WORK:-/tmp/v13}; mkdir -p "$W/logs"
V=fashionmnist/v13-step5
DATA=$PWD/.gpu/fashion-mnist
source runs/fm-data.sh || exit 2  # the data from what the call carried (.gpu/fm-xz, or two halves)
# The lesson's checks are not what a trial measures: each trial skips the three slow ones
# (input-independent baseline, overfit test, batch independence); every run still checks the rest.
TRAIN_FLAGS="--no-input-independent-baseline --no-overfit-test --no-batch-independence-test"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$W/gpu.txt" 2>&1
source runs/mps.sh  # MPS=1: the processes share the GPU side by side (runs/mps.sh)
if [ -d .gpu/v13-search ] && [ ! -d "$W/search/trials" ]; then  # a fresh machine: the last call's records
  mkdir -p "$W/search" && cp -r .gpu/v13-search/trials "$W/search/"
fi
Q=${QUICK:+--quick}  # QUICK=1: every code path in minutes on a CPU (a test of this script)
SECONDS=0
if [ "$PHASE" = search ]; then
  SHARDS=$3; TRIALS=${4:-24}; PER=$(( (TRIALS + SHARDS - 1) / SHARDS ))
  for ((first = 0; first < TRIALS; first += PER)); do
    last=$(( first + PER - 1 < TRIALS - 1 ? first + PER - 1 : TRIALS - 1 ))
    (cd $V && timeout -s INT "$LIMIT" python search.py $Q --trials "$first-$last" --out "$W/search" \
      --data-dir "$DATA" --train-flags "$TRAIN_FLAGS") > "$W/logs/search-$first-$last.log" 2>&1 &
  done
  wait
  (cd $V && python search.py $Q --summarise --out "$W/search") > "$W/logs/search-summary.txt" 2>&1
  tail -40 "$W/logs/search-summary.txt"
else
  K=${3:-3}
  (cd $V && python - "$W/search" "$DATA" "$TRAIN_FLAGS" $K $Q > "$W/confirm-argv.txt") <<'PY'
import shlex, sys
from pathlib import Path
import search
out, data, flags, k = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
args = search.parse_args(["--confirm", k, "--out", str(out), "--data-dir", data, "--train-flags", flags,
                          *sys.argv[5:]])
arms = search.confirm_arms(search.summarise(search.read_trials(out)), args.confirm)
for seed in args.seeds:
    for arm, arm_flags in arms.items():
        argv = [*arm_flags, "--seed", str(seed), "--out", str(out / "confirm" / arm / f"seed{seed}"),
                *search.common_flags(args)]
        print(f"{arm}-s{seed} " + shlex.join(argv))
PY
  cat "$W/confirm-argv.txt"
  while read -r name argv; do
    (cd $V && eval timeout -s INT "$LIMIT" python train.py $argv) > "$W/logs/confirm-$name.log" 2>&1 &
  done < "$W/confirm-argv.txt"
  wait
  (cd $V && python search.py $Q --confirm $K --seeds 0 1 2 --out "$W/search" --data-dir "$DATA" \
    --train-flags "$TRAIN_FLAGS") > "$W/logs/confirm-summary.txt" 2>&1
  tail -30 "$W/logs/confirm-summary.txt"
fi
mps_stop
echo "phase $PHASE: ${SECONDS} s"
for f in "$W"/logs/*.log; do
  echo "$(basename "$f"): $(tr '\r' '\n' < "$f" | grep -aE '^epoch +[0-9]+/' | tail -1 | cut -c1-110)"
done
# Records without weights; of the plots only the search's and each run's training curves (16 MiB per file back).
cd "$W" && find . -type f ! -name '*.pth' ! -name '*.pt' \( ! -name '*.png' -o -name search.png \
  -o -name training_curves.png \) | tar czf "$OUT/records.tgz" -T -
ls -la "$OUT"
