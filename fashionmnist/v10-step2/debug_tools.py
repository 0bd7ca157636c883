"""Debugging checks of recipe steps 1 and 2: become one with the data, verify the
loss at init, then the baselines and debugging steps of step 2.

Every check returns a `CheckResult`: passed or not, the measured value, the
threshold it was held to, and a one-line hint on what to do when it fails.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from visualization import (
    plot_human_baseline_samples,
    plot_input_visualization,
    plot_overfit_one_batch,
    plot_prediction_dynamics,
)

# Crowd-sourced human accuracy on Fashion-MNIST, measured by the data set's authors
# (zalandoresearch/fashion-mnist README, "Benchmark" section: 83.5%).
HUMAN_ACCURACY = 0.835
HUMAN_ACCURACY_SOURCE = "Fashion-MNIST README (zalandoresearch), benchmark section: human performance 83.5%"


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


# ---------------------------------------------------------------------------
# Step 1: human baseline
# ---------------------------------------------------------------------------
def human_baseline_test(test_dataset, num_samples: int = 16, out_dir: Path = Path("outputs"), seed: int = 0) -> dict:
    """Show random test images the way a person would judge them, and state the human reference.

    Not a pass/fail check: it tells you what "good" means here. The data set's
    authors measured humans at 83.5%, so a CNN at 90%+ is already superhuman on
    these 28x28 thumbnails, and a model below ~80% has room to grow.
    """
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(test_dataset), generator=generator)[:num_samples].tolist()
    images = torch.stack([test_dataset[i][0] for i in indices]).cpu()
    labels = [int(test_dataset[i][1]) for i in indices]
    plot_human_baseline_samples(images, labels, test_dataset.classes, Path(out_dir) / "human_baseline_samples.png")
    print(f"Human baseline: {HUMAN_ACCURACY:.1%} ({HUMAN_ACCURACY_SOURCE}); "
          f"{num_samples} test images in human_baseline_samples.png, labels under each image.")
    return {"human_accuracy": HUMAN_ACCURACY, "source": HUMAN_ACCURACY_SOURCE, "sample_indices": indices}


# ---------------------------------------------------------------------------
# Step 2: input-independent baseline
# ---------------------------------------------------------------------------
def _train_steps(model, loader, device, steps: int, lr: float, zero_inputs: bool) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for images, labels in itertools.islice(itertools.cycle(loader), steps):
        images, labels = images.to(device), labels.to(device)
        if zero_inputs:
            images = torch.zeros_like(images)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@torch.no_grad()
def _accuracy(model, loader, device, zero_inputs: bool) -> float:
    model.eval()
    correct, seen = 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        if zero_inputs:
            images = torch.zeros_like(images)
        correct += (model(images).argmax(1) == labels).sum().item()
        seen += len(labels)
    return correct / seen


def test_input_independent_baseline(train_loader, test_loader, device, *, model_fn, steps: int = 300,
                                    lr: float = 1e-3, max_baseline_accuracy: float = 0.15,
                                    min_gap: float = 0.20) -> CheckResult:
    """Train one model on all-zero inputs and one on the real images, same init, same budget.

    The zero-input model can only learn the class frequencies: ~10% on balanced
    Fashion-MNIST. If the real model is not clearly better, it is not using the
    images (a forward pass that drops the input, inputs overwritten by a bug,
    labels misaligned with images). If the zero-input model is well above 10%,
    the test labels are imbalanced or something other than the image carries
    the label.
    """
    start = time.perf_counter()
    reference = model_fn().to(device)
    accuracies = {}
    for mode, zero_inputs in (("zero_input", True), ("real_input", False)):
        model = copy.deepcopy(reference)
        _train_steps(model, train_loader, device, steps, lr, zero_inputs)
        accuracies[mode] = _accuracy(model, test_loader, device, zero_inputs)
    gap = accuracies["real_input"] - accuracies["zero_input"]
    return CheckResult(
        name="input_independent_baseline",
        passed=gap >= min_gap and accuracies["zero_input"] <= max_baseline_accuracy,
        value=gap,
        threshold=min_gap,
        criterion=f"real - zero-input accuracy >= {min_gap:.2f} and zero-input <= {max_baseline_accuracy:.2f} "
                  f"(zero {accuracies['zero_input']:.3f}, real {accuracies['real_input']:.3f}, {steps} steps each)",
        hint="The model does not learn from the images: check that forward() uses its input "
             "and that images and labels stay aligned.",
        details={**accuracies, "steps": steps, "max_baseline_accuracy": max_baseline_accuracy},
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------
# Step 3: overfit one batch
# ---------------------------------------------------------------------------
def overfit_one_batch(model_class, device, train_dataset, batch_size: int = 8, steps: int = 300, lr: float = 1e-3,
                      max_loss: float = 0.05, out_dir: Path = Path("outputs")) -> CheckResult:
    """Memorise `batch_size` training images: 100% accuracy AND a loss near zero.

    A correct model and training loop drive the loss on 8 images to ~0 within a
    few hundred steps. Reaching 100% accuracy with the loss stuck far above zero
    is a bug sign too: softmax applied before CrossEntropyLoss caps the logits
    at [0, 1] and the loss cannot fall below ~1.46. Measured in eval mode
    (no dropout), every 10 steps.
    """
    start = time.perf_counter()
    images = torch.stack([train_dataset[i][0] for i in range(batch_size)]).to(device)
    labels = torch.stack([torch.as_tensor(train_dataset[i][1]) for i in range(batch_size)]).to(device)
    model = model_class().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    curve = []
    for step in range(steps + 1):
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                logits = model(images)
                loss = F.cross_entropy(logits, labels).item()
                acc = (logits.argmax(1) == labels).float().mean().item()
            curve.append({"step": step, "loss": loss, "accuracy": acc})
            if acc == 1.0 and loss <= max_loss:
                break
            model.train()
        if step < steps:
            loss_t = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss_t.backward()
            optimizer.step()
    final = curve[-1]
    plot_overfit_one_batch(curve, max_loss, Path(out_dir) / "overfit_one_batch.png")
    return CheckResult(
        name="overfit_one_batch",
        passed=final["accuracy"] == 1.0 and final["loss"] <= max_loss,
        value=final["loss"],
        threshold=max_loss,
        criterion=f"accuracy 100% and loss <= {max_loss} on {batch_size} images within {steps} steps "
                  f"(accuracy {final['accuracy']:.0%} after {final['step']} steps)",
        hint="Cannot memorise 8 images: check the loss (raw logits into CrossEntropyLoss, no softmax), "
             "that optimizer.step() runs, the learning rate, and that labels match images.",
        details={"accuracy": final["accuracy"], "steps_needed": final["step"], "curve": curve},
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------
# Step 4: the training loss goes down
# ---------------------------------------------------------------------------
def verify_decreasing_loss(batch_losses: list[float], max_ratio: float = 0.9) -> CheckResult:
    """Mean loss of the last 10% of batches must be below `max_ratio` x the first 10%.

    Fails when nothing is learnt: optimizer.step() or loss.backward() missing,
    a learning rate of ~0, gradients detached from the weights.
    """
    k = max(1, len(batch_losses) // 10)
    first, last = sum(batch_losses[:k]) / k, sum(batch_losses[-k:]) / k
    ratio = last / first
    return CheckResult(
        name="training_loss_decreases",
        passed=ratio < max_ratio,
        value=ratio,
        threshold=max_ratio,
        criterion=f"mean loss of last {k} batches / first {k} batches < {max_ratio} "
                  f"({last:.4f} / {first:.4f})",
        hint="Training loss does not fall: check loss.backward(), optimizer.step(), the learning rate.",
        details={"first_mean": first, "last_mean": last, "batches": len(batch_losses)},
    )


# ---------------------------------------------------------------------------
# Step 7: visualize just before the net
# ---------------------------------------------------------------------------
def visualize_input_before_net(train_loader, out_dir: Path = Path("outputs"), num_images: int = 16) -> CheckResult:
    """Look at (and measure) one batch exactly as the network receives it.

    This version feeds ToTensor() output: float32, (B, 1, 28, 28), pixels in
    [0, 1], mean ~0.29, std ~0.35 on Fashion-MNIST. Pixels up to 255 mean the
    /255 was forgotten; negative values mean a normalisation this version does
    not have; a mean near 0 or a std near 0 means blank or constant images.
    """
    start = time.perf_counter()
    images, labels = next(iter(train_loader))
    stats = {"shape": list(images.shape), "dtype": str(images.dtype), "min": images.min().item(),
             "max": images.max().item(), "mean": images.mean().item(), "std": images.std().item()}
    problems = []
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        problems.append(f"shape {stats['shape']} is not (B, 1, 28, 28)")
    if images.dtype != torch.float32:
        problems.append(f"dtype {images.dtype} is not float32")
    if stats["min"] < 0.0 or stats["max"] > 1.0:
        problems.append(f"pixel range [{stats['min']:.3f}, {stats['max']:.3f}] is not inside [0, 1]")
    if not 0.05 <= stats["mean"] <= 0.6 or stats["std"] < 0.05:
        problems.append(f"mean {stats['mean']:.3f} / std {stats['std']:.3f} look like blank or constant images")
    print(f"Input batch: shape {stats['shape']}, {stats['dtype']}, min {stats['min']:.3f}, max {stats['max']:.3f}, "
          f"mean {stats['mean']:.4f}, std {stats['std']:.4f}")
    plot_input_visualization(images[:num_images].detach().cpu(), labels[:num_images].cpu(),
                             train_loader.dataset.classes, stats, Path(out_dir) / "input_visualization.png")
    return CheckResult(
        name="input_before_net",
        passed=not problems,
        value=stats["max"],
        threshold=1.0,
        criterion="float32, (B, 1, 28, 28), pixels in [0, 1], 0.05 <= mean <= 0.6, std >= 0.05"
                  + (f": {'; '.join(problems)}" if problems else ""),
        hint="Preprocessing bug: check the ToTensor()/255 scaling, normalisation and reshapes in the data code.",
        details={**stats, "problems": problems},
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------
# Step 8: prediction dynamics on a fixed batch
# ---------------------------------------------------------------------------
class PredictionDynamicsTracker:
    """Record the predicted class probabilities of a fixed batch after every epoch.

    Healthy training: the true-class confidence of most samples climbs and then
    stays; samples that keep flipping are ambiguous or mislabelled. Every sample
    flipping every epoch means the learning rate is too high.
    """

    def __init__(self, fixed_batch_x, fixed_batch_y, device):
        self.x, self.y = fixed_batch_x.to(device), fixed_batch_y.to(device)
        self.records = []

    @torch.no_grad()
    def update(self, model, epoch: int) -> None:
        was_training = model.training
        model.eval()
        probs = F.softmax(model(self.x), dim=1)
        model.train(was_training)
        self.records.append({
            "epoch": epoch,
            "true_class_confidence": probs.gather(1, self.y[:, None]).squeeze(1).tolist(),
            "predicted": probs.argmax(1).tolist(),
        })

    def to_dict(self) -> dict:
        return {"labels": self.y.tolist(), "records": self.records}

    def plot(self, out_path: Path = Path("outputs") / "prediction_dynamics.png") -> None:
        plot_prediction_dynamics(self.to_dict(), out_path)


# ---------------------------------------------------------------------------
# Step 9: use backprop to chart dependencies
# ---------------------------------------------------------------------------
def verify_batch_independence(model, device, test_loader, batch_size: int = 8) -> CheckResult:
    """The output of sample i must depend on input i only.

    For each i: loss = sum of the outputs of sample i, backprop to the inputs;
    the gradient must be non-zero for input i and exactly zero for every other
    input. A reshape/view/transpose that mixes the batch dimension shows up
    here. Run in eval mode: in train mode BatchNorm normalises with the batch's
    own statistics, which couples all samples on purpose and would hide (or
    fake) a real bug.
    """
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    images = next(iter(test_loader))[0][:batch_size].to(device).clone().requires_grad_(True)
    leaks, dead = [], []
    for i in range(len(images)):
        images.grad = None
        model(images)[i].sum().backward()
        norms = images.grad.flatten(1).norm(dim=1)
        if norms[i] == 0:
            dead.append(i)
        leaks.extend({"output": i, "input": j, "grad_norm": norms[j].item()}
                     for j in range(len(images)) if j != i and norms[j] != 0)
    model.train(was_training)
    model.zero_grad(set_to_none=True)
    offenders = sorted({leak["input"] for leak in leaks})
    return CheckResult(
        name="batch_independence",
        passed=not leaks and not dead,
        value=len(leaks),
        threshold=0,
        criterion=f"no gradient from output i to input j != i over {len(images)} samples"
                  + (f"; leaking into inputs {offenders}" if offenders else "")
                  + (f"; outputs {dead} do not depend on their own input" if dead else ""),
        hint="Samples are mixed inside the model: look for view/reshape/transpose across the batch "
             "dimension, or a custom layer that reduces over dim 0.",
        details={"leaks": leaks[:50], "offending_inputs": offenders, "outputs_without_own_gradient": dead},
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------
# Beyond the seed: gradient flow
# ---------------------------------------------------------------------------
def verify_gradient_flow(model, train_loader, device) -> CheckResult:
    """After one backward pass every trainable parameter must have a non-zero gradient.

    A parameter without gradient is dead weight: the classic case is a forward
    pass that computes a block and then uses the wrong tensor, silently
    discarding most of the network (see docs, seed 003). None of the other
    checks catches it, because the rest of the network still learns.
    Runs on a copy, so BatchNorm statistics of the real model are untouched.
    """
    start = time.perf_counter()
    probe = copy.deepcopy(model).train()
    images, labels = next(iter(train_loader))
    F.cross_entropy(probe(images.to(device)), labels.to(device)).backward()
    norms = {name: (p.grad.norm().item() if p.grad is not None else None)
             for name, p in probe.named_parameters() if p.requires_grad}
    without = [name for name, norm in norms.items() if not norm]
    return CheckResult(
        name="gradient_flow",
        passed=not without,
        value=len(without),
        threshold=0,
        criterion=f"every one of {len(norms)} trainable parameter tensors gets a non-zero gradient"
                  + (f"; none for: {', '.join(without)}" if without else ""),
        hint="Some layers receive no gradient: check that forward() uses every block's output "
             "and that no .detach()/torch.no_grad() cuts the graph.",
        details={"grad_norms": norms, "without_gradient": without},
        seconds=time.perf_counter() - start,
    )
