"""imagenette/v4: AdamW + OneCycle stepped per batch, label smoothing 0.1, a small last layer.
One quick run with its new outputs checked; loss_at_init passing on the real model and loss and
failing on a large last layer and on smoothed targets that do not sum to 1; lr_schedule passing
on the run's own optimizer and train_one_epoch and failing on a schedule planned in epochs and
on a scheduler stepped twice or never per batch."""
from __future__ import annotations

import contextlib
import functools
import io
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from fmnist_helpers import VersionContext, assert_png_has_content, read_jsonl
from imagenette_helpers import imagenette_folder, isolated_cache  # noqa: F401  (fixtures)
from imagenette_v2_v5_helpers import (  # noqa: F401  (fixtures)
    PNG_COMMON,
    TIMING_KEYS,
    _fresh_normalize_for_each_test,
    _fresh_normalize_for_the_module,
    assert_completed_with_checks,
    load_quick_data,
    quiet_quick_run,
)

V4 = "imagenette/v4"
CHECKS = ["first_batch", "activations_at_init", "loss_at_init", "lr_schedule", "normalised_batch",
          "normalisation_from_train", "train_batches_augmented", "eval_deterministic_unaugmented", "class_balance",
          "activations_after_training"]
NUM_PARAMETERS = 1_175_786  # v3's BatchNormCNN
LN10 = math.log(10)


@pytest.fixture(scope="module")
def run(imagenette_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("v4_run") / "out"
    results, stdout = quiet_quick_run(V4, imagenette_folder, out)
    return {"results": results, "stdout": stdout, "out": out, "data_dir": imagenette_folder}


@pytest.fixture(scope="module")
def v4(run, tmp_path_factory):
    with VersionContext(V4) as train:
        debug_tools = sys.modules["debug_tools"]
        cfg, data = load_quick_data(train, run["data_dir"], tmp_path_factory.mktemp("v4_data"))
    images, labels = next(iter(data.train_loader))
    # 32 px keeps the model's passes cheap; the loss at init does not depend on the size
    small = F.interpolate(images[:16], size=32, mode="bilinear", align_corners=False)
    return {"train": train, "debug_tools": debug_tools, "cfg": cfg, "images": small, "labels": labels[:16]}


# ---------------------------------------------------------------------------
# The quick run
# ---------------------------------------------------------------------------
def test_quick_run_completes_with_every_check_passed(run):
    results = run["results"]
    assert_completed_with_checks(results, CHECKS)
    assert results["version"] == V4 and results["num_parameters"] == NUM_PARAMETERS
    config = results["config"]
    assert (config["weight_decay"], config["warmup_fraction"], config["label_smoothing"],
            config["loss_at_init_tolerance"]) == (2e-4, 0.3, 0.1, 0.3)
    assert "AdamW + OneCycle to lr 0.001 (per batch)" in run["stdout"] and "10/10 passed" in run["stdout"]


def test_loss_at_init_details(run):
    check = run["results"]["checks"]["loss_at_init"]
    details = check["details"]
    assert details["expected"] == pytest.approx(LN10) and details["uniform_prediction_loss"] == pytest.approx(LN10)
    assert abs(details["loss_at_init"] - LN10) < 0.05  # the small last layer: uniform predictions
    assert details["floor"] == pytest.approx(0.5003, abs=1e-4) and details["problems"] == []


def test_lr_schedule_details(run):
    details = run["results"]["checks"]["lr_schedule"]["details"]
    # quick: 160 training images in batches of 64 = 3 steps, one epoch
    assert (details["total_steps"], details["planned_steps"], details["steps_per_epoch"]) == (3, 3, 3)
    assert details["scheduler_steps_in_batches"] == details["batches"] == 3 and details["problems"] == []
    # 30% warm-up of 3 steps is less than one step: the plan starts near the peak and anneals
    assert 0.9e-3 < details["peak_lr"] <= 1e-3 and details["last_lr"] < 1e-6
    assert details["lowest_step"] == 2 and details["error"] is None


@pytest.mark.parametrize("name", PNG_COMMON + ["activation_statistics.png", "lr_schedule.png"])
def test_plots_have_content(run, name):
    assert_png_has_content(run["out"] / name)


def test_history_records_the_learning_rate(run):
    history = read_jsonl(run["out"] / "history.jsonl")
    assert len(history) == 1
    assert set(history[0]) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate",
                               *TIMING_KEYS}
    assert 0 < history[0]["learning_rate"] <= 1e-3


# ---------------------------------------------------------------------------
# The model, the loss and the optimizer
# ---------------------------------------------------------------------------
def test_last_layer_starts_small(v4):
    model = v4["train"].BatchNormCNN()
    last = model.classifier[-1]
    assert 0.007 < last.weight.std().item() < 0.013 and torch.equal(last.bias, torch.zeros(10))
    assert v4["train"].count_parameters(model) == NUM_PARAMETERS


def test_loss_at_init_arithmetic(v4):
    train, debug_tools = v4["train"], v4["debug_tools"]
    assert debug_tools.expected_loss_at_init(10, 0.1) == debug_tools.expected_loss_at_init(10, 0.0) == LN10
    assert debug_tools.smoothing_floor(10, 0.0) == 0.0
    # entropy of (0.91, 0.01 x 9)
    assert debug_tools.smoothing_floor(10, 0.1) == pytest.approx(-(0.91 * math.log(0.91) + 0.09 * math.log(0.01)))
    labels = torch.arange(10)
    assert train.loss_fn(torch.zeros(10, 10), labels).item() == pytest.approx(LN10, abs=1e-6)
    confident = torch.full((10, 10), -50.0) + 100 * F.one_hot(labels, 10)
    # smoothed: 0.01 of the target on each of the 9 wrong classes, each at log-probability -100
    assert train.loss_fn(confident, labels).item() == pytest.approx(9 * 0.01 * 100, abs=1e-3)
    assert train.loss_fn(confident, labels, 0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_optimizer_groups_and_onecycle(v4):
    train, cfg = v4["train"], v4["cfg"]
    model = train.BatchNormCNN()
    optimizer, scheduler = train.make_optimizer(model, cfg, total_steps=10)
    decay, no_decay = optimizer.param_groups
    assert isinstance(optimizer, torch.optim.AdamW) and isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
    assert decay["weight_decay"] == 2e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert scheduler.total_steps == 10 and optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 25)


# ---------------------------------------------------------------------------
# loss_at_init: passes on the real model and loss, fails on each planted bug
# ---------------------------------------------------------------------------
def loss_check(v4, model=None, loss_fn=None, expected=LN10):
    train = v4["train"]
    return v4["debug_tools"].verify_loss_at_init(
        model if model is not None else train.BatchNormCNN(), v4["images"], v4["labels"],
        loss_fn=loss_fn or functools.partial(train.loss_fn, label_smoothing=0.1), expected=expected,
        num_classes=10, label_smoothing=0.1, tolerance=0.3)


def test_loss_at_init_passes_on_the_real_model_and_loss(v4):
    check = loss_check(v4)
    assert check.passed and abs(check.value - LN10) < 0.05, check.report()
    assert check.details["uniform_prediction_loss"] == pytest.approx(LN10, abs=1e-5)


def test_loss_at_init_fails_on_a_large_last_layer(v4):
    model = v4["train"].BatchNormCNN()
    with torch.no_grad():
        model.classifier[-1].weight.mul_(100)  # std 1 instead of 0.01: confidently wrong at init
    check = loss_check(v4, model)
    assert not check.passed and check.value > LN10 + 0.3, check.report()
    assert len(check.details["problems"]) == 1 and "logits start large" in check.hint


def test_loss_at_init_fails_when_smoothed_targets_do_not_sum_to_1(v4):
    def smoothed_wrongly(logits, labels, eps=0.1):
        """eps/10 added to the one-hot without taking (1 - eps) off: the target sums to 1 + eps."""
        targets = F.one_hot(labels, 10).float() + eps / 10
        return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()

    check = loss_check(v4, loss_fn=smoothed_wrongly)
    assert not check.passed, check.report()
    assert check.details["uniform_prediction_loss"] == pytest.approx(1.1 * LN10, abs=1e-5)
    assert "targets do not sum to 1" in check.hint


def test_loss_at_init_fails_on_a_wrong_expectation(v4):
    check = loss_check(v4, expected=0.9 * LN10)  # as if the smoothed part cost nothing
    assert not check.passed and "targets do not sum to 1, or the expected value is wrong" in check.hint


# ---------------------------------------------------------------------------
# lr_schedule: passes on the run's own code, fails on each planted bug
# ---------------------------------------------------------------------------
EPOCHS, STEPS_PER_EPOCH = 3, 4


def schedule_check(v4, *, total_steps=EPOCHS * STEPS_PER_EPOCH, train_one_epoch=None, scheduler_for=None):
    """verify_lr_schedule as checks_before_training calls it, with a plan of `total_steps`
    (the run's is EPOCHS x STEPS_PER_EPOCH) and 3 small batches for the stepping part."""
    train, cfg = v4["train"], v4["cfg"]
    model = train.BatchNormCNN()
    optimizer, scheduler = train.make_optimizer(model, cfg, total_steps=total_steps)
    if scheduler_for is not None:
        scheduler = scheduler_for(optimizer)
    quiet = functools.partial(train.train_one_epoch, diverged_loss=cfg.diverged_loss, label_smoothing=0.1)
    with contextlib.redirect_stderr(io.StringIO()):
        check = v4["debug_tools"].verify_lr_schedule(
            model, optimizer, scheduler, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH,
            make_optimizer=functools.partial(train.make_optimizer, cfg=cfg),
            train_one_epoch=train_one_epoch or quiet, batches=[(v4["images"][:4], v4["labels"][:4])] * 3)
    return check, optimizer, scheduler


def test_lr_schedule_passes_and_puts_the_schedule_back(v4):
    check, optimizer, scheduler = schedule_check(v4)
    assert check.passed and check.value == 0, check.report()
    details = check.details
    assert details["planned_steps"] == details["total_steps"] == 12 and details["scheduler_steps_in_batches"] == 3
    assert details["lowest_step"] == 11 and 2 <= details["peak_step"] <= 4  # warm-up: 30% of 12 steps
    assert scheduler.last_epoch == 0 and optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 25)


def test_lr_schedule_fails_when_planned_in_epochs(v4):
    check, _, scheduler = schedule_check(v4, total_steps=EPOCHS)  # make_optimizer(total_steps=epochs)
    assert not check.passed and check.details["planned_steps"] == EPOCHS, check.report()
    assert "the schedule ends after 3 of the run's 12 steps" in check.hint
    assert scheduler.last_epoch == 0  # put back even after OneCycle refused a step


def test_lr_schedule_fails_on_a_decay_planned_in_epochs(v4):
    """A schedule that does not raise past its end (LinearLR over `epochs` steps, stepped per batch)
    reaches its lowest LR after 3 of 12 steps and stays there: caught by where the lowest LR lies."""
    check, _, _ = schedule_check(v4, scheduler_for=lambda optimizer: torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1.0, end_factor=0.01, total_iters=EPOCHS))
    assert not check.passed and check.details["lowest_step"] == EPOCHS, check.report()
    assert "steps before the end: the schedule's length does not match" in check.hint


def test_lr_schedule_fails_when_stepped_twice_per_batch(v4, monkeypatch):
    train = v4["train"]
    real_step = train.training_step

    def stepping_twice(model, images, labels, optimizer, scheduler, *args):
        result = real_step(model, images, labels, optimizer, scheduler, *args)
        scheduler.step()
        return result

    monkeypatch.setattr(train, "training_step", stepping_twice)
    check, _, _ = schedule_check(v4)
    assert not check.passed and check.details["scheduler_steps_in_batches"] == 6, check.report()
    assert "more than once per batch" in check.hint


def test_lr_schedule_fails_when_never_stepped(v4, monkeypatch):
    train = v4["train"]
    real_step = train.training_step
    frozen = types.SimpleNamespace(step=lambda: None)

    def never_stepping(model, images, labels, optimizer, scheduler, *args):
        return real_step(model, images, labels, optimizer, frozen, *args)

    monkeypatch.setattr(train, "training_step", never_stepping)
    check, _, _ = schedule_check(v4)
    assert not check.passed and check.details["scheduler_steps_in_batches"] == 0, check.report()
    assert "per epoch or not at all" in check.hint
