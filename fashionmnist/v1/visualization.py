"""Every plot this version writes. Plots are drawn from the run's records
(history.jsonl) or from the very tensors the model gets, so a figure never
disagrees with the numbers."""
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
    """Loss and accuracy per epoch, train vs test, read from history.jsonl."""
    history = read_history(history_path)
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], "s-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    ax_acc.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [100 * h["test_accuracy"] for h in history], "s-", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs: no tick at 2.5
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, out_path, dpi=120)
    plt.close(fig)


def plot_batch(images, labels, classes, out_path: Path, count: int = 32, columns: int = 8) -> None:
    """The first `count` images of a batch as the model gets it, each under its label, tiled into
    one picture (one figure, not 32: drawing it takes a tenth of a second, not two).

    One grey scale for the whole batch (not one per image), so an image that is much
    darker or brighter than the others stands out, as it would to the network."""
    images, labels = images[:count].detach().float().cpu(), labels[:count].cpu()
    low, high = images.min().item(), images.max().item()
    tiles = images.reshape(len(images), -1, images.shape[-1])  # (n, height, width), with or without a channel
    height, width = tiles.shape[1:]
    rows, gap, band = (len(tiles) + columns - 1) // columns, 2, 9  # band: room for the label above each image
    grid = torch.full((rows * (height + band + gap), columns * (width + gap) + gap), high)
    fig, ax = plt.subplots(figsize=(columns * 1.3, rows * 1.6))
    for i, tile in enumerate(tiles):
        top, left = (i // columns) * (height + band + gap) + band, (i % columns) * (width + gap) + gap
        grid[top:top + height, left:left + width] = tile
        label = int(labels[i])
        ax.text(left + width / 2, top - 1, classes[label] if 0 <= label < len(classes) else f"label {label}?",
                ha="center", va="bottom", fontsize=7)
    ax.imshow(grid.numpy(), cmap="gray", vmin=low, vmax=high, interpolation="nearest")
    ax.axis("off")
    ax.set_title(f"First training batch: {tuple(images.shape[1:])} per image, values in [{low:.2f}, {high:.2f}]")
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)
