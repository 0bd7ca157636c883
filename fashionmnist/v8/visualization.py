"""Every plot this version writes. Plots are drawn from the run's records
(history.jsonl) or from the very tensors the model gets, so a figure never
disagrees with the numbers."""
from __future__ import annotations

import json
import math
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
    """Loss and accuracy per epoch, train vs validation, read from history.jsonl; a dashed
    line marks the best epoch by validation accuracy, the one that was kept and tested."""
    history = read_history(history_path)
    epochs = [h["epoch"] for h in history]
    best = max(history, key=lambda h: h["val_accuracy"])["epoch"]  # the first of equal ones, as train.py keeps it
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    ax_acc.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [100 * h["val_accuracy"] for h in history], "s-", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs: no tick at 2.5
        ax.axvline(best, color="gray", linestyle="--", label=f"best epoch ({best})")
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


def plot_activation_statistics(series: dict[str, dict], out_path: Path) -> None:
    """Per ReLU layer: mean and std of its output and its fraction of dead units, one bar per
    entry of `series` ({"at init": layers, "after training": layers}, from the checks' details).
    Healthy: std of the same order in every layer, dead fraction near 0."""
    layer_names = list(next(iter(series.values())))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.8 / len(series)
    positions = range(len(layer_names))
    for i, (label, layers) in enumerate(series.items()):
        offsets = [p + (i - (len(series) - 1) / 2) * width for p in positions]
        for ax, key in zip(axes, ("mean", "std", "dead_fraction")):
            bars = ax.bar(offsets, [layers[name][key] for name in layer_names], width, label=label)
        axes[2].bar_label(bars, fmt="%.2f", fontsize=7)  # a fraction of 0 draws no bar: write it down
    titles = ("Mean of the ReLU output", "Std of the ReLU output", "Fraction of dead units (never > 0)")
    for ax, title in zip(axes, titles):
        ax.set_xticks(list(positions))
        ax.set_xticklabels(layer_names, rotation=45, ha="right", fontsize=8)
        ax.set(title=title, xlabel="ReLU layer")
        ax.grid(alpha=0.3, axis="y")
    axes[2].set_ylim(0, 1)
    axes[2].legend(loc="upper right")
    fig.suptitle("Activation statistics on one training batch (train mode)")
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def plot_lr_finder(details: dict, out_path: Path) -> None:
    """The LR range test: loss against learning rate (log scale), raw and smoothed, with the
    minimum of the smoothed loss, the proposal (a tenth of it) and the configured --lr marked."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    ax.plot(details["lrs"], details["losses"], color="lightgray", label="loss per step")
    ax.plot(details["lrs"], details["smoothed"], label="smoothed loss")
    marks = (("min_loss_lr", "minimum of the smoothed loss", "gray", ":"),
             ("proposed_lr", "proposed (minimum / 10)", "green", "--"),
             ("configured_lr", "configured --lr", "red", "-."))
    for key, label, color, style in marks:
        if details.get(key):
            ax.axvline(details[key], color=color, linestyle=style, label=f"{label}: {details[key]:.2g}")
    if details["smoothed"]:
        low, high = min(details["smoothed"]), details["start_loss"]
        ax.set_ylim(low - 0.1 * (high - low + 0.1), high + 0.6 * (high - low + 0.1))
    verdict = "no usable LR: the loss never falls" if details["proposed_lr"] is None else "usable"
    ax.set(xscale="log", xlabel="learning rate (log scale)", ylabel="training loss",
           title=f"LR range test, {len(details['lrs'])} steps ({details['stopped']}); {verdict}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def plot_lr_schedule(details: dict, out_path: Path) -> None:
    """The learning rate the run will use at every step, from the run's own scheduler stepped
    through all its steps before training; dotted lines at the epoch boundaries (up to 30)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(details["lr_steps"], details["lrs"], "-", marker="." if len(details["lrs"]) < 50 else None)
    per_epoch = details["steps_per_epoch"]
    if details["total_steps"] // per_epoch <= 30:
        for boundary in range(per_epoch, details["total_steps"], per_epoch):
            ax.axvline(boundary, color="gray", linestyle=":", linewidth=0.7)
    ax.set(xlabel="optimizer step (batch)", ylabel="learning rate", ylim=(0, None),
           title=f"Planned schedule: {details['planned_steps']} of {details['total_steps']} steps, "
                 f"peak {details['peak_lr']:.2g} at step {details['peak_step']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def plot_mixed_batch(images, targets, classes, out_path: Path, count: int = 16, columns: int = 8) -> None:
    """The first `count` images of a mixed batch as the model gets them, each under its soft label:
    the two largest classes of its target with their weights (smoothing puts 0.01 on every other
    class, which is not written). One grey scale for the whole batch, as in plot_batch."""
    images, targets = images[:count].detach().float().cpu(), targets[:count].detach().float().cpu()
    low, high = images.min().item(), images.max().item()
    rows = (len(images) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.9, rows * 2.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (image, target) in enumerate(zip(images, targets)):
        ax = axes.flat[i]
        ax.imshow(image.reshape(-1, image.shape[-1]).numpy(), cmap="gray", vmin=low, vmax=high,
                  interpolation="nearest")
        weights, top = target.topk(2)
        ax.set_title("\n".join(f"{w:.2f} {classes[int(k)]}" for w, k in zip(weights, top)), fontsize=7)
    fig.suptitle("A mixed training batch and its soft labels (MixUp + label smoothing; each target sums to 1)")
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def plot_gradient_flow(details: dict, out_path: Path) -> None:
    """RMS gradient per block at init (log scale), input side on the left: with skip connections
    the bars stay within about a decade of each other; a missing bar is a block without gradient."""
    rms = details["block_gradient_rms"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    bars = ax.bar(range(len(rms)), [max(v, 1e-12) for v in rms.values()])
    ax.bar_label(bars, fmt="%.1e", fontsize=7)
    ax.set_xticks(range(len(rms)))
    ax.set_xticklabels(list(rms), rotation=45, ha="right", fontsize=8)
    ax.set(yscale="log", xlabel="block (input -> output)", ylabel="gradient RMS",
           title="Gradient flow at init: RMS gradient of each block's parameters")
    ax.grid(alpha=0.3, axis="y", which="both")
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def plot_confusion_matrix(confusion: list[list[int]], classes, out_path: Path) -> None:
    """Two panels: counts (row = true class, column = predicted) and rows normalised to 1 (the
    diagonal is each class's recall; an off-diagonal cell is where that class's images went)."""
    counts = torch.tensor(confusion, dtype=torch.float64)
    shares = counts / counts.sum(1, keepdim=True).clamp_min(1)
    fig, axes = plt.subplots(1, 2, figsize=(17, 7.5))
    for ax, matrix, title, fmt in ((axes[0], counts, "Confusion matrix (counts)", "{:.0f}"),
                                   (axes[1], shares, "Normalised per true class (recall on the diagonal)", "{:.2f}")):
        ax.imshow(matrix.numpy(), cmap="Blues")
        high = matrix.max().item()
        for i in range(len(classes)):
            for j in range(len(classes)):
                value = matrix[i, j].item()
                ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=7,
                        color="white" if value > high / 2 else "black")
        ax.set_xticks(range(len(classes)))
        ax.set_yticks(range(len(classes)))
        ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticklabels(classes, fontsize=8)
        ax.set(xlabel="predicted class", ylabel="true class", title=title)
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def plot_per_class_metrics(per_class: dict, classes, out_path: Path) -> None:
    """Precision, recall and F1 of every class side by side: the weak classes at a glance."""
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.27
    for i, key in enumerate(("precision", "recall", "f1")):
        ax.bar([c + (i - 1) * width for c in range(len(classes))], per_class[key], width, label=key)
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=30, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="score", title="Per-class precision, recall and F1 (test set)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def confidence_text(p: float) -> str:
    """A softmax probability with the digits that rank two confident mistakes: 0.1261, 0.99987,
    0.99999910 (as percentages without decimals: 13%, 100%, 100%). Near 1 the decimals grow with
    the nines, so the distance to 1 keeps two significant digits."""
    if p >= 1:  # float32 softmax rounds a margin of more than ~17 logits to exactly 1
        return "p = 1 (float32)"
    return f"p = {p:.{max(4, math.floor(-math.log10(1 - p)) + 2)}f}"


def plot_confident_mistakes(images, mistakes: list[dict], classes, out_path: Path, columns: int = 8) -> None:
    """The most confident wrong predictions, most confident first: each image with its true
    class, the predicted one and the confidence the model put on it."""
    images = images.detach().float().cpu()
    rows = max(1, (len(mistakes) + columns - 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.9, rows * 2.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    low, high = (images.min().item(), images.max().item()) if len(images) else (0.0, 1.0)
    for ax, image, mistake in zip(axes.flat, images, mistakes):
        ax.imshow(image.reshape(-1, image.shape[-1]).numpy(), cmap="gray", vmin=low, vmax=high,
                  interpolation="nearest")
        ax.set_title(f"true: {classes[mistake['label']]}\nsaid: {classes[mistake['predicted']]}\n"
                     f"{confidence_text(mistake['confidence'])}", fontsize=7)
    fig.suptitle(f"The {len(mistakes)} most confident mistakes on the test set" if mistakes
                 else "No mistakes on the test set")
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def plot_reliability_diagram(calibration: dict, out_path: Path) -> None:
    """Accuracy per confidence bin against the diagonal of perfect calibration, and how many
    images each bin holds: bars below the diagonal are overconfidence, above it underconfidence."""
    bins = calibration["bins"]
    centres = [(i + 0.5) / bins for i in range(bins)]
    filled = [c > 0 for c in calibration["count"]]
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(6.5, 7.5), sharex=True, height_ratios=[3, 1])
    ax.bar([c for c, f in zip(centres, filled) if f], [a for a, f in zip(calibration["accuracy"], filled) if f],
           1 / bins, edgecolor="black", alpha=0.7, label="accuracy in bin")
    ax.plot([c for c, f in zip(centres, filled) if f],
            [m for m, f in zip(calibration["mean_confidence"], filled) if f], "rs", label="mean confidence in bin")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set(ylim=(0, 1), ylabel="accuracy", title=f"Reliability diagram, ECE = {calibration['ece']:.4f}")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    ax_count.bar(centres, calibration["count"], 1 / bins, edgecolor="black")
    ax_count.set(xlim=(0, 1), xlabel="confidence (largest softmax probability)", ylabel="images", yscale="log")
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def plot_training_dynamics(history_path: Path, out_path: Path) -> None:
    """From history.jsonl: the learning rate each epoch ended with, the gradient norm per layer
    group and the update-to-weight ratio per layer group (log scales; 1e-3 marked, the
    rule-of-thumb healthy ratio per step)."""
    history = [h for h in read_history(history_path) if h.get("grad_norm_per_group")]
    fig, (ax_lr, ax_grad, ax_ratio) = plt.subplots(1, 3, figsize=(16, 4.5))
    if history:
        epochs = [h["epoch"] for h in history]
        ax_lr.plot(epochs, [h["learning_rate_max"] for h in history], "o-", label="largest in epoch")
        ax_lr.plot(epochs, [h["learning_rate"] for h in history], "s-", label="at the epoch's last step")
        for group in history[0]["grad_norm_per_group"]:
            ax_grad.plot(epochs, [h["grad_norm_per_group"][group] for h in history], "o-", label=group)
            ax_ratio.plot(epochs, [h["update_ratio_per_group"][group] for h in history], "o-", label=group)
        ax_grad.plot(epochs, [h["grad_norm"] for h in history], "k--", label="all")
    ax_ratio.axhline(1e-3, color="gray", linestyle=":", label="1e-3")
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="Learning rate")
    ax_grad.set(xlabel="epoch", ylabel="L2 norm (mean of sampled steps)", yscale="log",
                title="Gradient norm per layer group")
    ax_ratio.set(xlabel="epoch", ylabel="||update|| / ||weights|| per step", yscale="log",
                 title="Update-to-weight ratio per layer group")
    for ax in (ax_lr, ax_grad, ax_ratio):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs: no tick at 2.5
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)
