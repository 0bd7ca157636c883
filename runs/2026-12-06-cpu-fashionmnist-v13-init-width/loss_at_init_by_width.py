"""v13's ResNet at each width: the cross-entropy at init in eval mode on the first 1,024 training images,
for three init seeds (loss_at_init measures the same with the run's own loss, label smoothing included, on
the run's loader; the limit is the same). Run from fashionmnist/v13-step5:

    python ../../runs/2026-12-06-cpu-fashionmnist-v13-init-width/loss_at_init_by_width.py
"""
import platform
import sys

import torch

sys.path.insert(0, ".")
import train as T  # noqa: E402

torch.set_num_threads(2)
images, labels, *_ = T.load_raw_data(None, read_test=False)
x, y = T.to_tensor(images[:1024]), labels[:1024]
widths = (24, 32, 48, 64, 96)
print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 2 threads")
print(f"limit: ln(10) + {T.LOSS_AT_INIT_TOLERANCE} = {2.302585 + T.LOSS_AT_INIT_TOLERANCE:.3f}")
print("seed  " + "  ".join(f"{c:>5}" for c in widths) + "   (channels)")
for seed in (42, 0, 1):  # 42: the search's trial seed; 0, 1: the confirmation's first seeds
    losses = []
    for channels in widths:
        T.set_seed(seed)
        model = T.ResNet(channels=channels).eval()
        with torch.no_grad():
            losses.append(T.loss_fn(model(x), y).item())
    print(f"{seed:>4}  " + "  ".join(f"{loss:5.3f}" for loss in losses))
