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
                  value_range: tuple[float, float] = (0.0, 1.0), image_shape: tuple = (1, 28, 28)) -> CheckResult:
    """Look at one batch exactly as the model will get it, before training on it.

    Most first bugs are visible here and nowhere else as clearly: images still in
    [0, 255] (the /255 forgotten: inputs 255 times too large, a loss that explodes
    or a net that learns slowly), a missing channel dimension (N, 28, 28), integer
    pixels, NaN pixels, an all-black batch (a broken loader), labels 1..10 instead
    of 0..9 (cross-entropy fails with an index error, on the GPU as an unreadable
    device-side assert), or a batch of one class only (data sorted by class and not
    shuffled: the net learns one class per batch and forgets the rest).
    `value` is the number of problems found; the measured numbers are in `details`.
    """
    start = time.perf_counter()
    problems = []
    if images.dtype != torch.float32:
        problems.append(f"images are {images.dtype}, not torch.float32")
    if tuple(images.shape[1:]) != tuple(image_shape):
        problems.append(f"one image has shape {tuple(images.shape[1:])}, not {tuple(image_shape)}")
    pixels = images.detach().cpu().double()  # on the CPU: MPS has no float64
    low, high = pixels.min().item(), pixels.max().item()
    if not torch.isfinite(pixels).all():
        problems.append("some pixels are NaN or infinite")
    elif low < value_range[0] - 1e-4 or high > value_range[1] + 1e-4:
        problems.append(f"pixel values in [{low:.3g}, {high:.3g}], outside [{value_range[0]:.3g}, {value_range[1]:.3g}]")
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
        problems.append(f"the batch holds only {distinct} of {num_classes} classes: is the data sorted and not shuffled?")
    return CheckResult(
        name="first_batch",
        passed=not problems,
        value=len(problems),
        threshold=0,
        criterion=f"problems found == 0 (images float32 {tuple(image_shape)} in [{value_range[0]:.3g}, "
                  f"{value_range[1]:.3g}], labels int64 in [0, {num_classes - 1}])",
        hint=("Fix the loading code (to_tensor, load_data) until these are gone: " + "; ".join(problems)
              if problems else "Look at first_batch.png as well: does every image match its label?"),
        details={"shape": list(images.shape), "dtype": str(images.dtype), "min": low, "max": high,
                 "mean": pixels.mean().item(), "std": pixels.std().item(), "label_min": label_low,
                 "label_max": label_high, "distinct_labels": distinct, "problems": problems},
        seconds=time.perf_counter() - start,
    )


def _image_keys(images: torch.Tensor) -> list[bytes]:
    """One exact key per image: its pixels as bytes. Float images in [0, 1] (what the run trains
    on) go back to the uint8 values they came from, so equal keys mean equal pixels on disk."""
    images = images.detach().cpu()
    if images.is_floating_point():
        images = (images * 255).round().clamp(0, 255).to(torch.uint8)
    rows = images.reshape(len(images), -1).numpy()
    return [row.tobytes() for row in rows]


def _shared(first: list[bytes], second: list[bytes]) -> int:
    """How many images of `second` also occur, pixel for pixel, in `first`."""
    seen = set(first)
    return sum(key in seen for key in second)


def _duplicated_within(keys: list[bytes]) -> int:
    """How many images share their pixels with another image of the same list."""
    counts: dict[bytes, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return sum(count for count in counts.values() if count > 1)


def verify_splits_disjoint(train_idx: torch.Tensor, val_idx: torch.Tensor, splits: dict[str, torch.Tensor],
                           train_file: torch.Tensor, test_file: torch.Tensor) -> CheckResult:
    """Training, validation and test images must be different images.

    A validation image that is also a training image makes validation accuracy
    flatter than the truth, and every decision made with it (best epoch, early
    stopping) is made on images the model has memorised. Two ways this happens:
    overlapping indices (validation cut from the same permutation twice, sampling
    with replacement) and a split built from the wrong file (validation taken from
    the test images). The first is seen in `train_idx` / `val_idx` (positions in the
    60,000-image training file); the second only in the pixels, so every image of
    every split in `splits` ({"train": ..., "val": ..., "test": ...}, the tensors the
    run uses) is compared, exactly, with every image of the other splits.

    Some data sets hold the same picture twice. Such duplicates are counted in the
    two files themselves (`train_file`, `test_file`, uint8 as on disk) and reported;
    they are a property of the data, not a bug of the split, and are allowed up to
    the number the files hold. Fashion-MNIST has none, so there every shared image
    fails. `value` counts the problems: images in two splits (by index, or by pixels
    beyond what the files explain) and indices repeated within a split.
    """
    start = time.perf_counter()
    overlap = len(set(train_idx.tolist()) & set(val_idx.tolist()))
    repeated = (len(train_idx) - len(set(train_idx.tolist()))) + (len(val_idx) - len(set(val_idx.tolist())))
    keys = {name: _image_keys(images) for name, images in splits.items()}
    shared = {"train-val": _shared(keys["train"], keys["val"]), "train-test": _shared(keys["train"], keys["test"]),
              "val-test": _shared(keys["val"], keys["test"])}
    train_file_keys = _image_keys(train_file)
    in_files = {"within_train_file": _duplicated_within(train_file_keys),
                "train_file_and_test_file": _shared(train_file_keys, _image_keys(test_file))}
    allowed = {"train-val": in_files["within_train_file"], "train-test": in_files["train_file_and_test_file"],
               "val-test": in_files["train_file_and_test_file"]}
    excess = {pair: max(0, shared[pair] - allowed[pair]) for pair in shared}
    # An overlapping index is also a shared image: count it once, as the larger of the two.
    problems = max(overlap, excess["train-val"]) + excess["train-test"] + excess["val-test"] + repeated
    return CheckResult(
        name="splits_disjoint",
        passed=problems == 0,
        value=problems,
        threshold=0,
        criterion="images in two splits (by index, or by pixels beyond the files' own duplicates) + repeated "
                  f"indices == 0 (shared: train-val {shared['train-val']}, train-test {shared['train-test']}, "
                  f"val-test {shared['val-test']})",
        hint=(f"{overlap} indices in both train and validation, {repeated} repeated within a split, shared images "
              f"beyond the files' own duplicates: {excess}. Check split_indices() (one permutation, cut once, "
              "no sampling with replacement) and that validation is cut from the training file, not the test file."),
        details={"index_overlap_train_val": overlap, "repeated_indices": repeated, "shared_images": shared,
                 "duplicates_in_files": in_files, "split_sizes": {name: len(k) for name, k in keys.items()}},
        seconds=time.perf_counter() - start,
    )


def standard_error(accuracy: float, n: int) -> float:
    """The standard error of an accuracy measured on n independent images: sqrt(p (1 - p) / n).

    The test set is a sample of all the images the model will ever see, so its
    accuracy is a measurement with an error bar. On Fashion-MNIST's 10,000 test
    images at 91% it is 0.29 points: the accuracy on new images of the same kind lies
    between about 90.4% and 91.6% (two standard errors). A difference between two
    versions smaller than this is not shown by one run of each; a 256-image quick
    run has an error bar of about 3 points, so its accuracy says almost nothing.
    """
    return math.sqrt(accuracy * (1 - accuracy) / n)
