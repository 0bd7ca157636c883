"""fashionmnist/v6, a small ResNet with label smoothing and MixUp: one quick run end to end
with every output checked and the parameter count exact; the expected loss at init passing
on the version's code and failing on wrong arithmetic under label smoothing (a wrong
expectation, targets that do not sum to 1, and the same bug as a one-line edit of
train.py); the mixed batch failing when labels are not mixed with their images; gradient
flow failing on a residual block that returns only its shortcut; the checks leave training
untouched; NaN, Ctrl-C, bad input."""
from __future__ import annotations

import contextlib
import io
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import load_version
from fmnist_helpers import assert_check_dict, assert_png_has_content, fmnist_data, quick_args, read_jsonl  # noqa: F401
from fmnist_v1_v4_helpers import (  # noqa: F401  (fixtures)
    V2_RESULT_KEYS,
    assert_bad_flag_exits_2,
    assert_checks_do_not_perturb,
    assert_ctrl_c_keeps_records,
    assert_help_lists_every_flag,
    assert_missing_data_exits_2,
    assert_nan_keeps_records,
    assert_results_header,
    failed_checks,
    load_quick_data,
    mutated_copy,
    no_data_anywhere,
    quick_run,
    tiny_data,
)

V6 = "fashionmnist/v6"
# stem 288 + 64; stage 1: 2 x (2 x 9,216 + 128); stage 2: 18,432 + 36,864 + 256 + shortcut 2,048 + 128,
# then 2 x 36,864 + 256; stage 3: 73,728 + 147,456 + 512 + shortcut 8,192 + 256, then 2 x 147,456 + 512; FC 1,290
NUM_PARAMETERS = 696_042
PNGS = ["training_curves.png", "first_batch.png", "activation_statistics.png", "lr_finder.png", "lr_schedule.png",
        "mixed_batch.png", "gradient_flow.png"]
CHECKS = ["first_batch", "normalised_batch", "normalisation_from_train", "train_batches_augmented",
          "eval_batches_deterministic", "activations_at_init", "train_eval_modes", "lr_finder", "lr_schedule",
          "expected_loss_at_init", "mixed_batch", "gradient_flow", "splits_disjoint", "activations_after_training"]
BLOCKS = ["stem", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "fc"]
FLAGS = ["--quick", "--preflight", "--out", "--overwrite", "--data-dir", "--device", "--seed", "--epochs", "--batch-size", "--lr",
         "--lr-schedule", "--warmup-fraction", "--weight-decay", "--val-size", "--split-seed", "--patience",
         "--crop-padding", "--flip-probability", "--normalised-tolerance", "--label-smoothing", "--mixup-alpha",
         "--channels", "--loss-at-init-tolerance", "--min-gradient-ratio", "--max-dead-fraction",
         "--lr-finder-steps", "--lr-finder-min-lr", "--lr-finder-max-lr", "--lr-finder-smoothing",
         "--lr-finder-min-drop", "--schedule-check-batches", "--diverged-loss"]
LN10 = math.log(10)


@pytest.fixture(scope="module")
def run(fmnist_data, tmp_path_factory):
    data_dir, is_real = fmnist_data
    out = tmp_path_factory.mktemp("v6_run") / "out"
    results, stdout = quick_run(V6, data_dir, out)
    return {"results": results, "stdout": stdout, "out": out, "data_dir": data_dir, "is_real": is_real}


@pytest.fixture
def v6(run):
    train = load_version(V6)
    import debug_tools

    data = load_quick_data(train, run["data_dir"], run["out"])
    images, labels = next(iter(data.train_loader))
    torch.manual_seed(0)
    return train, debug_tools, images[:64], labels[:64]


def test_every_output_is_written(run):
    for name in ["results.json", "history.jsonl", *PNGS, "best_model.pth"]:
        assert (run["out"] / name).is_file() and (run["out"] / name).stat().st_size > 0, name


def test_results_json_and_parameter_count(run):
    results = run["results"]
    assert_results_header(results, V6, run["out"], run["data_dir"])
    assert set(results) == V2_RESULT_KEYS
    assert results["num_parameters"] == NUM_PARAMETERS
    assert "ResNet: 696,042 trainable parameters" in run["stdout"] and "14/14 passed" in run["stdout"]
    config = results["config"]
    assert (config["label_smoothing"], config["mixup_alpha"], config["channels"]) == (0.1, 0.2, 32)
    assert "dropout" not in config  # the ResNet has none: MixUp, smoothing and weight decay regularise
    assert list(results["checks"]) == CHECKS
    for name in CHECKS:
        assert_check_dict(results["checks"][name], name)


def test_parameter_count_of_the_model_itself(v6):
    train = v6[0]
    assert train.count_parameters(train.ResNet()) == NUM_PARAMETERS
    assert train.ResNet()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_expected_loss_at_init_on_the_version_code(run):
    d = run["results"]["checks"]["expected_loss_at_init"]["details"]
    assert d["expected"] == pytest.approx(LN10, abs=1e-12)
    assert d["uniform_prediction_loss"] == pytest.approx(LN10, abs=1e-5)
    assert abs(d["loss_at_init"] - LN10) < 0.3 and d["problems"] == []
    # the floor: smoothing alone gives 0.50 (see below); MixUp blends add entropy
    assert 0.50 < d["floor"] < 1.2 and d["target_row_sum_min"] == pytest.approx(1, abs=1e-6)


def test_expected_loss_formula_and_floor(v6):
    _, debug_tools, _, _ = v6
    for eps, alpha in [(0.0, 0.0), (0.1, 0.0), (0.1, 0.2), (0.3, 1.0)]:
        assert debug_tools.expected_loss_at_init(10, eps, alpha) == LN10
    # the floor with eps = 0.1, C = 10: -(0.91 ln 0.91 + 9 x 0.01 ln 0.01)
    train = v6[0]
    targets = train.smoothed_targets(torch.arange(10), 10, 0.1)
    assert targets[0, 0].item() == pytest.approx(0.91) and targets[0, 1].item() == pytest.approx(0.01)
    floor = -(targets * targets.log()).sum(1).mean().item()
    assert floor == pytest.approx(-(0.91 * math.log(0.91) + 9 * 0.01 * math.log(0.01)), abs=1e-6)
    assert floor == pytest.approx(0.5003, abs=1e-4)


def loss_check(v6, expected=None, mix=None):
    train, debug_tools, images, labels = v6
    return debug_tools.verify_expected_loss_at_init(
        train.ResNet(), images, labels, loss_fn=train.loss_fn, mix_batch=mix or train.mix_batch,
        expected=LN10 if expected is None else expected)


def test_expected_loss_passes_on_the_version_code(v6):
    check = loss_check(v6)
    assert check.passed, check.report()


def test_expected_loss_catches_a_wrong_expectation(v6):
    """(1 - eps) ln C, as if the smoothed share cost nothing: 2.072 where 2.303 is right."""
    check = loss_check(v6, expected=(1 - 0.1) * LN10)
    assert not check.passed
    assert "uniform predictions give loss 2.3026 with the run's targets, but 2.0723 was expected" in check.hint


def test_expected_loss_catches_targets_that_do_not_sum_to_1(v6):
    """eps added to every class instead of eps / C: the targets sum to 1 + 9 eps = 1.9."""
    train = v6[0]

    def mix_wrong(images, labels):
        batch = train.mix_batch(images, labels, alpha=0.0)
        batch.targets = (1 - 0.1) * F.one_hot(labels, 10).float() + 0.1
        return batch

    check = loss_check(v6, mix=mix_wrong)
    assert not check.passed and check.details["uniform_prediction_loss"] == pytest.approx(1.9 * LN10, rel=1e-5)
    assert "the targets sum to 1.900 ... 1.900 (they must sum to 1)" in check.hint


def test_preflight_fails_on_wrong_smoothing_arithmetic(run, tmp_path):
    folder = mutated_copy(V6, tmp_path, "train.py", "float() + smoothing / num_classes", "float() + smoothing")
    train = load_version(folder)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        bad = train.main(["--preflight", *quick_args(tmp_path / "bad", run["data_dir"]), "--lr-finder-steps", "0"])
    assert bad["exit_code"] == 1 and "expected_loss_at_init" in failed_checks(bad)
    assert "they must sum to 1" in bad["checks"]["expected_loss_at_init"]["hint"]
    assert run["results"]["checks"]["expected_loss_at_init"]["passed"]  # the unedited code passes


# ---------------------------------------------------------------------------
# The mixed batch
# ---------------------------------------------------------------------------
def test_mixed_batch_on_the_version_code(run):
    d = run["results"]["checks"]["mixed_batch"]["details"]
    assert d["images"] < 1e-6 and d["targets"] < 1e-6 and d["row_sums"] < 1e-6
    assert 0.5 <= d["lam_min"] and 0.5 < d["lam_mean"] < 1 and d["mixed_share"] > 0.8


def test_mixed_batch_fails_when_labels_are_not_mixed(v6):
    train, debug_tools, images, labels = v6
    batch = train.mix_batch(images, labels)
    smoothed = train.smoothed_targets(labels, 10, 0.1)
    good = debug_tools.verify_mixed_batch(images, labels, batch.images, batch.targets, batch.lam, batch.partner,
                                          smoothed)
    assert good.passed, good.report()
    bad = debug_tools.verify_mixed_batch(images, labels, batch.images, smoothed, batch.lam, batch.partner, smoothed)
    assert not bad.passed and bad.details["targets"] > 0.1 and bad.details["images"] == 0


# ---------------------------------------------------------------------------
# Gradient flow through the skips
# ---------------------------------------------------------------------------
def test_gradient_flow_on_the_version_code(run):
    check = run["results"]["checks"]["gradient_flow"]
    assert list(check["details"]["block_gradient_rms"]) == BLOCKS
    assert check["details"]["without_gradient"] == [] and check["value"] >= 1e-3


def test_gradient_flow_fails_on_a_block_that_returns_only_its_shortcut(v6):
    train, debug_tools, images, labels = v6
    model = train.ResNet()
    block = model.layer2[1]
    block.forward = lambda x: block.relu2(block.shortcut(x))  # the residual branch computed nowhere
    check = debug_tools.verify_gradient_flow(model, images, labels, train.loss_fn)
    assert not check.passed
    assert check.details["without_gradient"] == ["layer2.1.conv1.weight", "layer2.1.bn1.weight", "layer2.1.bn1.bias",
                                                 "layer2.1.conv2.weight", "layer2.1.bn2.weight", "layer2.1.bn2.bias"]
    assert check.details["weakest_block"] == "layer2.1" and "No gradient for: layer2.1.conv1.weight" in check.hint
    good = debug_tools.verify_gradient_flow(train.ResNet(), images, labels, train.loss_fn)
    assert good.passed, good.report()


def test_history_and_training(run):
    history = read_jsonl(run["out"] / "history.jsonl")
    assert len(history) == 1 and history[0]["val_accuracy"] == run["results"]["best_val_accuracy"]
    assert history[0]["train_loss"] < 2.5 and history[0]["train_accuracy"] > 0.1


@pytest.mark.parametrize("name", PNGS)
def test_plots_have_content(run, name):
    assert_png_has_content(run["out"] / name)


def test_the_checks_do_not_change_training(run, tmp_path, monkeypatch):
    """MixUp draws from the global generator; the checks mix batches and train copies: neither the
    model nor any random number training will draw may change."""
    train = load_version(V6)
    cfg = train.parse_args(["--quick", "--device", "cpu", "--out", str(tmp_path), "--data-dir", str(run["data_dir"]),
                            "--lr-finder-steps", "4", "--channels", "8"])
    data = train.load_data(cfg, torch.device("cpu"))
    model = train.ResNet(channels=8)
    optimizer, scheduler = train.make_optimizer(model, cfg, cfg.epochs * len(data.train_loader))
    runner = train.Run(cfg, tmp_path, torch.device("cpu"), {})

    def checks():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            train.checks_before_training(runner, data, model, optimizer, scheduler)

    assert_checks_do_not_perturb(train, monkeypatch, checks, model, data.train_loader)


# ---------------------------------------------------------------------------
# NaN, Ctrl-C and bad input
# ---------------------------------------------------------------------------
TINY = ["--device", "cpu", "--val-size", "32", "--batch-size", "1024", "--epochs", "5", "--patience", "0",
        "--lr-finder-steps", "0", "--schedule-check-batches", "1", "--channels", "8"]


def test_nan_after_two_epochs_exits_1_and_keeps_the_best_checkpoint(tiny_data, tmp_path):
    train = load_version(V6)
    assert_nan_keeps_records(train, "ResNet", [*TINY, "--out", str(tmp_path / "out"), "--data-dir", str(tiny_data)],
                             "normalisation")


def test_ctrl_c_exits_130_and_keeps_epoch_1(tiny_data, tmp_path):
    train = load_version(V6)
    assert_ctrl_c_keeps_records(train, "ResNet", [*TINY, "--out", str(tmp_path / "out"), "--data-dir", str(tiny_data)])


def test_missing_data_exits_2(no_data_anywhere, tmp_path, capsys):
    assert_missing_data_exits_2(V6, tmp_path, capsys)


@pytest.mark.parametrize("argv, message", [
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
    (["--mixup-alpha", "-0.2"], "--mixup-alpha >= 0"),
    (["--channels", "0"], "--channels must be >= 1"),
    (["--min-gradient-ratio", "2"], "--min-gradient-ratio in (0, 1]"),
    (["--dropout", "0.4"], "unrecognized arguments: --dropout"),  # DeepCNN's, gone with it
])
def test_bad_flags_exit_2(argv, message, tmp_path, capsys):
    assert_bad_flag_exits_2(V6, argv, message, tmp_path, capsys)


def test_help_lists_every_flag_with_its_default(capsys):
    assert_help_lists_every_flag(V6, FLAGS, capsys)


def test_gradient_flow_passes_zero_initialised_residual_scales_and_fails_a_detached_branch(v6):
    """Issue 26: every block's last BatchNorm scale at 0 (Goyal et al. 2017) is good practice: the
    branches get no gradient at init, their scales do, and the check passes. The same init with
    one branch detached still fails, naming that branch's convolution (v7 and v8 share this file)."""
    train, debug_tools, images, labels = v6

    def zero_init(model):
        with torch.no_grad():
            for name, module in model.named_modules():
                if name.endswith("bn2"):
                    module.weight.zero_()
        return model

    good = debug_tools.verify_gradient_flow(zero_init(train.ResNet()), images, labels, train.loss_fn)
    assert good.passed, good.report()
    assert len(good.details["zero_initialised_scales"]) == 6 and "layer2.1.conv1.weight" in \
        good.details["waiting_behind_zero_scales"]
    assert "wait behind 6 zero-initialised scales" in good.criterion
    model = zero_init(train.ResNet())
    block = model.layer2[1]
    block.conv1.forward = lambda x, conv=block.conv1: type(conv).forward(conv, x).detach()
    bad = debug_tools.verify_gradient_flow(model, images, labels, train.loss_fn)
    assert not bad.passed
    assert "layer2.1.conv1.weight" in bad.details["without_gradient"]
