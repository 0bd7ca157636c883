#!/bin/bash
# The docs' example commands whose printed numbers docs/debugging.md, docs/solutions.md and the
# find-the-bugs READMEs quote, one after the other, from the repository root:
#   nice -n 10 bash runs/2026-12-04-docs/run_all.sh
# (silent_bug.py --seeds 0 1 2 3 4 ran before this script, the same way: see README.md.)
set -u
D=runs/2026-12-04-docs
export DATA_DIR=/usr/share/datasets/fashion-mnist
run() {  # run NAME COMMAND...: its output (stdout and stderr) and exit code into $D/NAME.console.txt
  local name=$1; shift
  { echo "\$ $*"; "$@" 2>&1; echo "exit code: $?"; } > "$D/$name.console.txt"
}
python runs/2026-12-04-docs/find_the_bugs_preflights.py > $D/find-the-bugs-preflight-quick.console.txt 2>&1
run silent_bug-seed0-avx2 env ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \
    python docs/examples/silent_bug.py --seeds 0 --out /tmp/silent_bug_avx2
run one_sample_one_batch python docs/examples/one_sample_one_batch.py
run one_sample_one_batch-exercise python docs/examples/one_sample_one_batch.py --code exercises/find-the-bugs
run detect_anomaly python docs/examples/detect_anomaly.py
run optimizer python docs/advanced/optimizer.py
run dataloader python docs/advanced/dataloader.py --out /tmp/dataloader_docs
echo done > $D/run_all.done
