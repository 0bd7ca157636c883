"""One --cpu-fast training step (batch 256, bf16 autocast, stem stride 2, channels_last, AdamW, label
smoothing 0.1; random 28x28 images: the arithmetic without the data pipeline) at 16, 24 and 32
first-stage channels, three rounds interleaved, the median of each: does the step's time follow the
convolutions' multiply-adds (16 channels: ~1/4 of 32's, 24: ~0.56)? Run from fashionmnist/v15-speed:

    python ../../runs/2026-12-07-cpu-amd-fashionmnist-v15/step_widths.py
"""
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, ".")
import train as T  # noqa: E402

torch.set_num_threads(2)
STEPS, WARMUP, ROUNDS, WIDTHS = 15, 3, 3, (16, 24, 32)


def ms_per_step(channels: int) -> float:
    torch.manual_seed(0)
    model = T.ResNet(channels=channels, stem_stride=2).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-3)
    x = torch.rand(256, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (256,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = T.loss_fn(model(x).float(), y, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    for _ in range(WARMUP):
        step()
    start = time.perf_counter()
    for _ in range(STEPS):
        step()
    return (time.perf_counter() - start) / STEPS * 1e3


print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, batch 256, bf16")
times = {c: [] for c in WIDTHS}
for _ in range(ROUNDS):
    for channels in WIDTHS:
        times[channels].append(ms_per_step(channels))
for channels in WIDTHS:
    median = statistics.median(times[channels])
    print(f"channels {channels:2d}: {median:6.1f} ms per step (median of {ROUNDS} rounds of {STEPS} steps: "
          f"{', '.join(f'{t:.1f}' for t in times[channels])}), {median / statistics.median(times[32]):.2f}x "
          "the 32-channel step")
