"""Debugging checks: each version adds the check its own idea needs.

Every check returns a `CheckResult`: passed or not, the measured value, the
threshold it was held to, and a one-line hint on what to do when it fails.
train.py prints each verdict and one summary table of all of them.

A check that draws random numbers or a batch from the shuffled training loader
runs inside `rng_untouched`, so that running it or not never changes training.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import math
import random
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from visualization import plot_overfit_one_batch


@dataclass
class CheckResult:
    name: str
    passed: bool
    value: float | int | None
    threshold: float | int | None
    criterion: str  # how value and threshold are compared, in words a learner can read
    hint: str  # what to look at when the check fails
    details: dict = field(default_factory=dict)
    seconds: float = 0.0
    # Why this check fails in a healthy run by design ("" for the checks that must pass): such a
    # failure is reported, marked "expected" with its reason, and does not count as a bug.
    expected: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def report(self) -> str:
        mark = "PASS" if self.passed else ("FAIL (expected)" if self.expected else "FAIL")
        line = f"[{mark}] {self.name}: value={_fmt(self.value)} ({self.criterion})"
        if self.passed:
            return line
        return f"{line}\n       hint: {self.hint}" + (f"\n       expected: {self.expected}" if self.expected else "")


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_check_summary(checks: dict[str, CheckResult]) -> None:
    """One table of all verdicts, so a failed check cannot scroll out of sight."""
    print("\n" + "=" * 78)
    print("CHECK SUMMARY")
    print("=" * 78)
    print(f"{'check':<36}{'verdict':<9}{'value':>12}  {'threshold':>10}  {'time':>7}")
    for name, check in checks.items():
        verdict = "PASS" if check.passed else ("FAIL*" if check.expected else "FAIL")
        print(f"{name:<36}{verdict:<9}{_fmt(check.value):>12}  {_fmt(check.threshold):>10}  {check.seconds:6.2f}s")
    failed = [name for name, check in checks.items() if not check.passed and not check.expected]
    expected = [name for name, check in checks.items() if not check.passed and check.expected]
    passed = len(checks) - len(failed) - len(expected)
    print(f"{passed}/{len(checks)} passed" + (f"; FAILED: {', '.join(failed)}" if failed else "")
          + (f"; failed as expected (*): {', '.join(expected)}" if expected else ""))
    for name in expected:
        print(f"  * {name}: {checks[name].expected}")


@contextlib.contextmanager
def rng_untouched(device, *generators: torch.Generator):
    """Checks observe, they do not perturb: every random number generator (Python, NumPy,
    PyTorch on the CPU and on `device`, and the given generators, such as the training
    loader's shuffle) leaves this block in the state it entered it.

    Without it, a check that draws one dropout mask or one shuffled batch shifts every
    random number training draws later: switching a check off would change the trained
    model, and two versions with the same recipe would report different accuracies.
    """
    device = torch.device(device)
    saved = [g.get_state() for g in generators]
    python_state, numpy_state = random.getstate(), np.random.get_state()
    if device.type == "cuda":
        forked = torch.random.fork_rng(devices=[device.index if device.index is not None
                                                else torch.cuda.current_device()])
    elif device.type == "mps":
        forked = torch.random.fork_rng(devices=[0], device_type="mps")
    else:
        forked = torch.random.fork_rng(devices=[])
    try:
        with forked:
            yield
    finally:
        for generator, state in zip(generators, saved):
            generator.set_state(state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def inspect_batch(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                  value_range: tuple[float, float] = (0.0, 1.0), image_shape: tuple = (3, 160, 160),
                  normalised: bool = False, max_abs_mean: float = 0.5,
                  std_range: tuple[float, float] = (0.5, 2.0)) -> CheckResult:
    """Look at one batch exactly as the model will get it, before training on it.

    Most first bugs are visible here and nowhere else as clearly: pixels still uint8
    in [0, 255] (the /255 forgotten), channels last (N, 160, 160, 3) instead of
    (N, 3, 160, 160), one channel where the net wants three (a greyscale image that
    was not converted), NaN pixels, an all-black batch (a broken decoder), labels
    outside 0..9, or a batch of one class only (data sorted by class and not
    shuffled). `value` is the number of problems found; the numbers are in `details`,
    including the mean of each channel (a channel far from the others' mean hints
    at BGR vs RGB or a channel that was zeroed).

    With `normalised`, the batch is also judged against what any correctly normalised
    batch looks like, whatever statistics the loader uses: every channel's mean within
    `max_abs_mean` of 0 and its std in `std_range`. One normalised training batch has
    channel means near 0 and stds near 1: over the first 41 batches of 64 real images (v4,
    160 px, cropped and flipped) |mean| <= 0.18, std 0.88-1.06; the 512-image
    normalised_batch check holds them to 0.15. The bounds here are far looser: they catch
    statistics of the wrong scale or split (std 0.004, or 0.28 with none), not noise. The
    `value_range` alone cannot see wrong statistics, because it is derived from them:
    statistics computed on uint8 pixels (mean ~110, std ~70) and applied to [0, 1] floats
    squeeze every pixel into [-1.66, -1.43] with std 0.004, inside the range they imply.
    """
    start = time.perf_counter()
    problems = []
    if images.dtype != torch.float32:
        problems.append(f"images are {images.dtype}, not torch.float32")
    if tuple(images.shape[1:]) != tuple(image_shape):
        problems.append(f"one image has shape {tuple(images.shape[1:])}, not {tuple(image_shape)} (channels first)")
    pixels = images.detach().cpu().double()  # on the CPU: MPS has no float64
    low, high = pixels.min().item(), pixels.max().item()
    if not torch.isfinite(pixels).all():
        problems.append("some pixels are NaN or infinite")
    elif low < value_range[0] - 1e-4 or high > value_range[1] + 1e-4:
        problems.append(f"pixel values in [{low:.3g}, {high:.3g}], "
                        f"outside [{value_range[0]:.3g}, {value_range[1]:.3g}]")
    elif pixels.std().item() < 0.01 * (value_range[1] - value_range[0]):
        problems.append(f"the batch is (nearly) constant: std {pixels.std().item():.3g}")
    channel_means = pixels.mean(dim=(0, 2, 3)).tolist() if pixels.dim() == 4 else []
    channel_stds = pixels.std(dim=(0, 2, 3)).tolist() if pixels.dim() == 4 else []
    if normalised and channel_means and torch.isfinite(pixels).all():
        low_std, high_std = std_range
        if max(abs(m) for m in channel_means) > max_abs_mean or not all(
                low_std <= s <= high_std for s in channel_stds):
            problems.append("not normalised: channel means " + ", ".join(f"{m:.3g}" for m in channel_means)
                            + "; stds " + ", ".join(f"{s:.3g}" for s in channel_stds) + " (a normalised batch: "
                            f"|mean| <= {max_abs_mean:g}, std in [{low_std:g}, {high_std:g}]): "
                            "are the statistics those of [0, 1] pixels, of the training split?")
    if labels.dtype != torch.int64:
        problems.append(f"labels are {labels.dtype}, not torch.int64 (what cross-entropy expects)")
    if len(labels) != len(images):
        problems.append(f"{len(images)} images but {len(labels)} labels")
    label_low, label_high = labels.min().item(), labels.max().item()
    if label_low < 0 or label_high >= num_classes:
        problems.append(f"labels in [{label_low}, {label_high}], outside [0, {num_classes - 1}]")
    distinct = len(torch.unique(labels))
    if len(labels) >= 4 * num_classes and distinct < num_classes // 2:
        problems.append(f"the batch holds only {distinct} of {num_classes} classes: "
                        "is the data sorted and not shuffled?")
    return CheckResult(
        name="first_batch",
        passed=not problems,
        value=len(problems),
        threshold=0,
        criterion=f"problems found == 0 (images float32 {tuple(image_shape)} in [{value_range[0]:.3g}, "
                  f"{value_range[1]:.3g}], labels int64 in [0, {num_classes - 1}])",
        hint=("Fix the loading code (to_float, load_data) until these are gone: " + "; ".join(problems)
              if problems else "Look at first_batch.png as well: does every image match its label?"),
        details={"shape": list(images.shape), "dtype": str(images.dtype), "min": low, "max": high,
                 "mean": pixels.mean().item(), "std": pixels.std().item(), "channel_means": channel_means,
                 "channel_stds": channel_stds,
                 "label_min": label_low, "label_max": label_high, "distinct_labels": distinct,
                 "problems": problems},
        seconds=time.perf_counter() - start,
    )


def class_balance(split_labels: dict[str, torch.Tensor], reference_counts: list[int], num_classes: int,
                  checked: tuple[str, ...] = ("train", "val"), max_deviation_points: float = 2.0) -> CheckResult:
    """Does every split we train and select on have the class mix of the data it was drawn from?

    The training subset and the validation split are drawn per class (stratified),
    so each class's share should match its share of the whole train/ folder to
    within rounding. A subset taken as "the first 40% of the file list" holds only
    the first four classes (the list is sorted by class); a random but unstratified
    subset of a small data set can be off by several points. Either skews what the
    net learns and what validation rewards. `value` is the largest deviation of a
    class's share, in percentage points, over the checked splits; the test set
    (the official val/ folder) is reported next to them but not held to it.

    A report on the class mix and a guard against unstratified subsets only: it reads
    label counts, so images shuffled apart from their labels leave every count as it
    was. Misaligned labels are for the input-independent baseline and the overfit test
    (imagenette/v6 on) to catch.
    """
    start = time.perf_counter()
    reference = torch.tensor(reference_counts, dtype=torch.float64)
    reference_share = 100 * reference / reference.sum()
    counts, deviations, missing = {}, {}, []
    for name, labels in split_labels.items():
        count = torch.bincount(labels.cpu(), minlength=num_classes).double()
        counts[name] = [int(c) for c in count.tolist()]
        share = 100 * count / max(count.sum().item(), 1.0)
        deviations[name] = (share - reference_share).abs().max().item()
        if name in checked:
            missing += [f"{name}: class {c}" for c in range(num_classes) if count[c] == 0]
    worst = max(deviations[name] for name in checked)
    passed = worst <= max_deviation_points and not missing
    return CheckResult(
        name="class_balance",
        passed=passed,
        value=worst,
        threshold=max_deviation_points,
        criterion=f"largest deviation of a class's share in {'/'.join(checked)} from train/'s <= "
                  f"{max_deviation_points:g} points, no class missing",
        hint=("Draw the subset and the validation split per class (shared/imagenette.py: stratified_subset)"
              + (f"; missing: {', '.join(missing)}" if missing else "") if not passed
              else "The splits keep the class mix; class_balance.png shows the counts."),
        details={"counts": counts, "reference_share_percent": reference_share.tolist(),
                 "max_deviation_points": deviations, "missing": missing},
        seconds=time.perf_counter() - start,
    )


def _channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    pixels = images.detach().cpu().double()  # on the CPU: MPS has no float64
    return pixels.mean(dim=(0, 2, 3)).tolist(), pixels.std(dim=(0, 2, 3)).tolist()


def verify_normalised_batch(loader, tolerance: float = 0.15, count: int = 512) -> CheckResult:
    """Training batches after normalisation have mean ~0 and std ~1 in every channel.

    That is what Normalize(mean, std) is for: inputs centred on 0 with unit spread,
    the scale the default initialisation of the first layer assumes. Measured on
    `count` training images through the training transform (augmented, as the
    model gets them; a crop changes the numbers by a few hundredths). Far off means
    the normalisation is missing (mean ~0.45, std ~0.28 on Imagenette), applied twice,
    done with ImageNet's numbers on other data, or with the channels swapped.
    Draws random numbers from the loader's generator: run it inside rng_untouched.
    """
    start = time.perf_counter()
    # Spread over the whole split: the images are stored sorted by class, and the first 512 would be
    # tench and English springer only, whose colours are not the split's.
    picked = torch.linspace(0, len(loader.images) - 1, min(count, len(loader.images))).long()
    images = loader.transform(loader.images[picked.to(loader.images.device)], loader.generator)
    means, stds = _channel_stats(images)
    deviation = max(max(abs(m) for m in means), max(abs(s - 1) for s in stds))
    return CheckResult(
        name="normalised_batch",
        passed=deviation <= tolerance,
        value=deviation,
        threshold=tolerance,
        criterion=f"max over channels of |mean|, |std - 1| <= {tolerance} (means "
                  f"{', '.join(f'{m:.3f}' for m in means)}; stds {', '.join(f'{v:.3f}' for v in stds)})",
        hint="The batches the model gets are not normalised: is Transform applied in the training loader, "
             "once, with the per-channel mean and std of the training split (normalize.py)?",
        details={"channel_means": means, "channel_stds": stds, "images": len(images)},
        seconds=time.perf_counter() - start,
    )


def verify_normalisation_stats(splits: dict[str, torch.Tensor], loaders: dict, tolerance: float = 1e-4) -> CheckResult:
    """Every loader normalises with the per-channel mean and std of the training split, and nothing else.

    Statistics computed on the validation or test images (or all of them together)
    let those images shape the input pipeline; and all loaders must use the same
    numbers: a model evaluated with other statistics than it was trained with sees
    shifted inputs. `splits` holds the uint8 images of each split; `loaders` the
    loaders whose Transform carries the numbers in use. The details name the split
    whose statistics each loader's numbers are closest to.
    """
    start = time.perf_counter()
    stats = {}
    for name, images in splits.items():
        sums, squares, count = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
        for first in range(0, len(images), 256):  # in pieces: a float64 copy of 3,000 images would be 2 GB
            pixels = images[first:first + 256].detach().cpu().double() / 255.0
            sums += pixels.sum(dim=(0, 2, 3))
            squares += pixels.pow(2).sum(dim=(0, 2, 3))
            count += pixels.shape[0] * pixels.shape[2] * pixels.shape[3]
        mean = sums / count
        std = (squares / count - mean.pow(2)).clamp_min(0).mul(count / (count - 1)).sqrt()
        stats[name] = (mean.tolist(), std.tolist())

    def distance(a, b):
        return max(max(abs(x - y) for x, y in zip(a[0], b[0])), max(abs(x - y) for x, y in zip(a[1], b[1])))

    used, matches, deviation = {}, {}, 0.0
    for name, loader in loaders.items():
        numbers = (list(loader.transform.mean), list(loader.transform.std))
        used[name] = {"mean": numbers[0], "std": numbers[1]}
        matches[name] = min(stats, key=lambda split: distance(stats[split], numbers))
        deviation = max(deviation, distance(stats["train"], numbers))
    return CheckResult(
        name="normalisation_from_train",
        passed=deviation <= tolerance,
        value=deviation,
        threshold=tolerance,
        criterion=f"max |loader's mean/std - training split's| over channels <= {tolerance:g}",
        hint=f"The loaders' statistics are closest to these splits: {matches}. Compute mean and std once, from "
             "the training split's images only (normalize.py), and hand the same numbers to every loader.",
        details={"split_stats": {name: {"mean": m, "std": v} for name, (m, v) in stats.items()},
                 "used": used, "closest_split": matches},
        seconds=time.perf_counter() - start,
    )


def verify_train_augmented(loader, expected: bool = True, count: int = 64, min_changed: float = 0.9) -> CheckResult:
    """Training batches are augmented: the same images through the training transform twice
    come out different (another crop, a flip or not).

    Two random resized crops of the same image are practically never identical, so
    nearly every image must change. Augmentation configured off (`expected=False`)
    must change nothing. Draws random numbers from the loader's generator: run it
    inside rng_untouched.
    """
    start = time.perf_counter()
    images = loader.images[:count]
    first, second = loader.transform(images, loader.generator), loader.transform(images, loader.generator)
    changed = (first != second).flatten(1).any(1).float().mean().item()
    passed = changed >= min_changed if expected else changed == 0
    return CheckResult(
        name="train_batches_augmented",
        passed=passed,
        value=changed,
        threshold=min_changed if expected else 0.0,
        criterion=(f"fraction of images changed between two draws >= {min_changed}" if expected
                   else "fraction of images changed == 0 (augmentation switched off)"),
        hint=("The training loader does not augment: is it built with Transform(..., augment=True)?" if expected
              else "Augmentation is switched off but training batches still change between draws."),
        details={"images": len(images), "augmentation_expected": expected},
        seconds=time.perf_counter() - start,
    )


def verify_eval_unaugmented(loader) -> CheckResult:
    """An evaluation batch is the same every time, and it is the stored images, only normalised.

    Augmentation left on at evaluation (the training transform reused for the
    validation loader, a classic) measures the model on random crops: validation
    accuracy is noisy and lower than the truth, two evaluations of the same model
    disagree, and the best epoch is partly picked by chance. So is shuffling the
    evaluation loader harmless for accuracy but fatal for anything that lines up
    predictions with images. Compares the first batch of two passes bit for bit, and
    with the first images of the split normalised by hand (no crop, no flip).
    `value` is the largest absolute difference found.
    """
    start = time.perf_counter()
    first, _ = next(iter(loader))
    second, _ = next(iter(loader))
    stored = loader.images[:len(first)].float().div(255.0)
    mean = torch.tensor(loader.transform.mean, device=stored.device).view(1, 3, 1, 1)
    std = torch.tensor(loader.transform.std, device=stored.device).view(1, 3, 1, 1)
    plain = (stored - mean) / std
    between_passes = (first - second).abs().max().item()
    from_plain = (first - plain).abs().max().item() if first.shape == plain.shape else float("inf")
    difference = max(between_passes, from_plain)
    return CheckResult(
        name="eval_deterministic_unaugmented",
        passed=difference <= 1e-5,
        value=difference,
        threshold=1e-5,
        criterion=f"max |difference| between two passes ({between_passes:.3g}) and from the plainly normalised "
                  f"images ({from_plain:.3g}) <= 1e-05",
        hint="Evaluation batches are augmented, shuffled or changed: the validation and test loaders must use "
             "Transform(..., augment=False) and shuffle=False.",
        details={"between_passes": between_passes, "from_plain": from_plain, "batch_size": len(first)},
        seconds=time.perf_counter() - start,
    )


def activation_statistics(model, images: torch.Tensor, name: str = "activations",
                          max_dead_fraction: float = 0.5, reported_only: tuple[str, ...] = ()) -> CheckResult:
    """Per ReLU layer, on one batch: mean and std of its output, and its fraction of dead units.

    A unit (a channel of a conv layer, a neuron of an FC layer) is dead on this batch
    when its ReLU outputs 0 for every image and every position. A dead unit passes no
    gradient back, so it usually stays dead: a layer where most units are dead has
    lost most of its width. Typical causes: a learning rate that threw the weights
    far (after training), a large negative bias or BatchNorm shift. With BatchNorm before
    every ReLU about half of each unit's outputs are positive and hardly a unit is dead,
    so `max_dead_fraction` (more than half of one layer) only catches the real thing.
    What it can see at init is narrow: BatchNorm in training mode re-centres every
    channel on the batch, so only a channel it makes constant is dead there, as when
    every BatchNorm scale starts at 0 (zero_init meant for the last BatchNorm of each
    residual branch applied to all of them) or a shift starts far below 0. Inputs that
    were never normalised do not show here: first_batch and normalised_batch see them,
    and after training this check sees what the learning rate did. A std that shrinks or
    grows layer by layer is the other thing to look for (vanishing/exploding
    activations); it is reported and drawn, not judged.

    Measured on a copy of the model in train mode (BatchNorm normalises with the
    batch's own statistics, as in training); the model itself, and its BatchNorm
    running statistics, stay as they are. Dropout draws random numbers: run it inside
    rng_untouched.
    """
    start = time.perf_counter()
    probe = copy.deepcopy(model).train()
    outputs: dict[str, torch.Tensor] = {}

    def keep(layer_name):
        def hook(module, inputs, output):
            outputs[layer_name if layer_name not in outputs else f"{layer_name}#{len(outputs)}"] = output.detach()
        return hook

    handles = [module.register_forward_hook(keep(layer_name)) for layer_name, module in probe.named_modules()
               if isinstance(module, nn.ReLU)]
    try:
        probe(images)
    finally:
        for handle in handles:
            handle.remove()
    layers = {}
    for layer_name, output in outputs.items():
        per_unit = output.transpose(0, 1).reshape(output.shape[1], -1)  # (units, images x positions)
        layers[layer_name] = {"mean": output.mean().item(), "std": output.std().item(),
                              "fraction_zero": (output <= 0).float().mean().item(),
                              "dead_fraction": (per_unit <= 0).all(1).float().mean().item(),
                              "units": output.shape[1], "positions": output[0, 0].numel()}
    # Layers named in `reported_only` (train.py passes squeeze-excitation gates, "se.gate") are
    # drawn but not judged: a gate's ReLU sees one pooled value per channel and image, and a unit
    # that is 0 for all 32 images of a batch only means that part of the gate is off for them,
    # not a lost feature channel. After training half of a late gate's units can be off (53% in
    # blocks.10 on the H100, seed 0).
    judged = {name: layer for name, layer in layers.items() if not any(part in name for part in reported_only)}
    worst = max(judged, key=lambda layer: judged[layer]["dead_fraction"]) if judged else None
    worst_fraction = judged[worst]["dead_fraction"] if judged else 0.0
    return CheckResult(
        name=name,
        passed=bool(judged) and worst_fraction <= max_dead_fraction,
        value=worst_fraction,
        threshold=max_dead_fraction,
        criterion=f"largest fraction of dead ReLU units in one layer <= {max_dead_fraction} "
                  f"(worst: {worst}, {len(judged)} ReLU layers judged, {len(layers) - len(judged)} only reported)",
        hint=(f"Layer {worst}: {worst_fraction:.0%} of its units never fire on this batch. Look at its input "
              "(normalised?), the bias or BatchNorm shift before it, and the learning rate." if judged else
              "No nn.ReLU module ran: use nn.ReLU layers (not F.relu) so that their outputs can be measured."),
        details={"layers": layers, "batch_size": len(images)},
        seconds=time.perf_counter() - start,
    )


def _thin(values: list, most: int = 500) -> list:
    """At most `most` evenly spaced entries (first and last kept): a curve for results.json."""
    if len(values) <= most:
        return list(values)
    return [values[round(i * (len(values) - 1) / (most - 1))] for i in range(most)]


def verify_lr_schedule(model, optimizer, scheduler, *, epochs: int, steps_per_epoch: int, make_optimizer,
                       train_one_epoch, batches) -> CheckResult:
    """The schedule the run will follow, and that it is stepped once per batch.

    1. The plan: the run's own scheduler is stepped `epochs` x `steps_per_epoch` times (every
       batch of every epoch: counted here, not taken from the code under test), its learning
       rate recorded before each step, and then put back exactly as it was (state_dict). This
       is the curve lr_schedule.png draws before training. A schedule planned in epochs
       (total_steps = epochs) but stepped per batch ends after 40 of 2,040 steps: OneCycle
       raises an error mid-epoch. So: the plan must last all the run's steps, and a schedule
       that changes must reach its lowest LR in the last epoch, not before.
    2. The stepping: the run's own `train_one_epoch`, with an optimizer and scheduler from the
       run's own `make_optimizer` on a copy of the model, on `batches` (a few small batches),
       must advance the scheduler exactly once per batch. Zero steps means it is stepped per
       epoch (scheduler.step() in the epoch loop: 40 steps where 2,040 were planned, the LR
       stays at its warm-up start the whole run) or not at all; two per batch means twice.
    `value` counts the problems. Dropout draws random numbers: run it inside rng_untouched.
    """
    start = time.perf_counter()
    total_steps = epochs * steps_per_epoch
    problems, lrs, ended_at = [], [], None
    saved_optimizer, saved_scheduler = copy.deepcopy(optimizer.state_dict()), copy.deepcopy(scheduler.state_dict())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": no training here
            for step in range(total_steps):
                lrs.append(optimizer.param_groups[0]["lr"])
                try:
                    scheduler.step()
                except ValueError:  # OneCycleLR: "Tried to step N times. The specified number of total steps is M"
                    ended_at = step  # steps it took before refusing
                    break
    finally:
        optimizer.load_state_dict(saved_optimizer)
        scheduler.load_state_dict(saved_scheduler)
    if ended_at is not None:
        problems.append(f"the schedule ends after {ended_at} of the run's {total_steps} steps: it was planned "
                        "in epochs but is stepped per batch (make_optimizer(total_steps=...) must count batches)")
    changes = len(lrs) > 1 and max(lrs) > min(lrs)
    lowest_at = min(range(len(lrs)), key=lrs.__getitem__) if lrs else 0
    # The lowest LR belongs in the last epoch; in a run of one epoch (--quick), in its last tenth: there
    # "more than an epoch before the end" could never fire, and a plan in epochs (LR 0 after step 1) passed.
    tolerance = min(steps_per_epoch, max(1, total_steps // 10))
    if ended_at is None and changes and lowest_at < total_steps - tolerance:
        problems.append(f"the LR reaches its lowest value at step {lowest_at} of {total_steps}, more than "
                        f"{tolerance} steps before the end: the schedule's length does not match the run's steps")

    probe = copy.deepcopy(model)
    probe_optimizer, probe_scheduler = make_optimizer(probe, total_steps=total_steps)
    before = probe_scheduler.last_epoch
    advanced, error = None, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train_one_epoch(probe, batches, probe_optimizer, probe_scheduler)
        advanced = probe_scheduler.last_epoch - before
    except ValueError as err:
        error = str(err)
        problems.append(f"train_one_epoch() ran the scheduler past its end within {len(batches)} batches ({err})")
    except FloatingPointError as err:  # train.TrainingDiverged: reported, not raised, so the other checks still run
        error = str(err)
        problems.append(f"train_one_epoch() diverged within {len(batches)} batches: {err}")
    if advanced is not None and advanced != len(batches):
        where = ("per epoch or not at all (scheduler.step() must go after optimizer.step() in the step)"
                 if advanced < len(batches) else "more than once per batch")
        problems.append(f"train_one_epoch() advanced the scheduler {advanced} times in {len(batches)} batches: "
                        f"it is stepped {where}")
    return CheckResult(
        name="lr_schedule",
        passed=not problems,
        value=len(problems),
        threshold=0,
        criterion=f"problems == 0 (plan lasts all {total_steps} steps, lowest LR in the last epoch, "
                  f"one scheduler step per batch: {advanced} in {len(batches)})",
        hint="; ".join(problems) if problems else "The run follows the curve in lr_schedule.png.",
        details={"lrs": _thin(lrs), "lr_steps": _thin(list(range(len(lrs)))), "total_steps": total_steps,
                 "planned_steps": len(lrs) if ended_at is None else ended_at, "steps_per_epoch": steps_per_epoch,
                 "peak_lr": max(lrs) if lrs else None,
                 "peak_step": max(range(len(lrs)), key=lrs.__getitem__) if lrs else None,
                 "first_lr": lrs[0] if lrs else None, "last_lr": lrs[-1] if lrs else None,
                 "lowest_step": lowest_at, "scheduler_steps_in_batches": advanced, "batches": len(batches),
                 "error": error, "problems": problems},
        seconds=time.perf_counter() - start,
    )


def expected_loss_at_init(num_classes: int, label_smoothing: float = 0.0) -> float:
    """The cross-entropy to expect from a model that knows nothing yet: ln(num_classes).

    The arithmetic, written down: an untrained model predicts (close to) the uniform
    distribution, p_k = 1/C for every class k. Cross-entropy with a target t is
    L = -sum_k t_k ln p_k = -sum_k t_k ln(1/C) = ln(C) x sum_k t_k = ln(C),
    because every target is a probability distribution (sum_k t_k = 1), and the smoothed
    one is too: (1 - eps) one-hot + eps/C on every class sums to (1 - eps) + C x eps/C = 1.
    So label smoothing does not change it: ln(10) = 2.3026 with or without it.
    What smoothing does change is the floor, the lowest loss training can reach: the
    entropy of the smoothed target (0.50 with eps = 0.1 and C = 10, see smoothing_floor).
    A training loss below the floor is a bug. The parameter is kept to say so.
    """
    return math.log(num_classes)


def smoothing_floor(num_classes: int, label_smoothing: float) -> float:
    """Entropy of the smoothed target: the loss of a model that predicts exactly that target."""
    on, off = 1 - label_smoothing + label_smoothing / num_classes, label_smoothing / num_classes
    return -(on * math.log(on) + (num_classes - 1) * (off * math.log(off) if off > 0 else 0.0))


@torch.no_grad()
def verify_loss_at_init(model, images: torch.Tensor, labels: torch.Tensor, *, loss_fn, expected: float,
                        num_classes: int = 10, label_smoothing: float = 0.0, tolerance: float = 0.3,
                        arithmetic_tolerance: float = 1e-4) -> CheckResult:
    """The loss at init, with the run's own `loss_fn` (label smoothing included), against ln C.

    Two measurements on one training batch:
    1. the arithmetic: `loss_fn` of uniform predictions (all logits 0) must equal
       `expected` to 1e-4. A loss whose smoothed targets do not sum to 1, or a wrong
       expectation ((1 - eps) ln C, as if the smoothed part cost nothing), fails here;
    2. the model: `loss_fn` of the untrained model's logits (a copy in train mode, as
       in the first training step) must lie within `tolerance` of `expected`. Far
       above: the logits start large (a bad init of the last layer, or unnormalised
       inputs); far below: the net knows the answer before training (labels leak into
       the inputs). A softmax before the loss shows up as a loss stuck near ln C
       later, not here: the overfit tests of fashionmnist/v10-step2 catch that.
    The floor (entropy of the smoothed target) is reported beside it.
    """
    start = time.perf_counter()
    uniform = loss_fn(torch.zeros(len(labels), num_classes, device=images.device), labels).item()
    probe = copy.deepcopy(model).train()
    measured = loss_fn(probe(images), labels).item()
    if labels.is_floating_point():  # soft targets (MixUp): the floor is the entropy of the smoothed blends
        smoothed = labels * (1 - label_smoothing) + label_smoothing / num_classes
        floor = -(smoothed * smoothed.clamp_min(1e-12).log()).sum(1).mean().item()
    else:
        floor = smoothing_floor(num_classes, label_smoothing)
    problems = []
    if abs(uniform - expected) > arithmetic_tolerance:
        problems.append(f"uniform predictions give loss {uniform:.4f}, but {expected:.4f} was expected: the loss's "
                        f"targets do not sum to 1, or the expected value is wrong (it is ln({num_classes}) = "
                        f"{math.log(num_classes):.4f} whatever the smoothing)")
    if abs(measured - expected) > tolerance:
        problems.append(f"the untrained model's loss is {measured:.4f}, not within {tolerance} of {expected:.4f}: "
                        + ("its logits start large (check the init of the last layer and the input scale)"
                           if measured > expected else "it knows the answer before training (do labels leak "
                                                       "into the inputs?)"))
    return CheckResult(
        name="loss_at_init",
        passed=not problems,
        value=measured,
        threshold=tolerance,
        criterion=f"uniform predictions give exactly {expected:.4f} (got {uniform:.4f}) and |loss at init - "
                  f"{expected:.4f}| <= {tolerance}; floor with smoothing {label_smoothing:g}: {floor:.3f}",
        hint="; ".join(problems) if problems else "Training loss should fall from here towards the floor, "
                                                  "never below it.",
        details={"expected": expected, "uniform_prediction_loss": uniform, "loss_at_init": measured,
                 "floor": floor, "label_smoothing": label_smoothing, "problems": problems,
                 "batch_size": len(labels)},
        seconds=time.perf_counter() - start,
    )


def _block_of(parameter_name: str) -> str:
    """The block a parameter belongs to, in a ResNet: 'layer2.0' for 'layer2.0.conv1.weight', and
    its shortcut projection on its own, 'layer2.0.downsample' for 'layer2.0.downsample.0.weight';
    'stem' for the first convolution and its BatchNorm (conv1, bn1), 'fc' for the classifier."""
    parts = parameter_name.split(".")
    if parts[0].startswith("layer"):
        return ".".join(parts[:3]) if parts[2] == "downsample" else ".".join(parts[:2])
    return "stem" if parts[0] in ("conv1", "bn1") else parts[0]


def verify_gradient_flow(model, images: torch.Tensor, targets: torch.Tensor, loss_fn,
                         min_ratio: float = 1e-2) -> CheckResult:
    """After one backward pass of the run's own `loss_fn`, every trainable parameter of every block
    has a finite, non-zero gradient, and no block gets a vanishing share of it.

    A parameter without gradient is dead weight: typically a forward pass that computes a
    block and then uses another tensor (a block returning its input instead of its output, a
    stage skipped in forward(), a `.detach()` that cuts the graph: every block before it stops
    learning). None of the other checks sees it, because the rest of the network learns.
    The size of each block's gradient is measured relative to its weights (||grad|| / ||w||,
    which does not depend on the block's width): the scale of the step an optimizer takes.
    In a ResNet at init (160 px) it falls from the stem (0.2 in ResNet18, 9 in ResNet50, whose
    activations grow block by block) to ~0.003-0.01 in layer4 and the shortcut projections,
    and the classifier, whose weights start small (std 0.01), reads 3-7. Those two ends are
    the init's doing, not a fault, so the yardstick is the typical block: `value` is the
    weakest block's ratio divided by the median block's, 0.30 / 0.25 / 0.23 for ResNet18 / 34 /
    50 at init. (v6's smallest / largest reads 0.0006-0.001 here: the classifier's small
    weights alone would fail it.) A vanishing block, such as a residual branch scaled by 1e-3,
    sits orders of magnitude lower. Runs on a copy in train mode (BatchNorm as in training; the
    model's statistics stay untouched); dropout draws random numbers: run it inside rng_untouched.
    Good practice is no false alarm: a residual branch whose last BatchNorm scale starts at 0
    (Goyal et al. 2017) is judged by whether that scale gets a gradient. A dropped identity
    skip has no parameters to go without: gradient_through_skips checks the skips themselves.
    """
    start = time.perf_counter()
    probe = copy.deepcopy(model).train()
    probe.zero_grad(set_to_none=True)
    loss_fn(probe(images), targets).backward()
    without = [name for name, p in probe.named_parameters() if p.requires_grad and (
        p.grad is None or not p.grad.abs().sum().item() > 0 or not torch.isfinite(p.grad).all())]
    # A branch behind a zero-initialised scale (zero_init_residual) gets no gradient at init, by
    # design: it passes when the scale gets one and the branch does with the scale opened to 1,
    # and the blocks' sizes are then measured on that opened copy, as the net will train.
    scales, waiting, opened = gradients_behind_zero_scales(model, images, targets, loss_fn, without)
    without = [name for name in without if name not in waiting]
    measured = opened if waiting else probe
    grad_squares, weight_squares = {}, {}
    for name, p in measured.named_parameters():
        if not p.requires_grad:
            continue
        block = _block_of(name)
        grad = p.grad.double().pow(2).sum().item() if p.grad is not None else 0.0
        grad_squares[block] = grad_squares.get(block, 0.0) + (grad if math.isfinite(grad) else 0.0)
        weight_squares[block] = weight_squares.get(block, 0.0) + p.detach().double().pow(2).sum().item()
    relative = {block: math.sqrt(grad_squares[block]) / max(math.sqrt(weight_squares[block]), 1e-12)
                for block in grad_squares}
    typical = statistics.median(relative.values()) if relative else 0.0
    ratio = min(relative.values()) / typical if typical > 0 else 0.0
    weakest = min(relative, key=relative.get) if relative else None
    excused = f"; {len(waiting)} wait behind {len(scales)} zero-initialised scales, which get one" if waiting else ""
    silenced, through_skips = gradient_through_skips(model, images, targets, loss_fn)
    skips_cut = silenced > 0 and not (through_skips > 0 and math.isfinite(through_skips))
    skips = (f"; and with all {silenced} residual branches silenced, ||grad|| of the stem through the skips "
             f"alone > 0: {through_skips:.3g}" if silenced else "")
    return CheckResult(
        name="gradient_flow",
        passed=not without and ratio >= min_ratio and not skips_cut,
        value=ratio,
        threshold=min_ratio,
        criterion=f"every parameter of the {len(relative)} blocks gets a finite non-zero gradient ({len(without)} "
                  f"do not{excused}) and weakest / median block ||grad||/||w|| >= {min_ratio:g} (weakest: {weakest})"
                  + skips,
        hint=(f"No (finite) gradient for: {', '.join(without[:8])}{' ...' if len(without) > 8 else ''}. Check that "
              "forward() uses every block's output and that nothing detaches the graph." if without else
              "With every residual branch silenced no gradient reaches the stem: a block has dropped its "
              "skip. Its forward() must return relu(out + shortcut), shortcut = x or downsample(x)."
              if skips_cut else
              f"Block {weakest} gets {ratio:.2g}x the relative gradient of the median block: the gradient vanishes "
              "on its way back. Look at what lies between it and the loss."),
        details={"block_relative_gradient": relative, "without_gradient": without, "weakest_block": weakest,
                 "zero_initialised_scales": scales, "waiting_behind_zero_scales": waiting,
                 "branches_silenced": silenced, "stem_gradient_through_skips": through_skips},
        seconds=time.perf_counter() - start,
    )


@torch.no_grad()
def check_initialization(model, loader, criterion, device, num_classes: int = 10, max_batches: int | None = None,
                         tolerance: float = 0.3) -> dict:
    """Verify: loss at init ~ -log(1/num_classes) = ln(num_classes), as seed 001 does it.

    `criterion` is the run's own loss (label smoothing included: ln 10 holds under it,
    see expected_loss_at_init). Averaged over the first `max_batches` batches of
    `loader` (all of them if None), on a copy of the model in train mode, as the first
    training steps see it (BatchNorm with batch statistics; the model itself and its
    running statistics stay untouched). Returns the seed's keys, `init_loss`,
    `expected_loss` and `loss_ok` (|init_loss - expected| <= tolerance), plus
    `init_accuracy` (about 1/num_classes for a model that knows nothing) and the spread
    of the initial logits: `logit_std` (over all logits) and `class_offset_std` (std of
    the per-class mean logit: how much the net favours some classes before it has seen
    an image). A well-initialised final layer gives logits near 0 and offsets near 0.
    Draws from the loader (and dropout): run it inside rng_untouched.
    """
    probe = copy.deepcopy(model).to(device).train()
    total_loss, correct, seen, logits_seen = 0.0, 0, 0, []
    for index, (images, labels) in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        images, labels = images.to(device), labels.to(device)
        logits = probe(images)
        total_loss += criterion(logits, labels).item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        logits_seen.append(logits.detach().double().cpu())
    logits = torch.cat(logits_seen)
    init_loss = total_loss / seen
    expected = math.log(num_classes)
    return {"init_loss": init_loss, "expected_loss": expected, "loss_ok": abs(init_loss - expected) <= tolerance,
            "tolerance": tolerance, "init_accuracy": correct / seen, "logit_std": logits.std().item(),
            "class_offset_std": logits.mean(0).std().item(), "images": seen}


def initialization_verdict(init: dict) -> CheckResult:
    """check_initialization's result as a verdict for the summary table and results.json."""
    too_high = init["init_loss"] > init["expected_loss"]
    return CheckResult(
        name="initialization",
        passed=init["loss_ok"],
        value=init["init_loss"],
        threshold=init["tolerance"],
        criterion=f"|loss at init - ln 10 = {init['expected_loss']:.4f}| <= {init['tolerance']} over "
                  f"{init['images']} training images (accuracy {init['init_accuracy']:.1%}, logit std "
                  f"{init['logit_std']:.2f}, class offsets std {init['class_offset_std']:.2f})",
        hint=("The net starts confidently wrong: its logits are far from 0 (std "
              f"{init['logit_std']:.2f}). Initialise the final layer with small weights (std 0.01) and a zero "
              "bias, so that it predicts 1/10 for every class." if too_high else
              "The loss at init is below ln 10: the net knows the answer before training (a label leak?)."),
        details=dict(init),
    )


# ---------------------------------------------------------------------------
# The battery of fashionmnist/v10-step2, driving this run's own training step, loss and
# optimizer on copies of the model: a preflight that passes means the same here as there.
# ---------------------------------------------------------------------------
def _copy_for_training(model):
    """A copy of the run's model in train mode with no gradients, so the check starts where
    training starts and never touches the real model."""
    probe = copy.deepcopy(model).train()
    probe.zero_grad(set_to_none=True)
    return probe


def _endless(loader):
    """The loader's batches over and over (itertools.cycle would keep a copy of a whole epoch)."""
    while True:
        yield from loader


@torch.no_grad()
def _accuracy(model, loader, zero_inputs: bool = False) -> float:
    model.eval()
    correct, seen = 0, 0
    for images, labels in loader:
        if zero_inputs:
            images = torch.zeros_like(images)
        correct += (model(images).argmax(1) == labels).sum().item()
        seen += len(labels)
    return correct / seen


def test_input_independent_baseline(model, train_loader, val_loader, *, make_optimizer, training_step,
                                    steps: int = 150, max_baseline_accuracy: float = 0.2,
                                    min_gap: float = 0.1) -> CheckResult:
    """Train one copy of the model on all-zero inputs and one on the real training batches
    (augmented, as the run's loader gives them) with the run's own optimizer and training
    step, same init, same budget; score both on validation.

    The zero-input model can only learn the class frequencies: ~10% on the stratified
    validation split. If the real model is not clearly better, it does not learn from the
    images: the loader pairs images with the wrong labels (shuffled apart once, in
    load_data), forward() drops its input, or the step does not update. Imagenette is
    harder than Fashion-MNIST, so the budget is a few hundred steps and the gap asked for
    smaller: 150 steps of DeeperCNN at 160 px reach ~30% on validation, shuffled labels ~10%.
    """
    start = time.perf_counter()
    accuracies, diverged = {}, {}
    for mode, zero_inputs in (("zero_input", True), ("real_input", False)):
        probe = _copy_for_training(model)
        optimizer, scheduler = make_optimizer(probe, total_steps=steps)
        try:
            for images, labels in itertools.islice(_endless(train_loader), steps):
                training_step(probe, torch.zeros_like(images) if zero_inputs else images, labels, optimizer,
                              scheduler)
        except FloatingPointError as err:  # train.TrainingDiverged
            diverged[mode] = str(err)
        accuracies[mode] = _accuracy(probe, val_loader, zero_inputs)
    gap = accuracies["real_input"] - accuracies["zero_input"]
    if diverged:
        hint = f"Training diverged ({'; '.join(diverged.values())}): check the learning rate."
    elif accuracies["zero_input"] > max_baseline_accuracy:
        hint = ("The model predicts labels without seeing the images: check the class balance of the "
                "validation split and that nothing but the image carries the label.")
    else:
        hint = ("The model does not learn from the images: check that load_data keeps every image with its "
                "label, that forward() uses its input, and that training_step updates the weights.")
    return CheckResult(
        name="input_independent_baseline",
        passed=not diverged and gap >= min_gap and accuracies["zero_input"] <= max_baseline_accuracy,
        value=gap,
        threshold=min_gap,
        criterion=f"real - zero-input validation accuracy >= {min_gap:.2f} and zero-input <= "
                  f"{max_baseline_accuracy:.2f} (zero {accuracies['zero_input']:.3f}, "
                  f"real {accuracies['real_input']:.3f}, {steps} steps each)",
        hint=hint,
        details={**accuracies, "steps": steps, "max_baseline_accuracy": max_baseline_accuracy,
                 "diverged": diverged},
        seconds=time.perf_counter() - start,
    )


def overfit_one_batch(model, images, labels, *, make_optimizer, training_step, loss_fn, steps: int = 300,
                      max_loss: float = 0.55, out_dir: Path = Path("outputs"), eval_every: int = 10,
                      window: int = 10) -> CheckResult:
    """Memorise a few training images (un-augmented, one per class where possible) with the
    run's own optimizer and training step: 100% accuracy AND a training loss at the floor.

    The end-to-end test of model + loss + optimizer + step. With label smoothing the loss
    cannot reach 0: its floor is the entropy of the smoothed target (smoothing_floor, 0.50
    for eps 0.1 and ten classes), so `max_loss` is that floor plus a margin. The loss judged
    is the one `training_step` reports (the median of its last `window` steps); the
    accuracy is measured in eval mode after the last step. Signatures:
    - loss stuck near loss_fn(softmax of a one-hot) with 100% accuracy: softmax before the loss;
    - loss at the floor but accuracy below 100%: the step trains on other labels than these;
    - loss that does not move: no optimizer.step(), no backward, learning rate 0.
    """
    start = time.perf_counter()
    probe = _copy_for_training(model)
    optimizer, scheduler = make_optimizer(probe, total_steps=steps)
    step_losses, evaluations, diverged = [], [], None

    def evaluate_now(step):
        probe.eval()
        with torch.no_grad():
            logits = probe(images)
            evaluations.append({"step": step, "accuracy": (logits.argmax(1) == labels).float().mean().item(),
                                "eval_loss": loss_fn(logits, labels).item(), "num_classes": logits.shape[1]})
        probe.train()

    def recent_loss():
        return statistics.median(step_losses[-window:])

    for step in range(1, steps + 1):
        try:
            loss_value, _ = training_step(probe, images, labels, optimizer, scheduler)
        except FloatingPointError as err:  # train.TrainingDiverged
            diverged = str(err)
            break
        step_losses.append(loss_value)
        if step % eval_every == 0 or step == steps:
            evaluate_now(step)
            if evaluations[-1]["accuracy"] == 1.0 and recent_loss() <= max_loss:
                break
    if not evaluations or evaluations[-1]["step"] != len(step_losses):
        evaluate_now(len(step_losses))  # judge the state after the last step taken
    accuracy = evaluations[-1]["accuracy"]
    loss = recent_loss() if step_losses else float("nan")
    num_classes = evaluations[-1]["num_classes"]
    # What the run's loss reads when a softmax squashes perfect logits first: the plateau of that bug.
    one_hot = torch.nn.functional.one_hot(labels, num_classes).float()
    softmax_floor = loss_fn(one_hot, labels).item()
    if diverged:
        hint = f"Training diverged ({diverged}): check the learning rate."
    elif loss <= max_loss:
        hint = ("training_step drives its loss to the floor, yet the predictions do not match these labels: the "
                "step trains on other labels (misaligned, shuffled or transformed) than the batch's.")
    elif step_losses and loss >= 0.9 * step_losses[0]:
        hint = ("The loss does not move: check that training_step calls loss.backward() and optimizer.step(), "
                "and that the optimizer gets the model's parameters and a learning rate > 0.")
    elif abs(loss - softmax_floor) < 0.15:
        hint = (f"The loss is stuck near {softmax_floor:.2f}, what loss_fn reads on the softmax of perfect "
                "logits: softmax (or another squashing) before the cross-entropy. Feed raw logits to the loss.")
    else:
        hint = ("Cannot memorise the batch: check the loss (raw logits into cross-entropy), that "
                "optimizer.step() runs, the learning rate, and that labels match images.")
    plot_overfit_one_batch(step_losses, evaluations, max_loss, Path(out_dir) / "overfit_one_batch.png")
    return CheckResult(
        name="overfit_one_batch",
        passed=diverged is None and accuracy == 1.0 and loss <= max_loss,
        value=loss,
        threshold=max_loss,
        criterion=f"accuracy 100% and training loss <= {max_loss:.3f} on {len(labels)} images within {steps} "
                  f"steps (accuracy {accuracy:.0%} after {len(step_losses)} steps; loss = median of the step's "
                  f"last {min(window, len(step_losses))} losses)",
        hint=hint,
        details={"accuracy": accuracy, "steps_needed": len(step_losses), "eval_loss": evaluations[-1]["eval_loss"],
                 "softmax_plateau": softmax_floor, "step_losses": step_losses, "evaluations": evaluations,
                 "diverged": diverged},
        seconds=time.perf_counter() - start,
    )


def verify_batch_independence(model, images, name: str = "batch_independence",
                              relative_threshold: float = 1e-6) -> CheckResult:
    """The output of sample i must depend on input i only.

    For each i: backprop a fixed random projection of output i to the inputs; the
    gradient must be non-zero for input i and zero for every other input (below
    `relative_threshold` x the largest gradient: rounding, not a dependency). A
    reshape/view/transpose that mixes the batch dimension shows up here.
    A random projection and not the plain sum of output i: outputs that sum to a
    constant (softmax probabilities) have a zero gradient for the sum whatever
    the model does, which would hide a real leak and fake a dead output.
    Run in eval mode: in train mode BatchNorm normalises with the batch's own
    statistics, which couples all samples on purpose and would hide (or fake) a
    real bug. torch.autograd.grad leaves the parameters' .grad untouched.
    """
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    inputs = images.detach().clone().requires_grad_(True)
    outputs = model(inputs)
    projection = torch.randn(outputs.shape[1:], generator=torch.Generator().manual_seed(0)).to(outputs.device)
    norms = []
    for i in range(len(inputs)):
        # allow_unused: a forward that cuts the graph (.detach(), no_grad) leaves no path to the
        # inputs at all; that is the verdict "no gradient on its own input", not a crash.
        grad = None
        if outputs.requires_grad:
            (grad,) = torch.autograd.grad((outputs[i] * projection).sum(), inputs, retain_graph=True,
                                          allow_unused=True)
        norms.append(torch.zeros(len(inputs), device=inputs.device) if grad is None else grad.flatten(1).norm(dim=1))
    model.train(was_training)
    norms = torch.stack(norms)  # norms[i, j]: gradient of output i's projection w.r.t. input j
    floor = relative_threshold * norms.max().item()
    dead = [i for i in range(len(inputs)) if not norms[i, i].item() > floor]
    leaks = [{"output": i, "input": j, "grad_norm": norms[i, j].item()}
             for i in range(len(inputs)) for j in range(len(inputs)) if i != j and norms[i, j].item() > floor]
    offenders = sorted({leak["input"] for leak in leaks})
    hints = []
    if leaks:
        hints.append("Samples are mixed inside the model: look for view/reshape/transpose across the batch "
                     "dimension, or a custom layer that reduces over dim 0.")
    if dead:
        hints.append("Some outputs do not depend on their own input: forward() throws the input away "
                     "(multiplies it by 0, returns a constant, uses the wrong tensor, detaches it).")
    return CheckResult(
        name=name,
        passed=not leaks and not dead,
        value=len(leaks) + len(dead),
        threshold=0,
        criterion=f"output i depends on input i and on no input j != i, over {len(inputs)} samples"
                  + (f"; leaking into inputs {offenders}" if offenders else "")
                  + (f"; outputs {dead} do not depend on their own input" if dead else ""),
        hint=" ".join(hints) or "Samples are mixed inside the model, or outputs ignore their input.",
        details={"leaks": leaks[:50], "offending_inputs": offenders, "outputs_without_own_gradient": dead,
                 "own_gradient_norms": norms.diagonal().tolist()},
        seconds=time.perf_counter() - start,
    )


def _flat(grads: dict, like: dict) -> torch.Tensor:
    """One vector of all gradients; a parameter without gradient counts as zeros."""
    return torch.cat([(grads[name] if grads.get(name) is not None else torch.zeros_like(p)).flatten().float()
                      for name, p in like.items()])


def verify_step_gradient(model, images, labels, *, make_optimizer, training_step, loss_fn,
                         tolerance: float = 1e-3, autocast: bool = False) -> CheckResult:
    """The gradient that optimizer.step() uses must be the gradient of `loss_fn` at the
    current weights on the current batch: nothing left over, nothing missing.

    Two calls of the run's `training_step` on a copy of the model (batches A, then B).
    A hook on the optimizer records every gradient at the moment it steps. The
    gradient of step B is compared with a fresh backward pass of `loss_fn` at the
    same weights, on B, with the same dropout masks (and, with `autocast`, under the same
    bf16 autocast as the step, which is why the tolerance is wider then). This catches
    what overfitting one batch cannot: without optimizer.zero_grad() gradients pile up,
    and Adam still memorises a batch with them, yet every real step is wrong; a loss
    computed on detached logits then marked requires_grad_() gives no gradient at all.
    Relative difference ||g_step - g_fresh|| / ||g_fresh||: ~1e-7 when correct in fp32;
    ~1 when the previous gradient was not cleared.
    """
    start = time.perf_counter()
    probe = _copy_for_training(model)
    parameters = {name: p for name, p in probe.named_parameters() if p.requires_grad}
    optimizer, scheduler = make_optimizer(probe, total_steps=2)
    at_step = []
    handle = optimizer.register_step_pre_hook(lambda *_: at_step.append(
        {name: (p.grad.detach().clone() if p.grad is not None else None) for name, p in parameters.items()}))
    half = len(images) // 2
    batch_a, batch_b = (images[:half], labels[:half]), (images[half:], labels[half:])
    seed = 1234  # the same dropout masks in the step and in the fresh backward pass
    diverged = None
    # Which layers that behave differently in training (BatchNorm, Dropout) run in eval mode
    # inside the step: the fresh pass below runs them in training mode, so they alone would
    # explain a difference, and the hint must then name them rather than the loss.
    in_eval_mode = []

    def note_eval_mode(name):
        def hook(layer, inputs):
            if not layer.training and name not in in_eval_mode:
                in_eval_mode.append(name)
        return hook

    mode_hooks = [module.register_forward_pre_hook(note_eval_mode(name)) for name, module in probe.named_modules()
                  if isinstance(module, MODE_DEPENDENT_LAYERS)]
    try:
        training_step(probe, *batch_a, optimizer, scheduler)
        weights = copy.deepcopy(probe.state_dict())
        torch.manual_seed(seed)
        training_step(probe, *batch_b, optimizer, scheduler)
    except FloatingPointError as err:  # train.TrainingDiverged
        diverged = str(err)
    handle.remove()
    for mode_hook in mode_hooks:
        mode_hook.remove()
    details = {"optimizer_steps": len(at_step), "training_steps": 2, "diverged": diverged, "autocast": autocast}
    if diverged or len(at_step) != 2:
        problem = (f"training diverged ({diverged})" if diverged else
                   f"optimizer.step() ran {len(at_step)} times in 2 training steps")
        hint = ("The loss exploded within two steps: if loss_at_init fails too, fix the init first; "
                "otherwise lower the learning rate." if diverged else
                "training_step must call optimizer.step() exactly once per batch.")
        return CheckResult(name="step_gradient", passed=False, value=float("nan"), threshold=tolerance,
                           criterion=f"one optimizer step per training step: {problem}", hint=hint,
                           details=details, seconds=time.perf_counter() - start)
    fresh = copy.deepcopy(model).train()
    fresh.load_state_dict(weights)
    fresh.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = loss_fn(fresh(batch_b[0]), batch_b[1])
    loss.backward()
    fresh_grads = {name: p.grad for name, p in fresh.named_parameters() if p.requires_grad}
    g_fresh, g_step, g_previous = _flat(fresh_grads, parameters), _flat(at_step[1], parameters), \
        _flat(at_step[0], parameters)
    scale = g_fresh.norm().item() or 1.0
    difference = (g_step - g_fresh).norm().item() / scale
    accumulated = (g_step - g_fresh - g_previous).norm().item() / scale
    missing = [name for name, grad in at_step[1].items() if grad is None]
    if len(missing) == len(parameters):
        hint = ("No gradient reaches optimizer.step(): training_step must call loss.backward() on a loss that "
                "is connected to the model (not one computed on .detach()ed logits and then marked "
                "requires_grad_()), after optimizer.zero_grad() and before optimizer.step().")
    elif in_eval_mode and difference > tolerance:
        hint = (f"{len(in_eval_mode)} layers ran in eval mode inside training_step ({_names(in_eval_mode)}), "
                "and in training mode in the fresh pass: that is the difference, not the loss. Something "
                "switches them: model.eval() or a submodule's .eval() in the step, or a 'freeze BatchNorm' "
                "snippet after model.train(); train_eval_modes names them too.")
    elif accumulated <= tolerance:
        hint = ("Gradients accumulate over steps: the previous batch's gradient is still in .grad. "
                "Call optimizer.zero_grad() once per training_step, before loss.backward().")
    else:
        hint = ("The step's gradient is not the gradient of loss_fn(model(images), labels): training_step "
                "computes its loss on something else (softmax on the logits, changed or misaligned labels, "
                "a rescaled loss) or changes the gradients before optimizer.step().")
    details.update(relative_difference=difference, relative_difference_if_accumulated=accumulated,
                   parameters_without_gradient=missing, layers_in_eval_mode=in_eval_mode,
                   fresh_gradient_norm=g_fresh.norm().item(),
                   step_gradient_norm=g_step.norm().item())
    return CheckResult(
        name="step_gradient",
        passed=difference <= tolerance,
        value=difference,
        threshold=tolerance,
        criterion=f"||gradient at optimizer.step() - fresh gradient of loss_fn|| / ||fresh|| <= {tolerance:g}"
                  + (f" (gradient at the step = fresh + previous step's: accumulated)"
                     if accumulated <= tolerance < difference else ""),
        hint=hint,
        details=details,
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------
# Zero-initialised scales: good practice, not a gradient-flow failure
# ---------------------------------------------------------------------------
# Layers that start at exactly zero on purpose and multiply a branch: BatchNorm's scale at the end
# of a residual branch (Goyal et al. 2017; torchvision's zero_init_residual=True), a SkipInit or
# ReZero gate. Until the scale has had one update, nothing upstream of it in that branch can get a
# gradient, and that is the point: every block starts as the identity.
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def zero_initialised_scales(model) -> list[str]:
    """Names of the trainable multiplicative parameters that are exactly zero: a normalisation
    layer's scale (weight), or any other parameter of at most one dimension that is not a bias."""
    names = []
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            is_scale = name == "weight" if isinstance(module, NORM_LAYERS) else (p.ndim <= 1 and name != "bias")
            if p.requires_grad and p.numel() and is_scale and not p.detach().any():
                names.append(f"{module_name}.{name}" if module_name else name)
    return names


def gradients_behind_zero_scales(model, images, labels, loss_fn, without: list[str]):
    """Which parameters of `without` (no gradient in one backward pass) only wait behind a
    zero-initialised scale: in a copy with every such scale set to 1, they get a finite,
    non-zero gradient. Returns (scales, waiting, opened copy after its backward pass or None)."""
    scales = zero_initialised_scales(model)
    if not scales:
        return scales, [], None
    opened = copy.deepcopy(model).train()
    with torch.no_grad():
        for name in scales:
            opened.get_parameter(name).fill_(1.0)
    opened.zero_grad(set_to_none=True)
    loss_fn(opened(images), labels).backward()
    waiting = []
    for name in without:
        grad = opened.get_parameter(name).grad
        if name not in scales and grad is not None and grad.abs().sum().item() > 0 and torch.isfinite(grad).all():
            waiting.append(name)
    return scales, waiting, opened


# ---------------------------------------------------------------------------
# Beyond the seed: the modes the run's own loop trains and evaluates in
# ---------------------------------------------------------------------------
# Layers that compute something else in training than in evaluation. A frozen BatchNorm
# normalises with running statistics that never leave their init (mean 0, variance 1);
# a Dropout in eval mode drops nothing, one in training mode at test time drops units.
MODE_DEPENDENT_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def _names(names, most: int = 4) -> str:
    names = list(names)
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def verify_train_eval_modes(model, *, train_epoch, evaluate) -> CheckResult:
    """Every layer that behaves differently in training (BatchNorm, Dropout) is in training
    mode whenever the run's own epoch function calls it, BatchNorm's running statistics move
    while it trains, and every such layer is in eval mode whenever the run's own evaluation
    calls it.

    `train_epoch(probe)` and `evaluate(probe)` run the run's own epoch and evaluation on a
    copy of the model and a few batches. The order is the one training has: evaluate first
    (as after an epoch's validation), then an epoch, then evaluate again, so an epoch that
    forgets model.train() after the validation is caught too. Hooks record the mode each layer
    is in when it runs; nothing else is changed. Bugs it sees: a loop that never switches back
    to train() (BatchNorm then normalises with frozen statistics and Dropout does nothing, so
    the model trains as another network than it evaluates), a "freeze BatchNorm" snippet from
    fine-tuning code run from scratch, and an evaluation without model.eval(). Lightning and
    fastai set the modes for you; in your own loop nothing does.
    """
    start = time.perf_counter()
    probe = copy.deepcopy(model)
    layers = {name: m for name, m in probe.named_modules() if isinstance(m, MODE_DEPENDENT_LAYERS)}
    if not layers:
        return CheckResult(
            name="train_eval_modes", passed=True, value=0, threshold=0,
            criterion="nothing to judge: the model has no BatchNorm or Dropout, the layers that behave "
                      "differently in training and evaluation",
            hint="A model with BatchNorm or Dropout gets this check; this one has none.", details={"layers": []},
            seconds=time.perf_counter() - start)
    modes = {"train": {}, "evaluate": {}}  # phase -> layer -> the modes it ran in
    phase = ["evaluate"]

    def recorder(name):
        return lambda module, inputs: modes[phase[0]].setdefault(name, set()).add(module.training)

    batchnorms = {name: m for name, m in layers.items()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}
    handles = [m.register_forward_pre_hook(recorder(name)) for name, m in layers.items()]
    diverged = None
    try:
        evaluate(probe)
        before = {name: m.running_mean.clone() for name, m in batchnorms.items()}
        phase[0] = "train"
        try:
            train_epoch(probe)
        except FloatingPointError as err:  # train.TrainingDiverged
            diverged = str(err)
        moved = {name: not torch.equal(m.running_mean, before[name]) for name, m in batchnorms.items()}
        phase[0] = "evaluate"
        evaluate(probe)
    finally:
        for handle in handles:
            handle.remove()
    eval_in_training = [name for name, seen in modes["train"].items() if False in seen]
    frozen = [name for name, did in moved.items() if not did and name in modes["train"]
              and name not in eval_in_training]
    training_in_eval = [name for name, seen in modes["evaluate"].items() if True in seen]
    not_run = [name for name in layers if name not in modes["train"]]
    problems, hints = [], []
    if eval_in_training:
        problems.append(f"in eval mode while training: {_names(eval_in_training)}")
        hints.append("The epoch must call model.train() at its start (the validation before it left the model "
                     "in eval mode), and nothing in the loop may call .eval() on a layer (a 'freeze BatchNorm' "
                     "snippet): BatchNorm then normalises with statistics that never move, Dropout drops nothing.")
    if frozen:
        problems.append(f"running statistics did not move while training: {_names(frozen)}")
        hints.append("BatchNorm's momentum is 0 or its statistics are reset in the loop: evaluation will "
                     "normalise with the init's mean 0 and variance 1.")
    if training_in_eval:
        problems.append(f"in training mode during evaluation: {_names(training_in_eval)}")
        hints.append("evaluate() must call model.eval(): otherwise Dropout drops units at test time and "
                     "BatchNorm uses each batch's statistics and updates its running ones from evaluation data.")
    # A diverging epoch is step_gradient's and the loss checks' finding, not this one's: the
    # modes are judged on the forward passes that ran before it stopped.
    ran = f" (the epoch stopped early, modes judged on the steps that ran: {diverged})" if diverged else ""
    return CheckResult(
        name="train_eval_modes",
        passed=not problems,
        value=len(eval_in_training) + len(frozen) + len(training_in_eval),
        threshold=0,
        criterion=f"{len(layers)} BatchNorm/Dropout layers: training mode in the run's epoch (BatchNorm statistics "
                  f"moving), eval mode in its evaluation" + (f": {'; '.join(problems)}" if problems else "") + ran,
        hint=" ".join(hints) or ("When it fails: model.train() at the start of the epoch, model.eval() in "
                                 "evaluate(), and no .eval() on single layers inside the loop."),
        details={"layers": list(layers), "eval_mode_in_training": eval_in_training,
                 "statistics_frozen": frozen, "training_mode_in_evaluation": training_in_eval,
                 "not_run_in_training": not_run, "diverged": diverged},
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------
# Beyond the seed: the skips themselves (issue 27)
# ---------------------------------------------------------------------------
def gradient_through_skips(model, images, labels, loss_fn) -> tuple[int, float | None]:
    """Whether the gradient still reaches the stem through the skips alone: in a copy, every
    residual branch is silenced (the scale and shift of its last BatchNorm set to 0, so the
    branch adds exactly 0) and the run's own loss is backpropagated. Through intact skips the
    image still reaches the loss, identity skips included, and the stem gets a gradient; a
    block that dropped its skip (returns relu(out) instead of relu(out + shortcut)) outputs 0
    there and cuts every path. The parameter check alone cannot see a dropped identity skip:
    it has no parameters, and the branch's still get a gradient. Residual blocks are the
    modules with a `downsample` attribute (torchvision's name). Returns (blocks silenced,
    ||gradient|| of the stem's parameters), or (0, None) for a net without such blocks."""
    probe = copy.deepcopy(model).train()
    silenced = 0
    with torch.no_grad():
        for block in probe.modules():
            if not hasattr(block, "downsample"):
                continue
            norms = [module for name, module in block.named_modules()
                     if isinstance(module, NORM_LAYERS) and not name.startswith("downsample")]
            if norms and norms[-1].weight is not None:
                norms[-1].weight.zero_()
                norms[-1].bias.zero_()
                silenced += 1
    if not silenced:
        return 0, None
    probe.zero_grad(set_to_none=True)
    loss_fn(probe(images), labels).backward()
    stem = [p.grad for name, p in probe.named_parameters() if _block_of(name) == "stem" and p.grad is not None]
    return silenced, math.sqrt(sum(grad.double().pow(2).sum().item() for grad in stem))


# ---------------------------------------------------------------------------
# v8: the ensemble. Members that are one model, the TTA view, saved outputs of another subset, the
# test set read before the choice, the gain; the classes fixed and broken, calibration before/after.
# ---------------------------------------------------------------------------
def calibration(confidences: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> dict:
    """Reliability diagram and expected calibration error (ECE, Guo et al. 2017); the same function
    as fashionmnist/v7's.

    The confidences (each image's largest softmax probability) are sorted into `bins` equal-width
    intervals (0, 1/bins], ..., ((bins-1)/bins, 1]; per bin, the mean confidence and the accuracy.
    ECE = sum over bins of (images in bin / all images) x |accuracy - mean confidence|: 0 is
    perfect. Label smoothing and MixUp (v7's recipe) already pull the confidence down; averaging
    members lowers it again where they disagree, so the ensemble may turn underconfident (bars
    above the diagonal) where a single member was about right."""
    confidences, correct = confidences.double().cpu(), correct.double().cpu()
    index = ((confidences * bins).ceil().long() - 1).clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    confidence_sum = torch.bincount(index, weights=confidences, minlength=bins)
    correct_sum = torch.bincount(index, weights=correct, minlength=bins)
    mean_confidence = torch.where(count > 0, confidence_sum / count.clamp_min(1), torch.zeros_like(count))
    accuracy = torch.where(count > 0, correct_sum / count.clamp_min(1), torch.zeros_like(count))
    ece = ((count / count.sum()) * (accuracy - mean_confidence).abs()).sum().item()
    return {"bins": bins, "count": count.long().tolist(), "mean_confidence": mean_confidence.tolist(),
            "accuracy": accuracy.tolist(), "ece": ece}


def pairwise_disagreement(probabilities: list[torch.Tensor]) -> float:
    """The share of images on which two members predict different classes, averaged over all pairs.
    An ensemble can only gain where its members disagree: 0 means they are one model."""
    predictions = [p.argmax(1) for p in probabilities]
    pairs = list(itertools.combinations(range(len(predictions)), 2))
    if not pairs:
        return 0.0
    return sum((predictions[a] != predictions[b]).double().mean().item() for a, b in pairs) / len(pairs)


def state_digest(state_dict: dict) -> str:
    """A fingerprint of a model's weights and buffers: equal digests, equal models."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state_dict.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def verify_members_differ(probabilities: list[torch.Tensor], digests: list[str], *, stage: str,
                          tolerance: float = 1e-6) -> CheckResult:
    """An ensemble of K copies of one model averages K equal predictions: K times the compute, no
    gain at all. It happens silently when every member gets the same seed (a member seed that
    ignores the member's number, set_seed in the wrong place), or when a resume or --add-members
    brings one member's files in twice.

    `probabilities`: each member's softmax outputs on the same images; `digests`: each member's
    state_digest. A pair fails when its weights are identical or its outputs agree to `tolerance`
    everywhere (two ResNets of different seeds never do, not even at init: their last layers
    differ). Reported per pair: the share of images they disagree on (0.05-0.15 is usual for
    trained members; 0 for copies)."""
    start = time.perf_counter()
    pairs, identical = [], []
    for a, b in itertools.combinations(range(len(probabilities)), 2):
        largest = (probabilities[a] - probabilities[b]).abs().max().item()
        same_weights = digests[a] == digests[b]
        disagreement = (probabilities[a].argmax(1) != probabilities[b].argmax(1)).double().mean().item()
        pairs.append({"members": [a, b], "max_probability_difference": largest, "same_weights": same_weights,
                      "disagreement": disagreement})
        if same_weights or largest <= tolerance:
            identical.append(f"{a} and {b}" + (" (identical weights)" if same_weights else " (identical outputs)"))
    return CheckResult(
        name=f"members_differ_{stage}",
        passed=not identical,
        value=len(identical),
        threshold=0,
        criterion=f"no two of {len(probabilities)} members ({stage}) with identical weights or outputs "
                  f"(max |p_a - p_b| > {tolerance:g})" + (f": members {', '.join(identical)}" if identical else ""),
        hint="Every member needs its own seed (member_seed(seed, k) must depend on k) and its own folder, and "
             "set_seed(member's seed) must run before its model and loader are made; --add-members must not name a "
             "member twice. Identical members cost K times as much and gain nothing.",
        details={"pairs": pairs, "tolerance": tolerance},
        seconds=time.perf_counter() - start,
    )


def verify_tta_flip(view, images: torch.Tensor, recorded: list[tuple[torch.Tensor, torch.Tensor]] = (),
                    model_outputs=None, tolerance: float = 1e-4) -> CheckResult:
    """Flip TTA averages a member's outputs on an image and on its mirror image. The mirror must be
    the input flipped left-right exactly once: a view flipped twice (or not at all) feeds the
    original, and "TTA" is the plain model counted twice; a view flipped up-down shows the net
    upside-down churches it never saw in training (the training flip is left-right only).

    `view`: train.py's own flip_view, compared with torch.flip along the width (dim 3 of
    N x C x H x W) on `images`, which must not be mirror-symmetric. After training, `recorded`
    holds (images, a member's saved flipped probabilities on them) and `model_outputs(member,
    images)` recomputes them on torch.flip's mirror: the saved TTA outputs are the ones vouched for."""
    start = time.perf_counter()
    expected = torch.flip(images, dims=[3])
    got = view(images)
    problems = []
    if got.shape != images.shape or not torch.equal(got, expected):
        if got.shape == images.shape and torch.equal(got, images):
            problems.append("the view is the original image (flipped twice, or not at all)")
        elif got.shape == images.shape and torch.equal(got, torch.flip(images, dims=[2])):
            problems.append("the view is flipped up-down (dim 2), not left-right (dim 3)")
        else:
            problems.append("the view is not torch.flip(images, dims=[3])")
    if torch.equal(expected, images):
        problems.append("every probe image is mirror-symmetric: the probe cannot tell a flip from none")
    largest = 0.0
    for member, (probe, flipped_probabilities) in enumerate(recorded):
        fresh = model_outputs(member, torch.flip(probe, dims=[3]))
        largest = max(largest, (fresh.cpu() - flipped_probabilities.cpu()).abs().max().item())
    if largest > tolerance:
        problems.append(f"the saved flipped probabilities differ from the model's outputs on torch.flip's mirror "
                        f"image by up to {largest:.3g}")
    return CheckResult(
        name="tta_flip",
        passed=not problems,
        value=len(problems),
        threshold=0,
        criterion="the TTA view equals torch.flip(images, dims=[3]) (left-right, once)"
                  + (f", and {len(recorded)} members' saved flipped outputs match it (max diff {largest:.2g})"
                     if recorded else "") + (f": {'; '.join(problems)}" if problems else ""),
        hint="flip_view in train.py must return images.flip(3) (N x C x H x W: dim 3 is the width), applied once, "
             "and member_probabilities must feed the model that view for the flipped half of TTA.",
        details={"problems": problems, "max_recorded_difference": largest, "members_checked": len(recorded)},
        seconds=time.perf_counter() - start,
    )


def verify_predictions_fingerprint(expected: dict, saved: dict[str, dict]) -> CheckResult:
    """Averaging outputs is only meaningful image by image: member A's row i and member B's row i must
    be the same validation (and test) image. Outputs saved by a run on another subset (another
    --train-fraction, --subset-seed or --val-fraction, a --quick run, another copy of the data) have
    rows that belong to other images, and an average of them is noise that looks like a number.

    `expected`: this run's data fingerprint (subset fingerprint, split sizes, a digest of the
    validation labels); `saved`: each member's fingerprint as its predictions.pt recorded it, by
    member name. Any difference fails; train.py then refuses the member."""
    start = time.perf_counter()
    mismatched = {name: sorted(k for k in set(expected) | set(key) if key.get(k) != expected.get(k))
                  for name, key in saved.items()}
    mismatched = {name: keys for name, keys in mismatched.items() if keys}
    return CheckResult(
        name="predictions_fingerprint",
        passed=not mismatched,
        value=len(mismatched),
        threshold=0,
        criterion=f"every member's saved outputs are for this run's images (subset {expected.get('subset_fingerprint')}"
                  f", {expected.get('val_images')} validation, {expected.get('test_images')} test images)"
                  + ("" if not mismatched else ": " + "; ".join(f"{name} differs in {', '.join(keys)}"
                                                                for name, keys in mismatched.items())),
        hint="Mix only members trained on the same subset and split (--train-fraction, --subset-seed, --val-fraction, "
             "--quick or not); results.json's data.subset_fingerprint names it. Retrain the member on this subset.",
        details={"expected": expected, "saved": saved, "mismatched": mismatched},
        seconds=time.perf_counter() - start,
    )


def verify_test_read_after_choice(events: list[dict]) -> CheckResult:
    """The order that makes a test accuracy a measurement: the members trained, then the ensemble (its
    size, TTA on or off) chosen on validation, then the test labels read, once. A test number seen
    before the choice can steer it ("five members, because the test says so"), and the final number
    is then fitted to the test set like the best of many tries.

    `events`: the run's record of what happened, in order (results.json's `events`). The test labels
    are sealed in train.py (SealedLabels): every read of them, wherever in the code it happens,
    appends a `test_read` event naming the reader. Before the choice (--preflight) the same rules
    hold for what has happened so far: no read at all."""
    start = time.perf_counter()
    order = [event["event"] for event in events]
    problems = []
    if "test_read" in order:
        readers = [event.get("reader", "?") for event in events if event["event"] == "test_read"]
        if "choice_made" not in order or order.index("test_read") < order.index("choice_made"):
            problems.append(f"the test labels were read before the choice was made (by {readers[0]})")
        if order.count("test_read") > 1:
            problems.append(f"the test labels were read {order.count('test_read')} times (by {', '.join(readers)})")
    if "choice_made" in order and ("members_trained" not in order
                                   or order.index("choice_made") < order.index("members_trained")):
        problems.append("the choice was made before the members were trained")
    return CheckResult(
        name="test_read_after_choice",
        passed=not problems,
        value=len(problems),
        threshold=0,
        criterion="members trained -> choice made on validation -> test labels read once"
                  + (f": {'; '.join(problems)}" if problems else "") + f" (events: {' -> '.join(order) or 'none yet'})",
        hint="Choose with validation outputs and labels only; read data.test_loader.labels in evaluate_on_test, "
             "after choose(), and nowhere else. A test accuracy of a choice made after looking at it is no longer "
             "a measurement: fix the order and run again with a new --out.",
        details={"events": order},
        seconds=time.perf_counter() - start,
    )


def ensemble_gain(ensemble_accuracy: float, member_accuracies: list[float], disagreement: float) -> CheckResult:
    """The ensemble against the mean of its own members on validation. Averaging the softmax outputs
    of models that make different mistakes usually gains something over the average member (more
    where they disagree more). A gain <= 0 is a warning, not a crash: the members may be (nearly)
    one model (disagreement ~0), too weak for averaging to help (a --quick run), or one broken
    member drags the rest down (its accuracy far below the others')."""
    start = time.perf_counter()
    mean = statistics.fmean(member_accuracies)
    gain = ensemble_accuracy - mean
    return CheckResult(
        name="ensemble_gain",
        passed=gain > 0,
        value=gain,
        threshold=0.0,
        criterion=f"ensemble accuracy - members' mean > 0 on validation ({ensemble_accuracy:.4f} - {mean:.4f}; "
                  f"{len(member_accuracies)} members, disagreement {disagreement:.4f})",
        hint="Look at the members: disagreement near 0 means they are (nearly) one model (seeds, folders); one "
             "member far below the others means a broken member; barely trained members (--quick) need not gain. "
             "An ensemble that does not beat its average member is not worth K times the compute.",
        details={"ensemble_accuracy": ensemble_accuracy, "members_mean": mean,
                 "member_accuracies": member_accuracies, "disagreement": disagreement},
        seconds=time.perf_counter() - start,
        expected="" if gain > 0 else "a warning, not a bug in the code by itself: the run goes on (see the hint)",
    )


def per_class_changes(ensemble: torch.Tensor, best_member: torch.Tensor, labels: torch.Tensor,
                      classes: list[str]) -> dict:
    """Which classes the ensemble fixed and which it broke, against its best member alone: per class,
    both accuracies, and the images that flipped from wrong to right (fixed) and right to wrong
    (broken). An ensemble's gain is a net number; a class it breaks is a question for the members
    (does one of them confuse it with another?), not something the mean shows."""
    labels = labels.cpu()
    ensemble_right = ensemble.argmax(1).cpu() == labels
    member_right = best_member.argmax(1).cpu() == labels
    rows = []
    for c, name in enumerate(classes):
        mask = labels == c
        n = int(mask.sum())
        rows.append({"class": name, "images": n,
                     "ensemble": ensemble_right[mask].double().mean().item() if n else None,
                     "best_member": member_right[mask].double().mean().item() if n else None,
                     "fixed": int((ensemble_right & ~member_right & mask).sum()),
                     "broken": int((~ensemble_right & member_right & mask).sum())})
    return {"classes": rows,
            "fixed_classes": [r["class"] for r in rows if r["images"] and r["ensemble"] > r["best_member"]],
            "broken_classes": [r["class"] for r in rows if r["images"] and r["ensemble"] < r["best_member"]],
            "images_fixed": sum(r["fixed"] for r in rows), "images_broken": sum(r["broken"] for r in rows)}
