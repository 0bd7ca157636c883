"""fashionmnist/v4, a deeper CNN with BatchNorm and Dropout: one quick run end to end with
every output checked, the same numbers from the same seed; the activation statistics
passing on DeepCNN and failing on a layer whose ReLUs are all dead; the train/eval mode
check passing on the version's code and failing on a model evaluated in train mode, on
Dropout that stays on at evaluation and on training in eval mode; NaN, Ctrl-C, bad input."""
from __future__ import annotations

import contextlib
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import load_version
from fmnist_helpers import assert_check_dict, assert_png_has_content, fmnist_data, read_jsonl  # noqa: F401
from fmnist_v1_v4_helpers import (  # noqa: F401  (fixtures)
    V4,
    V2_RESULT_KEYS,
    assert_bad_flag_exits_2,
    assert_checks_do_not_perturb,
    assert_ctrl_c_keeps_records,
    assert_help_lists_every_flag,
    assert_missing_data_exits_2,
    assert_nan_keeps_records,
    assert_results_header,
    assert_same_weights,
    failed_checks,
    load_quick_data,
    mutated_copy,
    no_data_anywhere,
    numbers_of,
    preflight,
    quick_run,
    tiny_data,
)

# 6 convs (288 + 9,216 + 18,432 + 36,864 + 73,728 + 147,456), 7 BatchNorms (2 x (64 + 128 + 256) + 512),
# FC 294,912 + 2,570
NUM_PARAMETERS = 584_874
RELU_LAYERS = ["features.0.2", "features.0.5", "features.1.2", "features.1.5", "features.2.2", "features.2.5",
               "classifier.3"]
PNGS = ["training_curves.png", "first_batch.png", "activation_statistics.png"]
CHECKS = ["first_batch", "normalised_batch", "normalisation_from_train", "train_batches_augmented",
          "eval_batches_deterministic", "activations_at_init", "train_eval_modes", "splits_disjoint",
          "activations_after_training"]
FLAGS = ["--quick", "--preflight", "--out", "--overwrite", "--data-dir", "--device", "--seed", "--epochs", "--batch-size", "--lr",
         "--val-size", "--split-seed", "--patience", "--crop-padding", "--flip-probability", "--normalised-tolerance",
         "--dropout", "--conv-dropout", "--max-dead-fraction", "--diverged-loss"]


@pytest.fixture(scope="module")
def run(fmnist_data, tmp_path_factory):
    data_dir, is_real = fmnist_data
    out = tmp_path_factory.mktemp("v4_run") / "out"
    results, stdout = quick_run(V4, data_dir, out)
    return {"results": results, "stdout": stdout, "out": out, "data_dir": data_dir, "is_real": is_real}


@pytest.fixture
def v4(run):
    """The v4 modules, the quick run's data and its first training batch."""
    train = load_version(V4)
    import debug_tools
    import metrics

    data = load_quick_data(train, run["data_dir"], run["out"])
    images, labels = next(iter(data.train_loader))
    torch.manual_seed(0)
    return train, debug_tools, metrics, data, images, labels


def test_every_output_is_written(run):
    for name in ["results.json", "history.jsonl", *PNGS, "best_model.pth"]:
        assert (run["out"] / name).is_file() and (run["out"] / name).stat().st_size > 0, name


def test_results_json(run):
    results = run["results"]
    assert_results_header(results, V4, run["out"], run["data_dir"])
    assert set(results) == V2_RESULT_KEYS
    assert results["num_parameters"] == NUM_PARAMETERS
    assert results["config"]["dropout"] == 0.4 and results["config"]["conv_dropout"] == 0.1
    assert list(results["checks"]) == CHECKS
    for name in CHECKS:
        assert_check_dict(results["checks"][name], name)


def test_activation_statistics_at_init_and_after_training(run):
    for name in ["activations_at_init", "activations_after_training"]:
        check = run["results"]["checks"][name]
        layers = check["details"]["layers"]
        assert list(layers) == RELU_LAYERS and check["threshold"] == 0.5
        assert check["value"] == max(layer["dead_fraction"] for layer in layers.values())
        assert [layer["units"] for layer in layers.values()] == [32, 32, 64, 64, 128, 128, 256]
    at_init = run["results"]["checks"]["activations_at_init"]["details"]["layers"]
    for layer in at_init.values():
        # BatchNorm in train mode hands every ReLU a standardised input, so no unit is dead; on the
        # real images that input is close to N(0, 1), and ReLU(N(0, 1)) has mean 0.40 and std 0.58
        assert layer["dead_fraction"] == 0.0 and 0.2 < layer["mean"] < 0.6 and 0.3 < layer["std"] < 0.9
        if run["is_real"]:
            assert layer["mean"] == pytest.approx(0.40, abs=0.05) and layer["std"] == pytest.approx(0.58, abs=0.06)
            assert 0.4 < layer["fraction_zero"] < 0.6


def test_train_eval_modes_on_the_version_code(run):
    details = run["results"]["checks"]["train_eval_modes"]["details"]
    assert details["problems"] == [] and details["has_batchnorm"] and details["has_dropout"]
    assert details["train_batch_dependence"] > 1e-2 and details["train_pass_difference"] > 1e-2
    assert details["eval_batch_dependence"] < 1e-4 and details["eval_pass_difference"] == 0.0
    assert details["evaluate_calls_in_train_mode"] == 0 and details["training_calls_in_eval_mode"] == 0


def test_checkpoint_reloads_and_reproduces_the_test_accuracy(run, v4):
    train, _, metrics, data, _, _ = v4
    checkpoint = torch.load(run["out"] / "best_model.pth", map_location="cpu", weights_only=True)
    assert checkpoint["normalisation"] == {"mean": data.mean, "std": data.std}
    model = train.DeepCNN()
    model.load_state_dict(checkpoint["model_state"])  # strict: BatchNorm's running statistics included
    assert any(k.endswith("running_mean") for k in checkpoint["model_state"])
    loss, accuracy = metrics.evaluate(model, data.test_loader, "cpu")
    assert accuracy == run["results"]["test_accuracy"]
    assert loss == pytest.approx(run["results"]["test_loss"], rel=1e-5)


def test_history(run):
    history = read_jsonl(run["out"] / "history.jsonl")
    assert len(history) == 1 and history[0]["val_accuracy"] == run["results"]["best_val_accuracy"]
    # Training batches improve within 4 steps; BatchNorm's running statistics (used in eval mode)
    # have moved only a third of the way by then, so quick-mode evaluation stays near chance.
    assert history[0]["train_loss"] < 2.3 and history[0]["train_accuracy"] > 0.15


@pytest.mark.parametrize("name", PNGS)
def test_plots_have_content(run, name):
    assert_png_has_content(run["out"] / name)


def test_summary_is_printed(run):
    assert "9/9 passed" in run["stdout"] and "DeepCNN: 584,874 trainable parameters" in run["stdout"]
    for name in CHECKS:
        assert f"[PASS] {name}" in run["stdout"]


def test_same_seed_same_numbers(run, tmp_path):
    again, _ = quick_run(V4, run["data_dir"], tmp_path / "again")
    other, _ = quick_run(V4, run["data_dir"], tmp_path / "other", "--seed", "7")
    first = numbers_of(run["out"], run["results"])
    assert numbers_of(tmp_path / "again", again) == first
    assert numbers_of(tmp_path / "other", other) != first
    assert_same_weights(run["out"] / "best_model.pth", tmp_path / "again" / "best_model.pth")


# ---------------------------------------------------------------------------
# Activation statistics: a layer whose ReLUs are all dead
# ---------------------------------------------------------------------------
def test_activation_statistics_fail_on_a_dead_layer(v4):
    """BatchNorm's shift of -10 before block 2's second ReLU: every input of that ReLU is
    negative, every one of its 64 units is dead."""
    train, debug_tools, _, _, images, _ = v4

    class DeadLayer(train.DeepCNN):
        def __init__(self):
            super().__init__()
            nn.init.constant_(self.features[1][4].bias, -10.0)

    good = debug_tools.activation_statistics(train.DeepCNN(), images)
    assert good.passed and good.value == 0.0, good.report()
    model = DeadLayer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = debug_tools.activation_statistics(model, images)
    assert not bad.passed and bad.value == 1.0
    assert bad.details["layers"]["features.1.5"]["dead_fraction"] == 1.0
    assert "Layer features.1.5: 100% of its units never fire" in bad.hint
    # the layers before it are alive; those after it get only zeros, and BatchNorm turns zeros into zeros
    assert all(bad.details["layers"][name]["dead_fraction"] == 0.0 for name in RELU_LAYERS[:3])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # measured on a copy


def test_activation_statistics_name_the_missing_relu_modules(v4):
    """Only nn.ReLU modules can be hooked: a model that uses F.relu throughout fails loudly
    instead of passing with nothing measured."""
    train, debug_tools, _, _, images, _ = v4

    class FunctionalReLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 8, 3), nn.Linear(8 * 26 * 26, 10)

        def forward(self, x):
            return self.fc(F.relu(self.conv(x)).flatten(1))

    check = debug_tools.activation_statistics(FunctionalReLU(), images)
    assert not check.passed and "No nn.ReLU module ran" in check.hint


# ---------------------------------------------------------------------------
# Train/eval mode: evaluated in train mode, Dropout always on, trained in eval mode
# ---------------------------------------------------------------------------
def modes_check(v4, model=None, evaluate=None, train_one_epoch=None):
    train, debug_tools, metrics, data, images, labels = v4
    cfg = train.parse_args([])
    return debug_tools.verify_train_eval_modes(
        model or train.DeepCNN(), images[:64], labels[:64], evaluate or metrics.evaluate, "cpu",
        train_one_epoch=train_one_epoch or (lambda m, batches, opt: train.train_one_epoch(m, batches, opt, 0, 0)),
        make_optimizer=lambda m: train.make_optimizer(m, cfg))


def test_modes_pass_on_the_version_code(v4):
    check = modes_check(v4)
    assert check.passed and check.value == 0, check.report()


def test_modes_fail_when_the_model_is_evaluated_in_train_mode(v4):
    _, _, metrics, _, _, _ = v4

    def evaluate_forgetting_eval(model, loader, device):
        model.eval = lambda: model  # as if `model.eval()` were missing from evaluate()
        return metrics.evaluate(model, loader, device)

    check = modes_check(v4, evaluate=evaluate_forgetting_eval)
    assert not check.passed and check.value == 2
    assert check.details["evaluate_calls_in_train_mode"] > 0
    assert any("evaluate() ran" in p and "in train mode (features.0.1," in p and "it must call model.eval()" in p
               for p in check.details["problems"])  # the layers named, the first BatchNorm first
    assert "evaluate() changed BatchNorm's running statistics" in check.details["problems"]


def test_modes_fail_when_dropout_stays_on_at_evaluation(v4):
    train = v4[0]

    class AlwaysDropout(train.DeepCNN):
        def forward(self, x):
            return F.dropout(super().forward(x), 0.5, training=True)  # training=self.training was meant

    check = modes_check(v4, model=AlwaysDropout())
    # random outputs also differ between an image alone and in its batch: both eval-mode expectations fail
    assert not check.passed and check.value == 2
    assert check.details["problems"] == [
        "eval mode: an image's output depends on the other images of its batch (BatchNorm with batch statistics "
        "at evaluation, randomness such as Dropout, or a forward() that mixes the batch's images, e.g. a reshape "
        "or mean across the batch)",
        "eval mode: two passes give different outputs (Dropout or other randomness at evaluation)"]


def test_modes_fail_when_forward_mixes_the_batch_at_evaluation(v4):
    # Not BatchNorm, not randomness: a forward() that centres the logits on the batch's mean ties every
    # image's output to its batch in eval mode too. The problem names that cause beside BatchNorm's.
    train = v4[0]

    class BatchCentred(train.DeepCNN):
        def forward(self, x):
            logits = super().forward(x)
            return logits - logits.mean(dim=0, keepdim=True)

    check = modes_check(v4, model=BatchCentred())
    assert not check.passed and check.value == 1
    assert check.details["eval_pass_difference"] == 0.0  # deterministic: only the batch dependence is wrong
    assert check.details["problems"][0].startswith("eval mode: an image's output depends on the other images")
    assert "a forward() that mixes the batch's images" in check.details["problems"][0]


def test_modes_fail_when_training_runs_in_eval_mode(v4):
    train = v4[0]

    def train_one_epoch_forgetting_train(model, batches, optimizer):
        model.train = lambda mode=True: model  # as if `model.train()` were missing from train_one_epoch()
        return train.train_one_epoch(model, batches, optimizer, 0, 0)

    check = modes_check(v4, train_one_epoch=train_one_epoch_forgetting_train)
    assert not check.passed and check.value == 1 and check.details["training_calls_in_eval_mode"] > 0


def test_modes_name_the_layers_switched_back_after_model_train(v4):
    """Issue 27: a "freeze BatchNorm" snippet after model.train() (Dropout still trains). The hint
    must not say "call model.train()", which the code does: it names the layers and the cause."""
    train = v4[0]

    def train_one_epoch_freezing_batchnorm(model, batches, optimizer):
        original_train = model.train

        def train_then_freeze(mode=True):
            original_train(mode)
            for layer in model.modules():
                if isinstance(layer, nn.BatchNorm2d):
                    layer.eval()
            return model

        model.train = train_then_freeze
        return train.train_one_epoch(model, batches, optimizer, 0, 0)

    check = modes_check(v4, train_one_epoch=train_one_epoch_freezing_batchnorm)
    assert not check.passed and check.value == 1, check.report()
    [problem] = check.details["problems"]
    assert "model.train() was called (the other layers ran in train mode), but these were switched back" in problem
    assert "'freeze BatchNorm'" in problem and "features.0.1" in problem  # the first BatchNorm, by name
    assert "is model.train() called" not in problem


def test_modes_say_model_train_is_missing_when_every_layer_runs_in_eval_mode(v4):
    train = v4[0]

    def train_one_epoch_forgetting_train(model, batches, optimizer):
        model.train = lambda mode=True: model
        return train.train_one_epoch(model, batches, optimizer, 0, 0)

    check = modes_check(v4, train_one_epoch=train_one_epoch_forgetting_train)
    [problem] = check.details["problems"]
    assert "is model.train() called before its loop?" in problem and "switched back" not in problem


def test_preflight_fails_when_evaluate_forgets_model_eval(run, tmp_path):
    """The classic bug as a learner makes it: one line deleted from metrics.py."""
    folder = mutated_copy(V4, tmp_path, "metrics.py", "    model.eval()\n", "")
    bad = preflight(folder, run["data_dir"], tmp_path / "bad")
    assert bad["exit_code"] == 1 and failed_checks(bad) == ["train_eval_modes"]
    assert bad["checks"]["train_eval_modes"]["details"]["evaluate_calls_in_train_mode"] > 0
    assert run["results"]["checks"]["train_eval_modes"]["passed"]  # the unedited code passes (the module's run)
    assert_png_has_content(tmp_path / "bad" / "activation_statistics.png")  # --preflight draws the init statistics
    assert not (tmp_path / "bad" / "best_model.pth").exists()  # and does not train


def test_the_checks_do_not_change_training(run, tmp_path, monkeypatch):
    """Among v4's checks, Dropout masks are drawn and a copy of the model takes a training step
    with the run's own optimizer: neither the model (BatchNorm statistics included) nor any
    random number training will draw may change."""
    train = load_version(V4)
    cfg = train.parse_args(["--quick", "--device", "cpu", "--out", str(tmp_path), "--data-dir", str(run["data_dir"])])
    data = train.load_data(cfg, torch.device("cpu"))
    model = train.DeepCNN()
    runner = train.Run(cfg, tmp_path, torch.device("cpu"), {})

    def checks():
        with contextlib.redirect_stderr(io.StringIO()):
            train.checks_before_training(runner, data, model)

    assert_checks_do_not_perturb(train, monkeypatch, checks, model, data.train_loader)


# ---------------------------------------------------------------------------
# NaN, Ctrl-C and bad input
# ---------------------------------------------------------------------------
TINY = ["--device", "cpu", "--val-size", "32", "--batch-size", "1024", "--epochs", "5", "--patience", "0"]


def test_nan_after_two_epochs_exits_1_and_keeps_the_best_checkpoint(tiny_data, tmp_path):
    train = load_version(V4)
    assert_nan_keeps_records(train, "DeepCNN", [*TINY, "--out", str(tmp_path / "out"), "--data-dir", str(tiny_data)],
                             "normalisation")


def test_ctrl_c_exits_130_and_keeps_epoch_1(tiny_data, tmp_path):
    train = load_version(V4)
    assert_ctrl_c_keeps_records(train, "DeepCNN", [*TINY, "--out", str(tmp_path / "out"), "--data-dir", str(tiny_data)])


def test_missing_data_exits_2(no_data_anywhere, tmp_path, capsys):
    assert_missing_data_exits_2(V4, tmp_path, capsys)


@pytest.mark.parametrize("argv, message", [
    (["--dropout", "1"], "--dropout and --conv-dropout must be in [0, 1)"),
    (["--conv-dropout", "-0.1"], "--dropout and --conv-dropout must be in [0, 1)"),
    (["--max-dead-fraction", "0"], "--max-dead-fraction in (0, 1]"),
    (["--lr-schedule", "cosine"], "unrecognized arguments: --lr-schedule"),  # schedules come in v5
    (["--flip-probability", "-0.5"], "--flip-probability between 0 and 1"),
])
def test_bad_flags_exit_2(argv, message, tmp_path, capsys):
    assert_bad_flag_exits_2(V4, argv, message, tmp_path, capsys)


def test_help_lists_every_flag_with_its_default(capsys):
    assert_help_lists_every_flag(V4, FLAGS, capsys)
