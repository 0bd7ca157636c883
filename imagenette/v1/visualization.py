"""Every plot this version writes. Plots are drawn from the run's records
(history.jsonl, results.json's check details) or from the very tensors the model
gets, so a figure never disagrees with the numbers."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")  # files only: runs on servers and in CI without a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from shared.runs import save_figure  # noqa: E402  (atomic: a file is whole or absent)


def read_history(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_training_curves(history_path: Path, out_path: Path) -> None:
    """Loss and accuracy per epoch, train vs validation, read from history.jsonl."""
    history = read_history(history_path)
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    ax_acc.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [100 * h["val_accuracy"] for h in history], "s-", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs: no tick at 2.5
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, out_path, dpi=120)
    plt.close(fig)


def plot_batch(images, labels, classes, out_path: Path, count: int = 24, columns: int = 8,
               title: str = "First training batch") -> None:
    """The first `count` images of a batch as the model gets it, each under its readable label.

    The images are shown with one colour scale for the whole batch: values in
    [0, 1] are drawn as they are; anything else (a batch still in [0, 255], or
    normalised values) is stretched by the batch's own min and max, and the title
    says so, so a wrong range is visible instead of clipped away."""
    images, labels = images[:count].detach().float().cpu(), labels[:count].cpu()
    low, high = images.min().item(), images.max().item()
    shown = images if (low >= 0 and high <= 1) else (images - low) / max(high - low, 1e-12)
    rows = (len(shown) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (image, label) in enumerate(zip(shown, labels)):
        ax = axes.flat[i]
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy() if image.shape[0] == 3 else image[0].numpy(),
                  cmap=None if image.shape[0] == 3 else "gray", interpolation="nearest")
        label = int(label)
        ax.set_title(classes[label] if 0 <= label < len(classes) else f"label {label}?", fontsize=8)
    stretched = "" if (low >= 0 and high <= 1) else " (stretched for display)"
    fig.suptitle(f"{title}: {tuple(images.shape[1:])} per image, values in [{low:.2f}, {high:.2f}]{stretched}")
    fig.tight_layout()
    save_figure(fig, out_path, dpi=90)
    plt.close(fig)


def plot_class_balance(details: dict, classes: list[str], out_path: Path) -> None:
    """Images per class in each split (from the class_balance check's details)."""
    counts = details["counts"]
    width = 0.8 / len(counts)
    fig, ax = plt.subplots(figsize=(12, 4.5))
    positions = torch.arange(len(classes)).float()
    for i, (name, values) in enumerate(counts.items()):
        ax.bar((positions + i * width).numpy(), values, width=width, label=f"{name} ({sum(values):,})")
    ax.set_xticks((positions + width * (len(counts) - 1) / 2).numpy(), classes, rotation=30, ha="right")
    ax.set(ylabel="images", title="Images per class in each split (stratified: the same mix everywhere)")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_figure(fig, out_path, dpi=120)
    plt.close(fig)
