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


def plot_augmented_batch(plain, draws, labels, classes, normalisation: dict, out_path: Path) -> None:
    """Each image once as stored (top row) and as three draws of the training augmentation.

    Drawn after undoing the normalisation, so the colours are the image's own: a crop
    that loses the object, or a flip where it changes the class, is easy to spot here."""
    mean = torch.tensor(normalisation["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(normalisation["std"]).view(1, 3, 1, 1)
    rows = [plain] + list(draws)
    count = len(plain)
    fig, axes = plt.subplots(len(rows), count, figsize=(count * 1.6, len(rows) * 1.7), squeeze=False)
    for r, batch in enumerate(rows):
        shown = (batch.detach().float().cpu() * std + mean).clamp(0, 1)
        for c in range(count):
            ax = axes[r][c]
            ax.imshow(shown[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(classes[int(labels[c])], fontsize=8)
        axes[r][0].set_ylabel("as stored" if r == 0 else f"draw {r}", fontsize=8)
    fig.suptitle("Training augmentation: RandomResizedCrop and flip (rows 2-4), normalisation undone for display")
    fig.tight_layout()
    save_figure(fig, out_path, dpi=90)
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


def plot_gradient_flow(details: dict, out_path: Path) -> None:
    """||grad|| / ||w|| of every block after one backward pass at init (the gradient_flow check's
    details), on a log scale: a block with no gradient, or orders of magnitude less, stands out."""
    relative = details["block_relative_gradient"]
    names = list(relative)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    starved = {n for n in names if any(p.startswith(n + ".") for p in details["without_gradient"])}
    ax.bar(range(len(names)), [max(relative[n], 1e-12) for n in names],
           color=["tab:red" if n in starved else "tab:blue" for n in names])
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="||grad|| / ||weights||", title="Gradient flow at init: relative gradient of every block")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def plot_gradient_norms(history_path: Path, out_path: Path, first_epochs: int = 20) -> None:
    """Mean gradient norm per layer group in each of the first epochs, from history.jsonl: the
    seed's "early gradients" (a badly initialised final layer shows up as large early norms)."""
    history = [h for h in read_history(history_path) if "grad_norm_per_group" in h][:first_epochs]
    if not history:
        return
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for group in history[0]["grad_norm_per_group"]:
        ax.plot([h["epoch"] for h in history], [h["grad_norm_per_group"][group] for h in history], "o-",
                label=group, markersize=3)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs: no tick at 2.5
    ax.set(xlabel="epoch", ylabel="mean gradient norm per step",
           title=f"Gradient norms per layer group, first {len(history)} epochs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
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


def plot_ensemble(rows: list[dict], out_path: Path) -> None:
    """ensemble.png: validation accuracy of the ensemble of the first K members against K, without and
    with flip TTA, next to the mean accuracy of those K members alone: the gap is the ensemble's gain."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for tta, colour in ((False, "tab:blue"), (True, "tab:orange")):
        own = [r for r in rows if r["tta"] == tta]
        if not own:
            continue
        sizes = [r["size"] for r in own]
        label = "flip TTA" if tta else "no TTA"
        ax.plot(sizes, [100 * r["val_accuracy"] for r in own], "o-", color=colour, label=f"ensemble, {label}")
        ax.plot(sizes, [100 * r["members_mean"] for r in own], "s--", color=colour, alpha=0.6,
                label=f"members' mean, {label}")
    ax.set(xlabel="members (the first K)", ylabel="validation accuracy (%)",
           title="Ensembles on validation: gain over the members' mean")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def plot_calibration(calibration: dict, out_path: Path) -> None:
    """calibration.png: reliability diagrams of the best member and of the chosen ensemble, on validation
    and, once read, on test. Bars below the diagonal: overconfident; above: underconfident."""
    panels = [(split, who, calibration[split][who]) for split in ("validation", "test") if split in calibration
              for who in ("best_member", "ensemble")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), squeeze=False)
    for ax, (split, who, cal) in zip(axes.flat, panels):
        bins = cal["bins"]
        centres = [(i + 0.5) / bins for i in range(bins)]
        filled = [c > 0 for c in cal["count"]]
        ax.bar([c for c, f in zip(centres, filled) if f], [a for a, f in zip(cal["accuracy"], filled) if f],
               1 / bins, edgecolor="black", alpha=0.7, label="accuracy in bin")
        ax.plot([c for c, f in zip(centres, filled) if f],
                [m for m, f in zip(cal["mean_confidence"], filled) if f], "rs", markersize=3,
                label="mean confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence",
               title=f"{split}: {who.replace('_', ' ')}\nECE {cal['ece']:.4f}")
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("accuracy")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def plot_per_class(changes: dict, out_path: Path, title: str) -> None:
    """per_class.png: each class's accuracy for the best member alone and for the ensemble, with the
    images the ensemble fixed (+) and broke (-) written above each pair of bars."""
    rows = changes["classes"]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    x = list(range(len(rows)))
    member = [100 * (r["best_member"] or 0) for r in rows]
    ensemble = [100 * (r["ensemble"] or 0) for r in rows]
    ax.bar([i - 0.2 for i in x], member, 0.4, label="best member alone", color="tab:gray")
    ax.bar([i + 0.2 for i in x], ensemble, 0.4, label="ensemble", color="tab:blue")
    for i, r in enumerate(rows):
        ax.text(i, max(member[i], ensemble[i]) + 1, f"+{r['fixed']}/-{r['broken']}", ha="center", fontsize=7)
    ax.set_xticks(x, [r["class"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="accuracy (%)", ylim=(0, 112), title=title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
    plt.close(fig)


def write_report(results: dict, out_path: Path) -> None:
    """REPORT.md: one page with the members, the ensemble table, the choice, the test numbers (once
    read), the classes fixed and broken, calibration, every verdict and every plot of the run."""
    from shared.runs import write_text

    choice = results.get("choice", {})
    lines = [f"# Run report: {results['version']}", "",
             f"- command: `{results['command']}`",
             f"- date: {results['date']}, device: {results['device']}, torch {results['torch_version']}, "
             f"seed {results['seed']}",
             f"- wall time: {results['wall_time_s']:.1f} s (checks: {results.get('checks_time_s', 0):.1f} s)",
             f"- data: subset fingerprint {results['data']['subset_fingerprint']}, "
             f"{results['data']['train_images']:,} training, {results['data']['val_images']:,} validation, "
             f"{results['data']['test_images']:,} test images",
             "- events: " + " -> ".join(f"{e['event']} ({e['time']})" for e in results.get("events", [])), "",
             "## Members", "", "| member | seed | from | best epoch | validation | validation, flip TTA |",
             "| --- | --- | --- | --- | --- | --- |"]
    for m in results.get("members", []):
        lines.append(f"| {m['name']} | {m['seed']} | {m['folder']} | {m['best_epoch']} | "
                     f"{m['best_val_accuracy']:.2%} | {m['val_accuracy_tta']:.2%} |")
    lines += ["", "## Ensembles on validation (the first K members)", "",
              "| K | flip TTA | accuracy | members' mean | gain | disagreement | NLL | ECE |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results.get("ensemble", {}).get("table", []):
        chosen = " **(chosen)**" if (r["size"], r["tta"]) == (choice.get("size"), choice.get("tta")) else ""
        lines.append(f"| {r['size']} | {'on' if r['tta'] else 'off'} | {r['val_accuracy']:.2%}{chosen} | "
                     f"{r['members_mean']:.2%} | {100 * r['gain']:+.2f} | {r['disagreement']:.2%} | "
                     f"{r['val_loss']:.4f} | {r['ece']:.4f} |")
    if "test_accuracy" in results:
        lines += ["", "## The test set, read once after the choice", "",
                  f"- chosen ensemble: {results['test_accuracy']:.2%} +- {results['test_accuracy_se']:.2%}",
                  f"- best member alone ({results['best_member']}): {results['best_member_test_accuracy']:.2%}"]
    elif choice:
        lines += ["", f"The test set was not read (test_read: {str(results.get('test_read')).lower()})."]
    for split, changes in results.get("per_class", {}).items():
        lines += ["", f"## Classes fixed and broken ({split}): ensemble against its best member", "",
                  f"Fixed: {', '.join(changes['fixed_classes']) or 'none'}; broken: "
                  f"{', '.join(changes['broken_classes']) or 'none'} ({changes['images_fixed']} images fixed, "
                  f"{changes['images_broken']} broken)."]
    for split, who in results.get("calibration", {}).items():
        lines.append(f"- ECE on {split}: best member {who['best_member']['ece']:.4f}, ensemble "
                     f"{who['ensemble']['ece']:.4f}")
    checks = results.get("checks", {})
    lines += ["", "## Checks", "", "| check | verdict | value | criterion |", "| --- | --- | --- | --- |"]
    for name, c in checks.items():
        verdict = "pass" if c["passed"] else ("FAIL (expected)" if c.get("expected") else "FAIL")
        lines.append(f"| {name} | {verdict} | {c['value']} | {c['criterion'].replace('|', '/')} |")
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({name})" for name in results.get("outputs", []) if name.endswith(".png")]
    write_text(out_path, "\n".join(lines) + "\n")
