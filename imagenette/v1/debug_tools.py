"""Debugging checks: each version adds the check its own idea needs.

Every check returns a `CheckResult`: passed or not, the measured value, the
threshold it was held to, and a one-line hint on what to do when it fails.
train.py prints each verdict and one summary table of all of them.

A check that draws random numbers or a batch from the shuffled training loader
runs inside `rng_untouched`, so that running it or not never changes training.
"""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch


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
                  value_range: tuple[float, float] = (0.0, 1.0), image_shape: tuple = (3, 160, 160)) -> CheckResult:
    """Look at one batch exactly as the model will get it, before training on it.

    Most first bugs are visible here and nowhere else as clearly: pixels still uint8
    in [0, 255] (the /255 forgotten), channels last (N, 160, 160, 3) instead of
    (N, 3, 160, 160), one channel where the net wants three (a greyscale image that
    was not converted), NaN pixels, an all-black batch (a broken decoder), labels
    outside 0..9, or a batch of one class only (data sorted by class and not
    shuffled). `value` is the number of problems found; the numbers are in `details`,
    including the mean of each channel (a channel far from the others' mean hints
    at BGR vs RGB or a channel that was zeroed).
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
    channel_means = pixels.mean(dim=(0, 2, 3)).tolist() if pixels.dim() == 4 else []
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
