"""One --cpu-fast training step on this CPU, three ways: as train.py builds it (eager), with its ReLUs
in place, and with the model's forward under torch.compile. Batch 256 of random 28x28 images,
bf16 autocast, AdamW, label smoothing 0.1: the arithmetic of a --cpu-fast step, without the data
pipeline. Then torch.profiler over 5 eager steps: where the step's time goes, by operator.
Run from fashionmnist/v15-speed:

    python ../../runs/2026-12-06-cpu-amd-fashionmnist-v15/cpu_step_variants.py
"""
import platform
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, ".")
import train as T  # noqa: E402

torch.set_num_threads(2)
STEPS, WARMUP = 30, 3


def make_step(variant):
    torch.manual_seed(0)
    model = T.ResNet(stem_stride=2).train()
    if variant == "relu in place":
        for module in model.modules():
            if isinstance(module, torch.nn.ReLU):
                module.inplace = True
    forward = torch.compile(model) if variant == "torch.compile" else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-3)
    x = torch.rand(256, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (256,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = T.loss_fn(forward(x).float(), y, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, batch 256, bf16")
for variant in ("eager", "relu in place", "torch.compile"):
    step = make_step(variant)
    start = time.perf_counter()
    for _ in range(WARMUP):
        step()
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(STEPS):
        step()
    ms = (time.perf_counter() - start) / STEPS * 1e3
    print(f"{variant:14s} {ms:6.1f} ms per step ({STEPS} steps after {WARMUP} warm-up steps of {warmup_s:.1f} s)")

step = make_step("eager")
for _ in range(WARMUP):
    step()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(5):
        step()
events = prof.key_averages()
total = sum(e.self_cpu_time_total for e in events)
groups = {"convolution forward": ("aten::mkldnn_convolution",),
          "convolution backward": ("aten::convolution_backward",),
          "batch norm (forward and backward)": ("aten::native_batch_norm", "aten::native_batch_norm_backward"),
          "relu (forward and backward)": ("aten::clamp_min", "aten::threshold_backward", "aten::relu_",
                                          "aten::clamp_min_"),
          "residual add": ("aten::add",)}
print("share of the profiled steps' self CPU time:")
for name, ops in groups.items():
    share = sum(e.self_cpu_time_total for e in events if e.key in ops) / total
    print(f"  {name:35s} {100 * share:5.1f}%")
