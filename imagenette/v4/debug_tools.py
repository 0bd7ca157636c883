"""Debugging checks: each version adds the check its own idea needs.

Every check returns a `CheckResult`: passed or not, the measured value, the
threshold it was held to, and a one-line hint on what to do when it fails.
train.py prints each verdict and one summary table of all of them.

A check that draws random numbers or a batch from the shuffled training loader
runs inside `rng_untouched`, so that running it or not never changes training.
"""
from __future__ import annotations

import contextlib
import math
import copy
import random
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn


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
                          max_dead_fraction: float = 0.5) -> CheckResult:
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
                              "units": output.shape[1]}
    worst = max(layers, key=lambda layer: layers[layer]["dead_fraction"]) if layers else None
    worst_fraction = layers[worst]["dead_fraction"] if layers else 0.0
    return CheckResult(
        name=name,
        passed=bool(layers) and worst_fraction <= max_dead_fraction,
        value=worst_fraction,
        threshold=max_dead_fraction,
        criterion=f"largest fraction of dead ReLU units in one layer <= {max_dead_fraction} "
                  f"(worst: {worst}, {len(layers)} ReLU layers)",
        hint=(f"Layer {worst}: {worst_fraction:.0%} of its units never fire on this batch. Look at its input "
              "(normalised?), the bias or BatchNorm shift before it, and the learning rate." if layers else
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
