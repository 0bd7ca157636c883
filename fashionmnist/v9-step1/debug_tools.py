"""Debugging checks of recipe step 1: become one with the data, verify the loss at init.

Every check returns a `CheckResult`: passed or not, the measured value, the
threshold it was held to, and a one-line hint on what to do when it fails.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F


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

    def to_dict(self) -> dict:
        return asdict(self)

    def report(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        line = f"[{mark}] {self.name}: value={_fmt(self.value)} ({self.criterion})"
        return line if self.passed else f"{line}\n       hint: {self.hint}"


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_check_summary(checks: dict[str, CheckResult]) -> None:
    """One table of all verdicts, so a failed check cannot scroll out of sight."""
    print("\n" + "=" * 78)
    print("CHECK SUMMARY")
    print("=" * 78)
    print(f"{'check':<30}{'verdict':<9}{'value':>12}  {'threshold':>10}  {'time':>7}")
    for name, check in checks.items():
        verdict = "PASS" if check.passed else "FAIL"
        print(f"{name:<30}{verdict:<9}{_fmt(check.value):>12}  {_fmt(check.threshold):>10}  {check.seconds:6.2f}s")
    failed = [name for name, check in checks.items() if not check.passed]
    print(f"{len(checks) - len(failed)}/{len(checks)} passed" + (f"; FAILED: {', '.join(failed)}" if failed else ""))


@torch.no_grad()
def verify_loss_at_init(model, loader, device, num_classes: int = 10, tolerance: float = 0.3,
                        max_samples: int = 1024) -> CheckResult:
    """The freshly initialised model should be maximally unsure: loss = -ln(1/C).

    With 10 classes that is ln(10) = 2.3026. A loss far above it means the
    logits start large (last layer initialised too big: the net is confidently
    wrong before it has seen a single label); far below it means the labels
    leak into the input or the loss is computed on the wrong thing.
    Evaluated in eval mode so the check itself changes no BatchNorm statistics.
    """
    start = time.perf_counter()
    expected = math.log(num_classes)
    model.eval()
    total_loss, seen = 0.0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        total_loss += F.cross_entropy(model(images), labels, reduction="sum").item()
        seen += len(labels)
        if seen >= max_samples:
            break
    loss = total_loss / seen
    return CheckResult(
        name="loss_at_init",
        passed=abs(loss - expected) <= tolerance,
        value=loss,
        threshold=tolerance,
        criterion=f"|loss - ln({num_classes})={expected:.4f}| <= {tolerance}",
        hint="Initial loss off: check _initialize_weights() (last layer std 0.01, bias 0) "
             "and that the model outputs raw logits.",
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
