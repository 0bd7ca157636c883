"""fashionmnist/v11-step3 (recipe step 3, overfit): one quick run end to end with every
output checked (lr_schedule.png among them), the ResNet's parameter count exact; the two
new checks twice each: `lr_schedule` passes on the version's make_optimizer and
train_one_epoch and fails on a plan in epochs and on a scheduler not stepped once per
batch; `capacity` passes on a model that fits its images and fails on a model too small
and on one trained with a learning rate 100x too low; the flags of step 3.

The capacity check fails in --quick by design (one epoch on 512 images): the module's
run shows it recorded, the direct tests below show both verdicts. The input-independent
baseline (v10's, tested there) is off in the module's run: with the ResNet it costs
about a minute of CPU in --quick.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import load_version
from fmnist_helpers import (  # noqa: F401  (fixtures)
    CHECK_KEYS,
    VersionContext,
    assert_check_dict,
    assert_finite,
    assert_png_has_content,
    fmnist_data,
    quick_args,
    read_jsonl,
)

V11 = "fashionmnist/v11-step3"
# v6's ResNet at 32 channels: stem 288 + 64; stage 1: 2 x (2 x 9,216 + 128); stage 2: 18,432 + 36,864
# + 256 + shortcut 2,048 + 128, then 2 x 36,864 + 256; stage 3: 73,728 + 147,456 + 512 + shortcut
# 8,192 + 256, then 2 x 147,456 + 512; FC 1,290
NUM_PARAMETERS = 696_042
PNGS = ["data_samples.png", "class_means.png", "pixel_histogram.png", "human_baseline_samples.png",
        "input_visualization.png", "lr_schedule.png", "overfit_one_batch.png", "training_curves.png",
        "batch_level_loss.png", "prediction_dynamics.png", "confusion_matrix.png", "train_vs_test_comparison.png",
        "misclassifications.png"]
PROMISED = [*PNGS, "best_model_v11.pth", "results.json", "history.jsonl", "REPORT.md"]
CHECKS = ["input_before_net", "loss_at_init", "optimizer_config", "lr_schedule", "gradient_flow", "step_gradient",
          "overfit_one_batch", "batch_independence", "train_eval_modes", "capacity", "training_loss_decreases",
          "train_test_gap",
          "batch_independence_after_training"]
# One epoch of four batches cannot fit 512 images nor bring the loss down by 10%: both fail in --quick.
FAIL_IN_QUICK = {"capacity", "training_loss_decreases"}
FLAGS = ["--quick", "--preflight", "--out", "--overwrite", "--data-dir", "--device", "--seed", "--epochs",
         "--batch-size", "--lr", "--lr-schedule", "--channels", "--weight-decay", "--val-size",
         "--loss-at-init-tolerance", "--diverged-loss", "--human-baseline", "--input-independent-baseline",
         "--overfit-test", "--batch-independence-test", "--baseline-steps", "--overfit-steps", "--overfit-max-loss",
         "--max-train-test-gap", "--expected-train-test-gap", "--min-train-accuracy", "--max-train-loss"]
# Non-default capacity thresholds in the module's run: they must reach the check (its criterion shows
# them) while the quick model, at ~10% accuracy and loss ~2.3, still fails on accuracy alone.
CAPACITY_FLAGS = ["--min-train-accuracy", "0.9", "--max-train-loss", "3"]


@pytest.fixture(scope="module")
def run(fmnist_data, tmp_path_factory):
    data_dir, is_real = fmnist_data
    out = tmp_path_factory.mktemp("v11_run") / "out"
    stdout = io.StringIO()
    with VersionContext(V11) as train, contextlib.redirect_stdout(stdout):
        results = train.main(quick_args(out, data_dir, "--no-input-independent-baseline", *CAPACITY_FLAGS))
    return {"results": results, "stdout": stdout.getvalue(), "out": out, "data_dir": data_dir, "is_real": is_real}


# ---------------------------------------------------------------------------
# The quick run
# ---------------------------------------------------------------------------
def test_every_promised_file_is_written_and_listed(run):
    out = run["out"]
    for name in PROMISED:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert sorted(p.name for p in out.iterdir()) == sorted(PROMISED), "an unexpected or leftover file"
    assert sorted(run["results"]["outputs"]) == sorted(PROMISED)


def test_results_json(run):
    results = run["results"]
    on_disk = json.loads((run["out"] / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results)), "results.json differs from what main() returned"
    assert on_disk["version"] == V11
    assert on_disk["status"] == "completed" and on_disk["exit_code"] == 0
    assert on_disk["num_parameters"] == NUM_PARAMETERS
    config = on_disk["config"]
    assert config["quick"] is True and config["epochs"] == 1 and config["channels"] == 32
    assert (config["lr"], config["lr_schedule"], config["weight_decay"]) == (3e-4, "cosine", 0.0)
    assert "dropout" not in config
    assert (config["min_train_accuracy"], config["max_train_loss"]) == (0.9, 3.0)
    assert config["expected_train_test_gap"] == 0.10
    assert 0 < on_disk["checks_time_s"] < on_disk["wall_time_s"]
    assert_finite(on_disk["test_loss"], on_disk["wall_time_s"], on_disk["train_time_s"])


def test_every_check_is_recorded_and_only_the_quick_failures_fail(run):
    checks = run["results"]["checks"]
    assert list(checks) == CHECKS
    for name, check in checks.items():
        assert_check_dict(check, name)
    failed = {name for name, c in checks.items() if not c["passed"]}
    assert failed == FAIL_IN_QUICK, {name: checks[name]["criterion"] for name in failed}
    assert run["results"]["all_checks_passed"] is False
    stdout = run["stdout"]
    assert f"{len(CHECKS) - 2}/{len(CHECKS)} passed; FAILED: capacity, training_loss_decreases" in stdout
    assert "(--quick: training_loss_decreases, capacity judge a full run;" in stdout  # a newcomer is told why
    assert re.search(r"^lr_schedule\s+PASS", stdout, re.M) and re.search(r"^capacity\s+FAIL", stdout, re.M)


def test_lr_schedule_of_the_quick_run(run):
    """--quick: 512 images / 128 = 4 steps, cosine from 3e-4 down towards 0, every step of the run
    planned, the lowest LR at the last step, and the run's train_one_epoch stepping the scheduler
    once per probe batch (4 batches of 16 images)."""
    check = run["results"]["checks"]["lr_schedule"]
    d = check["details"]
    assert check["passed"] and check["value"] == 0 and check["threshold"] == 0
    assert set(d) == {"lrs", "lr_steps", "total_steps", "planned_steps", "steps_per_epoch", "peak_lr", "peak_step",
                      "first_lr", "last_lr", "lowest_step", "scheduler_steps_in_batches", "batches", "error",
                      "problems"}
    assert d["total_steps"] == d["planned_steps"] == 4 and d["steps_per_epoch"] == 4 and d["lr_steps"] == [0, 1, 2, 3]
    assert d["lrs"] == pytest.approx([3e-4 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)])
    assert d["peak_step"] == 0 and d["peak_lr"] == d["first_lr"] == 3e-4 and d["lowest_step"] == 3
    assert d["scheduler_steps_in_batches"] == d["batches"] == 4
    assert d["problems"] == [] and d["error"] is None
    # the learning rates training used follow the plan: the epoch's record holds the LR after its last step
    history = read_jsonl(run["out"] / "history.jsonl")
    assert history[0]["learning_rate"] == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi)), abs=1e-12)


def test_capacity_is_recorded_on_the_whole_training_split_in_eval_mode(run):
    """It fails in --quick (one epoch), with the thresholds of the flags; its numbers are those of
    the trained model in eval mode on all 512 training images: with one epoch the trained model is
    the best checkpoint, whose train_metrics come from the same images in eval mode."""
    results = run["results"]
    check = results["checks"]["capacity"]
    assert not check["passed"] and check["threshold"] == 0.9
    d = check["details"]
    assert set(d) == {"accuracy", "loss", "images"} and d["images"] == 512
    assert check["value"] == d["accuracy"] == pytest.approx(results["train_metrics"]["accuracy"], abs=1e-12)
    assert d["loss"] == pytest.approx(results["train_metrics"]["loss"], rel=1e-5)
    assert d["accuracy"] < 0.9 and d["loss"] < 3
    # the flags reached the check: accuracy >= 90%, loss <= 3, so only the accuracy is a problem
    assert "accuracy >= 90.0% and loss <= 3.0" in check["criterion"]
    assert "training accuracy" in check["criterion"] and "training loss" not in check["criterion"]
    assert "--channels" in check["hint"] and "--lr" in check["hint"]


def test_the_run_uses_a_resnet_and_trains(run):
    history = read_jsonl(run["out"] / "history.jsonl")
    assert [h["epoch"] for h in history] == [1] and len(history[0]["batch_losses"]) == 4
    assert_finite(*history[0]["batch_losses"])
    assert abs(run["results"]["checks"]["loss_at_init"]["value"] - math.log(10)) <= 0.3
    checkpoint = torch.load(run["out"] / "best_model_v11.pth", map_location="cpu", weights_only=True)
    train = load_version(V11)
    model = train.ResNet()
    model.load_state_dict(checkpoint["model_state"])  # strict: every key and shape of the ResNet
    assert sum(p.numel() for p in model.parameters()) == NUM_PARAMETERS == train.count_parameters(model)


@pytest.mark.parametrize("name", PNGS)
def test_plots_are_real_images(run, name):
    assert_png_has_content(run["out"] / name)


def test_report_md_lists_the_schedule_and_the_new_checks(run):
    report = (run["out"] / "REPORT.md").read_text()
    assert report.startswith(f"# Run report: {V11}")
    for name in PNGS:
        assert f"![{name}]({name})" in report, name
    # drawn before training: between the input the net sees and the overfit test
    positions = [report.index(f"![{name}]") for name in ("input_visualization.png", "lr_schedule.png",
                                                         "overfit_one_batch.png", "training_curves.png")]
    assert positions == sorted(positions)
    assert re.search(r"^\| lr_schedule \| PASS \|", report, re.M)
    assert re.search(r"^\| capacity \| \*\*FAIL\*\* \|", report, re.M)
    assert "696,042" in report


# ---------------------------------------------------------------------------
# The pieces the checks drive: the version's own model, optimizer, step and epoch
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def images(fmnist_data):
    """The first 64 training images (channels_last, as TensorLoader hands them out) and labels."""
    with VersionContext(V11) as train:
        train_images, train_labels, *_ = train.load_raw_data(fmnist_data[0])
        x = train.to_tensor(train_images[:64]).contiguous(memory_format=torch.channels_last)
    return x, train_labels[:64].clone()


@pytest.fixture
def v11():
    train = load_version(V11)
    import debug_tools

    return train, debug_tools


def fit(train, model, images, *argv, steps=80):
    """`steps` full-batch updates with the version's own make_optimizer and training_step."""
    cfg = train.parse_args(list(argv))
    optimizer, scheduler = train.make_optimizer(model, cfg, total_steps=steps)
    for _ in range(steps):
        train.training_step(model, *images, optimizer, scheduler)
    return model


def halves(images):
    x, y = images
    return [(x[:32], y[:32]), (x[32:], y[32:])]


# ---------------------------------------------------------------------------
# capacity
# ---------------------------------------------------------------------------
class OnePixel(nn.Module):
    """A model far too small: a linear layer on the centre pixel."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 10)

    def forward(self, x):
        return self.fc(x[:, :, 14, 14])


def test_capacity_passes_on_a_resnet_that_fits_its_images_and_fails_when_too_small(v11, images):
    """64 real training images: the version's ResNet (8 channels) trained with its own step fits
    them; a linear layer on one pixel, trained the same way, cannot."""
    train, debug_tools = v11
    torch.manual_seed(0)
    model = fit(train, train.ResNet(channels=8), images, "--lr", "1e-2")
    assert model.training
    good = debug_tools.verify_capacity(model, halves(images), train.loss_fn)
    assert good.passed, good.report()
    assert good.value == 1.0 and good.details["loss"] < 0.02 and good.details["images"] == 64
    assert good.threshold == 0.995 and model.training, "the check must put the model back into train mode"

    torch.manual_seed(0)
    small = debug_tools.verify_capacity(fit(train, OnePixel(), images, "--lr", "1e-2"), halves(images),
                                        train.loss_fn)
    assert not small.passed and small.value < 0.7 and small.details["loss"] > 0.5
    assert "training accuracy" in small.criterion and "training loss" in small.criterion
    assert "a model too small (--channels)" in small.hint


def test_capacity_fails_on_a_learning_rate_100x_too_low(v11, images):
    """The same ResNet, steps and images as above, at 1e-4 instead of 1e-2: it has not fitted."""
    train, debug_tools = v11
    torch.manual_seed(0)
    model = fit(train, train.ResNet(channels=8), images, "--lr", "1e-4")
    slow = debug_tools.verify_capacity(model, halves(images), train.loss_fn)
    assert not slow.passed and slow.value < 0.7 and slow.details["loss"] > 1.0
    assert "a learning rate too low" in slow.hint and "raise --lr" in slow.hint
    assert "too few epochs" in slow.hint and "a bug" in slow.hint


class Memorised(nn.Module):
    """Right on every image it has seen (nearest stored image, logit 10), in eval mode only: in
    train mode it says nothing (all logits 0). A BatchNorm net in train mode normalises with the
    batch's statistics; the capacity check must judge the model as it predicts, in eval mode."""

    def __init__(self, images, labels):
        super().__init__()
        self.register_buffer("stored", images.flatten(1).clone())
        self.register_buffer("labels", labels.clone())

    def forward(self, x):
        if self.training:
            return torch.zeros(len(x), 10)
        nearest = torch.cdist(x.flatten(1), self.stored).argmin(1)
        return 10.0 * F.one_hot(self.labels[nearest], 10).float()  # loss ln(1 + 9/e^10) = 4.1e-4


def test_capacity_judges_in_eval_mode_with_the_runs_own_loss(v11, images):
    train, debug_tools = v11
    model = Memorised(*images)
    model.train()
    good = debug_tools.verify_capacity(model, halves(images), train.loss_fn)
    assert good.passed and good.value == 1.0, good.report()
    assert good.details["loss"] == pytest.approx(math.log(1 + 9 * math.exp(-10)), rel=1e-3)
    assert model.training
    model.eval()
    debug_tools.verify_capacity(model, halves(images), train.loss_fn)
    assert not model.training, "the check must put the model back into the mode it found it in"

    # a softmax in the run's loss: every image is right, yet the loss cannot go below ln(1 + 9/e)
    softmax_loss = debug_tools.verify_capacity(model, halves(images),
                                               lambda logits, labels: train.loss_fn(F.softmax(logits, 1), labels))
    assert not softmax_loss.passed and softmax_loss.value == 1.0
    assert softmax_loss.details["loss"] >= math.log(1 + 9 / math.e) - 1e-4
    assert "training loss" in softmax_loss.criterion and "training accuracy" not in softmax_loss.criterion

    # the thresholds are the arguments: the same model fails a stricter loss, passes a laxer accuracy
    strict = debug_tools.verify_capacity(model, halves(images), train.loss_fn, max_loss=1e-4)
    assert not strict.passed and "loss <= 0.0001" in strict.criterion and "training loss 0.0004 > 0.0001" in strict.criterion
    lax = debug_tools.verify_capacity(OnePixel(), halves(images), train.loss_fn, min_accuracy=0.0, max_loss=10.0)
    assert lax.passed and lax.threshold == 0.0


# ---------------------------------------------------------------------------
# lr_schedule
# ---------------------------------------------------------------------------
EPOCHS, STEPS_PER_EPOCH = 15, 430  # the default run: 55,000 images / 128 = 430 steps, 15 epochs


class HeldScheduler:
    """What training_step steps when the schedule is stepped elsewhere: nothing moves."""

    def step(self):
        pass

    def get_last_lr(self):
        return [0.0]


def schedule_check(v11, images, *argv, planned=None, epoch_fn=None):
    """verify_lr_schedule as checks_before_training calls it, with the run's own make_optimizer and
    train_one_epoch (or `epoch_fn`, a bug); the run's scheduler planned over `planned` steps."""
    train, debug_tools = v11
    cfg = train.parse_args(list(argv))
    torch.manual_seed(0)
    model = train.ResNet(channels=4)
    total = EPOCHS * STEPS_PER_EPOCH if planned is None else planned
    optimizer, scheduler = train.make_optimizer(model, cfg, total_steps=total)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = images
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    one_epoch = functools.partial(train.train_one_epoch, epoch=1, epochs=1, global_step=0, batch_losses=[])
    check = debug_tools.verify_lr_schedule(
        model, optimizer, scheduler, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH,
        make_optimizer=functools.partial(train.make_optimizer, cfg=cfg), train_one_epoch=epoch_fn or one_epoch,
        batches=batches)
    # it observes: the run's optimizer, scheduler and model are as they were
    assert scheduler.last_epoch == 0 and optimizer.param_groups[0]["lr"] == cfg.lr
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    return check


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_lr_schedule_passes_on_the_versions_full_size_plan(v11, images, schedule):
    check = schedule_check(v11, images, "--lr-schedule", schedule)
    d = check.details
    assert check.passed and check.value == 0, check.report()
    total = EPOCHS * STEPS_PER_EPOCH
    assert d["total_steps"] == d["planned_steps"] == total and len(d["lrs"]) == 500 and d["lr_steps"][-1] == total - 1
    assert d["scheduler_steps_in_batches"] == d["batches"] == 4
    if schedule == "cosine":
        assert d["peak_step"] == 0 and d["lowest_step"] == total - 1
        assert d["last_lr"] == pytest.approx(3e-4 * (1 - math.cos(math.pi / total)) / 2)
    else:
        assert d["first_lr"] == d["last_lr"] == 3e-4
    assert check.seconds < 10


def test_lr_schedule_fails_on_a_plan_in_epochs_stepped_per_batch(v11, images):
    """make_optimizer(total_steps=cfg.epochs): the cosine reaches 0 after 15 of the run's 6,450 steps."""
    check = schedule_check(v11, images, planned=EPOCHS)
    assert not check.passed and check.value == 1
    assert check.details["lowest_step"] == EPOCHS and check.details["planned_steps"] == EPOCHS * STEPS_PER_EPOCH
    assert "the LR reaches its lowest value at step 15 of 6450, more than 430 steps before the end" in check.hint


def test_lr_schedule_fails_when_the_scheduler_is_stepped_per_epoch(v11, images):
    train = v11[0]

    def per_epoch(model, batches, optimizer, scheduler):  # the classic: scheduler.step() next to the epoch loop
        result = train.train_one_epoch(model, batches, optimizer, HeldScheduler(), 1, 1, 0, [])
        scheduler.step()
        return result

    check = schedule_check(v11, images, epoch_fn=per_epoch)
    assert not check.passed and check.details["scheduler_steps_in_batches"] == 1
    assert "advanced the scheduler 1 times in 4 batches: it is stepped per epoch or not at all" in check.hint


def test_lr_schedule_fails_when_the_scheduler_is_stepped_twice_per_batch(v11, images):
    train = v11[0]

    class Twice:
        def __init__(self, scheduler):
            self.scheduler = scheduler

        def step(self):
            self.scheduler.step()
            self.scheduler.step()

    def twice(model, batches, optimizer, scheduler):
        return train.train_one_epoch(model, batches, optimizer, Twice(scheduler), 1, 1, 0, [])

    check = schedule_check(v11, images, epoch_fn=twice)
    assert not check.passed and check.details["scheduler_steps_in_batches"] == 8
    assert "more than once per batch" in check.hint


def test_lr_schedule_sees_a_plan_in_epochs_in_a_one_epoch_run(v11, images):
    train, debug_tools = v11
    cfg = train.parse_args([])
    model = train.ResNet(channels=4)
    optimizer, scheduler = train.make_optimizer(model, cfg, total_steps=1)  # planned in epochs: 1 step
    x, y = images
    check = debug_tools.verify_lr_schedule(
        model, optimizer, scheduler, epochs=1, steps_per_epoch=STEPS_PER_EPOCH,
        make_optimizer=functools.partial(train.make_optimizer, cfg=cfg),
        train_one_epoch=functools.partial(train.train_one_epoch, epoch=1, epochs=1, global_step=0, batch_losses=[]),
        batches=[(x[:16], y[:16])])
    assert check.details["lrs"][1:] == [0.0] * (STEPS_PER_EPOCH - 1)  # the LR is 0 from step 1 on ...
    assert not check.passed  # ... and the check says so (it did not before: fixed in v4-v11 alike)
    assert "more than 43 steps before the end" in check.hint


# ---------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------
def test_help_lists_every_flag_with_its_default(capsys):
    """Every flag, each with its default (ArgumentDefaultsHelpFormatter), the new ones among them."""
    train = load_version(V11)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    lines = [line.split() for line in help_text.split("options:")[1].splitlines() if line.startswith("  -")]
    options = {token.rstrip(",") for line in lines for token in line if token.startswith("-")
               and not token.startswith("--no-")} - {"-h"}
    assert sorted(options) == sorted(["--help", *FLAGS])
    assert help_text.count("(default:") == len(FLAGS)
    for flag in ("--channels", "--min-train-accuracy", "--max-train-loss"):
        assert flag in options
    assert "--dropout" not in help_text
    assert train.__doc__.strip().splitlines()[0] in help_text and "    python train.py --quick" in help_text


@pytest.mark.parametrize("argv, message", [
    (["--dropout", "0.4"], "unrecognized arguments: --dropout 0.4"),
    (["--channels", "0"], "--channels must be >= 1"),
    (["--channels", "8.5"], "argument --channels: invalid int value"),
    (["--min-train-accuracy", "high"], "argument --min-train-accuracy: invalid float value"),
])
def test_bad_flags_exit_2(argv, message, capsys):
    train = load_version(V11)
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_channels_reaches_the_model(fmnist_data, tmp_path):
    """--channels 4 builds a smaller ResNet (a flag that changed nothing would be ignored silently)."""
    train = load_version(V11)
    with contextlib.redirect_stdout(io.StringIO()):
        results = train.main(["--preflight", *quick_args(tmp_path / "out", fmnist_data[0], "--channels", "4",
                                                        "--no-human-baseline", "--no-input-independent-baseline",
                                                        "--no-overfit-test", "--no-batch-independence-test")])
    assert results["exit_code"] == 0, {n: c["criterion"] for n, c in results["checks"].items() if not c["passed"]}
    assert results["num_parameters"] == train.count_parameters(train.ResNet(channels=4)) < NUM_PARAMETERS // 50
    assert set(results["checks"]["lr_schedule"]) == CHECK_KEYS
