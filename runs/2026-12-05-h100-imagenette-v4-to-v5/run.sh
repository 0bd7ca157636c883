#!/usr/bin/env bash
# On the GPU machine, from the repository root: bash runs/2026-12-05-h100-imagenette-v4-to-v5/run.sh ARM:SEED ...
# All given runs in parallel on the one GPU, each cut at 560 s; records (no weights, no plots) to $OUT.
W=/tmp/ablation; mkdir -p "$W"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$W/gpu.txt" 2>&1
source runs/mps.sh  # MPS=1: the processes share the GPU side by side (runs/mps.sh)
for job in "$@"; do
  arm=${job%%:*}; seed=${job##*:}
  timeout 560 python runs/2026-12-05-h100-imagenette-v4-to-v5/ablate.py "$arm" "$seed" "$W/$arm-s$seed" \
    --data-dir .gpu/imagenette --train-fraction 1.0 > "$W/$arm-s$seed.log" 2>&1 &
done
wait
mps_stop
cd "$W" && tar czf "$OUT/records.tgz" --exclude='*.pth' --exclude='*.png' .
for f in "$W"/*.log; do echo "$(basename "$f") $(grep -E 'best epoch|s per epoch' "$f" | tr '\n' ' ' | cut -c1-230)"; done
