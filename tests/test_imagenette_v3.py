"""imagenette/v3: BatchNormCNN and the activation statistics of every ReLU layer, at init and
after training. One quick run with its new outputs checked, the model's size and layout, and
activation_statistics passing on the fresh model and failing on ReLU inputs pushed far negative."""
from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn
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

V3 = "imagenette/v3"
CHECKS = ["first_batch", "activations_at_init", "normalised_batch", "normalisation_from_train",
          "train_batches_augmented", "eval_deterministic_unaugmented", "class_balance", "activations_after_training"]
NUM_PARAMETERS = 1_175_786
RELU_LAYERS = [f"features.{i}" for i in (2, 5, 9, 12, 16, 19, 23, 26)]  # Conv, BN, ReLU (x2), MaxPool per stage


@pytest.fixture(scope="module")
def run(imagenette_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("v3_run") / "out"
    results, stdout = quiet_quick_run(V3, imagenette_folder, out)
    return {"results": results, "stdout": stdout, "out": out, "data_dir": imagenette_folder}


@pytest.fixture(scope="module")
def v3(run, tmp_path_factory):
    with VersionContext(V3) as train:
        debug_tools = sys.modules["debug_tools"]
        cfg, data = load_quick_data(train, run["data_dir"], tmp_path_factory.mktemp("v3_data"))
        images, labels = next(iter(data.train_loader))
    return {"train": train, "debug_tools": debug_tools, "cfg": cfg, "images": images[:16], "labels": labels[:16]}


# ---------------------------------------------------------------------------
# The quick run
# ---------------------------------------------------------------------------
def test_quick_run_completes_with_every_check_passed(run):
    results = run["results"]
    assert_completed_with_checks(results, CHECKS)
    assert results["version"] == V3 and results["num_parameters"] == NUM_PARAMETERS
    assert results["config"]["max_dead_fraction"] == 0.5
    assert len(results["normalisation"]["mean"]) == 3
    assert "BatchNormCNN: 1,175,786 trainable parameters" in run["stdout"]
    assert "[PASS] activations_after_training" in run["stdout"] and "8/8 passed" in run["stdout"]


@pytest.mark.parametrize("name", ["activations_at_init", "activations_after_training"])
def test_activation_checks_measure_every_relu_layer(run, name):
    check = run["results"]["checks"][name]
    layers = check["details"]["layers"]
    assert list(layers) == RELU_LAYERS and check["details"]["batch_size"] == 64
    for stats in layers.values():
        assert set(stats) == {"mean", "std", "fraction_zero", "dead_fraction", "units"}
        assert 0 <= stats["dead_fraction"] <= stats["fraction_zero"] <= 1 and stats["mean"] > 0
    assert [s["units"] for s in layers.values()] == [32, 32, 64, 64, 128, 128, 256, 256]
    assert check["value"] == max(s["dead_fraction"] for s in layers.values()) and check["threshold"] == 0.5
    assert 0.3 < layers["features.2"]["fraction_zero"] < 0.7  # BatchNorm before ReLU: about half the outputs > 0


def test_training_changed_the_activations(run):
    checks = run["results"]["checks"]
    before = checks["activations_at_init"]["details"]["layers"]
    after = checks["activations_after_training"]["details"]["layers"]
    assert before != after  # measured on the trained weights, not the initial ones again


@pytest.mark.parametrize("name", PNG_COMMON + ["activation_statistics.png"])
def test_plots_have_content(run, name):
    assert_png_has_content(run["out"] / name)


def test_history_and_checkpoint(run):
    history = read_jsonl(run["out"] / "history.jsonl")
    assert len(history) == 1
    assert set(history[0]) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", *TIMING_KEYS}
    with VersionContext(V3) as train:
        checkpoint = torch.load(run["out"] / "final_model.pth", map_location="cpu", weights_only=True)
        train.BatchNormCNN().load_state_dict(checkpoint["model_state"])  # strict


def test_model_layout(v3):
    train = v3["train"]
    model = train.BatchNormCNN()
    assert train.count_parameters(model) == NUM_PARAMETERS
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 8
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 8
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))  # BatchNorm's shift replaces it
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 10) and model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


# ---------------------------------------------------------------------------
# activation_statistics: passes on the fresh model, fails on dead ReLUs
# ---------------------------------------------------------------------------
def test_activation_statistics_passes_on_the_fresh_model(v3):
    torch.manual_seed(0)
    check = v3["debug_tools"].activation_statistics(v3["train"].BatchNormCNN(), v3["images"], "activations", 0.5)
    assert check.passed and check.value <= 0.05, check.report()
    assert list(check.details["layers"]) == RELU_LAYERS


@pytest.mark.parametrize("batchnorm, first_dead", [(1, "features.2"), (11, "features.12"), (25, "features.26")])
def test_activation_statistics_fails_on_a_large_negative_batchnorm_shift(v3, batchnorm, first_dead):
    """BatchNorm shift -1000 before one ReLU (beyond sqrt(N - 1), the largest normalised value a batch of
    N values can hold): the layer is dead for sure (and so is every later one: BatchNorm of an all-zero
    input is its shift, 0)."""
    torch.manual_seed(0)
    model = v3["train"].BatchNormCNN()
    assert isinstance(model.features[batchnorm], nn.BatchNorm2d)
    with torch.no_grad():
        model.features[batchnorm].bias.fill_(-1000.0)
    check = v3["debug_tools"].activation_statistics(model, v3["images"], "activations", 0.5)
    assert not check.passed and check.value == 1.0, check.report()
    dead = [name for name, stats in check.details["layers"].items() if stats["dead_fraction"] == 1.0]
    assert dead == RELU_LAYERS[RELU_LAYERS.index(first_dead):]
    assert f"Layer {first_dead}: 100% of its units never fire" in check.hint


def test_activation_statistics_fails_on_a_shift_of_minus_10(v3):
    """The everyday size of the bug: a shift of -10 kills (nearly) every unit of the layer."""
    torch.manual_seed(0)
    model = v3["train"].BatchNormCNN()
    with torch.no_grad():
        model.features[1].bias.fill_(-10.0)
    check = v3["debug_tools"].activation_statistics(model, v3["images"], "activations", 0.5)
    assert not check.passed and check.details["layers"]["features.2"]["dead_fraction"] > 0.9, check.report()


def test_activation_statistics_fails_on_a_partly_dead_layer_and_respects_the_threshold(v3):
    """Three quarters of the first layer's channels shifted far negative: dead fraction 0.75."""
    torch.manual_seed(0)
    model = v3["train"].BatchNormCNN()
    with torch.no_grad():
        model.features[1].bias[:24] = -1000.0
    debug_tools = v3["debug_tools"]
    check = debug_tools.activation_statistics(model, v3["images"], "activations", 0.5)
    assert not check.passed and check.value == pytest.approx(0.75), check.report()
    assert debug_tools.activation_statistics(model, v3["images"], "activations", 0.8).passed


def test_activation_statistics_leaves_the_model_as_it_was(v3):
    model = v3["train"].BatchNormCNN().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    v3["debug_tools"].activation_statistics(model, v3["images"], "activations", 0.5)
    assert not model.training  # measured on a copy in train mode
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # running statistics too


def test_activation_statistics_fails_when_no_relu_module_runs(v3):
    class FunctionalReLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return F.relu(self.conv(x)).mean((2, 3))

    check = v3["debug_tools"].activation_statistics(FunctionalReLU(), v3["images"], "activations", 0.5)
    assert not check.passed and check.details["layers"] == {} and "nn.ReLU" in check.hint
