"""Every debug check of v9-step1 / v10-step2 twice: it passes on the version's correct
code, and it fails on a planted bug of the kind it exists to catch. Then --preflight:
exit code 0 when all checks pass, 1 when one fails.

The checks are called directly on small tensors (512 training, 256 test images of
the real Fashion-MNIST where installed, of the generated stand-in elsewhere).
"""
from __future__ import annotations

import functools
import math
import os
import subprocess
import sys

import numpy as np
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


def own_training(train, *argv):
    """The run's own pieces, as main() hands them to the checks: make_optimizer with the
    config, training_step and loss_fn."""
    cfg = train.parse_args(["--quick", *argv])
    return {"make_optimizer": functools.partial(train.make_optimizer, cfg=cfg),
            "training_step": train.training_step}


def step_without_zero_grad(model, images, labels, optimizer, scheduler):
    """training_step with optimizer.zero_grad() deleted: gradients pile up over steps."""
    import torch.nn.functional as F

    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.item(), None


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
    good = debug_tools.verify_loss_at_init(train.MyNN(), loader, train.loss_fn)
    assert good.passed, good.report()
    assert abs(good.value - math.log(10)) <= 0.3 and good.details["samples"] == 512
    torch.manual_seed(0)
    bad = debug_tools.verify_loss_at_init(planted_models(train)["last_layer_std_1"](), loader, train.loss_fn)
    assert not bad.passed
    assert bad.value > math.log(10) + 1.0  # confidently wrong before seeing a label
    assert bad.threshold == 0.3 and "FAIL" in bad.report() and "too high" in bad.hint


@pytest.mark.parametrize("version", [V9, V10])
def test_loss_at_init_uses_the_runs_own_loss(version, raw):
    """A loss_fn that is not the cross-entropy of the logits (here: of the logits x 20, as a
    wrong temperature would do) is what the check measures, and it fails."""
    train = load_version(version)
    import debug_tools

    train_set, _ = datasets(train, raw)
    torch.manual_seed(0)
    model = train.MyNN()
    wrong = debug_tools.verify_loss_at_init(model, train.TensorLoader(train_set, 128),
                                            lambda logits, labels: train.loss_fn(logits * 1000, labels))
    assert not wrong.passed and wrong.value > 3


@pytest.mark.parametrize("version", [V9, V10])
def test_rng_untouched_restores_every_generator(version):
    load_version(version)
    import random

    import numpy as np
    from debug_tools import rng_untouched

    loader_generator = torch.Generator().manual_seed(3)
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    expected = (torch.rand(3), random.random(), np.random.rand(), torch.rand(3, generator=loader_generator))
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    loader_generator.manual_seed(3)
    with rng_untouched("cpu", loader_generator):
        torch.rand(100), random.random(), np.random.rand(5), torch.randperm(50, generator=loader_generator)
    after = (torch.rand(3), random.random(), np.random.rand(), torch.rand(3, generator=loader_generator))
    assert torch.equal(after[0], expected[0]) and after[1:3] == expected[1:3]
    assert torch.equal(after[3], expected[3])
    # control: without the block the same draws do shift what comes next
    torch.manual_seed(1)
    torch.rand(100)
    assert not torch.equal(torch.rand(3), expected[0])


# ---------------------------------------------------------------------------
# The v10 checks
# ---------------------------------------------------------------------------
def test_input_independent_baseline(v10):
    train, debug_tools, _, train_set, val_set, bad = v10

    def check(model_class):
        torch.manual_seed(0)
        return debug_tools.test_input_independent_baseline(
            model_class(), train.TensorLoader(train_set, 64, shuffle=True), train.TensorLoader(val_set, 256),
            steps=40, **own_training(train))

    good = check(train.MyNN)
    assert good.passed, good.report()
    assert good.details["zero_input"] <= 0.15 and good.value >= 0.2 and good.details["steps"] == 40
    broken = check(bad["zeroes_input"])
    assert not broken.passed
    assert broken.value < 0.1  # the "real" model sees nothing either: no better than zeros
    assert broken.details["real_input"] <= 0.2 and "forward() uses its input" in broken.hint


def test_overfit_one_batch_passes_and_judges_the_state_after_its_last_step(v10, tmp_path):
    train, debug_tools, _, train_set, _, _ = v10
    images, labels = train_set.images[:8], train_set.labels[:8]
    torch.manual_seed(0)
    good = debug_tools.overfit_one_batch(train.MyNN(), images, labels, loss_fn=train.loss_fn, steps=300,
                                         out_dir=tmp_path, **own_training(train))
    assert good.passed, good.report()
    assert good.value <= 0.05 and good.details["accuracy"] == 1.0 and good.details["steps_needed"] < 300
    assert good.details["evaluations"][-1]["step"] == good.details["steps_needed"]
    assert (tmp_path / "overfit_one_batch.png").stat().st_size > 0

    # 15 steps: the verdict is taken after step 15, not at the last multiple of 10
    torch.manual_seed(0)
    short = debug_tools.overfit_one_batch(train.MyNN(), images, labels, loss_fn=train.loss_fn, steps=15,
                                          out_dir=tmp_path, **own_training(train))
    assert short.details["steps_needed"] == 15 and len(short.details["step_losses"]) == 15
    assert [e["step"] for e in short.details["evaluations"]] == [10, 15]
    assert short.value == pytest.approx(float(np.median(short.details["step_losses"][-10:])))


def test_overfit_one_batch_fails_on_softmax_before_the_loss(v10, tmp_path):
    """The softmax sits in the run's loss (a train.loss_fn bug), so the check, which drives
    the run's step, trains through it."""
    train, debug_tools, _, train_set, _, _ = v10
    import torch.nn.functional as F

    train.loss_fn = lambda logits, labels: F.cross_entropy(F.softmax(logits, dim=1), labels)
    torch.manual_seed(0)
    broken = debug_tools.overfit_one_batch(train.MyNN(), train_set.images[:8], train_set.labels[:8],
                                           loss_fn=train.loss_fn, steps=150, out_dir=tmp_path, **own_training(train))
    assert not broken.passed
    # Softmax before cross-entropy caps the "logits" at [0, 1]: the loss can never go
    # below ln(1 + 9/e) = 1.46, however well the 8 images are classified.
    floor = math.log(1 + 9 / math.e)
    assert broken.value > 1.4 and min(broken.details["step_losses"]) >= floor - 1e-4
    assert broken.details["steps_needed"] == 150  # ran the whole budget without reaching the target
    assert "ln(1 + 9/e) = 1.46" in broken.hint


def test_batch_independence(v10):
    train, debug_tools, _, _, test_set, bad = v10
    images = test_set.images[:8]
    torch.manual_seed(0)
    good = debug_tools.verify_batch_independence(train.MyNN(), images)
    assert good.passed, good.report()
    assert good.value == 0 and good.details["offending_inputs"] == []

    torch.manual_seed(0)
    model = bad["mixes_samples"]()
    model.train()
    broken = debug_tools.verify_batch_independence(model, images)
    assert not broken.passed
    assert broken.value > 0
    offenders = broken.details["offending_inputs"]
    assert offenders and set(offenders) <= set(range(8))
    assert f"leaking into inputs {offenders}" in broken.criterion and "mixed inside the model" in broken.hint
    assert all(leak["input"] != leak["output"] and leak["grad_norm"] > 0 for leak in broken.details["leaks"])
    assert model.training, "the check must put the model back into train mode"


def test_batch_independence_is_not_fooled_by_softmax_outputs(v10):
    """Outputs that sum to 1 have a zero gradient for the plain sum of output i: the old probe
    called a correct softmax model dead and hid real mixing. The random projection sees both."""
    train, debug_tools, _, _, test_set, bad = v10
    import torch.nn.functional as F

    class SoftmaxOutputs(train.MyNN):
        def forward(self, x):
            return F.softmax(super().forward(x), dim=1)

    class SoftmaxAndMixing(bad["mixes_samples"]):
        def forward(self, x):
            return F.softmax(super().forward(x), dim=1)

    torch.manual_seed(0)
    correct = debug_tools.verify_batch_independence(SoftmaxOutputs(), test_set.images[:8])
    assert correct.passed, correct.report()
    torch.manual_seed(0)
    mixing = debug_tools.verify_batch_independence(SoftmaxAndMixing(), test_set.images[:8])
    assert not mixing.passed and mixing.details["offending_inputs"]
    assert mixing.details["outputs_without_own_gradient"] == []


def test_batch_independence_names_outputs_that_ignore_their_input(v10):
    train, debug_tools, _, _, test_set, bad = v10
    torch.manual_seed(0)
    broken = debug_tools.verify_batch_independence(bad["zeroes_input"](), test_set.images[:8])
    assert not broken.passed
    assert broken.details["outputs_without_own_gradient"] == list(range(8)) and broken.details["leaks"] == []
    assert "do not depend on their own input" in broken.criterion and "throws the input away" in broken.hint
    assert "mixed" not in broken.hint


def test_gradient_flow(v10):
    train, debug_tools, _, train_set, _, bad = v10
    images, labels = train_set.images[:64], train_set.labels[:64]
    torch.manual_seed(0)
    model = train.MyNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = debug_tools.verify_gradient_flow(model, images, labels, train.loss_fn)
    assert good.passed, good.report()
    assert good.value == 0 and len(good.details["grad_norms"]) == 14
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the check changed the model"
    assert all(p.grad is None for p in model.parameters())

    torch.manual_seed(0)
    broken = debug_tools.verify_gradient_flow(bad["discards_conv2"](), images, labels, train.loss_fn)
    assert not broken.passed
    conv2 = ["conv2.0.weight", "conv2.0.bias", "conv2.2.weight", "conv2.2.bias"]
    assert broken.details["without_gradient"] == conv2 and broken.value == 4
    assert all(name in broken.criterion for name in conv2)


def test_step_gradient_passes_on_the_runs_step_and_catches_a_missing_zero_grad(v10):
    train, debug_tools, _, train_set, _, _ = v10
    images, labels = train_set.images[:64], train_set.labels[:64]
    torch.manual_seed(0)
    model = train.MyNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = debug_tools.verify_step_gradient(model, images, labels, loss_fn=train.loss_fn, **own_training(train))
    assert good.passed, good.report()
    assert good.value < 1e-5 and good.details["optimizer_steps"] == 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the check changed the model"

    pieces = {**own_training(train), "training_step": step_without_zero_grad}
    broken = debug_tools.verify_step_gradient(model, images, labels, loss_fn=train.loss_fn, **pieces)
    assert not broken.passed and broken.value > 0.1
    assert broken.details["relative_difference_if_accumulated"] < 1e-3  # exactly: fresh + previous step's
    assert "accumulate" in broken.hint and "zero_grad" in broken.hint


def test_step_gradient_says_when_no_gradient_reaches_the_optimizer(v10):
    train, debug_tools, _, train_set, _, _ = v10

    def step_without_backward(model, images, labels, optimizer, scheduler):
        loss = train.loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        optimizer.step()
        scheduler.step()
        return loss.item(), None

    torch.manual_seed(0)
    pieces = {**own_training(train), "training_step": step_without_backward}
    broken = debug_tools.verify_step_gradient(train.MyNN(), train_set.images[:64], train_set.labels[:64],
                                              loss_fn=train.loss_fn, **pieces)
    assert not broken.passed and broken.value == pytest.approx(1.0)
    assert len(broken.details["parameters_without_gradient"]) == 14 and "loss.backward()" in broken.hint


def test_optimizer_config(v10):
    train, debug_tools, _, _, _, _ = v10
    model = train.MyNN()
    cfg = train.parse_args(["--lr", "0.002", "--weight-decay", "0.1"])
    optimizer, _ = train.make_optimizer(model, cfg, total_steps=100)
    good = debug_tools.verify_optimizer_config(model, optimizer, lr=0.002, weight_decay=0.1)
    assert good.passed, good.report()

    swapped = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.002)
    broken = debug_tools.verify_optimizer_config(model, swapped, lr=0.002, weight_decay=0.1)
    assert not broken.passed and broken.value == 2
    assert "is not --lr 0.002" in broken.criterion and "is not --weight-decay 0.1" in broken.criterion

    classifier_only = torch.optim.AdamW(model.classifier.parameters(), lr=0.002, weight_decay=0.1)
    partial = debug_tools.verify_optimizer_config(model, classifier_only, lr=0.002, weight_decay=0.1)
    assert not partial.passed and "8 of 14 parameter tensors not in the optimizer" in partial.criterion

    other_model = torch.optim.AdamW(train.MyNN().parameters(), lr=0.002, weight_decay=0.1)
    foreign = debug_tools.verify_optimizer_config(model, other_model, lr=0.002, weight_decay=0.1)
    assert not foreign.passed and "do not belong to this model" in foreign.criterion


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
    # Each message names the problem it saw and no other: [0, 255] pixels are a scale bug, not blank images.
    assert len(unscaled.details["problems"]) == 1 and "divided by 255" in unscaled.details["problems"][0]
    assert "blank" not in unscaled.report() and "constant" not in unscaled.report()

    blank = debug_tools.visualize_input_before_net(MappedLoader(loader, lambda x: x * 0 + 0.3), out_dir=tmp_path)
    assert not blank.passed and len(blank.details["problems"]) == 1
    assert "nearly constant" in blank.details["problems"][0]
    dark = debug_tools.visualize_input_before_net(MappedLoader(loader, lambda x: x * 0.15), out_dir=tmp_path)
    assert not dark.passed and dark.details["problems"] == [dark.details["problems"][0]]
    assert "nearly black" in dark.details["problems"][0]
    inverted = debug_tools.visualize_input_before_net(MappedLoader(loader, lambda x: 1 - x), out_dir=tmp_path)
    assert not inverted.passed and "inverted" in inverted.details["problems"][0]

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
    assert list(results["checks"]) == ["input_independent_baseline", "input_before_net", "loss_at_init",
                                       "optimizer_config", "gradient_flow", "step_gradient", "overfit_one_batch",
                                       "batch_independence", "train_eval_modes"]
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
    failed = [name for name, c in results["checks"].items() if not c["passed"]]
    # std 1.0 at the last layer also makes a batch loss exceed --diverged-loss within two steps
    assert failed == ([failing, "step_gradient"] if bug == "last_layer_std_1" else [failing])
    assert f"FAILED: {', '.join(failed)}" in capsys.readouterr().out


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
    assert "7/8 passed; FAILED: overfit_one_batch" in proc.stdout


def test_batch_independence_gives_a_verdict_when_forward_cuts_the_graph(v10):
    """A forward that detaches its input leaves no path to it: a failed check naming every output,
    not a crash of torch.autograd.grad."""
    train, debug_tools, _, _, test_set, _ = v10

    class DetachesInput(train.MyNN):
        def forward(self, x):
            return super().forward(x.detach())

    broken = debug_tools.verify_batch_independence(DetachesInput(), test_set.images[:8])
    assert not broken.passed and broken.details["outputs_without_own_gradient"] == list(range(8))
    assert "detaches it" in broken.hint


def test_gradient_flow_fails_on_nan_gradients(v10):
    train, debug_tools, _, train_set, _, _ = v10

    class NaNInForward(train.MyNN):
        def forward(self, x):
            return super().forward(x) * torch.sqrt(torch.tensor(-1.0))

    broken = debug_tools.verify_gradient_flow(NaNInForward(), train_set.images[:64], train_set.labels[:64],
                                              train.loss_fn)
    assert not broken.passed and len(broken.details["non_finite_gradient"]) == 14
    assert "NaN or infinite" in broken.hint


# ---------------------------------------------------------------------------
# Issue 26: the mode check, and gradient flow behind zero-initialised scales
# ---------------------------------------------------------------------------
def _mode_phases(train, loader, freeze_batchnorm=False, evaluation_in_train_mode=False):
    """The run's own epoch and evaluation (optionally with a planted bug), as the check drives them."""
    def epoch(probe):
        optimizer, scheduler = train.make_optimizer(probe, train.parse_args([]), total_steps=len(loader))
        if freeze_batchnorm:
            for layer in probe.modules():
                if isinstance(layer, torch.nn.BatchNorm2d):
                    layer.momentum = 0.0  # the statistics stay at their init while the mode looks right
        train.train_one_epoch(probe, loader, optimizer, scheduler, 0, 0, 0, [])

    def evaluate(probe):
        loss_acc = train.evaluate(probe, loader, "cpu")
        if evaluation_in_train_mode:
            probe.train()
            probe(next(iter(loader))[0])
        return loss_acc
    return epoch, evaluate


def test_train_eval_modes(v10):
    train, debug_tools, _, train_set, _, _ = v10
    loader = train.TensorLoader(train.FashionMNISTTensors(train_set.images[:32], train_set.labels[:32],
                                                          train_set.classes), 16)
    torch.manual_seed(0)
    model = train.MyNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    epoch, evaluate = _mode_phases(train, loader)
    good = debug_tools.verify_train_eval_modes(model, train_epoch=epoch, evaluate=evaluate)
    assert good.passed and good.value == 0, good.report()
    assert good.details["layers"] == ["conv1.2", "conv2.2", "classifier.3", "classifier.6"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the check changed the model"

    epoch, evaluate = _mode_phases(train, loader, freeze_batchnorm=True)
    frozen = debug_tools.verify_train_eval_modes(model, train_epoch=epoch, evaluate=evaluate)
    assert not frozen.passed and frozen.details["statistics_frozen"] == ["conv1.2", "conv2.2"]

    epoch, evaluate = _mode_phases(train, loader, evaluation_in_train_mode=True)
    leaky = debug_tools.verify_train_eval_modes(model, train_epoch=epoch, evaluate=evaluate)
    assert not leaky.passed and len(leaky.details["training_mode_in_evaluation"]) == 4


def test_train_eval_modes_has_nothing_to_judge_without_batchnorm_or_dropout(v10):
    _, debug_tools, _, _, _, _ = v10
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    phases = []
    result = debug_tools.verify_train_eval_modes(model, train_epoch=lambda m: phases.append("train"),
                                                 evaluate=lambda m: phases.append("evaluate"))
    assert result.passed and "nothing to judge" in result.criterion and result.details["layers"] == []


class _GatedBlocks(torch.nn.Module):
    """Two residual blocks whose branch ends in a BatchNorm scaled to 0 (zero_init_residual), and a
    classifier. `detach` cuts the second block's branch from the graph (its scale included): a bug the
    zero scale must not excuse."""

    def __init__(self, detach=False, zero=True):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.branches = torch.nn.ModuleList(torch.nn.Sequential(
            torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1),
            torch.nn.BatchNorm2d(4)) for _ in range(2))
        if zero:
            for branch in self.branches:
                torch.nn.init.zeros_(branch[3].weight)
        self.fc = torch.nn.Linear(4, 10)
        self.detach = detach

    def forward(self, x):
        x = self.stem(x)
        for i, branch in enumerate(self.branches):
            out = branch(x)
            x = torch.relu(x + (out.detach() if self.detach and i == 1 else out))
        return self.fc(x.mean((2, 3)))


def test_gradient_flow_waits_behind_zero_initialised_scales(v10):
    train, debug_tools, _, train_set, _, _ = v10
    images, labels = train_set.images[:16], train_set.labels[:16]
    torch.manual_seed(0)
    gated = debug_tools.verify_gradient_flow(_GatedBlocks(), images, labels, train.loss_fn)
    assert gated.passed, gated.report()
    assert gated.details["zero_initialised_scales"] == ["branches.0.3.weight", "branches.1.3.weight"]
    assert sorted(gated.details["waiting_behind_zero_scales"]) == [
        f"branches.{b}.{layer}.{kind}" for b in (0, 1) for layer in (0, 2) for kind in ("bias", "weight")]
    # control: a branch cut from the graph stays a failure, zero scale or not
    torch.manual_seed(0)
    detached = debug_tools.verify_gradient_flow(_GatedBlocks(detach=True), images, labels, train.loss_fn)
    assert not detached.passed
    assert detached.details["without_gradient"] == [f"branches.1.{layer}.{kind}" for layer in (0, 2, 3)
                                                    for kind in ("weight", "bias")]
    torch.manual_seed(0)
    assert debug_tools.verify_gradient_flow(_GatedBlocks(zero=False), images, labels, train.loss_fn).details[
        "zero_initialised_scales"] == []
