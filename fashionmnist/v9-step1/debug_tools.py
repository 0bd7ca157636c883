"""Debugging checks of recipe step 1: become one with the data, verify the loss at init.

Every check returns a `CheckResult`: passed or not, the measured value, the
threshold it was held to, and a one-line hint on what to do when it fails.

A check that computes a loss gets the run's own `loss_fn` from train.py as an
argument: this file has no loss of its own, so the check sees the loss that trains.
"""
from __future__ import annotations

import contextlib
import hashlib
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


@torch.no_grad()
def verify_loss_at_init(model, loader, loss_fn, num_classes: int = 10, tolerance: float = 0.3,
                        max_samples: int = 1024) -> CheckResult:
    """The freshly initialised model should be maximally unsure: loss = -ln(1/C).

    With 10 classes that is ln(10) = 2.3026; MyNN's init gives 2.30 +- 0.01. A loss
    far above it means the logits start large (last layer initialised too big: the
    net is confidently wrong before it has seen a single label); far below it means
    the labels leak into the input or the loss is computed on the wrong thing.
    Measured with the run's own `loss_fn`, in eval mode, so the check itself changes
    no BatchNorm statistics.
    """
    start = time.perf_counter()
    expected = math.log(num_classes)
    was_training = model.training
    model.eval()
    total_loss, seen = 0.0, 0
    for images, labels in loader:
        total_loss += loss_fn(model(images), labels).item() * len(labels)
        seen += len(labels)
        if seen >= max_samples:
            break
    model.train(was_training)
    loss = total_loss / seen
    if loss > expected:
        hint = ("Initial loss too high: the logits start large. Check _initialize_weights() (last layer "
                "std 0.01, bias 0).")
    else:
        hint = ("Initial loss too low: the model knows the answer before training. Check that the labels "
                "do not leak into the inputs and that loss_fn compares raw logits with the labels.")
    return CheckResult(
        name="loss_at_init",
        passed=abs(loss - expected) <= tolerance,
        value=loss,
        threshold=tolerance,
        criterion=f"|loss - ln({num_classes})={expected:.4f}| <= {tolerance}",
        hint=hint,
        details={"expected": expected, "samples": seen},
        seconds=time.perf_counter() - start,
    )


def data_report(train_images, train_labels, test_images, test_labels, classes) -> dict:
    """Numbers to look at before any training: class balance, pixel statistics, duplicates.

    Imbalanced classes change what "good accuracy" means; odd pixel ranges point
    at a loading bug; duplicates between train and test inflate the test score.
    Images are the raw uint8 tensors (N, 28, 28) as stored on disk.
    """
    num_classes = len(classes)
    train_counts = torch.bincount(train_labels, minlength=num_classes).tolist()
    test_counts = torch.bincount(test_labels, minlength=num_classes).tolist()
    pixels = train_images.float() / 255.0
    train_hashes = [hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in train_images]
    test_hashes = [hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in test_images]
    train_set = set(train_hashes)
    return {
        "classes": list(classes),
        "train_size": len(train_labels),
        "test_size": len(test_labels),
        "image_shape": list(train_images.shape[1:]),
        "train_class_counts": dict(zip(classes, train_counts)),
        "test_class_counts": dict(zip(classes, test_counts)),
        "pixel_stats": {
            "min": pixels.min().item(),
            "max": pixels.max().item(),
            "mean": pixels.mean().item(),
            "std": pixels.std().item(),
            "fraction_zero": (train_images == 0).float().mean().item(),
        },
        "class_mean_intensity": {c: pixels[train_labels == i].mean().item() for i, c in enumerate(classes)},
        "duplicates_within_train": len(train_hashes) - len(train_set),
        "duplicates_within_test": len(test_hashes) - len(set(test_hashes)),
        "test_images_also_in_train": sum(h in train_set for h in test_hashes),
    }


def print_data_report(report: dict) -> None:
    print(f"Train: {report['train_size']} images, test: {report['test_size']}, shape {report['image_shape']}")
    print(f"{'class':<14}{'train':>7}{'test':>7}{'mean pixel':>12}")
    for name in report["classes"]:
        print(f"{name:<14}{report['train_class_counts'][name]:>7}{report['test_class_counts'][name]:>7}"
              f"{report['class_mean_intensity'][name]:>12.3f}")
    s = report["pixel_stats"]
    print(f"Pixels (train, after /255): min {s['min']:.3f} max {s['max']:.3f} mean {s['mean']:.4f} "
          f"std {s['std']:.4f}, {s['fraction_zero']:.1%} exactly zero")
    print(f"Exact duplicates: {report['duplicates_within_train']} within train, "
          f"{report['duplicates_within_test']} within test, "
          f"{report['test_images_also_in_train']} test images also in train")
