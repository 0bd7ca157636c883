"""Every plot this version writes. Plots are drawn from the run's records
(history.jsonl, the data report) so a figure never disagrees with the numbers."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

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


def plot_samples_per_class(images, labels, classes, out_path: Path, per_class: int = 8) -> None:
    """A grid with one row per class: does every class look like its name?"""
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 1.1, len(classes) * 1.15))
    for row, name in enumerate(classes):
        indices = (labels == row).nonzero().flatten()[:per_class].tolist()
        for col in range(per_class):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(indices):
                ax.imshow(images[indices[col]].numpy(), cmap="gray", vmin=0, vmax=255)
        axes[row, 0].set_title(name, fontsize=8, loc="left")
    fig.suptitle("Training samples per class (raw pixels)")
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def plot_class_means(images, labels, classes, out_path: Path) -> None:
    """The average image of each class: the 'prototype' a linear model would learn."""
    fig, axes = plt.subplots(2, (len(classes) + 1) // 2, figsize=(12, 5))
    for i, (ax, name) in enumerate(zip(axes.flat, classes)):
        ax.imshow(images[labels == i].float().mean(0).numpy(), cmap="magma")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle("Per-class mean image")
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def plot_pixel_histogram(images, out_path: Path) -> None:
    """Pixel value distribution: Fashion-MNIST is mostly black background plus a broad mode."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(images.flatten().numpy(), bins=64, color="steelblue", log=True)
    ax.set(xlabel="pixel value (uint8)", ylabel="count (log)", title="Pixel histogram, training set")
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)
