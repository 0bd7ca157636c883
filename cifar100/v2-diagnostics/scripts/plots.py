"""The training curves, drawn from history.jsonl's records (never from separate bookkeeping)."""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # runs on servers without a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # shared/runs.py: atomic writes
from shared.runs import save_figure  # noqa: E402


def _series(history: list[dict], key: str):
    points = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_history(history: list[dict], path: Path, title: str) -> Path:
    """Loss, accuracy, learning rate and gradient norms per epoch, in one PNG."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (keys, label, log) in zip(axes.flat, [
        (("loss", "val_loss"), "loss", False),
        (("accuracy", "val_accuracy"), "accuracy (%)", False),
        (("learning_rate",), "learning rate", True),
        (("mean_grad_norm", "max_grad_norm"), "gradient norm (as logged)", True),
    ]):
        for key in keys:
            x, y = _series(history, key)
            ax.plot(x, y, marker="o", markersize=3, label=key)
        if log and any(_series(history, k)[1] for k in keys):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)  # atomically: a run stopped while plotting never leaves half a PNG
    plt.close(fig)
    return path
