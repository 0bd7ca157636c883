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
import math
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


def verify_normalised_batch(images: torch.Tensor, tolerance: float = 0.15) -> CheckResult:
    """A training batch after normalisation has mean ~0 and std ~1.

    That is what Normalize(mean, std) is for: inputs centred on 0 with unit spread,
    the scale the default initialisation of the first layer assumes. One batch of
    128 images varies by about 0.03 around 0 and 1, and the augmentation's black
    border moves the numbers a little more, hence the tolerance. Far off means the
    normalisation is missing (mean 0.29, std 0.35 on Fashion-MNIST), applied twice,
    or made with wrong numbers (say the 0.5 / 0.5 of an RGB tutorial).
    """
    start = time.perf_counter()
    pixels = images.detach().cpu().double()  # on the CPU: MPS has no float64
    mean, std = pixels.mean().item(), pixels.std().item()
    deviation = max(abs(mean), abs(std - 1))
    return CheckResult(
        name="normalised_batch",
        passed=deviation <= tolerance,
        value=deviation,
        threshold=tolerance,
        criterion=f"max(|mean|, |std - 1|) <= {tolerance} (batch mean {mean:.3f}, std {std:.3f})",
        hint="The batch the model gets is not normalised: is Transform applied in the training loader, once, "
             "with the mean and std of the training split?",
        details={"mean": mean, "std": std, "batch_size": len(images)},
        seconds=time.perf_counter() - start,
    )


def verify_normalisation_stats(splits: dict[str, torch.Tensor], loaders: dict, tolerance: float = 1e-6) -> CheckResult:
    """Every loader normalises with the mean and std of the training split, and nothing else.

    Statistics computed on the validation or test images (or on all of them together)
    let those images shape the input pipeline: a small leak on Fashion-MNIST, where
    the test mean (0.2868) is close to the training split's mean (0.2859), but the habit
    decides on data sets where it is not. And all loaders must use the same numbers:
    a model evaluated with other statistics than it was trained with sees shifted inputs.
    `splits` holds the unnormalised images of each split ({"train": ..., "val": ...,
    "test": ...}); `loaders` the loaders whose Transform carries the numbers in use.
    The details name the split whose statistics each loader matches.
    """
    start = time.perf_counter()
    stats = {}
    for name, images in splits.items():
        pixels = images.detach().cpu().double()  # on the CPU: MPS has no float64
        stats[name] = (pixels.mean().item(), pixels.std().item())
    train_mean, train_std = stats["train"]
    used, matches, deviation = {}, {}, 0.0
    for name, loader in loaders.items():
        mean, std = loader.transform.mean, loader.transform.std
        used[name] = {"mean": mean, "std": std}
        matches[name] = min(stats, key=lambda split: abs(stats[split][0] - mean) + abs(stats[split][1] - std))
        deviation = max(deviation, abs(mean - train_mean), abs(std - train_std))
    return CheckResult(
        name="normalisation_from_train",
        passed=deviation <= tolerance,
        value=deviation,
        threshold=tolerance,
        criterion=f"max |loader's mean/std - training split's| <= {tolerance:g} "
                  f"(training split: mean {train_mean:.4f}, std {train_std:.4f})",
        hint=f"The loaders' statistics match these splits: {matches}. Compute mean and std once, from the "
             "training split's images only, and hand the same numbers to every loader.",
        details={"split_stats": {name: {"mean": m, "std": s} for name, (m, s) in stats.items()},
                 "used": used, "closest_split": matches},
        seconds=time.perf_counter() - start,
    )


def verify_train_augmented(loader, expected: bool = True, count: int = 256, min_changed: float = 0.5) -> CheckResult:
    """Training batches are augmented: the same images through the training loader's transform
    twice come out different (a crop shifted elsewhere, a flip or not).

    With padding 2 and flip probability 0.5 two draws give the same picture for about
    2% of the images, so at least half must change. Augmentation configured off
    (`expected=False`) must change nothing. Draws random numbers from the loader's
    generator: run it inside rng_untouched.
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


def verify_eval_deterministic(loader) -> CheckResult:
    """An evaluation batch is the same every time: no augmentation, no shuffling.

    Augmentation left on at evaluation measures the model on shifted and flipped
    images, so validation accuracy is noisy and lower than the truth, and two
    evaluations of the same model disagree; the best epoch is then partly picked by
    chance. Compares the first batch of two passes over `loader`, bit for bit.
    """
    start = time.perf_counter()
    first, _ = next(iter(loader))
    second, _ = next(iter(loader))
    difference = (first - second).abs().max().item()
    return CheckResult(
        name="eval_batches_deterministic",
        passed=difference == 0,
        value=difference,
        threshold=0.0,
        criterion="max |difference| between two passes over the first evaluation batch == 0",
        hint="Evaluation batches change between passes: the validation/test loaders must use "
             "Transform(..., augment=False) and shuffle=False.",
        details={"batch_size": len(first)},
        seconds=time.perf_counter() - start,
    )


@torch.no_grad()
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


def _mode_recorder(model, calls: list):
    """Forward hooks that note, for every BatchNorm and Dropout call, the layer's name and whether
    it ran in training mode: (name, training)."""
    kinds = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    return [module.register_forward_hook(
        lambda module, inputs, output, name=name: calls.append((name, module.training)))
        for name, module in model.named_modules() if isinstance(module, kinds)]


def _layer_names(calls: list, most: int = 4) -> str:
    """The distinct layer names of `calls` ((name, training) pairs), the first `most` of them."""
    names = list(dict.fromkeys(name for name, _ in calls))
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def verify_train_eval_modes(model, images: torch.Tensor, labels: torch.Tensor, evaluate, device,
                            train_one_epoch, make_optimizer, tolerance: float = 1e-4) -> CheckResult:
    """BatchNorm and Dropout must behave differently in the two modes, and the run must switch.

    In train mode BatchNorm normalises with the statistics of the batch (an image's
    output depends on the other images of the batch) and Dropout zeroes random units
    (two passes differ). In eval mode BatchNorm uses its running statistics and
    Dropout does nothing: an image's output is the same alone or in any batch, and
    every pass gives the same numbers. The classic bug is a model evaluated in train
    mode (model.eval() forgotten): the validation accuracy is noisy and depends on
    the batch size, and every evaluation changes BatchNorm's running statistics.
    Its mirror image is training in eval mode (model.train() forgotten after the
    first evaluation): Dropout is off and BatchNorm stops learning its statistics.

    Checked on copies of the model, with `images` and `labels` as the only batch: the
    two modes themselves, then the run's own `evaluate` (every BatchNorm/Dropout call
    in eval mode, running statistics left unchanged) and the run's own
    `train_one_epoch` with an optimizer from `make_optimizer` (every call in train
    mode). `value` counts the problems.
    Dropout draws random numbers: run it inside rng_untouched.
    """
    start = time.perf_counter()
    problems, measured = [], {}
    has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    has_dropout = any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())
    half = len(images) // 2
    probe = copy.deepcopy(model)
    with torch.no_grad():
        probe.train()
        measured["train_batch_dependence"] = (probe(images[:half]) - probe(images)[:half]).abs().max().item()
        measured["train_pass_difference"] = (probe(images) - probe(images)).abs().max().item()
        probe.eval()
        measured["eval_batch_dependence"] = (probe(images[:half]) - probe(images)[:half]).abs().max().item()
        measured["eval_pass_difference"] = (probe(images) - probe(images)).abs().max().item()
    if has_batchnorm and not measured["train_batch_dependence"] > tolerance:
        problems.append("train mode: an image's output does not depend on its batch, so BatchNorm does not "
                        "use batch statistics in training")
    if has_dropout and not measured["train_pass_difference"] > tolerance:
        problems.append("train mode: two passes give the same output, so Dropout is not active in training")
    if measured["eval_batch_dependence"] > tolerance:
        problems.append("eval mode: an image's output depends on the other images of its batch "
                        "(BatchNorm with batch statistics at evaluation, randomness such as Dropout, or a "
                        "forward() that mixes the batch's images, e.g. a reshape or mean across the batch)")
    if measured["eval_pass_difference"] > tolerance:
        problems.append("eval mode: two passes give different outputs (Dropout or other randomness at evaluation)")

    evaluated = copy.deepcopy(model).train()  # as it is after a training epoch
    running = {k: v.clone() for k, v in evaluated.state_dict().items() if "running" in k}
    calls: list[tuple[str, bool]] = []
    handles = _mode_recorder(evaluated, calls)
    try:
        evaluate(evaluated, [(images, labels)], device)
    finally:
        for handle in handles:
            handle.remove()
    in_train = [call for call in calls if call[1]]
    measured["evaluate_calls_in_train_mode"] = len(in_train)
    if in_train:
        problems.append(f"evaluate() ran {len(in_train)} of {len(calls)} BatchNorm/Dropout calls in train mode "
                        f"({_layer_names(in_train)}): it must call model.eval() before its loop, and nothing "
                        "in it may switch a layer back with .train()")
    state = evaluated.state_dict()
    if any(not torch.equal(state[k], v) for k, v in running.items()):
        problems.append("evaluate() changed BatchNorm's running statistics")

    trained = copy.deepcopy(model).eval()  # as it is after an evaluation
    calls.clear()
    handles = _mode_recorder(trained, calls)
    try:
        train_one_epoch(trained, [(images, labels)], make_optimizer(trained))
    finally:
        for handle in handles:
            handle.remove()
    in_eval = [call for call in calls if not call[1]]
    measured["training_calls_in_eval_mode"] = len(in_eval)
    if in_eval:
        # All of them in eval mode: model.train() is missing. Only some: it was called (the others
        # train), and something switched these back, such as a "freeze BatchNorm" snippet
        # (m.eval() for every BatchNorm) or a submodule's .eval() after model.train().
        cause = ("is model.train() called before its loop?" if len(in_eval) == len(calls) else
                 "model.train() was called (the other layers ran in train mode), but these were switched "
                 "back: look for .eval() on them or on a submodule after model.train(), such as a "
                 "'freeze BatchNorm' snippet")
        problems.append(f"train_one_epoch() ran {len(in_eval)} of {len(calls)} BatchNorm/Dropout calls in eval "
                        f"mode ({_layer_names(in_eval)}): {cause}")
    return CheckResult(
        name="train_eval_modes",
        passed=not problems,
        value=len(problems),
        threshold=0,
        criterion="problems == 0 (train mode: batch-dependent and random; eval mode: neither; evaluate() in "
                  "eval mode, train_one_epoch() in train mode)",
        hint="; ".join(problems) if problems else "model.eval() before evaluating, model.train() before training.",
        details={**measured, "has_batchnorm": has_batchnorm, "has_dropout": has_dropout, "problems": problems},
        seconds=time.perf_counter() - start,
    )


class _HeldLR:
    """A scheduler that leaves the learning rate alone: the LR finder sets it itself before every
    step, and the run's own training_step still gets something to call .step() on."""

    def step(self) -> None:
        pass


def _cycle(batches):
    """The batches over and over (itertools.cycle would keep a copy of a whole epoch)."""
    while True:
        yield from batches


def lr_range_test(model, batches, *, make_optimizer, training_step, steps: int = 300, min_lr: float = 1e-6,
                  max_lr: float = 1.0, smoothing: float = 0.9, min_drop: float = 0.1, stop_factor: float = 4.0,
                  configured_lr: float | None = None) -> CheckResult:
    """The learning-rate range test ("LR finder", Smith 2015; fastai, Lightning): train a copy of
    the model for `steps` steps with the run's own optimizer (from `make_optimizer`) and the run's
    own `training_step`, raising the learning rate exponentially from `min_lr` to `max_lr`, and
    watch the loss that training_step reports.

    At tiny LRs nothing moves; then the loss falls, faster and faster; at too large LRs it
    turns and explodes, and the sweep stops (loss 4x above its best, or training_step's own
    divergence guard). The loss is smoothed (moving average with weight `smoothing` on the
    past, bias-corrected), because one batch's loss is too noisy to read.

    The rule, written down: proposed LR = (LR at the minimum of the smoothed loss) / 10.
    At the minimum the loss is already about to turn; a tenth of it is still in the steep
    fall, which is where a schedule's peak belongs (fastai's "min/10"; the steepest fall is
    reported beside it). No usable LR: the smoothed loss never falls more than `min_drop`
    (10%) below where it started. Then no learning rate helps, and the bug is elsewhere: a
    step that does not update, a graph cut by .detach(), a frozen model, labels that do not
    match the images. The check fails only then; the proposal is advice, --lr stays as set.

    Runs on a copy (the model and its BatchNorm statistics stay untouched) and draws batches
    and dropout masks: run it inside rng_untouched.
    """
    start = time.perf_counter()
    probe = copy.deepcopy(model).train()
    probe.zero_grad(set_to_none=True)
    optimizer, _ = make_optimizer(probe, total_steps=steps + 1)
    held = _HeldLR()
    lrs, losses, smoothed, stopped, average = [], [], [], "swept to max_lr", 0.0
    feed = _cycle(batches)
    for i in range(steps):
        lr = min_lr * (max_lr / min_lr) ** (i / (steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, labels = next(feed)
        try:
            loss_value, _ = training_step(probe, images, labels, optimizer, held)
        except FloatingPointError as err:  # train.TrainingDiverged: the loss exploded, the sweep is over
            stopped = f"diverged at lr {lr:.3g}: {err}"
            break
        average = smoothing * average + (1 - smoothing) * loss_value
        lrs.append(lr)
        losses.append(loss_value)
        smoothed.append(average / (1 - smoothing ** (i + 1)))
        if i > 0 and smoothed[-1] > stop_factor * min(smoothed):
            stopped = f"loss above {stop_factor:g}x its best at lr {lr:.3g}"
            break
    head = max(1, len(losses) // 10)  # the start: the first tenth of the sweep, where the LR is too small to act
    start_loss = sum(losses[:head]) / head if losses else float("nan")
    best = min(range(len(smoothed)), key=smoothed.__getitem__) if smoothed else None
    drop = (start_loss - smoothed[best]) / start_loss if best is not None and start_loss > 0 else 0.0
    usable = best is not None and drop >= min_drop
    slopes = [(smoothed[i + 1] - smoothed[i]) / math.log(lrs[i + 1] / lrs[i]) for i in range(best or 0)]
    steepest = lrs[min(range(len(slopes)), key=slopes.__getitem__)] if usable and slopes else None
    proposed = lrs[best] / 10 if usable else None
    if usable:
        hint = (f"Proposed peak LR {proposed:.2g} (min of the smoothed loss at {lrs[best]:.2g}, / 10); steepest "
                f"fall at {steepest:.2g}" if steepest else f"Proposed peak LR {proposed:.2g}")
        if configured_lr is not None and configured_lr > lrs[best]:
            hint += f". --lr {configured_lr:g} is beyond the minimum, where the loss turns: lower it"
    else:
        hint = (f"No usable learning rate: the smoothed loss fell only {drop:.1%} (from {start_loss:.3f}) over "
                f"LRs {min_lr:g} ... {lrs[-1] if lrs else min_lr:g}. No LR will help: check that training_step "
                "updates the weights (optimizer.step(), loss.backward()), that nothing detaches the graph or "
                "freezes the model, and that labels match the images.")
    return CheckResult(
        name="lr_finder",
        passed=usable,
        value=proposed,
        threshold=min_drop,
        criterion=f"smoothed loss falls >= {min_drop:.0%} below its start (fell {drop:.1%}); proposal = LR at its "
                  "minimum / 10",
        hint=hint,
        details={"lrs": lrs, "losses": losses, "smoothed": smoothed, "start_loss": start_loss, "drop": drop,
                 "min_loss_lr": lrs[best] if best is not None else None, "steepest_lr": steepest,
                 "proposed_lr": proposed, "configured_lr": configured_lr, "stopped": stopped, "steps": steps,
                 "rule": "proposed = LR at the minimum of the smoothed loss / 10"},
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
       batch of every epoch: counted here, not taken from the code under test), its learning rate recorded before each step, and then put back exactly as it was
       (state_dict). This is the curve lr_schedule.png draws before training. A schedule
       planned in epochs (total_steps = epochs) but stepped per batch ends after 30 of 12,900
       steps: OneCycle raises an error mid-epoch, cosine sits at LR 0 (or, as
       CosineAnnealingLR, starts over). So: the plan must last all the run's steps, and a schedule
       that changes must reach its lowest LR in the last epoch, not before.
    2. The stepping: the run's own `train_one_epoch`, with an optimizer and scheduler from the
       run's own `make_optimizer` on a copy of the model, on `batches` (a few small batches),
       must advance the scheduler exactly once per batch. Zero steps means it is stepped per
       epoch (scheduler.step() in the epoch loop: 30 steps where 12,900 were planned, the LR
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
        details={"lrs": _thin(lrs), "lr_steps": _thin(list(range(len(lrs)))), "total_steps": total_steps, "planned_steps": len(lrs) if ended_at is None
                 else ended_at, "steps_per_epoch": steps_per_epoch, "peak_lr": max(lrs) if lrs else None,
                 "peak_step": max(range(len(lrs)), key=lrs.__getitem__) if lrs else None,
                 "first_lr": lrs[0] if lrs else None, "last_lr": lrs[-1] if lrs else None,
                 "lowest_step": lowest_at, "scheduler_steps_in_batches": advanced, "batches": len(batches),
                 "error": error, "problems": problems},
        seconds=time.perf_counter() - start,
    )
