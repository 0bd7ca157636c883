"""Every debug check of v9-step1 / v10-step2 twice: it passes on the version's correct
code, and it fails on a planted bug of the kind it exists to catch. Then --preflight:
exit code 0 when all checks pass, 1 when one fails.

The checks are called directly on small tensors (512 training, 256 test images of
the real Fashion-MNIST where installed, of the generated stand-in elsewhere).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, load_version
from fmnist_helpers import (  # noqa: F401  (fixtures)
    V9,
    V10,
    VersionContext,
    fmnist_data,
    planted_models,
    quick_args,
)


@pytest.fixture(scope="module")
def raw(fmnist_data):
    """uint8 images and labels: the first 512 training and 256 test images, and the class names."""
    data_dir, _ = fmnist_data
    with VersionContext(V10) as train:
        train_images, train_labels, test_images, test_labels, classes = train.load_raw_data(data_dir)
    return train_images[:512].clone(), train_labels[:512].clone(), test_images[:256].clone(), \
        test_labels[:256].clone(), classes


def datasets(train, raw):
    train_images, train_labels, test_images, test_labels, classes = raw
    return (train.FashionMNISTTensors(train.to_tensor(train_images), train_labels, classes),
            train.FashionMNISTTensors(train.to_tensor(test_images), test_labels, classes))


@pytest.fixture
def v10(raw):
    """The v10 modules, the small train/test sets and the planted-bug models."""
    train = load_version(V10)
    import debug_tools
    import metrics

    torch.manual_seed(0)
    train_set, test_set = datasets(train, raw)
    return train, debug_tools, metrics, train_set, test_set, planted_models(train)


# ---------------------------------------------------------------------------
# loss_at_init (v9 and v10)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("version", [V9, V10])
def test_loss_at_init_passes_on_mynn_and_fails_with_last_layer_std_1(version, raw):
    train = load_version(version)
    import debug_tools

    train_set, _ = datasets(train, raw)
    loader = train.TensorLoader(train_set, 128)
    torch.manual_seed(0)
    good = debug_tools.verify_loss_at_init(train.MyNN(), loader, "cpu")
    assert good.passed, good.report()
    assert abs(good.value - math.log(10)) <= 0.3 and good.details["samples"] == 512
    torch.manual_seed(0)
    bad = debug_tools.verify_loss_at_init(planted_models(train)["last_layer_std_1"](), loader, "cpu")
    assert not bad.passed
    assert bad.value > math.log(10) + 1.0  # confidently wrong before seeing a label
    assert bad.threshold == 0.3 and "FAIL" in bad.report() and "hint" in bad.report()


# ---------------------------------------------------------------------------
# The v10 checks
# ---------------------------------------------------------------------------
def test_input_independent_baseline(v10):
    train, debug_tools, _, train_set, test_set, bad = v10

    def check(model_fn):
        torch.manual_seed(0)
        return debug_tools.test_input_independent_baseline(
            train.TensorLoader(train_set, 64, shuffle=True), train.TensorLoader(test_set, 256), "cpu",
            model_fn=model_fn, steps=40)

    good = check(train.MyNN)
    assert good.passed, good.report()
    assert good.details["zero_input"] <= 0.15 and good.value >= 0.2
    broken = check(bad["zeroes_input"])
    assert not broken.passed
    assert broken.value < 0.1  # the "real" model sees nothing either: no better than zeros
    assert broken.details["real_input"] <= 0.2


def test_overfit_one_batch(v10, tmp_path):
    train, debug_tools, _, train_set, _, bad = v10
    torch.manual_seed(0)
    good = debug_tools.overfit_one_batch(train.MyNN, "cpu", train_set, batch_size=8, steps=300, out_dir=tmp_path)
    assert good.passed, good.report()
    assert good.value <= 0.05 and good.details["accuracy"] == 1.0 and good.details["steps_needed"] < 300
    assert (tmp_path / "overfit_one_batch.png").stat().st_size > 0

    torch.manual_seed(0)
    broken = debug_tools.overfit_one_batch(bad["softmax"], "cpu", train_set, batch_size=8, steps=150,
                                           out_dir=tmp_path)
    assert not broken.passed
    # Softmax before CrossEntropyLoss caps the "logits" at [0, 1]: the loss can never go
    # below ln(1 + 9/e) = 1.46, however well the 8 images are classified.
    floor = math.log(1 + 9 / math.e)
    assert broken.value > 1.4 and min(c["loss"] for c in broken.details["curve"]) >= floor - 1e-4
    assert broken.details["steps_needed"] == 150  # ran the whole budget without reaching the target


def test_batch_independence(v10):
    train, debug_tools, _, _, test_set, bad = v10
    loader = train.TensorLoader(test_set, 64)
    torch.manual_seed(0)
    good = debug_tools.verify_batch_independence(train.MyNN(), "cpu", loader)
    assert good.passed, good.report()
    assert good.value == 0 and good.details["offending_inputs"] == []

    torch.manual_seed(0)
    model = bad["mixes_samples"]()
    model.train()
    broken = debug_tools.verify_batch_independence(model, "cpu", loader)
    assert not broken.passed
    assert broken.value > 0
    offenders = broken.details["offending_inputs"]
    assert offenders and set(offenders) <= set(range(8))
    assert f"leaking into inputs {offenders}" in broken.criterion
    assert all(leak["input"] != leak["output"] and leak["grad_norm"] > 0 for leak in broken.details["leaks"])
    assert model.training, "the check must put the model back into train mode"


def test_gradient_flow(v10):
    train, debug_tools, _, train_set, _, bad = v10
    loader = train.TensorLoader(train_set, 64)
    torch.manual_seed(0)
    model = train.MyNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = debug_tools.verify_gradient_flow(model, loader, "cpu")
    assert good.passed, good.report()
    assert good.value == 0 and len(good.details["grad_norms"]) == 14
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the check changed the model"

    torch.manual_seed(0)
    broken = debug_tools.verify_gradient_flow(bad["discards_conv2"](), loader, "cpu")
    assert not broken.passed
    conv2 = ["conv2.0.weight", "conv2.0.bias", "conv2.2.weight", "conv2.2.bias"]
    assert broken.details["without_gradient"] == conv2 and broken.value == 4
    assert all(name in broken.criterion for name in conv2)


class MappedLoader:
    """Wraps a TensorLoader and transforms every batch: a preprocessing bug in the data code."""

    def __init__(self, loader, fn):
        self.loader, self.fn, self.dataset = loader, fn, loader.dataset

    def __iter__(self):
        for images, labels in self.loader:
            yield self.fn(images), labels


def test_input_before_net(v10, tmp_path):
    train, debug_tools, _, train_set, _, _ = v10
    loader = train.TensorLoader(train_set, 128, shuffle=True)
    good = debug_tools.visualize_input_before_net(loader, out_dir=tmp_path)
    assert good.passed, good.report()
    assert good.details["shape"] == [128, 1, 28, 28] and good.details["min"] >= 0 and good.value <= 1
    assert (tmp_path / "input_visualization.png").stat().st_size > 0

    unscaled = debug_tools.visualize_input_before_net(MappedLoader(loader, lambda x: x * 255), out_dir=tmp_path)
    assert not unscaled.passed
    assert unscaled.value > 1 and any("not inside [0, 1]" in p for p in unscaled.details["problems"])

    normalised = debug_tools.visualize_input_before_net(
        MappedLoader(loader, lambda x: (x - 0.2860) / 0.3530), out_dir=tmp_path)
    assert not normalised.passed
    assert normalised.details["min"] < 0 and any("not inside [0, 1]" in p for p in normalised.details["problems"])


def test_training_loss_decreases(v10):
    _, debug_tools, _, _, _, _ = v10
    falling = [2.3 * 0.97 ** i for i in range(40)]
    assert debug_tools.verify_decreasing_loss(falling).passed
    flat = debug_tools.verify_decreasing_loss([2.3026] * 40)
    assert not flat.passed and flat.value == pytest.approx(1.0)
    noisy_flat = debug_tools.verify_decreasing_loss([2.30 + 0.02 * (-1) ** i for i in range(40)])
    assert not noisy_flat.passed


def test_train_test_gap(v10):
    _, _, metrics, _, _, _ = v10

    def scores(accuracy):
        return {"accuracy": accuracy, "loss": 1 - accuracy, "top3_accuracy": min(1.0, accuracy + 0.05),
                "macro_f1": accuracy - 0.01}

    overfit = metrics.compare_train_test_metrics(scores(0.99), scores(0.80))
    assert not overfit.passed and overfit.value == pytest.approx(0.19) and overfit.threshold == 0.05
    healthy = metrics.compare_train_test_metrics(scores(0.92), scores(0.90))
    assert healthy.passed and healthy.value == pytest.approx(0.02)


# ---------------------------------------------------------------------------
# --preflight: exit code 0 when every check passes, 1 when one fails
# ---------------------------------------------------------------------------
FAST = ["--no-human-baseline", "--no-input-independent-baseline", "--no-overfit-test"]


def test_v10_preflight_passes_on_the_correct_code(fmnist_data, tmp_path):
    train = load_version(V10)
    results = train.main(["--preflight", *quick_args(tmp_path / "out", fmnist_data[0])])
    assert results["status"] == "preflight" and results["exit_code"] == 0 and results["all_checks_passed"]
    assert set(results["checks"]) == {"input_independent_baseline", "input_before_net", "loss_at_init",
                                      "gradient_flow", "overfit_one_batch", "batch_independence"}
    assert all(c["passed"] for c in results["checks"].values())
    assert (tmp_path / "out" / "results.json").is_file()
    assert not (tmp_path / "out" / "history.jsonl").exists() and not (tmp_path / "out" / "best_model_v10.pth").exists()


@pytest.mark.parametrize("bug, failing", [("last_layer_std_1", "loss_at_init"),
                                          ("discards_conv2", "gradient_flow"),
                                          ("mixes_samples", "batch_independence")])
def test_v10_preflight_fails_on_a_planted_bug(fmnist_data, tmp_path, monkeypatch, capsys, bug, failing):
    train = load_version(V10)
    monkeypatch.setattr(train, "MyNN", planted_models(train)[bug])
    results = train.main(["--preflight", *quick_args(tmp_path / "out", fmnist_data[0]), *FAST])
    assert results["exit_code"] == 1 and not results["all_checks_passed"]
    assert [name for name, c in results["checks"].items() if not c["passed"]] == [failing]
    assert f"FAILED: {failing}" in capsys.readouterr().out


@pytest.mark.parametrize("planted, exit_code", [(False, 0), (True, 1)])
def test_v9_preflight(fmnist_data, tmp_path, monkeypatch, planted, exit_code):
    train = load_version(V9)
    if planted:
        monkeypatch.setattr(train, "MyNN", planted_models(train)["last_layer_std_1"])
    results = train.main(["--preflight", *quick_args(tmp_path / "out", fmnist_data[0])])
    assert results["status"] == "preflight" and results["exit_code"] == exit_code
    assert results["checks"]["loss_at_init"]["passed"] is not planted
    assert not (tmp_path / "out" / "history.jsonl").exists()


def test_preflight_process_exits_1_when_a_check_fails(fmnist_data, tmp_path):
    """`python train.py --preflight` as a learner runs it (one process, ~15 s: the exit-0 case
    is covered in-process above, through the same `sys.exit(main()["exit_code"])`).
    One Adam step cannot memorise 8 images, so --overfit-steps 1 makes overfit_one_batch fail
    for the reason it exists (training does not reach ~0 loss), without touching the code."""
    args = ["--preflight", *quick_args(tmp_path / "out", fmnist_data[0]), *FAST[:2], "--overfit-steps", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as in-process (conftest.one_torch_thread)
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=REPO_ROOT / V10, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "CHECK SUMMARY" in proc.stdout and "Traceback" not in proc.stderr
    assert "4/5 passed; FAILED: overfit_one_batch" in proc.stdout
