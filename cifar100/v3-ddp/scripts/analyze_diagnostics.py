"""Turn a training run's per-epoch records into a diagnosis with recommendations (seed 004).

    python scripts/analyze_diagnostics.py                    # the newest run: outputs/latest
    python scripts/analyze_diagnostics.py outputs/2026-12-04_14-03-11-full   # a run folder (or main.py's --out)
    python scripts/analyze_diagnostics.py outputs/latest/diagnostics/train_diagnostics.jsonl
    python -m scripts.analyze_diagnostics --file results/real/diagnostics/train_diagnostics.jsonl

Reads the training records (train_diagnostics.jsonl, or a history.jsonl of v1/v2), the
validation records beside them (val_diagnostics.jsonl, or history.jsonl's val_loss and
val_accuracy) and the run's results.json where there is one (the configuration: scheduler,
patience, AMP, learning rate, weight decay; the validation set size; the test accuracy).
Prints: the learning-rate schedule, loss, accuracy (and the unit it was recorded in),
gradient norms and loss scale, weight updates, train vs validation, and a diagnosis with
recommendations. Writes one PNG of the curves (--plot, default: next to the file).

Exit code: 0 no issue found, 1 an issue was diagnosed, 2 the input could not be read, or
the accuracy's unit (percent or fraction) could not be decided and nothing else was found.

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

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # shared/runs.py: what a run folder is (outputs/latest), atomic writes
from shared.runs import LATEST, RESULTS_FILE, RunFolderError, resolve_run_dir, save_figure  # noqa: E402

# ---- learning-rate schedule ----
# Two logged LRs are "the same" within this relative difference: the constant stretch of a step
# or plateau schedule logs the identical float, while cosine over 120 epochs already moves the
# LR by 2e-4 (relative) from epoch 1 to epoch 2.
LR_SAME_TOL = 1e-6
# A schedule that changes the LR in at least this share of its epochs is smooth (cosine, linear,
# exponential); a step or plateau schedule holds it for several epochs between a few drops.
SMOOTH_MIN_CHANGE_SHARE = 0.6
# The drops of a step schedule are large: StepLR/MultiStepLR factors are 0.1 to 0.6,
# ReduceLROnPlateau's default is 0.1. A piecewise-constant trace whose typical drop keeps more
# than this share of the LR is a smooth schedule logged with few digits (cosine printed as 0.1,
# 0.09, 0.08, ...). Rounding to one digit can turn one 0.6 step into 0.02 -> 0.01 and another
# into 0.01 -> 0.008; the median over all drops is robust to that.
STEP_MAX_DROP_RATIO = 0.8
# Seed 004: "LR drops within first 5-10 epochs" ...
LR_EARLY_EPOCH = 10
# ... "loss plateaus shortly after". Each early cut is judged on the LR_JUDGE_WINDOW epochs right
# after the epoch of the cut (stopping before the next cut where that leaves at least
# LR_MIN_JUDGE_EPOCHS), against the best loss up to and including the cut's epoch: a cut usually
# brings a small dip at once, and a dip later in the run (another cut, a noisy epoch) must not
# hide that the loss flattened right after this one.
LR_JUDGE_WINDOW = 3
LR_MIN_JUDGE_EPOCHS = 2
# ---- loss ----
# The loss has plateaued when the best loss of the next PLATEAU_WINDOW epochs improves on the
# best so far by less than PLATEAU_MIN_IMPROVEMENT (relative). Healthy CIFAR-100 training
# improves the loss by several % per 5 epochs until late. The same 1% judges an LR cut.
PLATEAU_WINDOW = 5
PLATEAU_MIN_IMPROVEMENT = 0.01
# Seed 004: "loss improves for 3-6 epochs then stops" counts as early ...
PLATEAU_EARLY_EPOCH = 10
# ... when "accuracy remains very low (< 20%)".
LOW_ACCURACY = 20.0
# ---- accuracy ----
# Seed 004: "very low accuracy (< 5%)" for 100 classes, i.e. 5x chance; judged only after
# NEAR_CHANCE_MIN_EPOCHS, because every run starts near chance.
NEAR_CHANCE_FACTOR = 5.0
NEAR_CHANCE_MIN_EPOCHS = 3
# The unit (percent or fraction) is read from the values where one exceeds 1, else from the
# loss. exp(-loss) is the (geometric-mean) probability the model gives the right class, and
# accuracy goes with it: accuracy / exp(-loss) is 1 to 3 for v1 (at chance) and 3 to 6 for v2
# (up to 47%) in this repository's runs; overfitted, overconfident models reach more. A reading
# (percent or fraction) is contradicted by an epoch where the ratio falls outside these bounds,
# which leave wide margins: "0.47%" at a loss of 2.56 (exp(-2.56) = 7.7%) gives 0.06, because a
# loss far below ln(100) does not come with chance-level accuracy.
ACC_TO_TRUE_PROB_MIN = 0.25
ACC_TO_TRUE_PROB_MAX = 40.0
# A reading is rejected when more than this share of its epochs contradict it (epoch 1 is noisy).
UNIT_MAX_CONTRADICTING = 0.2
# ---- gradients ----
# Seed 004: "gradient norms < 0.01". Measured on unscaled gradients, before clipping.
VANISHING_GRAD_NORM = 0.01
# A ResNet18 on CIFAR-100 has unscaled gradient norms of order 0.1-10; clipping at 1.0 hides
# spikes from the optimizer, but norms above 100 mean a batch (or the LR) is blowing the model up.
EXPLODING_GRAD_NORM = 100.0
# One step above EXPLODING_GRAD_NORM in the first epoch is common (random initialisation,
# BatchNorm statistics settling) and clipping absorbs it. Exploding gradients are a pattern:
# steps above it in at least this many epochs, or in the run's last two epochs, or a loss that
# became NaN/inf, or an epoch in which no step had finite gradients.
EXPLODING_MIN_EPOCHS = 3
# GradScaler multiplies the loss (hence every gradient) by 2**16 = 65536 at the start. Without a
# recorded loss scale, a norm that stays above this for most of the run (and does not climb, as
# exploding norms do) was measured on *scaled* gradients: clip_grad_norm_ ran before
# scaler.unscale_(optimizer). With the loss scale recorded, the norm divided by the scale is
# tested instead: it is what the norm is unscaled, whatever the scale has fallen to.
AMP_SCALED_GRAD_NORM = 1000.0
# Exploding norms climb; norms multiplied by a loss scale stay put. "Climbing": the median of
# the last third of the epochs is this many times the median of the first third.
GRAD_NORM_CLIMB = 10.0
# GradScaler halves its scale on every overflow and doubles it after 2000 clean steps; a healthy
# float16 run keeps it in the thousands or above. Far below, the gradients overflowed often.
LOSS_SCALE_LOW = 1024.0
# ---- weight updates ----
# A network that learns moves its weights by 1% or more per epoch for most of the run; below
# 0.1% an epoch changes nothing measurable (seed 004's "weight changes < 1e-6" is the same idea
# per parameter and step). Judged on the gradient's part of the change (grad_update_norm) where
# recorded: weight decay alone moves the weights by lr x wd / (1 - momentum) per step, i.e.
# 1.3% per epoch at lr 0.1, wd 5e-4, momentum 0.9 and 26 steps, even when the gradients are 0.
WEIGHT_UPDATE_COLLAPSED = 1e-3
# Without grad_update_norm, a total change below this multiple of the change weight decay alone
# makes cannot show that the gradient moves the weights (the two parts add like vectors: a
# gradient part as large as the decay part raises the total only ~1.4x).
DECAY_ONLY_MAX_RATIO = 1.5
# ---- train vs validation ----
# Compared only where the training accuracy is at least this multiple of chance: near chance,
# train and validation agree whatever the transforms.
VAL_COMPARE_MIN_FACTOR = 5.0
# Clean validation images are easier than augmented training images, so in the first epochs
# after that (before overfitting closes the gap) validation scores above training: v2's real
# run (RandAugment 11, crop, flip) +2 to +5 points and a 3-6% lower loss in epochs 2-6; a CPU
# run of v2 (20 classes) +4 to +7 points. v1's bug augments the validation images as well, and
# the advantage vanishes: the same CPU run with the bug planted had -0.7 points and a 2.9%
# *higher* loss in its first 5 such epochs. Judged on this many epochs; the bug is diagnosed
# when both advantages are (nearly) gone. On the full data (H100, 2026-11-24): healthy v2 runs
# +5.5 to +6.2 points and a 7.5-7.8% lower loss; v1 with only its clipping bug fixed (validation
# still augmented) +0.37 points and 0.8%: the validation model, taken at the end of the epoch,
# is a little better than the training accuracy's average over the epoch. A much weaker
# augmentation than RandAugment 11 shrinks the healthy advantage too: read this signal with
# the test-vs-validation one.
VAL_EARLY_EPOCHS = 5
VAL_EARLY_MAX_ACC_ADVANTAGE = 1.0  # points of validation over training accuracy
VAL_EARLY_MAX_LOSS_ADVANTAGE = 0.02  # validation loss this fraction below the training loss
# The test split is always evaluated with the evaluation transform, and validation and test
# images come from the same distribution: a best validation accuracy this many points, and
# VAL_SIGMAS binomial standard errors, below the test accuracy means harder (augmented)
# validation images (the CPU run with the bug planted: 8.8 points, 3.8 standard errors). The
# best epoch is picked on validation, which biases it upwards, i.e. against this rule.
VAL_TEST_MIN_POINTS = 3.0
VAL_SIGMAS = 3.0
# Epoch-to-epoch scatter of the validation accuracy (second differences, which remove a smooth
# trend), as a multiple of the binomial noise of the validation set size. A fixed set evaluated
# deterministically scatters less than that once the LR is down (see below; consecutive models
# make correlated errors); augmenting it adds about binomial noise (the CPU run with the bug
# planted: 1.2x, its healthy twin 0.5x; one model evaluated 8 times on augmented images: 0.6x).
# Far above means the evaluation itself is random: dropout or BatchNorm left in training mode
# (model.eval() missing) over shuffled batches, or a validation set drawn anew every epoch.
VAL_NOISE_MAX_RATIO = 2.0
VAL_NOISE_MIN_EPOCHS = 6
# Judged only on the epochs after the LR's peak where it is at most this fraction of the peak:
# at a high LR consecutive models really differ by more than the set's sampling noise. The
# full-data H100 runs, 4,997 validation images: v2 with --scheduler plateau, LR 0.1 for all 30
# epochs, 2.0x over all epochs (healthy); v2's three cosine runs 1.0-1.5x over all 120 epochs,
# 0.46-0.56x over those at <= half the peak.
VAL_NOISE_LR_FRACTION = 0.5

KNOWN_KEYS = {"epoch", "loss", "accuracy", "learning_rate", "mean_grad_norm", "min_grad_norm",
              "max_grad_norm", "weight_update_norm", "grad_update_norm", "decay_update_norm",
              "loss_scale", "num_batches", "val_loss", "val_accuracy"}
DEFAULT_RUN = Path(__file__).resolve().parents[1] / "outputs"  # this version's runs; the newest is outputs/latest
DOC = "cifar100/v2-diagnostics/DIAGNOSTICS.md"
UNDECIDED_HINT = "Rerun with --accuracy-unit percent or --accuracy-unit fraction."


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
    notes: list[str] = field(default_factory=list)  # about the input, printed first
    remarks: list[str] = field(default_factory=list)  # findings that are not an issue
    refused: list[str] = field(default_factory=list)  # checks skipped: the input is ambiguous
    accuracy_scale: float = 1.0  # 100 when the files record accuracy as a fraction

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.diagnoses]

    def exit_code(self) -> int:
        return 1 if self.diagnoses else 2 if self.refused else 0

    def text(self) -> str:
        lines = [f"note: {n}" for n in self.notes]
        for title, body in self.sections:
            lines += ["", f"== {title} ==", *[f"  {line}" for line in body]]
        lines += ["", "== Diagnosis & Recommendations =="]
        lines += [f"  NOT ANALYSED: {reason}" for reason in self.refused]
        if not self.diagnoses:
            lines.append("  No issue found in the checks that could run (see NOT ANALYSED above)."
                         if self.refused else "  No issue found: none of the checks above fired. "
                                              "Training looks healthy by these measures.")
        for i, d in enumerate(self.diagnoses, 1):
            lines += [f"  [{i}] {d.title}", f"      evidence: {d.evidence}"]
            lines += [f"      - {r}" for r in d.recommendations]
        lines += [f"  note: {r}" for r in self.remarks]
        return "\n".join(lines)


@dataclass
class RunConfig:
    """What results.json says about the run; None where it says nothing."""
    source: str | None = None
    scheduler: str | None = None  # cosine, onecycle, plateau (v1: plateau, it has no other)
    scheduler_note: str = ""
    patience: int | None = None
    num_epochs: int | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    label_smoothing: float | None = None
    randaugment_magnitude: int | None = None
    batch_size: int | None = None
    amp: bool | None = None
    num_classes: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    test_accuracy: float | None = None
    best_val_accuracy: float | None = None
    epochs_completed: int | None = None

    @classmethod
    def from_results(cls, results: dict, source: str = "results.json") -> "RunConfig":
        config = results.get("config") if isinstance(results.get("config"), dict) else {}
        data = results.get("data") if isinstance(results.get("data"), dict) else {}

        def num(d, key, kind=float):
            value = _number(d.get(key))
            return None if value is None else kind(value)

        c = cls(source=source, patience=num(config, "patience", int),
                num_epochs=num(config, "num_epochs", int), lr=num(config, "lr"),
                momentum=num(config, "momentum"), weight_decay=num(config, "weight_decay"),
                grad_clip=num(config, "grad_clip"), label_smoothing=num(config, "label_smoothing"),
                randaugment_magnitude=num(config, "randaugment_magnitude", int),
                batch_size=num(config, "batch_size", int), num_classes=num(data, "num_classes", int),
                n_val=num(data, "val", int),
                n_test=num(results, "test_images", int) or num(data, "test", int),
                test_accuracy=num(results, "test_accuracy"),
                best_val_accuracy=num(results, "best_val_accuracy"),
                epochs_completed=num(results, "epochs_completed", int))
        if isinstance(config.get("scheduler"), str):
            c.scheduler = config["scheduler"]
        elif c.patience is not None:
            # v1 has --patience but no --scheduler: ReduceLROnPlateau is its only scheduler.
            c.scheduler = "plateau"
            c.scheduler_note = " (no --scheduler in the config, only --patience: v1's ReduceLROnPlateau)"
        amp = results.get("amp")
        if isinstance(amp, dict) and isinstance(amp.get("grad_scaler"), bool):
            c.amp = amp["grad_scaler"]
        elif isinstance(config.get("amp"), bool):
            c.amp = config["amp"]
        return c


# ---------------------------------------------------------------- reading

def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def load_records(path: Path) -> tuple[list[dict], list[str]]:
    """The JSON objects of a JSONL file; bad lines are skipped with a note (a killed run can
    leave half a line)."""
    records, notes = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            notes.append(f"{path.name}: line {number} is not valid JSON and was skipped")
            continue
        if not isinstance(record, dict):
            notes.append(f"{path.name}: line {number} is not a JSON object and was skipped")
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


def _not_finite(records: list[dict], key: str) -> list[int]:
    """Epochs whose `key` is there but null/NaN/inf (main.py writes NaN and inf as null)."""
    return [r.get("epoch", i) for i, r in enumerate(records, 1)
            if key in r and not math.isfinite(_number(r[key]) or math.nan)]


def _values(points: list[tuple[int, float]]) -> list[float]:
    return [v for _, v in points]


def _median(points: list[tuple[int, float]]) -> float:
    return statistics.median(_values(points))


def _fmt(x: float) -> str:
    return f"{x:.4g}" if 1e-3 <= abs(x) < 1e5 or x == 0 else f"{x:.3e}"


def _epochs(epochs: list[int]) -> str:
    return ", ".join(map(str, epochs[:8])) + (" ..." if len(epochs) > 8 else "")


# ---------------------------------------------------------------- accuracy unit

@dataclass
class Unit:
    name: str | None  # "percent", "fraction", or None: undecided
    reason: str

    @property
    def scale(self) -> float:
        return 100.0 if self.name == "fraction" else 1.0


def infer_accuracy_unit(acc: list[tuple[int, float]], loss: list[tuple[int, float]],
                        num_classes: int) -> Unit:
    """Percent or fraction, from the values and, where they are all <= 1, from the loss."""
    values = _values(acc)
    if max(values) > 1.0:
        return Unit("percent", f"values up to {_fmt(max(values))}: above 1, so not fractions")
    loss_at = dict(loss)
    pairs = [(e, a, loss_at[e]) for e, a in acc if e in loss_at]
    if not pairs:
        return Unit(None, "every value is <= 1 and no loss is recorded to tell fractions from "
                          "percentages below 1%")
    contradicted = {}
    for unit, scale in (("percent", 1.0), ("fraction", 100.0)):
        # exp(-loss) in percent; the loss is capped so that a diverged epoch cannot underflow it to 0
        contradicted[unit] = [e for e, a, l in pairs if not ACC_TO_TRUE_PROB_MIN
                              <= a * scale / (100 * math.exp(-min(l, 50.0))) <= ACC_TO_TRUE_PROB_MAX]
    fits = [u for u, bad in contradicted.items() if len(bad) <= UNIT_MAX_CONTRADICTING * len(pairs)]
    e, a, l = pairs[-1]
    as_read = {"percent": f"{a:.3g}%", "fraction": f"{100 * a:.3g}%"}
    why = (f"epoch {e}: value {a:.4g} with loss {l:.3f} (ln({num_classes}) = "
           f"{math.log(num_classes):.3f}; exp(-loss) = {100 * math.exp(-l):.2g}% on the right class)")
    if len(fits) == 1:
        other = "fraction" if fits[0] == "percent" else "percent"
        return Unit(fits[0], f"every value is <= 1, and read as {other} ({as_read[other]}) the "
                             f"accuracy does not fit the loss in {len(contradicted[other])} of "
                             f"{len(pairs)} epochs; {why}")
    if fits:
        return Unit(None, f"every value is <= 1 and both readings fit the loss: {why}; as percent "
                          f"that is {as_read['percent']}, as a fraction {as_read['fraction']}")
    return Unit(None, f"every value is <= 1 and neither reading fits the loss: {why}: as percent "
                      f"({as_read['percent']}) or as a fraction ({as_read['fraction']}) the accuracy "
                      f"is far from what that loss comes with; the accuracy and loss records disagree")


# ---------------------------------------------------------------- learning-rate schedule

@dataclass
class Schedule:
    kind: str  # constant, step, plateau, smooth, one-cycle, other, single, none
    label: str
    drops: list[tuple[int, float, float]] = field(default_factory=list)  # (epoch, before, after)
    source: str = "the LR trace"


def _sig_digits(x: float) -> int:
    return max(1, len(f"{abs(x):.12e}".split("e")[0].replace(".", "").rstrip("0")))


def classify_schedule(lr: list[tuple[int, float]], config: RunConfig,
                      val_loss: list[tuple[int, float]]) -> Schedule:
    """Constant, step, plateau-driven, smooth or one-cycle: from the config where it names the
    scheduler, from the shape of the LR trace otherwise. `drops` are the epochs first run at a
    lower LR, for step and plateau schedules."""
    if not lr:
        return Schedule("none", "no learning_rate recorded")
    if len(lr) < 2:
        return Schedule("single", "one epoch only: nothing to compare yet")
    changes = [(e1, a, b) for (_, a), (e1, b) in zip(lr, lr[1:]) if a > 0 and abs(b / a - 1) > LR_SAME_TOL]
    rises = [c for c in changes if c[2] > c[1]]
    falls = [c for c in changes if c[2] < c[1]]
    ratios = [b / a for _, a, b in falls]
    if not changes:
        shape = Schedule("constant", f"constant at {_fmt(lr[0][1])}")
    elif rises and falls and max(e for e, _, _ in rises) < min(e for e, _, _ in falls):
        peak = max(lr, key=lambda p: p[1])
        shape = Schedule("one-cycle", f"one-cycle: rises to {_fmt(peak[1])} at epoch {peak[0]}, then falls")
    elif rises:
        shape = Schedule("other", f"irregular: rises at epoch(s) {_epochs([c[0] for c in rises])}, "
                                  f"falls at {_epochs([c[0] for c in falls]) or 'none'}")
    elif len(changes) >= SMOOTH_MIN_CHANGE_SHARE * (len(lr) - 1):
        steps = [a - b for _, a, b in falls]
        if min(ratios) > 0 and max(ratios) / min(ratios) < 1.02:
            how = f"exponential, x{statistics.median(ratios):.3g} per epoch"
        elif len(falls) > 2 and max(steps) < 1.05 * min(steps):
            how = "linear"
        else:
            how = "cosine-like"
        shape = Schedule("smooth", f"smooth ({how}): the LR changes in {len(changes)} of {len(lr) - 1} epochs")
    elif statistics.median(ratios) <= STEP_MAX_DROP_RATIO:
        gaps = {b[0] - a[0] for a, b in zip(falls, falls[1:])}
        regular = f", every {gaps.pop()} epochs" if len(gaps) == 1 else ""
        shape = Schedule("step", f"step: piecewise constant, {len(falls)} drop(s) of about "
                                 f"x{statistics.median(ratios):.2g}{regular}", falls)
        digits = max(_sig_digits(v) for _, v in lr)
        if digits <= 2 and max(ratios) > 1.05 * min(ratios):  # 0.1 -> 0.01 -> 0.001 is exact, not rounded
            shape.label += (f" (the LR is logged with {digits} significant digit(s): the factors are "
                            f"approximate)")
    else:
        shape = Schedule("smooth", f"smooth, logged with few digits: {len(falls)} small drops (median "
                                   f"x{statistics.median(ratios):.2g}) between repeated values")

    if config.scheduler is None:
        if shape.kind == "step" and val_loss and _looks_plateau_driven(shape.drops, val_loss):
            shape.label += ("; every drop came after an epoch without a new best validation loss, as "
                            "ReduceLROnPlateau does (no results.json says which scheduler ran)")
        elif shape.kind == "step":
            shape.label += " (StepLR/MultiStepLR or ReduceLROnPlateau; no results.json says which)"
        return shape
    name, source = config.scheduler, f"results.json: --scheduler {config.scheduler}{config.scheduler_note}"
    if name == "plateau":
        patience = f", patience {config.patience}" if config.patience is not None else ""
        result = Schedule("plateau", f"plateau-driven (ReduceLROnPlateau{patience}): {shape.label}",
                          shape.drops, source)
        if shape.kind not in ("step", "constant", "single"):
            result.label += " -- note: the trace does not look like plateau"
        return result
    expected = {"cosine": ("smooth",), "onecycle": ("one-cycle", "smooth")}.get(name, (shape.kind,))
    if shape.kind in expected or shape.kind == "single":
        return Schedule({"cosine": "smooth", "onecycle": "one-cycle"}.get(name, shape.kind),
                        f"{name}: {shape.label}", [], source)
    # The trace wins where it disagrees with the config (the drops it shows did happen).
    return Schedule(shape.kind, f"{shape.label} -- note: results.json says {name}, the trace does not look "
                                f"like it", shape.drops, source)


def _looks_plateau_driven(drops, val_loss) -> bool:
    """Every drop follows an epoch whose validation loss was no new best."""
    for epoch, _, _ in drops:
        before = [v for e, v in val_loss if e < epoch]
        if len(before) < 2 or before[-1] < min(before[:-1]):
            return False
    return True


def judge_early_cuts(schedule: Schedule, loss: list[tuple[int, float]], last_epoch: int) -> list[dict]:
    """For each cut within the first LR_EARLY_EPOCH epochs: did the loss keep improving right
    after it? Each verdict holds the window judged, the reference and the improvement."""
    verdicts, loss_at, cuts = [], dict(loss), schedule.drops
    for i, (epoch, before, after) in enumerate(cuts):
        if epoch > LR_EARLY_EPOCH:
            break
        next_cut = cuts[i + 1][0] if i + 1 < len(cuts) else last_epoch + 1
        end = epoch + LR_JUDGE_WINDOW
        if next_cut - epoch - 1 >= LR_MIN_JUDGE_EPOCHS:
            end = min(end, next_cut - 1)
        window = [(e, v) for e, v in loss if epoch < e <= end]
        verdict = {"epoch": epoch, "before": before, "after": after, "window": window, "judged": False}
        if epoch not in loss_at:
            verdict["why"] = "no loss recorded at that epoch"
        elif len(window) < LR_MIN_JUDGE_EPOCHS or min(v for e, v in loss if e <= epoch) <= 0:
            verdict["why"] = f"{len(window)} epoch(s) with a loss after it (needs {LR_MIN_JUDGE_EPOCHS})"
        else:
            ref, best = min(v for e, v in loss if e <= epoch), min(_values(window))
            verdict.update(judged=True, ref=ref, best=best, improvement=(ref - best) / ref,
                           stalled=best > ref * (1 - PLATEAU_MIN_IMPROVEMENT),
                           crosses=[c[0] for c in cuts if epoch < c[0] <= end])
        verdicts.append(verdict)
    return verdicts


def _plateau_start(loss: list[tuple[int, float]]) -> int | None:
    """First epoch after which PLATEAU_WINDOW epochs bring less than PLATEAU_MIN_IMPROVEMENT."""
    values = _values(loss)
    for i in range(len(values) - PLATEAU_WINDOW):
        best_so_far = min(values[: i + 1])
        best_next = min(values[i + 1: i + 1 + PLATEAU_WINDOW])
        if best_next > best_so_far * (1 - PLATEAU_MIN_IMPROVEMENT):
            return loss[i][0]
    return None


def _decay_only_change(records: list[dict], config: RunConfig) -> list[tuple[int, float]]:
    """Per epoch, the relative change of the weights that weight decay alone makes with SGD: once
    the momentum buffer is full, each step shrinks every weight by lr x wd / (1 - momentum)."""
    if config.weight_decay is None or config.momentum is None or config.momentum >= 1:
        return []
    lr_at, out = dict(series(records, "learning_rate")), []
    for e, steps in series(records, "num_batches"):
        if e in lr_at:
            per_step = min(1.0, lr_at[e] * config.weight_decay / (1 - config.momentum))
            out.append((e, 1 - (1 - per_step) ** steps))
    return out


# ---------------------------------------------------------------- the analysis

@dataclass
class Run:
    """One run's records as series, accuracy in percent; and what the sections found."""
    records: list[dict]
    val_records: list[dict]
    config: RunConfig
    num_classes: int
    accuracy_unit: str = "auto"
    # what the sections find, for the diagnosis
    unit: Unit | None = None
    acc: list = field(default_factory=list)
    val_acc: list = field(default_factory=list)
    schedule: Schedule | None = None
    cut_verdicts: list = field(default_factory=list)
    plateau: int | None = None
    amp_on: bool | None = None
    amp_why: str = ""
    amp_scaled: bool = False
    amp_unknown: bool = False  # huge, flat norms, but nothing says whether AMP was on
    unscaled: float | None = None  # median norm / loss scale
    exploding: bool = False
    spikes: list = field(default_factory=list)
    climbing: bool = False
    collapsed: bool = False
    update_measure: str = ""

    def __post_init__(self):
        get = lambda key: series(self.records, key)  # noqa: E731
        self.lr, self.loss, self.raw_acc = get("learning_rate"), get("loss"), get("accuracy")
        self.mean_g, self.min_g, self.max_g = get("mean_grad_norm"), get("min_grad_norm"), get("max_grad_norm")
        self.scales, self.total_upd = get("loss_scale"), get("weight_update_norm")
        self.grad_upd, self.decay_upd = get("grad_update_norm"), get("decay_update_norm")
        self.val_loss = series(self.val_records, "loss")
        self.raw_val_acc = series(self.val_records, "accuracy")
        self.null_loss = _not_finite(self.records, "loss")
        self.null_grad = _not_finite(self.records, "mean_grad_norm")
        self.last_epoch = max([e for e, _ in get("epoch")] or [len(self.records)])
        self.chance_loss, self.chance_acc = math.log(self.num_classes), 100.0 / self.num_classes


def analyze(records: list[dict], num_classes: int = 100, val_records: list[dict] | None = None,
            config: RunConfig | None = None, accuracy_unit: str = "auto") -> Report:
    """The report for one run: `records` are the training epochs (a validation file works too),
    `val_records` the validation epochs (keys loss and accuracy), `config` what results.json says."""
    run = Run(records, val_records or [], config or RunConfig(), num_classes, accuracy_unit)
    report = Report()
    unknown = sorted({k for r in records for k in r} - KNOWN_KEYS)
    if unknown:
        report.notes.append(f"ignoring keys this analyzer does not use: {', '.join(unknown)}")
    report.notes.append(f"configuration from {run.config.source}" if run.config.source else
                        "no results.json found: scheduler, AMP and hyperparameters are inferred from the "
                        "records")
    decide_units(run, report)
    for title, section in (("Learning Rate Analysis", lr_section), ("Loss Analysis", loss_section),
                           ("Accuracy Analysis", accuracy_section),
                           ("Gradient Norm Analysis", gradient_section),
                           ("Weight Update Analysis", update_section)):
        report.sections.append((title, section(run, report)))
    val_findings = compare_train_val(run, report) if run.val_records else []
    diagnose(run, report)
    report.diagnoses += val_findings
    return report


def decide_units(run: Run, report: Report) -> None:
    """Percent or fraction, before anything reads an accuracy; refuse rather than guess."""
    def decide(points, losses):
        if not points:
            return None
        if run.accuracy_unit != "auto":
            return Unit(run.accuracy_unit, "given with --accuracy-unit")
        return infer_accuracy_unit(points, losses, run.num_classes)

    unit, val_unit = decide(run.raw_acc, run.loss), decide(run.raw_val_acc, run.val_loss)
    if unit and val_unit and (unit.name is None) != (val_unit.name is None):
        # One code path writes both (main.py's _epoch_summary): the decided one speaks for both.
        known, which = (unit, "training") if unit.name else (val_unit, "validation")
        unit = val_unit = Unit(known.name, f"{known.reason} (from the {which} records; the same code "
                                           f"writes both)")
    for u, what in ((unit, "training"), (val_unit, "validation")):
        if u and u.name is None:
            report.refused.append(
                f"the unit of the {what} accuracy (percent or fraction) cannot be decided: {u.reason}. "
                f"The accuracy checks (near chance, early plateau, train vs validation) were skipped "
                f"rather than built on a guess. {UNDECIDED_HINT}")
    run.unit = unit
    report.accuracy_scale = unit.scale if unit and unit.name else 1.0
    run.acc = [(e, v * unit.scale) for e, v in run.raw_acc] if unit and unit.name else []
    run.val_acc = [(e, v * val_unit.scale) for e, v in run.raw_val_acc] if val_unit and val_unit.name else []


def lr_section(run: Run, report: Report) -> list[str]:
    run.schedule = schedule = classify_schedule(run.lr, run.config, run.val_loss)
    if not run.lr:
        return [schedule.label]
    body = [f"initial {_fmt(run.lr[0][1])}, final {_fmt(run.lr[-1][1])}, over {len(run.lr)} epoch(s)",
            f"schedule: {schedule.label} [from {schedule.source}]"]
    if not schedule.drops:
        if schedule.kind != "single":
            body.append("no step drops, so there is no early cut to judge")
        return body
    body.append("drops (epoch: before -> after): " + ", ".join(
        f"epoch {e}: {_fmt(a)} -> {_fmt(b)}" for e, a, b in schedule.drops[:8])
        + (" ..." if len(schedule.drops) > 8 else ""))
    if schedule.drops[0][0] > LR_EARLY_EPOCH:
        body.append(f"first drop at epoch {schedule.drops[0][0]}: not early (after epoch {LR_EARLY_EPOCH})")
    run.cut_verdicts = judge_early_cuts(schedule, run.loss, run.last_epoch)
    for v in run.cut_verdicts:
        if not v["judged"]:
            body.append(f"drop at epoch {v['epoch']} (early): not judged, {v['why']}")
        else:
            body.append(f"drop at epoch {v['epoch']} (early): loss in epochs {v['window'][0][0]}-"
                        f"{v['window'][-1][0]} best {v['best']:.4f} vs {v['ref']:.4f} up to the drop: "
                        f"{100 * v['improvement']:+.1f}% "
                        + ("(stalled)" if v["stalled"] else "(still improving)"))
    return body


def loss_section(run: Run, report: Report) -> list[str]:
    loss = run.loss
    if not loss:
        body = ["no loss recorded"]
    else:
        best_epoch, best = min(loss, key=lambda p: p[1])
        body = [f"initial {loss[0][1]:.4f}, final {loss[-1][1]:.4f}, best {best:.4f} (epoch {best_epoch}); "
                f"chance level ln({run.num_classes}) = {run.chance_loss:.3f}"]
        if len(loss) <= PLATEAU_WINDOW:
            body.append(f"plateau detection needs more than {PLATEAU_WINDOW} epochs ({len(loss)} so far)")
        else:
            run.plateau = _plateau_start(loss)
            body.append(f"plateau: from epoch {run.plateau} the next {PLATEAU_WINDOW} epochs improved the "
                        f"loss by less than {PLATEAU_MIN_IMPROVEMENT:.0%}" if run.plateau is not None else
                        f"no plateau: every {PLATEAU_WINDOW}-epoch window improved the loss by at least "
                        f"{PLATEAU_MIN_IMPROVEMENT:.0%}")
    if run.null_loss:
        body.append(f"{len(run.null_loss)} epoch(s) have a null/NaN loss: training diverged there")
    return body


def accuracy_section(run: Run, report: Report) -> list[str]:
    if not run.raw_acc:
        return ["no accuracy recorded"]
    if not run.unit.name:
        return [f"unit: UNDECIDED ({run.unit.reason})"]
    acc = run.acc
    best_epoch, best = max(acc, key=lambda p: p[1])
    body = [f"unit: {run.unit.name}" + (", shown in percent below" if run.unit.name == "fraction" else "")
            + f" ({run.unit.reason})",
            f"initial {acc[0][1]:.2f}%, final {acc[-1][1]:.2f}%, best {best:.2f}% (epoch {best_epoch}); "
            f"chance {run.chance_acc:.2f}%"]
    if len(acc) > PLATEAU_WINDOW:
        body.append(f"gain over the last {PLATEAU_WINDOW} epochs: "
                    f"{acc[-1][1] - acc[-1 - PLATEAU_WINDOW][1]:+.2f} points")
    return body


def gradient_section(run: Run, report: Report) -> list[str]:
    """Gradient norms and loss scale: scaled by AMP (clipping before unscale_), exploding,
    vanishing, or healthy; each only with the evidence it needs."""
    config, mean_g = run.config, run.mean_g
    run.amp_on, run.amp_why = config.amp, "results.json" if config.amp is not None else ""
    if run.scales and config.amp is not True:
        if config.amp is False:
            report.notes.append("results.json says AMP was off, but the records carry a loss scale: "
                                "trusting the records (GradScaler was on)")
        run.amp_on, run.amp_why = True, "a loss scale is recorded"
    elif config.amp is None and any("loss_scale" in r for r in run.records):
        run.amp_on, run.amp_why = False, "loss_scale is recorded as null: no GradScaler"
    if not mean_g:
        return ["no gradient norms recorded (a validation file has none)"]
    typical, peaks = _median(mean_g), run.max_g or mean_g
    peak = max(_values(peaks))
    body = [f"mean norm per epoch: first {_fmt(mean_g[0][1])}, last {_fmt(mean_g[-1][1])}, "
            f"median {_fmt(typical)}"]
    if run.min_g:
        body.append(f"smallest single step {_fmt(min(_values(run.min_g)))}, largest {_fmt(peak)}")
    body.append("AMP (GradScaler): " + {True: "on", False: "off", None: "unknown"}[run.amp_on]
                + f" ({run.amp_why or 'no results.json and no loss_scale recorded'})")
    if run.scales:
        lowest = min(_values(run.scales))
        body.append(f"loss scale: first {_fmt(run.scales[0][1])}, last {_fmt(run.scales[-1][1])}, "
                    f"lowest {_fmt(lowest)}")
        if lowest < LOSS_SCALE_LOW:
            report.remarks.append(f"the AMP loss scale fell to {_fmt(lowest)} (< {_fmt(LOSS_SCALE_LOW)}): "
                                  f"float16 gradients overflowed again and again")
    if run.null_grad:
        body.append(f"no finite gradient norm in epoch(s) {_epochs(run.null_grad)}: every step overflowed")
    third = max(1, len(mean_g) // 3)
    run.climbing = (statistics.median(_values(mean_g[-third:]))
                    > GRAD_NORM_CLIMB * statistics.median(_values(mean_g[:third])))

    # Multiplied by the loss scale? With the scale recorded, norm / scale must be an ordinary norm; and
    # such norms follow the scale (down, when it falls), where exploding ones climb.
    if run.scales:
        scale_at = dict(run.scales)
        ratios = [v / scale_at[e] for e, v in mean_g if scale_at.get(e, 0) > 0]
        run.unscaled = statistics.median(ratios) if ratios else None
        fits_scaled = (run.unscaled is not None and typical > EXPLODING_GRAD_NORM and not run.climbing
                       and VANISHING_GRAD_NORM <= run.unscaled <= EXPLODING_GRAD_NORM)
    else:
        fits_scaled = typical > AMP_SCALED_GRAD_NORM and not run.climbing
    if fits_scaled and run.grad_upd and _median(run.grad_upd) >= WEIGHT_UPDATE_COLLAPSED:
        # clipping scaled gradients leaves steps ~scale x too small; these steps are not
        fits_scaled = False
        body.append(f"norms above {_fmt(EXPLODING_GRAD_NORM)}, but the gradient part of the weight update is "
                    f"healthy (median {_fmt(_median(run.grad_upd))}): clipping worked on true norms")
    if fits_scaled and run.amp_on:
        run.amp_scaled = True
        body.append(f"median norm / loss scale = {_fmt(run.unscaled)}: an ordinary unscaled norm, so the "
                    f"logged norms are still multiplied by the loss scale" if run.unscaled is not None else
                    f"median above {_fmt(AMP_SCALED_GRAD_NORM)} and not climbing: these look like gradients "
                    f"still multiplied by the AMP loss scale")
        return body
    if fits_scaled and run.amp_on is None:
        run.amp_unknown = True
        body.append(f"median above {_fmt(AMP_SCALED_GRAD_NORM)} and not climbing: scaled gradients if AMP "
                    f"was on (unknown here), exploding ones if not")
        return body

    run.spikes = [e for e, v in peaks if v > EXPLODING_GRAD_NORM]
    in_last_two = len(peaks) >= 2 and all(e in run.spikes for e, _ in peaks[-2:])
    run.exploding = (len(run.spikes) >= EXPLODING_MIN_EPOCHS or in_last_two
                     or bool(run.null_grad) or bool(run.null_loss))
    if run.exploding:
        body.append(f"steps above {_fmt(EXPLODING_GRAD_NORM)} in {len(run.spikes)} epoch(s)"
                    + (f" ({_epochs(run.spikes)})" if run.spikes else "")
                    + (", climbing" if run.climbing else "")
                    + (", non-finite values" if run.null_grad or run.null_loss else "")
                    + ": exploding gradients")
    elif run.spikes:
        body.append(f"steps above {_fmt(EXPLODING_GRAD_NORM)} in epoch(s) {_epochs(run.spikes)} only: "
                    f"a spike, not a pattern")
        report.remarks.append(
            f"gradient spike: the largest step norm was {_fmt(peak)} (> {_fmt(EXPLODING_GRAD_NORM)}) in "
            f"epoch(s) {_epochs(run.spikes)} only; common at the start of training and absorbed by clipping. "
            f"Not an issue unless it recurs (then see 'Exploding gradients' in {DOC}).")
    elif typical < VANISHING_GRAD_NORM:
        body.append(f"median below {VANISHING_GRAD_NORM}: vanishing gradients")
    else:
        body.append(f"within the healthy range ({VANISHING_GRAD_NORM} .. {_fmt(EXPLODING_GRAD_NORM)})")
    return body


def update_section(run: Run, report: Report) -> list[str]:
    """Learning happens when the gradient moves the weights: judged on grad_update_norm where it
    is recorded, on the total (which weight decay alone keeps at ~1%/epoch) only where it is not."""
    grad_upd, total_upd, decay_upd = run.grad_upd, run.total_upd, run.decay_upd
    if grad_upd:
        run.update_measure = "gradient part of the weight change (grad_update_norm)"
        typical = _median(grad_upd)
        run.collapsed = typical < WEIGHT_UPDATE_COLLAPSED
        body = [f"gradient part per epoch: first {_fmt(grad_upd[0][1])}, last {_fmt(grad_upd[-1][1])}, "
                f"median {_fmt(typical)}"]
        parts = ([f"weight-decay part: median {_fmt(_median(decay_upd))}"] if decay_upd else []) + (
            [f"total change: median {_fmt(_median(total_upd))}"] if total_upd else [])
        if parts:
            body.append(", ".join(parts))
        decay_moves = bool(total_upd) and _median(total_upd) >= WEIGHT_UPDATE_COLLAPSED
        if not run.collapsed:
            body.append("the gradient moves the weights: learning is happening")
        else:
            body.append(f"median below {WEIGHT_UPDATE_COLLAPSED:g}: the gradient barely moves the weights, "
                        f"learning has stalled" + (" (the total change is weight decay's doing)"
                                                   if decay_moves else ""))
        return body
    if not total_upd:
        return ["no weight_update_norm recorded (a validation file has none)"]
    run.update_measure = "total weight change (weight_update_norm; includes weight decay)"
    typical = _median(total_upd)
    run.collapsed = typical < WEIGHT_UPDATE_COLLAPSED
    body = [f"relative change per epoch: first {_fmt(total_upd[0][1])}, last {_fmt(total_upd[-1][1])}, "
            f"median {_fmt(typical)}",
            "no grad_update_norm recorded: judged on the total change, which includes what weight decay "
            "alone does"]
    decay_at = dict(_decay_only_change(run.records, run.config))
    shares = [v / decay_at[e] for e, v in total_upd if decay_at.get(e, 0) > 0]
    share = statistics.median(shares) if shares else None
    if share is not None:
        body.append(f"total change / the change weight decay alone makes (estimated from lr, weight_decay, "
                    f"momentum and num_batches): median {share:.2g}")
    if run.collapsed:
        body.append(f"median below {WEIGHT_UPDATE_COLLAPSED:g}: the weights barely move, learning has stalled")
    elif share is not None and share < DECAY_ONLY_MAX_RATIO:
        body.append(f"below {DECAY_ONLY_MAX_RATIO:g}x: weight decay alone could make this change, so it cannot "
                    f"show whether the gradient moves the weights")
        report.remarks.append("learning cannot be confirmed from the weight updates: the total change is about "
                              "what weight decay alone makes; record grad_update_norm to separate the two")
    elif share is not None:
        body.append(f"the weights keep moving beyond what weight decay does: learning is happening")
    else:
        body.append("the weights keep moving: learning is happening, as far as the total shows (weight decay "
                    "alone moves them ~1% per epoch at lr 0.1, wd 5e-4, momentum 0.9; no results.json to "
                    "estimate it)")
    return body


def _calm_epochs(lr: list) -> set:
    """Epochs after the LR's peak at <= VAL_NOISE_LR_FRACTION of it (`lr`: (epoch, value) pairs)."""
    if not lr:
        return set()
    peak_epoch, peak = max(lr, key=lambda pair: pair[1])
    return {e for e, value in lr if e > peak_epoch and value <= VAL_NOISE_LR_FRACTION * peak}


def compare_train_val(run: Run, report: Report) -> list[Diagnosis]:
    """Training and validation records side by side: does validation look augmented (v1's bug)?"""
    body, config = [], run.config
    report.sections.append(("Train vs Validation", body))
    val_acc = run.val_acc
    if not val_acc:
        undecided = series(run.val_records, "accuracy")
        body.append("no usable validation accuracy" + (" (unit undecided)" if undecided else ""))
        return []
    n_val, n_val_how = (config.n_val or None), "results.json"  # 0 images: unknown
    batches = series(run.val_records, "num_batches")
    if n_val is None and config.batch_size and batches:
        n_val, n_val_how = int(batches[-1][1]) * config.batch_size, "at most: num_batches x batch_size"
    body.append(f"validation: final {val_acc[-1][1]:.2f}%, best {max(_values(val_acc)):.2f}%"
                + (f"; {n_val} images ({n_val_how})" if n_val else "; validation set size unknown"))

    def sd_points(p_percent, n):  # binomial standard deviation of an accuracy on n images, in points
        p = min(max(p_percent / 100, 1e-3), 1 - 1e-3)
        return 100 * math.sqrt(p * (1 - p) / n)

    augmented, judged = [], 0
    # 1. test vs validation (the test split always goes through the evaluation transform); near chance,
    #    augmented and clean images score the same, so there is nothing to see
    best_seen = max(_values(val_acc) + [config.test_accuracy or 0])
    learned_at_all = best_seen >= VAL_COMPARE_MIN_FACTOR * run.chance_acc
    if (config.test_accuracy is not None and config.best_val_accuracy is not None and n_val and config.n_test
            and not learned_at_all):
        body.append(f"test {config.test_accuracy:.2f}% vs best validation {config.best_val_accuracy:.2f}%: "
                    f"both below {VAL_COMPARE_MIN_FACTOR:g}x chance, where augmented and clean images score "
                    f"alike: not judged")
    elif config.test_accuracy is not None and config.best_val_accuracy is not None and n_val and config.n_test:
        judged += 1
        test, best_val = config.test_accuracy, config.best_val_accuracy
        gap = test - best_val
        middle = (test + best_val) / 2
        se = math.hypot(sd_points(middle, n_val), sd_points(middle, config.n_test))
        body.append(f"test {test:.2f}% vs best validation {best_val:.2f}%: {gap:+.2f} points "
                    f"(standard error {se:.2f})")
        if gap > max(VAL_TEST_MIN_POINTS, VAL_SIGMAS * se):
            augmented.append(f"the test accuracy ({test:.2f}%, evaluation transform) is {gap:.2f} points above "
                             f"the best validation accuracy ({best_val:.2f}%), {gap / se:.1f} standard errors, "
                             f"although both come from the same distribution")
    # 2. the first epochs with something learned: clean validation images score above augmented training ones
    train_at, tloss_at, vloss_at = dict(run.acc), dict(run.loss), dict(run.val_loss)
    learned = [(e, v) for e, v in val_acc if train_at.get(e, 0) >= VAL_COMPARE_MIN_FACTOR * run.chance_acc]
    early = [(e, v) for e, v in learned if e in vloss_at and tloss_at.get(e, 0) > 0][:VAL_EARLY_EPOCHS]
    if len(early) < VAL_EARLY_EPOCHS:
        body.append(f"{len(early)} epoch(s) with training accuracy >= {VAL_COMPARE_MIN_FACTOR:g}x chance and "
                    f"both losses (needs {VAL_EARLY_EPOCHS}): the early train/validation gap is not judged")
    else:
        judged += 1
        acc_adv = statistics.mean(v - train_at[e] for e, v in early)
        loss_adv = statistics.mean(1 - vloss_at[e] / tloss_at[e] for e, _ in early)
        span = f"epochs {early[0][0]}-{early[-1][0]}"
        body.append(f"first {len(early)} epochs above {VAL_COMPARE_MIN_FACTOR:g}x chance ({span}): validation "
                    f"accuracy {acc_adv:+.2f} points vs training, validation loss {100 * abs(loss_adv):.1f}% "
                    f"{'below' if loss_adv > 0 else 'above'} it (clean validation images score above "
                    f"augmented training images there)")
        if acc_adv <= VAL_EARLY_MAX_ACC_ADVANTAGE and loss_adv <= VAL_EARLY_MAX_LOSS_ADVANTAGE:
            augmented.append(f"in {span}, before overfitting, validation accuracy is {acc_adv:+.2f} points "
                             f"against training and the validation loss {100 * abs(loss_adv):.1f}% "
                             f"{'below' if loss_adv > 0 else 'above'} the training loss (<= "
                             f"{VAL_EARLY_MAX_ACC_ADVANTAGE:g} points, <= {100 * VAL_EARLY_MAX_LOSS_ADVANTAGE:g}% "
                             f"below): validation scores like augmented training images, where clean images "
                             f"score several points higher")
    # 3. epoch-to-epoch scatter against the binomial noise of the set size
    noisy = []
    calm = _calm_epochs(run.lr)
    settled = [(e, v) for e, v in learned if e in calm]
    if n_val and len(learned) >= VAL_NOISE_MIN_EPOCHS and len(settled) < VAL_NOISE_MIN_EPOCHS:
        body.append(f"epoch-to-epoch scatter not judged: {len(settled)} epoch(s) after the LR's peak at "
                    f"<= {VAL_NOISE_LR_FRACTION:g}x of it (needs {VAL_NOISE_MIN_EPOCHS}); at a high LR "
                    f"consecutive models differ by more than the set's sampling noise")
    if n_val and len(settled) >= VAL_NOISE_MIN_EPOCHS:
        v = _values(settled)
        d2 = [v[i + 1] - 2 * v[i] + v[i - 1] for i in range(1, len(v) - 1)]
        scatter = math.sqrt(statistics.mean(x * x for x in d2) / 6)  # white noise: Var(d2) = 6 sigma^2
        binomial = statistics.mean(sd_points(x, n_val) for x in v)
        body.append(f"epoch-to-epoch scatter of the validation accuracy {scatter:.2f} points vs {binomial:.2f} "
                    f"binomial for {n_val} images ({scatter / binomial:.1f}x), over epochs {settled[0][0]}-"
                    f"{settled[-1][0]} (LR <= {VAL_NOISE_LR_FRACTION:g}x its peak)")
        if scatter > VAL_NOISE_MAX_RATIO * binomial:
            noisy.append(Diagnosis(
                "val_noisy", "Validation accuracy is noisier than the validation set size explains",
                f"it scatters {scatter:.2f} points from epoch to epoch, {scatter / binomial:.1f}x the binomial "
                f"noise of {n_val} images (> {VAL_NOISE_MAX_RATIO:g}x), in epochs {settled[0][0]}-"
                f"{settled[-1][0]} where the LR is down to <= {VAL_NOISE_LR_FRACTION:g}x its peak; a fixed set "
                f"evaluated deterministically by such slowly changing models scatters less than that",
                ["Check that evaluation runs under model.eval() (dropout, or BatchNorm in training mode over shuffled "
                 "batches, makes it random)",
                 "Check that the validation set is the same images every epoch, without random transforms "
                 "(bash scripts/bash/check_transforms.sh)"]))
    if not judged:
        body.append("nothing to judge yet: see the lines above for what is missing")
    elif not augmented:
        body.append("no sign of training augmentation in the validation records")
    if not augmented:
        return noisy
    return [Diagnosis(
        "val_uses_train_transforms", "Validation looks augmented: it may share the training transforms",
        "; ".join(augmented),
        ["Run bash scripts/bash/check_transforms.sh: it fails when validation images are augmented",
         "Build separate dataset instances for train and validation over the same index split "
         f"(see 'Transform separation fix' in {DOC})",
         "Until then, validation accuracy is pessimistic: do not pick checkpoints or stop early on it"]),
            *noisy]


def diagnose(run: Run, report: Report) -> None:
    """The diagnoses, root causes first, each with its evidence and what to do."""
    add, config = report.diagnoses.append, run.config
    clip = _fmt(config.grad_clip) if config.grad_clip is not None else "1.0"
    median_norm = _fmt(_median(run.mean_g)) if run.mean_g else ""
    if run.amp_scaled:
        how = (f"divided by the recorded loss scale it is {_fmt(run.unscaled)}, an ordinary unscaled norm"
               if run.unscaled is not None else
               f"> {_fmt(AMP_SCALED_GRAD_NORM)} and not climbing, ~65536 (GradScaler's initial scale) x an "
               f"ordinary norm of O(1)")
        moved = (f"; gradient part of the weight update: median {_fmt(_median(run.grad_upd))}"
                 if run.grad_upd else f"; weight change per epoch: median {_fmt(_median(run.total_upd))}"
                 if run.total_upd else "")
        add(Diagnosis(
            "amp_scaled_gradients",
            "Gradient norms look scaled by the AMP loss scale: clipping before unscale_",
            f"AMP was on ({run.amp_why}); median gradient norm {median_norm}: {how}. Clipping these to max "
            f"norm {clip} leaves the steps smaller by the loss scale{moved}",
            ["Call scaler.unscale_(optimizer) after scaler.scale(loss).backward() and before clip_grad_norm_ "
             f"(see 'AMP gradient clipping fix' in {DOC})",
             "Log the norm that clip_grad_norm_ returns after unscaling: it should fall to O(0.1-10)",
             "Fix this first: the other symptoms below are likely its consequences"]))
    if run.amp_unknown:
        add(Diagnosis(
            "scaled_or_exploding_gradients",
            "Gradient norms in the thousands: the AMP clipping bug if AMP was on, exploding gradients if not",
            f"median gradient norm {median_norm} > {_fmt(AMP_SCALED_GRAD_NORM)}, not climbing; neither a "
            f"results.json nor a recorded loss_scale says whether AMP was on",
            ["Analyse the run folder or pass its results.json (--results), so the analyzer knows about AMP",
             f"With AMP: call scaler.unscale_(optimizer) before clip_grad_norm_ (see {DOC})",
             "Without AMP: lower the learning rate and look for bad inputs"]))
    if run.exploding:
        parts = []
        if run.spikes:
            parts.append(f"steps above {_fmt(EXPLODING_GRAD_NORM)} in {len(run.spikes)} epoch(s) "
                         f"({_epochs(run.spikes)}), largest {_fmt(max(_values(run.max_g or run.mean_g)))}")
        if run.climbing:
            parts.append(f"the mean norm climbed more than {GRAD_NORM_CLIMB:g}x over the run")
        if run.null_loss:
            parts.append(f"the loss became NaN/inf in epoch(s) {_epochs(run.null_loss)}")
        if run.null_grad:
            parts.append(f"no step had finite gradients in epoch(s) {_epochs(run.null_grad)}")
        if run.amp_on is False:
            parts.append("AMP was off, so this is not the loss scale")
        add(Diagnosis(
            "exploding_gradients", "Exploding gradients", "; ".join(parts),
            ["Lower the learning rate (or warm it up: --scheduler onecycle)",
             f"Keep gradient clipping on (max norm {clip}) and make sure it runs on unscaled gradients",
             "Look for bad inputs (NaN/inf, unnormalised images) in the batches where the norm jumps"]
            + (["If it only happens with AMP, try --no-amp to rule out float16 overflow"]
               if run.amp_on else [])))
    if (run.mean_g and not (run.amp_scaled or run.amp_unknown or run.exploding)
            and _median(run.mean_g) < VANISHING_GRAD_NORM):
        add(Diagnosis(
            "vanishing_gradients", "Vanishing gradients",
            f"median gradient norm {median_norm} < {VANISHING_GRAD_NORM}",
            ["Increase the learning rate",
             f"Reduce gradient clipping pressure (max norm {clip}) or check that it clips unscaled gradients",
             "Check the model initialisation (Kaiming for ReLU networks)",
             "Check the activations for dead ReLUs (outputs that are always 0)"]))
    if run.collapsed:
        evidence = (f"median {run.update_measure} per epoch {_fmt(_median(run.grad_upd or run.total_upd))} "
                    f"< {WEIGHT_UPDATE_COLLAPSED:g}")
        if run.grad_upd and run.total_upd and _median(run.total_upd) >= WEIGHT_UPDATE_COLLAPSED:
            evidence += (f"; the total change (median {_fmt(_median(run.total_upd))}) comes from weight decay"
                         + (f" (median {_fmt(_median(run.decay_upd))})" if run.decay_upd else ""))
        add(Diagnosis(
            "weight_updates_collapsed", "Weight updates have collapsed: learning has stalled", evidence,
            ["If the gradient norms are huge, see the AMP diagnosis above: the steps are clipped to nothing",
             "If the gradient norms are ~0, the loss does not reach the parameters: check that the loss is "
             "computed from the model's output and that backward() and optimizer.step() run",
             "If the LR was cut to a tiny value early, see the learning-rate diagnosis",
             "Otherwise increase the learning rate"]))
    acc, loss = run.acc, run.loss
    if acc and len(acc) >= NEAR_CHANCE_MIN_EPOCHS and acc[-1][1] < NEAR_CHANCE_FACTOR * run.chance_acc:
        add(Diagnosis(
            "near_chance", "Accuracy stuck near chance",
            f"final accuracy {acc[-1][1]:.2f}% ({run.unit.name} in the file) < {NEAR_CHANCE_FACTOR:g} x chance "
            f"({NEAR_CHANCE_FACTOR * run.chance_acc:.2f}%) after {len(acc)} epochs"
            + (f"; final loss {loss[-1][1]:.3f} vs ln({run.num_classes}) = {run.chance_loss:.3f}"
               if loss else ""),
            ["Check the labels: class indices must match the images (label ids in alphabetical class order)",
             # Not the transforms: shared train/validation transforms leave training accuracy intact
             # (see the Train vs Validation section for that bug).
             f"Check that the right data set is loaded ({run.num_classes} classes, 32x32 RGB)",
             "Check gradient flow: the gradient-norm and weight-update sections above"]))
    stalled = [v for v in run.cut_verdicts if v.get("stalled")]
    if stalled:
        v = stalled[0]
        crosses = f" (cut again at epoch(s) {_epochs(v['crosses'])} within it)" if v["crosses"] else ""
        add(Diagnosis(
            "lr_reduced_too_early", "Learning rate reduced too early",
            f"{run.schedule.kind} schedule: LR cut at epoch {v['epoch']} ({_fmt(v['before'])} -> "
            f"{_fmt(v['after'])}), and in the {len(v['window'])} epochs right after it (epochs "
            f"{v['window'][0][0]}-{v['window'][-1][0]}){crosses} the loss improved by "
            f"{100 * v['improvement']:.2f}% < {PLATEAU_MIN_IMPROVEMENT:.0%} (best {v['best']:.4f} vs "
            f"{v['ref']:.4f} up to the cut)" + (f"; stalled after {len(stalled)} early cuts" if len(stalled) > 1
                                                else ""),
            schedule_advice(run.schedule, config, run.last_epoch)))
    if acc and run.plateau is not None and run.plateau <= PLATEAU_EARLY_EPOCH and acc[-1][1] < LOW_ACCURACY:
        lower = ", ".join(f"{name} {value:g} -> {to}" for name, value, to in (
            ("label smoothing", config.label_smoothing, "0.05 or 0.0"),
            ("weight decay", config.weight_decay, "1e-4"),
            ("RandAugment magnitude", config.randaugment_magnitude, "9")) if value)
        early_cut = run.schedule.drops and run.schedule.drops[0][0] <= LR_EARLY_EPOCH
        add(Diagnosis(
            "loss_plateaued_early", "Loss plateaued early",
            f"no {PLATEAU_MIN_IMPROVEMENT:.0%} improvement in {PLATEAU_WINDOW} epochs from epoch {run.plateau} "
            f"on, and accuracy is only {acc[-1][1]:.2f}% (< {LOW_ACCURACY:g}%)",
            [f"Over-regularisation? Reduce {lower or 'label smoothing, weight decay or augmentation'}",
             "Data issue? Check the labels and that the right data set is loaded",
             "LR too low? The schedule cuts the LR early; use one without early cuts (--scheduler cosine)"
             if early_cut else f"LR too low or too high? The schedule ({run.schedule.kind}) has no early cut; "
                               f"try a different --lr"]))


def schedule_advice(schedule: Schedule, config: RunConfig, last_epoch: int) -> list[str]:
    """What to change about an early cut, for the scheduler that actually ran."""
    epoch, before, after = schedule.drops[0]
    if schedule.kind == "plateau":
        patience = config.patience
        return [f"ReduceLROnPlateau cut first at epoch {epoch} with patience {patience} (results.json): "
                f"raise it, e.g. --patience {2 * patience}, so that a few noisy validation epochs do not cut "
                f"the LR" if patience is not None else
                f"ReduceLROnPlateau cut first at epoch {epoch}: raise its patience",
                "Or switch to --scheduler cosine (no early cut) or --scheduler onecycle",
                "Or increase the initial learning rate"]
    n = config.num_epochs or last_epoch
    later = sorted({max(epoch + 1, round(n * 0.5)), max(epoch + 2, round(n * 0.75))})
    factor = after / before if before else 0
    return [f"The first step comes at epoch {epoch} ({_fmt(before)} -> {_fmt(after)}, x{factor:.2g}): "
            f"move it later, e.g. MultiStepLR(optimizer, milestones={later}, gamma={factor:.2g}) for {n} "
            f"epochs, or use fewer steps",
            "Or use a schedule without early cuts (--scheduler cosine in this code base)",
            "Check that the scheduler is stepped once per epoch, not once per batch"]


# ---------------------------------------------------------------- plot

def plot_curves(records: list[dict], path: Path, title: str, val_records: list[dict] | None = None,
                accuracy_scale: float = 1.0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [("loss", False), ("accuracy", False), ("learning_rate", True),
              (("mean_grad_norm", "min_grad_norm", "max_grad_norm"), True),
              (("weight_update_norm", "grad_update_norm", "decay_update_norm"), True), ("loss_scale", True)]
    titles = {"mean_grad_norm": "grad norm", "weight_update_norm": "relative weight change",
              "accuracy": "accuracy (%)" if accuracy_scale == 100 else "accuracy"}
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for ax, (keys, log) in zip(axes.flat, panels):
        keys = (keys,) if isinstance(keys, str) else keys
        sources = [("", records)]
        if val_records and keys[0] in ("loss", "accuracy"):
            sources.append(("val_", val_records))
        drawn = False
        for prefix, recs in sources:
            for key in keys:
                scale = accuracy_scale if key == "accuracy" else 1.0
                points = [(e, v * scale) for e, v in series(recs, key) if not log or v > 0]
                if points:
                    ax.plot(*zip(*points), marker="o", markersize=3, label=prefix + key)
                    drawn = True
        if drawn:
            ax.set_yscale("log" if log else "linear")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(titles.get(keys[0], keys[0]), fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)  # atomically: the PNG is whole or absent
    plt.close(fig)
    return path


# ---------------------------------------------------------------- command line

class InputError(Exception):
    """The input cannot be read; the message says why."""


def find_inputs(target: Path | None, val_file: Path | None, results_file: Path | None):
    """(train file, validation file or None, results.json or None) for a run folder or a file."""
    if target is None and not (DEFAULT_RUN / LATEST).exists():
        raise InputError(f"no run yet in {DEFAULT_RUN} (outputs/latest names the newest): train with main.py first, "
                         "or give a run folder (runs made before outputs/ existed: results/) or a JSONL file")
    train = target or DEFAULT_RUN
    if train.name in (LATEST, RESULTS_FILE) or (train.is_dir() and (train / LATEST).exists()):
        try:  # outputs/ or outputs/latest: the newest run's folder, by its own name; a results.json: its folder
            train = resolve_run_dir(train)
        except RunFolderError as err:
            raise InputError(str(err)) from None
    if train.is_dir():
        candidates = [train / "diagnostics" / "train_diagnostics.jsonl", train / "train_diagnostics.jsonl",
                      train / "history.jsonl"]
        train = next((c for c in candidates if c.is_file()), None)
        if train is None:
            raise InputError(f"{target} holds none of diagnostics/train_diagnostics.jsonl, "
                             f"train_diagnostics.jsonl, history.jsonl")
    if val_file is None and train.name == "train_diagnostics.jsonl":
        sibling = train.with_name("val_diagnostics.jsonl")
        val_file = sibling if sibling.is_file() else None
    if results_file is None:
        results_file = next((d / "results.json" for d in (train.parent, train.parent.parent)
                             if (d / "results.json").is_file()), None)
    return train, val_file, results_file


def read_run(train_path: Path, val_path: Path | None, results_path: Path | None):
    """(records, validation records, RunConfig, notes, where validation came from)."""
    records, notes = load_records(train_path)
    if not records:
        raise InputError(f"{train_path} holds no epoch records yet")
    val_records = []
    if val_path is not None:
        val_records, val_notes = load_records(val_path)
        notes += val_notes
    elif any("val_accuracy" in r or "val_loss" in r for r in records):  # history.jsonl: both in one file
        val_records = [{"epoch": r.get("epoch"), "loss": r.get("val_loss"), "accuracy": r.get("val_accuracy")}
                       for r in records]
        val_path = train_path
    config = RunConfig()
    if results_path is not None:
        try:
            results = json.loads(results_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            notes.append(f"{results_path} could not be read ({err}): going on without the configuration")
        else:
            config = RunConfig.from_results(results if isinstance(results, dict) else {}, str(results_path))
            n = len(records)
            if config.epochs_completed is not None and config.epochs_completed != n:
                notes.append(f"{results_path} reports {config.epochs_completed} epochs but {train_path.name} "
                             f"has {n}: it belongs to another run (or this one is still going); not used")
                config = RunConfig()
    return records, val_records, config, notes, val_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", type=Path, default=None,
                   help="a run folder (outputs/<date>_<time>-<mode>/ or main.py's --out), outputs/ or outputs/latest "
                        "(the newest run), its diagnostics/ folder, its results.json, or a JSONL file "
                        "(default: this version's outputs/latest)")
    p.add_argument("--file", type=Path, default=None, help="the training JSONL file (same as giving it as RUN)")
    p.add_argument("--val-file", type=Path, default=None,
                   help="validation JSONL (default: val_diagnostics.jsonl beside the file; "
                        "history.jsonl holds both)")
    p.add_argument("--results", type=Path, default=None,
                   help="the run's results.json (default: beside the file or one folder up)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="for chance level (default: results.json's, else 100 for CIFAR-100)")
    p.add_argument("--accuracy-unit", choices=["auto", "percent", "fraction"], default="auto",
                   help="how the files record accuracy (default: decided from the values and the loss)")
    p.add_argument("--plot", type=Path, default=None, help="PNG of the curves (default: FILE with .png)")
    args = p.parse_args(argv)
    if args.run and args.file:
        p.error("give the run folder/file or --file, not both")
    try:
        train_path, val_path, results_path = find_inputs(args.file or args.run, args.val_file, args.results)
        records, val_records, config, notes, val_path = read_run(train_path, val_path, results_path)
    except (OSError, InputError) as err:
        print(f"error: cannot read the run: {err}", file=sys.stderr)
        return 2
    report = analyze(records, args.num_classes or config.num_classes or 100, val_records, config,
                     args.accuracy_unit)
    report.notes[:0] = notes
    print(f"Diagnostics of {train_path}: {len(records)} epoch(s)"
          + (f"; validation from {val_path}" if val_records else ""))
    print(report.text())
    plot = args.plot or train_path.with_suffix(".png")
    try:
        plot_curves(records, plot, f"{train_path.name}: {', '.join(report.ids) or 'no issue found'}",
                    val_records, report.accuracy_scale)
        print(f"\ncurves: {plot}")
    except OSError as err:
        print(f"\nwarning: could not write the plot {plot}: {err}", file=sys.stderr)
    return report.exit_code()


if __name__ == "__main__":
    sys.exit(main())
