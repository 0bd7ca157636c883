"""Every plot this version writes. Plots are drawn from the run's records
(history.jsonl, results.json, the check details) so a figure never disagrees with the numbers."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs on servers and in CI without a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from shared.runs import save_figure, write_text  # noqa: E402  (atomic: a file is whole or absent)
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402


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


def plot_human_baseline_samples(images, labels, classes, out_path: Path) -> None:
    """Test images as a person would see them: could you name the class?"""
    cols = 4
    rows = (len(images) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2, rows * 2.4))
    for ax, image, label in zip(axes.flat, images, labels):
        ax.imshow(image.squeeze(0).cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(classes[label], fontsize=9)
        ax.axis("off")
    for ax in list(axes.flat)[len(images):]:
        ax.axis("off")
    fig.suptitle("Human baseline: name the class (humans: 83.5% on Fashion-MNIST)")
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def plot_input_visualization(images, labels, classes, stats: dict, out_path: Path) -> None:
    """The batch exactly as the network receives it, with its statistics and histogram."""
    fig = plt.figure(figsize=(12, 5))
    grid = fig.add_gridspec(2, 10)
    for i, (image, label) in enumerate(zip(images[:16], labels[:16])):
        ax = fig.add_subplot(grid[i // 8, i % 8])
        # vmin/vmax fixed at the range the net expects: a batch scaled x255 shows as white,
        # a normalised one as dark, instead of matplotlib stretching any range to look right.
        ax.imshow(image.squeeze(0).cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(classes[int(label)], fontsize=7)
        ax.axis("off")
    ax_hist = fig.add_subplot(grid[:, 8:])
    ax_hist.hist(images.flatten().numpy(), bins=50, color="steelblue", log=True)
    ax_hist.set_title("pixel values", fontsize=9)
    fig.suptitle(f"Just before the net: shape {stats['shape']}, {stats['dtype']}, min {stats['min']:.3f}, "
                 f"max {stats['max']:.3f}, mean {stats['mean']:.3f}, std {stats['std']:.3f}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def plot_augmented_batch(originals, augmented, out_path: Path) -> None:
    """Training images from the files (top) and the same images as the training loader hands them
    to the net (bottom): crop, flip and erasing made visible. Fixed grey scale [0, 1]."""
    n = len(originals)
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 3.4), squeeze=False)
    for row, (images, title) in enumerate(((originals, "from the files"), (augmented, "into the net"))):
        for i in range(n):
            axes[row, i].imshow(images[i].squeeze(0).numpy(), cmap="gray", vmin=0, vmax=1)
            axes[row, i].set_xticks([])
            axes[row, i].set_yticks([])
        axes[row, 0].set_ylabel(title, fontsize=8)
    fig.suptitle("Augmentation: the training batch as it enters the net (validation and test never change)",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def plot_first_layer_filters(at_init, trained, stats: dict, out_path: Path, columns: int = 8) -> None:
    """The stem's 3x3 filters at init (left) and after training (right), each filter on its own
    symmetric colour scale (blue negative, red positive), with their neighbour correlation.
    Smooth is good; noise-like after training is the recipe's warning sign."""
    filters = [at_init.detach().float().cpu().flatten(0, 1), trained.detach().float().cpu().flatten(0, 1)]
    n = len(filters[0])
    rows = math.ceil(n / columns)
    fig = plt.figure(figsize=(2 * columns * 0.55 + 0.6, rows * 0.55 + 0.9))
    panels = fig.subfigures(1, 2)
    for panel, weights, key in zip(panels, filters, ("at_init", "trained")):
        axes = panel.subplots(rows, columns, squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < n:
                limit = weights[i].abs().max().item() or 1.0
                ax.imshow(weights[i].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
        panel.suptitle(f"first-layer filters {'at init' if key == 'at_init' else 'after training'}\n"
                       f"neighbour correlation {stats[key]['neighbour_correlation']:.2f}", fontsize=8)
    save_figure(fig, out_path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_learning_curve(points: list[dict], verdict: dict, out_path: Path) -> None:
    """Validation accuracy over training-set size (log x axis), with learning_curve.py's verdict."""
    points = sorted(points, key=lambda p: p["images"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["images"] for p in points], [100 * p["val_accuracy"] for p in points], "o-", label="validation")
    if any(len(p.get("val_accuracies", [])) > 1 for p in points):  # each seed too: the spread behind the mean
        ax.plot([p["images"] for p in points for _ in p["val_accuracies"]],
                [100 * v for p in points for v in p["val_accuracies"]], ".", color="C0", alpha=0.5,
                label="validation, each seed")
    if all("train_accuracy" in p for p in points):
        ax.plot([p["images"] for p in points], [100 * p["train_accuracy"] for p in points], "s--", alpha=0.7,
                label="training (last epoch, augmented)")
    ax.set_xscale("log")
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{verdict['verdict']} ({100 * verdict['gain_per_doubling']:+.2f} points per doubling)", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def plot_overfit_one_batch(step_losses: list[float], evaluations: list[dict], max_loss: float,
                           out_path: Path) -> None:
    """The loss training_step reported at every step (log scale) and the eval-mode accuracy
    while memorising one small batch."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.semilogy(range(1, len(step_losses) + 1), [max(v, 1e-8) for v in step_losses], ".-")
    ax_loss.axhline(max_loss, color="red", ls="--", label=f"pass: loss <= {max_loss}")
    ax_loss.set(xlabel="step", ylabel="loss reported by training_step", title="Overfit one batch: loss")
    ax_loss.legend()
    ax_acc.plot([e["step"] for e in evaluations], [100 * e["accuracy"] for e in evaluations], "o-", color="green")
    ax_acc.set(xlabel="step", ylabel="accuracy (%, eval mode)", title="Overfit one batch: accuracy", ylim=(0, 105))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
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


def plot_batch_level_loss(batch_losses: list[float], out_path: Path = Path("outputs") / "batch_level_loss.png",
                          batches_per_epoch: int | None = None, window: int = 50) -> None:
    """The loss of every single batch plus a moving average: spikes and plateaus the
    epoch averages hide."""
    losses = np.asarray(batch_losses)
    window = max(1, min(window, len(losses) // 5 or 1))
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(12, 4.5))
    ax.plot(losses, lw=0.5, alpha=0.4, label="batch loss")
    ax.plot(np.arange(window - 1, len(losses)), smooth, lw=2, color="C3", label=f"moving average ({window})")
    if batches_per_epoch:
        for x in range(batches_per_epoch, len(losses), batches_per_epoch):
            ax.axvline(x, color="gray", lw=0.5, ls=":")
    ax.set(xlabel="batch (dotted lines: epoch boundaries)", ylabel="cross-entropy", title="Batch-level training loss",
           yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out_path, dpi=110)
    plt.close(fig)


def plot_confusion_matrix(confusion: list[list[int]], classes, out_path: Path) -> None:
    """Absolute counts and row-normalised rates (each row: where one true class goes)."""
    counts = np.asarray(confusion)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, (ax_abs, ax_norm) = plt.subplots(1, 2, figsize=(18, 7.5))
    sns.heatmap(counts, annot=True, fmt="d", cmap="Blues", ax=ax_abs, xticklabels=classes, yticklabels=classes,
                cbar=False)
    sns.heatmap(rates, annot=True, fmt=".2f", cmap="Blues", ax=ax_norm, xticklabels=classes, yticklabels=classes,
                vmin=0, vmax=1)
    for ax, title in ((ax_abs, "Confusion matrix (counts)"), (ax_norm, "Confusion matrix (row-normalised)")):
        ax.set(xlabel="predicted", ylabel="true", title=title)
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def plot_train_vs_test(train_metrics: dict, test_metrics: dict, classes, out_path: Path) -> None:
    """Side by side: overall metrics and per-class accuracy on train vs test."""
    fig, (ax_all, ax_cls) = plt.subplots(1, 2, figsize=(15, 5), gridspec_kw={"width_ratios": [1, 2]})
    keys = ["accuracy", "top3_accuracy", "top5_accuracy", "macro_f1"]
    overall = {"train": [train_metrics[k] for k in keys], "test": [test_metrics[k] for k in keys]}
    per_class = {"train": train_metrics["per_class_accuracy"], "test": test_metrics["per_class_accuracy"]}
    for ax, values, labels in ((ax_all, overall, ["accuracy", "top-3", "top-5", "macro F1"]),
                               (ax_cls, per_class, classes)):
        x = np.arange(len(labels))
        ax.bar(x - 0.2, values["train"], 0.4, label="train")
        ax.bar(x + 0.2, values["test"], 0.4, label="test")
        ax.set_xticks(x, labels, rotation=45 if ax is ax_cls else 0)
        # from at most 0.5 down to below the lowest bar of either split: no bar hides under the axis
        ax.set_ylim(max(0.0, min(0.5, min(values["train"] + values["test"]) - 0.05)), 1.0)
        ax.grid(alpha=0.3, axis="y")
    ax_all.set(ylabel="accuracy, macro F1", title="Overall")
    ax_cls.set(ylabel="accuracy (share of the class's images)", title="Per-class accuracy")
    # one legend for both panels, above them: inside an axes it would cover bars that reach 1.0
    fig.legend(*ax_all.get_legend_handles_labels(), loc="upper center", ncol=2, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def confidence_text(p: float) -> str:
    """A softmax probability with the digits that rank two confident mistakes: 0.1261, 0.99987,
    0.99999910 (as percentages without decimals: 13%, 100%, 100%). Near 1 the decimals grow with
    the nines, so the distance to 1 keeps two significant digits."""
    if p >= 1:  # float32 softmax rounds a margin of more than ~17 logits to exactly 1
        return "p = 1 (float32)"
    return f"p = {p:.{max(4, math.floor(-math.log10(1 - p)) + 2)}f}"


def plot_misclassifications(images, mistakes: list[dict], classes, out_path: Path) -> None:
    """The most confident mistakes: often ambiguous images or wrong labels, sometimes a bug."""
    cols = 4
    rows = max(1, (len(mistakes) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, m in zip(axes.flat, mistakes):
        ax.imshow(images[m["index"]].squeeze(0).cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"true: {classes[m['true']]}\npred: {classes[m['predicted']]}\n"
                     f"{confidence_text(m['confidence'])}"
                     + (f", logit gap {m['margin']:.1f}" if "margin" in m else ""), fontsize=8)
    fig.suptitle(f"Top-{len(mistakes)} most confident mistakes (test set)")
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def plot_prediction_dynamics(dynamics: dict, out_path: Path) -> None:
    """Heatmap of the true-class confidence of a fixed batch per epoch, plus its mean."""
    records = dynamics["records"]
    confidence = np.array([r["true_class_confidence"] for r in records]).T  # samples x epochs
    correct = np.array([[p == y for p, y in zip(r["predicted"], dynamics["labels"])] for r in records]).T
    epochs = [r["epoch"] for r in records]
    fig, (ax_map, ax_mean) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [2, 1]})
    sns.heatmap(confidence, vmin=0, vmax=1, cmap="RdYlGn", ax=ax_map, xticklabels=epochs,
                cbar_kws={"label": "confidence in true class"})
    for (row, col) in zip(*np.nonzero(~correct)):
        ax_map.text(col + 0.5, row + 0.5, "x", ha="center", va="center", fontsize=7)
    ax_map.set(xlabel="epoch (0 = before training)", ylabel="sample of the fixed batch",
               title="Prediction dynamics (x = wrong prediction)")
    ax_mean.plot(epochs, confidence.mean(0), "o-", label="mean true-class confidence")
    ax_mean.plot(epochs, correct.mean(0), "s-", label="accuracy on the fixed batch")
    ax_mean.set(xlabel="epoch", ylim=(0, 1.05), title="Fixed batch over training")
    ax_mean.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs: no tick at 2.5
    ax_mean.grid(alpha=0.3)
    ax_mean.legend()
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


# REPORT.md shows the plots in the order the run makes them, phase by phase (a plot not listed
# here comes last): read top to bottom, it tells the run's story, not the alphabet's.
PLOTS_BY_PHASE = {
    "Data": ["data_samples.png", "class_means.png", "pixel_histogram.png", "human_baseline_samples.png"],
    "Checks before training": ["input_visualization.png", "augmented_batch.png", "lr_schedule.png",
                               "overfit_one_batch.png"],
    "Training": ["training_curves.png", "batch_level_loss.png", "prediction_dynamics.png"],
    "Evaluation (best model, test set)": ["confusion_matrix.png", "train_vs_test_comparison.png",
                                          "misclassifications.png", "first_layer_filters.png"],
}


def write_report(results: dict, out_path: Path) -> None:
    """outputs/REPORT.md: one page with the key numbers, every verdict and every plot."""
    test = results.get("test_metrics", {})
    lines = [
        f"# Run report: {results['version']}",
        "",
        f"- command: `{results['command']}`",
        f"- date: {results['date']}, device: {results['device']}, torch {results['torch_version']}, "
        f"seed {results['seed']}",
        f"- wall time: {results['wall_time_s']:.1f} s (checks: {results['checks_time_s']:.1f} s)",
        f"- parameters: {results['num_parameters']:,}",
        "",
        "## Key numbers",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| test accuracy | {test.get('accuracy', float('nan')):.2%} +- {test.get('accuracy_std_error', 0):.2%} |",
        f"| test loss | {test.get('loss', float('nan')):.4f} |",
        f"| test top-3 / top-5 | {test.get('top3_accuracy', float('nan')):.2%} / "
        f"{test.get('top5_accuracy', float('nan')):.2%} |",
        f"| best epoch (validation accuracy) | {results.get('best_epoch')} ({results.get('best_val_accuracy', 0):.2%}) |",
    ]
    if results["baselines"]:  # step 1 switched off: no row rather than a made-up 0.0%
        lines.append(f"| human baseline (reported by the data set's authors) | "
                     f"{results['baselines']['human_accuracy']:.1%} |")
    checks = results["checks"]
    # "expected" (CheckResult.expected, the reason; absent from older records): a check that fails
    # by design in a healthy run, such as MyNN's train-test gap. Counted apart from the real failures.
    expected = [name for name, c in checks.items() if not c["passed"] and c.get("expected")]
    failed = [name for name, c in checks.items() if not c["passed"] and not c.get("expected")]
    summary = f"{len(checks) - len(expected) - len(failed)}/{len(checks)} passed"
    if failed:
        summary += f"; **FAILED: {', '.join(failed)}**"
    if expected:
        summary += f"; failed as expected: {', '.join(expected)}"
    lines += [
        "",
        "## Checks",
        "",
        summary,
        "",
        "| check | verdict | value | threshold | criterion | hint (when it fails) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in checks.items():
        value = f"{c['value']:.4f}" if isinstance(c["value"], float) else c["value"]
        verdict = "PASS" if c["passed"] else "FAIL (expected)" if name in expected else "**FAIL**"
        hint = "" if c["passed"] else c["hint"]  # a FAIL without what to do about it helps nobody
        if name in expected and isinstance(c["expected"], str):
            hint += f" Expected: {c['expected']}"
        criterion, hint = (" ".join(text.replace("|", "\\|").split()) for text in (c["criterion"], hint))
        lines.append(f"| {name} | {verdict} | {value} | {c['threshold']} | {criterion} | {hint} |")
    lines += ["", "## Plots", ""]
    plots = [name for name in results["outputs"] if name.endswith(".png")]
    listed = [name for names in PLOTS_BY_PHASE.values() for name in names]
    for phase, names in {**PLOTS_BY_PHASE, "Other plots": sorted(set(plots) - set(listed))}.items():
        if shown := [name for name in names if name in plots]:
            lines += [f"### {phase}", ""]
            for name in shown:
                lines += [f"#### {name}", "", f"![{name}]({name})", ""]
    write_text(out_path, "\n".join(lines))
