"""Turn per-epoch diagnostics into a diagnosis with recommendations (seed 004).

    python -m scripts.analyze_diagnostics --file results/diagnostics/train_diagnostics.jsonl

Reads one JSON object per line (train_diagnostics.jsonl, val_diagnostics.jsonl,
or a history.jsonl of v1/v2, whose extra keys are ignored) and prints:
learning-rate analysis, loss analysis with plateau detection, accuracy
progress, gradient-norm analysis, weight-update analysis, and a diagnosis with
recommendations. Writes one PNG of the curves (--plot, default: next to the
file). Exit code: 0 no issue found, 1 an issue was diagnosed, 2 the file could
not be read.

Every threshold is a named constant below, with the reason for its value.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

# ---- thresholds ----
# An epoch-to-epoch LR change to at most half counts as a step reduction.
# ReduceLROnPlateau divides by 10; a cosine schedule over N epochs only halves
# between consecutive epochs in its last two epochs.
LR_DROP_RATIO = 0.5
# Seed 004: "LR drops within first 5-10 epochs" ...
LR_EARLY_EPOCH = 10
# ... "loss plateaus shortly after": judged on at least this many epochs run
# with the reduced LR (which also leaves out a cosine schedule's last epochs).
LR_MIN_EPOCHS_AFTER = 3
# The loss has plateaued when the best loss of the next PLATEAU_WINDOW epochs
# improves on the best so far by less than PLATEAU_MIN_IMPROVEMENT (relative).
# Healthy CIFAR-100 training improves the loss by several % per 5 epochs until late.
PLATEAU_WINDOW = 5
PLATEAU_MIN_IMPROVEMENT = 0.01
# Seed 004: "loss improves for 3-6 epochs then stops" counts as early ...
PLATEAU_EARLY_EPOCH = 10
# ... when "accuracy remains very low (< 20%)" (percent, as in the files).
LOW_ACCURACY = 20.0
# Seed 004: "very low accuracy (< 5%)" for 100 classes, i.e. 5x chance; judged
# only after NEAR_CHANCE_MIN_EPOCHS, because every run starts near chance.
NEAR_CHANCE_FACTOR = 5.0
NEAR_CHANCE_MIN_EPOCHS = 3
# Seed 004: "gradient norms < 0.01". Measured on unscaled gradients, before clipping.
VANISHING_GRAD_NORM = 0.01
# A ResNet18 on CIFAR-100 has unscaled gradient norms of order 0.1-10; clipping
# at 1.0 hides spikes from the optimizer, but a norm above 100 means a batch
# (or the LR) is blowing the model up.
EXPLODING_GRAD_NORM = 100.0
# GradScaler multiplies the loss (hence every gradient) by 2**16 = 65536 at the
# start. Unscaled norms are O(0.1-10), so a gradient norm that stays above
# 1000 for most of the run was measured on *scaled* gradients: clip_grad_norm_
# ran before scaler.unscale_(optimizer), and clipping to 1.0 then shrank every
# step ~65536x more than intended.
AMP_SCALED_GRAD_NORM = 1000.0
# weight_update_norm = ||theta_end - theta_start|| / ||theta_start|| per epoch.
# A network that learns moves its weights by 1% or more per epoch for most of
# the run; below 0.1% an epoch changes nothing measurable (seed 004's "weight
# changes < 1e-6" is the same idea per parameter and step).
WEIGHT_UPDATE_COLLAPSED = 1e-3

KNOWN_KEYS = {"epoch", "loss", "accuracy", "learning_rate", "mean_grad_norm", "min_grad_norm", "max_grad_norm",
              "weight_update_norm", "num_batches"}


@dataclass
class Diagnosis:
    id: str
    title: str
    evidence: str
    recommendations: list[str]


@dataclass
class Report:
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    diagnoses: list[Diagnosis] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.diagnoses]

    def text(self) -> str:
        lines = [f"note: {n}" for n in self.notes]
        for title, body in self.sections:
            lines += ["", f"== {title} ==", *[f"  {line}" for line in body]]
        lines += ["", "== Diagnosis & Recommendations =="]
        if not self.diagnoses:
            lines.append("  No issue found: none of the checks above fired. Training looks healthy by these measures.")
        for i, d in enumerate(self.diagnoses, 1):
            lines += [f"  [{i}] {d.title}", f"      evidence: {d.evidence}"]
            lines += [f"      - {r}" for r in d.recommendations]
        return "\n".join(lines)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def load_records(path: Path) -> tuple[list[dict], list[str]]:
    """The JSON objects of a JSONL file; bad lines are skipped with a note (a killed run can leave half a line)."""
    records, notes = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            notes.append(f"line {number} is not valid JSON and was skipped")
            continue
        if not isinstance(record, dict):
            notes.append(f"line {number} is not a JSON object and was skipped")
            continue
        records.append(record)
    return records, notes


def series(records: list[dict], key: str) -> list[tuple[int, float]]:
    """(epoch, value) for every record whose `key` is a number (null and NaN left out)."""
    points = []
    for i, r in enumerate(records, 1):
        epoch = r.get("epoch") if isinstance(r.get("epoch"), int) else i
        value = _number(r.get(key))
        if value is not None and math.isfinite(value):
            points.append((epoch, value))
    return points


def _fmt(x: float) -> str:
    return f"{x:.4g}" if 1e-3 <= abs(x) < 1e5 or x == 0 else f"{x:.3e}"


def _plateau_start(loss: list[tuple[int, float]]) -> int | None:
    """First epoch after which PLATEAU_WINDOW epochs bring less than PLATEAU_MIN_IMPROVEMENT."""
    values = [v for _, v in loss]
    for i in range(len(values) - PLATEAU_WINDOW):
        best_so_far = min(values[: i + 1])
        best_next = min(values[i + 1: i + 1 + PLATEAU_WINDOW])
        if best_next > best_so_far * (1 - PLATEAU_MIN_IMPROVEMENT):
            return loss[i][0]
    return None


def analyze(records: list[dict], num_classes: int = 100) -> Report:
    report = Report()
    unknown = sorted({k for r in records for k in r} - KNOWN_KEYS)
    if unknown:
        report.notes.append(f"ignoring keys this analyzer does not use: {', '.join(unknown)}")
    epochs = len(records)
    last_epoch = max([e for e, _ in series(records, "epoch")] or [epochs])
    chance_loss, chance_acc = math.log(num_classes), 100.0 / num_classes
    lr, loss, acc = series(records, "learning_rate"), series(records, "loss"), series(records, "accuracy")
    mean_g, min_g, max_g = series(records, "mean_grad_norm"), series(records, "min_grad_norm"), series(records, "max_grad_norm")
    updates = series(records, "weight_update_norm")
    add = report.diagnoses.append

    # ---- learning rate ----
    body = []
    early_drop = None
    if not lr:
        body.append("no learning_rate recorded")
    else:
        drops = [(e1, a, b) for (_, a), (e1, b) in zip(lr, lr[1:]) if a > 0 and b <= a * LR_DROP_RATIO]
        body.append(f"initial {_fmt(lr[0][1])}, final {_fmt(lr[-1][1])}, over {len(lr)} epoch(s)")
        if len(lr) == 1:
            body.append("one epoch only: nothing to compare yet")
        elif drops:
            body.append("step reductions (to <= {:.0%} of the previous epoch's LR): ".format(LR_DROP_RATIO)
                        + ", ".join(f"epoch {e}: {_fmt(a)} -> {_fmt(b)}" for e, a, b in drops[:8])
                        + (" ..." if len(drops) > 8 else ""))
            first = drops[0][0]
            if first > LR_EARLY_EPOCH:
                body.append(f"first reduction at epoch {first}: not early (after epoch {LR_EARLY_EPOCH})")
            elif last_epoch - first + 1 < LR_MIN_EPOCHS_AFTER:
                body.append(f"first reduction at epoch {first}: too few epochs after it to judge (< {LR_MIN_EPOCHS_AFTER})")
            else:
                early_drop = first
                body.append(f"first reduction at epoch {first}: early (within the first {LR_EARLY_EPOCH} epochs)")
        else:
            changed = any(abs(b - a) > 1e-12 for (_, a), (_, b) in zip(lr, lr[1:]))
            body.append("no step reductions; the LR " + ("changes smoothly (cosine / one-cycle style)" if changed else "is constant"))
    report.sections.append(("Learning Rate Analysis", body))

    # ---- loss ----
    body = []
    plateau = None
    if not loss:
        body.append("no loss recorded")
    else:
        best_epoch, best = min(loss, key=lambda p: p[1])
        body.append(f"initial {loss[0][1]:.4f}, final {loss[-1][1]:.4f}, best {best:.4f} (epoch {best_epoch}); "
                    f"chance level ln({num_classes}) = {chance_loss:.3f}")
        if len(loss) <= PLATEAU_WINDOW:
            body.append(f"plateau detection needs more than {PLATEAU_WINDOW} epochs ({len(loss)} so far)")
        else:
            plateau = _plateau_start(loss)
            body.append(f"plateau: from epoch {plateau} the next {PLATEAU_WINDOW} epochs improved the loss by less than "
                        f"{PLATEAU_MIN_IMPROVEMENT:.0%}" if plateau is not None else
                        f"no plateau: every {PLATEAU_WINDOW}-epoch window improved the loss by at least {PLATEAU_MIN_IMPROVEMENT:.0%}")
    missing_loss = epochs - len(loss)
    if missing_loss and any("loss" in r for r in records):
        body.append(f"{missing_loss} epoch(s) have a null/NaN loss: training diverged there")
    report.sections.append(("Loss Analysis", body))

    # ---- accuracy ----
    body = []
    if not acc:
        body.append("no accuracy recorded")
    else:
        best_epoch, best_acc = max(acc, key=lambda p: p[1])
        body.append(f"initial {acc[0][1]:.2f}%, final {acc[-1][1]:.2f}%, best {best_acc:.2f}% (epoch {best_epoch}); "
                    f"chance {chance_acc:.2f}%")
        if len(acc) > PLATEAU_WINDOW:
            body.append(f"gain over the last {PLATEAU_WINDOW} epochs: {acc[-1][1] - acc[-1 - PLATEAU_WINDOW][1]:+.2f} points")
    report.sections.append(("Accuracy Analysis", body))

    # ---- gradient norms ----
    body = []
    amp_scaled = exploding = False
    if not mean_g:
        body.append("no gradient norms recorded (a validation file has none)")
    else:
        typical = statistics.median(v for _, v in mean_g)
        peak = max(v for _, v in (max_g or mean_g))
        body.append(f"mean norm per epoch: first {_fmt(mean_g[0][1])}, last {_fmt(mean_g[-1][1])}, median {_fmt(typical)}")
        if min_g:
            body.append(f"smallest single step {_fmt(min(v for _, v in min_g))}, largest {_fmt(peak)}")
        missing = [r.get("epoch", i) for i, r in enumerate(records, 1)
                   if "mean_grad_norm" in r and not math.isfinite(_number(r["mean_grad_norm"]) or math.nan)]
        if missing:
            body.append(f"no finite gradient norm in epoch(s) {missing[:5]}: every step overflowed")
        amp_scaled = typical > AMP_SCALED_GRAD_NORM
        exploding = not amp_scaled and (peak > EXPLODING_GRAD_NORM or bool(missing))
        if amp_scaled:
            body.append(f"median above {_fmt(AMP_SCALED_GRAD_NORM)}: these look like gradients still multiplied by the AMP loss scale")
        elif exploding:
            body.append(f"largest norm above {_fmt(EXPLODING_GRAD_NORM)}: exploding gradients")
        elif typical < VANISHING_GRAD_NORM:
            body.append(f"median below {VANISHING_GRAD_NORM}: vanishing gradients")
        else:
            body.append(f"within the healthy range ({VANISHING_GRAD_NORM} .. {_fmt(EXPLODING_GRAD_NORM)})")
    report.sections.append(("Gradient Norm Analysis", body))

    # ---- weight updates ----
    body = []
    collapsed = False
    if not updates:
        body.append("no weight_update_norm recorded (a validation file has none)")
    else:
        typical_update = statistics.median(v for _, v in updates)
        body.append(f"relative change per epoch: first {_fmt(updates[0][1])}, last {_fmt(updates[-1][1])}, median {_fmt(typical_update)}")
        collapsed = typical_update < WEIGHT_UPDATE_COLLAPSED
        body.append(f"median below {WEIGHT_UPDATE_COLLAPSED:g}: the weights barely move, learning has stalled" if collapsed
                    else "the weights keep moving: learning is happening")
    report.sections.append(("Weight Update Analysis", body))

    # ---- diagnosis, root causes first ----
    if amp_scaled:
        add(Diagnosis(
            "amp_scaled_gradients", "Gradient norms look scaled by the AMP loss scale (~65536): clipping before unscale_",
            f"median gradient norm {_fmt(statistics.median(v for _, v in mean_g))} > {_fmt(AMP_SCALED_GRAD_NORM)}; unscaled "
            f"gradients of this model are O(0.1-10). Clipping these to the max norm leaves steps ~65536x too small"
            + (f"; weight updates per epoch: median {_fmt(statistics.median(v for _, v in updates))}" if updates else ""),
            ["Call scaler.unscale_(optimizer) after scaler.scale(loss).backward() and before clip_grad_norm_ "
             "(see 'AMP gradient clipping fix' in cifar100/v2-diagnostics/DIAGNOSTICS.md)",
             "Log the norm that clip_grad_norm_ returns after unscaling: it should fall to O(0.1-10)",
             "Fix this first: the other symptoms below are likely its consequences"]))
    if exploding:
        add(Diagnosis(
            "exploding_gradients", "Exploding gradients",
            f"largest gradient norm {_fmt(peak)} > {_fmt(EXPLODING_GRAD_NORM)}" + (" and epochs without any finite norm" if missing else ""),
            ["Lower the learning rate (or warm it up: --scheduler onecycle)",
             "Keep gradient clipping on (max norm 1.0) and make sure it runs on unscaled gradients",
             "Look for bad inputs (NaN/inf, unnormalised images) in the batches where the norm jumps",
             "If it only happens with AMP, try --no-amp to rule out float16 overflow"]))
    if mean_g and not amp_scaled and statistics.median(v for _, v in mean_g) < VANISHING_GRAD_NORM:
        add(Diagnosis(
            "vanishing_gradients", "Vanishing gradients",
            f"median gradient norm {_fmt(statistics.median(v for _, v in mean_g))} < {VANISHING_GRAD_NORM}",
            ["Increase the learning rate",
             "Reduce gradient clipping pressure (currently max norm 1.0) or check that it clips unscaled gradients",
             "Check the model initialisation (Kaiming for ReLU networks)",
             "Check the activations for dead ReLUs (outputs that are always 0)"]))
    if collapsed:
        add(Diagnosis(
            "weight_updates_collapsed", "Weight updates have collapsed",
            f"median relative weight change per epoch {_fmt(statistics.median(v for _, v in updates))} < {WEIGHT_UPDATE_COLLAPSED:g}",
            ["If the gradient norms are huge, see the AMP diagnosis above: the steps are clipped to nothing",
             "If the LR was cut to a tiny value early, see the learning-rate diagnosis",
             "Otherwise increase the learning rate"]))
    if acc and len(acc) >= NEAR_CHANCE_MIN_EPOCHS and acc[-1][1] < NEAR_CHANCE_FACTOR * chance_acc:
        add(Diagnosis(
            "near_chance", "Accuracy stuck near chance",
            f"final accuracy {acc[-1][1]:.2f}% < {NEAR_CHANCE_FACTOR:g} x chance ({NEAR_CHANCE_FACTOR * chance_acc:.2f}%) after {len(acc)} epochs"
            + (f"; final loss {loss[-1][1]:.3f} vs ln({num_classes}) = {chance_loss:.3f}" if loss else ""),
            ["Check the labels: class indices must match the images (label ids in alphabetical class order)",
             "Check the transforms: bash scripts/bash/check_transforms.sh",
             "Check that the right data set is loaded (100 classes, 32x32 RGB)",
             "Check gradient flow: the gradient-norm and weight-update sections above"]))
    if early_drop is not None and loss:
        at_drop = [v for e, v in loss if e < early_drop]
        after = [v for e, v in loss if e >= early_drop]
        if at_drop and after and min(after) > at_drop[-1] * (1 - PLATEAU_MIN_IMPROVEMENT):
            add(Diagnosis(
                "lr_reduced_too_early", "Learning rate reduced too early",
                f"LR cut at epoch {early_drop} and the loss improved by less than {PLATEAU_MIN_IMPROVEMENT:.0%} afterwards "
                f"({at_drop[-1]:.4f} before, best {min(after):.4f} after)",
                ["Increase ReduceLROnPlateau's patience (currently 3), e.g. --patience 5",
                 "Switch to --scheduler cosine (the default in v2) or --scheduler onecycle",
                 "Increase the initial learning rate"]))
    if plateau is not None and plateau <= PLATEAU_EARLY_EPOCH and acc and acc[-1][1] < LOW_ACCURACY:
        add(Diagnosis(
            "loss_plateaued_early", "Loss plateaued early",
            f"no {PLATEAU_MIN_IMPROVEMENT:.0%} improvement in {PLATEAU_WINDOW} epochs from epoch {plateau} on, "
            f"and accuracy is only {acc[-1][1]:.2f}% (< {LOW_ACCURACY:g}%)",
            ["Over-regularisation? Reduce label smoothing 0.1 -> 0.05 or 0.0, weight decay 5e-4 -> 1e-4, "
             "RandAugment magnitude 11 -> 9",
             "Data issue? Run bash scripts/bash/check_transforms.sh",
             "LR too low? Use a schedule without early reductions (--scheduler cosine)"]))
    return report


def plot_curves(records: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [("loss", False), ("accuracy", False), ("learning_rate", True),
              (("mean_grad_norm", "min_grad_norm", "max_grad_norm"), True), ("weight_update_norm", True)]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for ax, (keys, log) in zip(axes.flat, panels):
        keys = (keys,) if isinstance(keys, str) else keys
        drawn = False
        for key in keys:
            points = [(e, v) for e, v in series(records, key) if not log or v > 0]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=key)
                drawn = True
        if drawn:
            ax.set_yscale("log" if log else "linear")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(keys[0] if len(keys) == 1 else "grad norm", fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes.flat[-1].axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", type=Path, default=Path("results/diagnostics/train_diagnostics.jsonl"))
    p.add_argument("--num-classes", type=int, default=100, help="for chance level (default: CIFAR-100)")
    p.add_argument("--plot", type=Path, default=None, help="PNG of the curves (default: FILE with .png)")
    args = p.parse_args(argv)
    try:
        records, notes = load_records(args.file)
    except OSError as err:
        print(f"error: cannot read {args.file}: {err}", file=sys.stderr)
        return 2
    if not records:
        print(f"error: {args.file} holds no epoch records yet", file=sys.stderr)
        return 2
    report = analyze(records, args.num_classes)
    report.notes[:0] = notes
    print(f"Diagnostics of {args.file}: {len(records)} epoch(s)")
    print(report.text())
    plot = args.plot or args.file.with_suffix(".png")
    try:
        plot_curves(records, plot, f"{args.file.name}: {', '.join(report.ids) or 'no issue found'}")
        print(f"\ncurves: {plot}")
    except OSError as err:
        print(f"\nwarning: could not write the plot {plot}: {err}", file=sys.stderr)
    return 1 if report.diagnoses else 0


if __name__ == "__main__":
    sys.exit(main())
