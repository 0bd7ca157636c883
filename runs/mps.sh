# Sourced by the GPU run scripts (after $W exists): with MPS=1, start NVIDIA's multi-process service,
# a user-space daemon (the card's settings stay as they are), so that several training processes'
# small kernels run side by side instead of taking turns in time slices. A 1-tensor probe must pass
# through it, else the daemon is stopped and the processes run without it. `mps_stop` after `wait`.
# Measured with it: runs/2026-12-06-h200-fashionmnist-v12 (five v12 runs beside the learning-curve jobs
# at 5.7-6.1 s per epoch each on one H200, ~1 epoch/s in all; without it, three on an H100 had run at
# 5.3-5.4 s, ~0.57 epoch/s: other card, so a planning figure, not a clean comparison). Same card kind
# and layout: twelve v13 search processes on one H100 ran at 20.7-21.0 s per epoch each without it
# (runs/2026-12-06-h100-fashionmnist-v13) and at 7.8-8.0 s with it (runs/2026-12-06-h100-fashionmnist-v13-search):
# ~0.58 against ~1.5 epochs/s in all (two machines, one run each).
if [ "${MPS:-0}" = 1 ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d && timeout 60 python -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
    echo "mps: on" | tee -a "$W/gpu.txt"
  else
    echo quit | nvidia-cuda-mps-control 2>/dev/null; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    echo "mps: failed, off" | tee -a "$W/gpu.txt"
  fi
fi
mps_stop() { if [ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ]; then echo quit | nvidia-cuda-mps-control; fi; }
