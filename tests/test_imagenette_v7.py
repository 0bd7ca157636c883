"""imagenette/v7/v7a, v7b, v7c: seed 002's ResNet18 / ResNet34 / ResNet50 on v6a's recipe, the
networks written out in imagenette/v7/models/resnet.py.

The networks: their parameter counts (with and without the stem's max-pool, with dropout), their
state_dict and their function against torchvision's (a reference we did not write), v6a's init.
gradient_flow on each network: it passes, names every block and every shortcut projection, and
fails on a detached shortcut projection, a residual branch scaled by 1e-3 and a block cut out of
forward(). Quick runs of the three versions; --optimizer sgd, --no-maxpool, --amp on the CPU;
sweep.yaml against train.py's flags and its W&B metrics; the diffs between the three versions and
to v6a; --help; --resume refusing another --arch.

CPU time: the quick runs are most of it. v7a runs the plain --quick (64 px); v7b and v7c add
--image-size 32 (QUICK_EXTRA), which about halves their time (v7c: ~25 s -> ~12 s on one thread)
and runs the same code on the same networks.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import importlib.util
import io
import json
import math
import re
import shutil
import sys
import types

import pytest
import torch
import torch.nn as nn
import yaml

from conftest import REPO_ROOT
from fmnist_helpers import VersionContext, assert_png_has_content, read_jsonl
from fmnist_v1_v4_helpers import assert_checks_do_not_perturb
from imagenette_helpers import imagenette_folder, isolated_cache, quick_args  # noqa: F401  (fixtures)
from imagenette_v2_v5_helpers import TIMING_KEYS, forget_normalize, load_quick_data, quiet_quick_run
from test_imagenette_diffs import configuration_constants, growth_problems

torchvision = pytest.importorskip("torchvision")

V6A = "imagenette/v6/v6a"
V7 = REPO_ROOT / "imagenette" / "v7"
VERSIONS = {"v7a": "imagenette/v7/v7a", "v7b": "imagenette/v7/v7b", "v7c": "imagenette/v7/v7c"}
ARCH_OF = {"v7a": "resnet18", "v7b": "resnet34", "v7c": "resnet50"}
VERSION_OF = {arch: version for version, arch in ARCH_OF.items()}
NUM_PARAMETERS = {"resnet18": 11_181_642, "resnet34": 21_289_802, "resnet50": 23_528_522}
# blocks per stage, and whether the block is a Bottleneck (then layer1.0 has a projection too: 64 -> 256)
LAYOUT = {"resnet18": ([2, 2, 2, 2], False), "resnet34": ([3, 4, 6, 3], False), "resnet50": ([3, 4, 6, 3], True)}
QUICK_EXTRA = {"v7a": ["--wandb"], "v7b": ["--image-size", "32"], "v7c": ["--image-size", "32"]}
# the battery of fashionmnist/v10-step2 after lr_schedule (the input-independent baseline is off under --quick)
CHECKS = ["first_batch", "activations_at_init", "loss_at_init", "gradient_flow", "initialization", "lr_schedule",
          "step_gradient", "overfit_one_batch", "batch_independence", "train_eval_modes", "normalised_batch", "normalisation_from_train", "train_batches_augmented",
          "eval_deterministic_unaugmented", "class_balance", "activations_after_training"]
GROUPS = ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]
EPOCH_ZERO_KEYS = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"}
EPOCH_KEYS = EPOCH_ZERO_KEYS | {"learning_rate", *TIMING_KEYS, "grad_norm", "grad_norm_per_group"}
PLOTS = ["first_batch.png", "class_balance.png", "training_curves.png", "augmented_batch.png",
         "activation_statistics.png", "lr_schedule.png", "gradient_flow.png", "gradient_norms.png"]
LN10 = math.log(10)


def expected_blocks(arch: str) -> list[str]:
    """What verify_gradient_flow's _block_of must name, in the order of model.named_parameters()."""
    layers, bottleneck = LAYOUT[arch]
    names = ["stem"]
    for stage, blocks in enumerate(layers, start=1):
        for i in range(blocks):
            names.append(f"layer{stage}.{i}")
            if i == 0 and (stage > 1 or bottleneck):
                names.append(f"layer{stage}.0.downsample")
    return names + ["fc"]


# ---------------------------------------------------------------------------
# Fixtures: the version modules, one network of each kind at v6a's init
# ---------------------------------------------------------------------------
def load(version: str) -> types.SimpleNamespace:
    """train, debug_tools and models.resnet of one version, imported in isolation."""
    with VersionContext(version) as train:
        return types.SimpleNamespace(train=train, debug_tools=sys.modules["debug_tools"],
                                     resnet=sys.modules["models.resnet"])


@pytest.fixture(scope="module")
def v7a():
    return load(VERSIONS["v7a"])


@pytest.fixture(scope="module")
def pristine(v7a):
    """name -> a network as models/resnet.py builds it (seeded); tests work on copies."""
    nets = {}
    for arch in NUM_PARAMETERS:
        torch.manual_seed(0)
        nets[arch] = v7a.resnet.ARCHITECTURES[arch][0](10)
    return nets


# ---------------------------------------------------------------------------
# The networks: parameter counts, torchvision, the init
# ---------------------------------------------------------------------------
def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", NUM_PARAMETERS)
def test_parameter_counts(v7a, arch):
    """The seed's counts; neither the stem lever nor dropout changes them (both have no parameters)."""
    constructor, listed = v7a.resnet.ARCHITECTURES[arch]
    assert listed == NUM_PARAMETERS[arch]
    for kwargs in ({}, {"maxpool": False}, {"dropout": 0.1}, {"maxpool": False, "dropout": 0.3}):
        model = constructor(10, **kwargs)
        assert count(model) == NUM_PARAMETERS[arch], kwargs
        assert model.dropout.p == kwargs.get("dropout", 0.0)
        assert isinstance(model.maxpool, nn.MaxPool2d if kwargs.get("maxpool", True) else nn.Identity)
    assert count(getattr(torchvision.models, arch)(num_classes=10)) == NUM_PARAMETERS[arch]
    assert count(constructor(100)) != NUM_PARAMETERS[arch]  # control: the count does see the classifier


def test_architectures_lists_the_three_networks(v7a):
    assert list(v7a.resnet.ARCHITECTURES) == ["resnet18", "resnet34", "resnet50"]
    assert v7a.train.parse_args(["--arch", "resnet50"]).arch == "resnet50"
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        v7a.train.parse_args(["--arch", "resnet101"])


@pytest.mark.parametrize("arch", NUM_PARAMETERS)
def test_state_dict_matches_torchvision(pristine, arch):
    ours = pristine[arch].state_dict()
    theirs = getattr(torchvision.models, arch)(num_classes=10).state_dict()
    assert list(ours) == list(theirs)  # names and order, buffers included
    assert [tuple(v.shape) for v in ours.values()] == [tuple(v.shape) for v in theirs.values()]


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """BatchNorm scales, shifts and running statistics away from 1 / 0, so that eval mode computes
    something that depends on every one of them (at init they are the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=generator))
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.empty(n).uniform_(0.5, 2.0, generator=generator))


@pytest.mark.parametrize("arch", NUM_PARAMETERS)
def test_same_function_as_torchvision(v7a, arch):
    """torchvision's weights loaded strictly into ours: the same logits in eval mode. Control: our
    network without the stem's max-pool, with the same weights, computes something else."""
    torch.manual_seed(1)
    reference = getattr(torchvision.models, arch)(num_classes=10)
    randomise_batchnorm(reference)
    constructor = v7a.resnet.ARCHITECTURES[arch][0]
    ours, no_pool = constructor(10), constructor(10, maxpool=False)
    ours.load_state_dict(reference.state_dict())  # strict
    no_pool.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference.eval()(x)
        got = ours.eval()(x)
        other = no_pool.eval()(x)
    assert expected.abs().max() > 1e-2  # not a trivial comparison of near-zero logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(other, expected, atol=1e-3)


@pytest.mark.parametrize("arch", NUM_PARAMETERS)
def test_v6a_initialisation(v7a, pristine, arch):
    """Final layer N(0, 0.01) with bias exactly 0; every BatchNorm (shortcut projections included)
    at scale 1 and shift 0; every convolution Kaiming normal, fan-out. Control: the constants reach
    the final layer (0.1 / 0.01), and torchvision's default final layer is not ours."""
    model = pristine[arch]
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.equal(model.fc.bias, torch.zeros(10))
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == len([m for m in model.modules() if isinstance(m, nn.Conv2d)])
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
               for m in norms)
    for name, conv in ((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)):
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1), name
        assert conv.bias is None
    torch.manual_seed(0)
    other = v7a.resnet.ARCHITECTURES[arch][0](10, final_weight_std=0.1, final_bias_std=0.01)
    assert other.fc.weight.std().item() == pytest.approx(0.1, rel=0.1)
    assert not torch.equal(other.fc.bias, torch.zeros(10)) and other.fc.bias.abs().max().item() < 0.05
    reference = getattr(torchvision.models, arch)(num_classes=10).fc
    # torchvision's default, U(+-1/sqrt(fan_in)): std 1/sqrt(3 fan_in), 0.0255 / 0.0128 (ResNet50), not 0.01
    assert reference.weight.std().item() != pytest.approx(0.01, rel=0.1)
    assert not torch.equal(reference.bias, torch.zeros(10))


# ---------------------------------------------------------------------------
# gradient_flow: passes on each network and names every block; fails on a detached shortcut
# projection, a residual branch scaled by 1e-3, a block cut out of forward()
# ---------------------------------------------------------------------------
class DetachedShortcut(nn.Sequential):
    """A shortcut projection whose output leaves the graph: its conv and BatchNorm learn nothing."""

    def forward(self, x):
        return super().forward(x).detach()


class KeptShortcut(nn.Sequential):
    """Control: the same class swap without the detach."""

    def forward(self, x):
        return super().forward(x)


def cut_out(block: nn.Module) -> None:
    """The block returns its input: still in the model (its parameters still count), skipped in forward."""
    block.__class__ = type(f"Skipped{type(block).__name__}", (type(block),), {"forward": lambda self, x: x})


def kept(block: nn.Module) -> None:
    """Control: the same class swap, forward as it was."""
    base = type(block)
    block.__class__ = type(f"Kept{base.__name__}", (base,), {"forward": lambda self, x: base.forward(self, x)})


def last_norm(block: nn.Module) -> nn.BatchNorm2d:
    """The BatchNorm at the end of a block's residual branch (bn2 in a BasicBlock, bn3 in a Bottleneck)."""
    return block.bn3 if hasattr(block, "bn3") else block.bn2


def scale_branch(block: nn.Module, factor: float):
    return last_norm(block).register_forward_hook(lambda module, inputs, output: output * factor)


def gradient_check(version, model):
    """The version's own check and loss on 4 random 64 px images (one backward pass on a copy)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 64, 64, generator=generator)
    labels = torch.randint(0, 10, (4,), generator=generator)
    return version.debug_tools.verify_gradient_flow(model, images, labels, version.train.loss_fn,
                                                    version.train.MIN_GRADIENT_RATIO)


@pytest.fixture(scope="module")
def versions():
    return {arch: load(VERSIONS[VERSION_OF[arch]]) for arch in NUM_PARAMETERS}


def parameter_names(model: nn.Module, prefix: str) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.startswith(prefix + ".")]


@pytest.mark.parametrize("arch", NUM_PARAMETERS)
def test_gradient_flow_passes_and_names_every_block(versions, pristine, arch):
    version = versions[arch]
    assert version.train.ARCHITECTURE == arch and version.train.MIN_GRADIENT_RATIO == 1e-2
    model = copy.deepcopy(pristine[arch]).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    check = gradient_check(version, model)
    assert check.passed and check.details["without_gradient"] == [], check.report()
    blocks = check.details["block_relative_gradient"]
    assert list(blocks) == expected_blocks(arch)
    assert len(blocks) == {"resnet18": 13, "resnet34": 21, "resnet50": 22}[arch]
    assert all(math.isfinite(v) and v > 0 for v in blocks.values())
    assert check.value >= 5 * check.threshold  # a margin: at 160 px ~0.2-0.3, here 0.07-0.22
    assert check.details["weakest_block"] == min(blocks, key=blocks.get)
    # the model is left as it was: eval mode, no gradients, the same weights and statistics
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("arch", NUM_PARAMETERS)
def test_gradient_flow_controls_pass(versions, pristine, arch):
    """The planted bugs below without the bug: the class swaps and a hook scaling by 1 pass."""
    model = copy.deepcopy(pristine[arch])
    model.layer2[0].downsample.__class__ = KeptShortcut
    kept(model.layer3[1])
    scale_branch(model.layer3[1], 1.0)
    check = gradient_check(versions[arch], model)
    assert check.passed and check.details["without_gradient"] == [], check.report()
    assert list(check.details["block_relative_gradient"]) == expected_blocks(arch)


@pytest.mark.parametrize("arch", NUM_PARAMETERS)
def test_gradient_flow_fails_on_a_detached_shortcut_projection(versions, pristine, arch):
    """The rest of the network learns (the residual branch of layer2.0 carries the gradient on): only
    the projection's own conv and BatchNorm go without."""
    model = copy.deepcopy(pristine[arch])
    model.layer2[0].downsample.__class__ = DetachedShortcut
    check = gradient_check(versions[arch], model)
    assert not check.passed, check.report()
    projection = parameter_names(model, "layer2.0.downsample")
    assert len(projection) == 3  # conv weight, BatchNorm weight and bias
    assert check.details["without_gradient"] == projection
    assert check.details["weakest_block"] == "layer2.0.downsample"
    assert check.details["block_relative_gradient"]["layer2.0.downsample"] == 0.0 and check.value == 0.0
    assert "layer2.0.downsample.0.weight" in check.hint and "forward() uses every block's output" in check.hint


@pytest.mark.parametrize("arch", NUM_PARAMETERS)
def test_gradient_flow_fails_on_a_residual_branch_scaled_by_1e_3(versions, pristine, arch):
    """Every parameter still gets a gradient, a thousand times too small: the ratio fails, and names the block."""
    model = copy.deepcopy(pristine[arch])
    scale_branch(model.layer3[1], 1e-3)
    check = gradient_check(versions[arch], model)
    assert not check.passed and check.details["without_gradient"] == [], check.report()
    assert check.details["weakest_block"] == "layer3.1"
    assert check.value < check.threshold / 3
    assert "Block layer3.1" in check.hint and "the gradient vanishes" in check.hint


@pytest.mark.parametrize("arch", NUM_PARAMETERS)
def test_gradient_flow_fails_on_a_block_cut_out_of_forward(versions, pristine, arch):
    """layer3.1 returns its input: the shapes fit, nothing crashes, and the block's weights never learn."""
    model = copy.deepcopy(pristine[arch])
    cut_out(model.layer3[1])
    check = gradient_check(versions[arch], model)
    assert not check.passed, check.report()
    assert check.details["without_gradient"] == parameter_names(model, "layer3.1")
    assert check.details["weakest_block"] == "layer3.1" and check.value == 0.0


def branch_only(self, x):
    """A block's forward() with its skip forgotten: relu(F(x)) where relu(F(x) + shortcut) was meant."""
    out = self.relu1(self.bn1(self.conv1(x)))
    if hasattr(self, "bn3"):
        return self.relu3(self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(out))))))
    return self.relu2(self.bn2(self.conv2(out)))


def drop_skip(block: nn.Module) -> None:
    block.__class__ = type(f"NoSkip{type(block).__name__}", (type(block),), {"forward": branch_only})


def identity_blocks(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if hasattr(m, "downsample") and m.downsample is None]


@pytest.mark.parametrize("arch", NUM_PARAMETERS)
@pytest.mark.parametrize("dropped", ["one identity skip", "every identity skip"])
def test_gradient_flow_fails_on_dropped_identity_skips(versions, pristine, arch, dropped):
    """Issue 27: an identity skip has no parameters, and the branch of a block that forgot it still
    gets its gradient, so the parameter test passes (the net trains as a plain CNN). Only the skips
    test sees it: with every branch silenced, nothing reaches the stem."""
    model = copy.deepcopy(pristine[arch])
    names = identity_blocks(model)
    for name in (names if dropped == "every identity skip" else ["layer3.1"]):
        drop_skip(model.get_submodule(name))
    check = gradient_check(versions[arch], model)
    assert not check.passed, check.report()
    assert check.details["without_gradient"] == [] and check.value >= check.threshold  # the old test: passed
    assert check.details["branches_silenced"] == len(expected_blocks(arch)) - 2 - len(
        [b for b in expected_blocks(arch) if b.endswith("downsample")])  # every block but the stem and fc
    assert check.details["stem_gradient_through_skips"] == 0.0
    assert "a block has dropped its skip" in check.hint and "relu(out + shortcut)" in check.hint


@pytest.mark.parametrize("arch", NUM_PARAMETERS)
def test_gradient_flow_reaches_the_stem_through_intact_skips(versions, pristine, arch):
    model = copy.deepcopy(pristine[arch])
    kept(model.get_submodule(identity_blocks(model)[0]))
    check = gradient_check(versions[arch], model)
    assert check.passed, check.report()
    assert check.details["stem_gradient_through_skips"] > 0
    assert "residual branches silenced" in check.criterion


def test_the_checks_do_not_change_training(imagenette_folder, isolated_cache, tmp_path, monkeypatch):
    """Issue 26, as for v6a: every check before training (the battery with the input-independent
    baseline on, gradient_flow with its skips test) leaves every generator, the ResNet's weights and
    BatchNorm statistics, and the optimizer's and scheduler's state as they were."""
    forget_normalize()
    with VersionContext(VERSIONS["v7a"]) as train:
        cfg, data = load_quick_data(train, imagenette_folder, tmp_path, "--image-size", "32",
                                    "--input-independent-baseline", "--baseline-steps", "4", "--overfit-steps", "4")
        model = train.build_model(cfg)
        optimizer, scheduler = train.make_optimizer(model, cfg, total_steps=cfg.epochs * len(data.train_loader))
        optimizer_state, scheduler_state = repr(optimizer.state_dict()), repr(scheduler.state_dict())
        runner = train.Run(cfg, tmp_path, torch.device("cpu"), {})
        for name in dir(train):
            if name.startswith("plot_"):  # drawing draws no random numbers, and takes most of the time
                monkeypatch.setattr(train, name, lambda *args, **kwargs: None)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert_checks_do_not_perturb(
                train, monkeypatch, lambda: train.checks_before_training(runner, data, model, optimizer, scheduler),
                model, data.train_loader)
    forget_normalize()
    assert repr(optimizer.state_dict()) == optimizer_state and repr(scheduler.state_dict()) == scheduler_state


# ---------------------------------------------------------------------------
# Quick runs of v7a, v7b, v7c (v7a with --wandb and a stand-in wandb module)
# ---------------------------------------------------------------------------
class FakeWandbRun:
    def __init__(self, calls):
        self.calls, self.summary = calls, {}

    def log(self, data, step=None):
        self.calls.append(("log", step, dict(data)))

    def finish(self, exit_code=None):
        self.calls.append(("finish", exit_code, None))


def fake_wandb(calls: list) -> types.ModuleType:
    """A stand-in for the wandb package that records what a run sends (as in test_imagenette_v6.py)."""
    module = types.ModuleType("wandb")

    def init(**kwargs):
        calls.append(("init", None, kwargs))
        module.run = FakeWandbRun(calls)
        return module.run

    module.init = init
    module.watch = lambda model, **kwargs: calls.append(("watch", None, kwargs))
    return module


@pytest.fixture(scope="module")
def quick(imagenette_folder, tmp_path_factory):
    """quick(name) -> the quick run of that version, run on first use (the first test to ask pays)."""
    runs = {}

    def get(name: str) -> dict:
        if name not in runs:
            out = tmp_path_factory.mktemp(f"{name}_quick") / "out"
            calls = []
            wandb = fake_wandb(calls)
            with pytest.MonkeyPatch.context() as patch:
                patch.setitem(sys.modules, "wandb", wandb)
                results, stdout = quiet_quick_run(VERSIONS[name], imagenette_folder, out, *QUICK_EXTRA[name])
            runs[name] = {"results": results, "stdout": stdout, "out": out, "wandb": calls, "wandb_module": wandb,
                          "history": read_jsonl(out / "history.jsonl")}
        return runs[name]
    return get


@pytest.mark.parametrize("name", VERSIONS)
def test_quick_run_completes_with_every_check_passed(quick, name):
    run = quick(name)
    results, arch = run["results"], ARCH_OF[name]
    assert results["status"] == "completed" and results["exit_code"] == 0
    assert results["version"] == VERSIONS[name]
    assert results["architecture"] == arch == results["config"]["arch"]
    assert results["num_parameters"] == NUM_PARAMETERS[arch]
    assert list(results["checks"]) == CHECKS
    failed = [n for n, c in results["checks"].items() if not c["passed"]]
    assert failed == [] and results["all_checks_passed"] is True, failed
    config = results["config"]
    assert (config["optimizer"], config["maxpool"], config["batch_size"], config["dropout"], config["lr"],
            config["weight_decay"], config["min_gradient_ratio"]) == ("adamw", True, 64, 0.0, 1e-3, 1e-4, 1e-2)
    count_text = f"{NUM_PARAMETERS[arch]:,}"
    assert f"{arch}: {count_text} trainable parameters (seed 002: {count_text}); stem with max-pool" in run["stdout"]
    assert f"{VERSIONS[name]} | device cpu" in run["stdout"] and "16/16 passed" in run["stdout"]
    assert {"best_model.pth", "final_model.pth", "resume.pth", "history.jsonl", *PLOTS} <= set(results["outputs"])
    assert abs(results["init"]["init_loss"] - LN10) <= 0.3  # v6a's init: ln 10 again


@pytest.mark.parametrize("name", VERSIONS)
def test_quick_run_history(quick, name):
    run = quick(name)
    zero, *epochs = run["history"]
    assert [h["epoch"] for h in run["history"]] == [0, 1]
    assert set(zero) == EPOCH_ZERO_KEYS and all(set(h) == EPOCH_KEYS for h in epochs)
    init = run["results"]["init"]
    assert (zero["train_loss"], zero["train_accuracy"]) == (init["init_loss"], init["init_accuracy"])
    for line in epochs:
        groups = line["grad_norm_per_group"]
        assert list(groups) == GROUPS
        assert all(math.isfinite(v) and v > 0 for v in groups.values())
        assert line["grad_norm"] == pytest.approx(math.sqrt(sum(v * v for v in groups.values())), rel=1e-5)


@pytest.mark.parametrize("name", VERSIONS)
def test_quick_run_train_val_gap(quick, name):
    run = quick(name)
    results, best = run["results"], run["history"][1]
    assert results["best_epoch"] == 1 and results["epochs_done"] == 1
    assert results["train_val_gap"] == results["train_accuracy"] - results["val_accuracy"]
    assert results["train_val_gap"] == best["train_accuracy"] - best["val_accuracy"]
    assert json.loads((run["out"] / "results.json").read_text())["train_val_gap"] == results["train_val_gap"]


@pytest.mark.parametrize("name", VERSIONS)
def test_quick_run_gradient_flow_names_the_blocks(quick, name):
    check = quick(name)["results"]["checks"]["gradient_flow"]
    assert list(check["details"]["block_relative_gradient"]) == expected_blocks(ARCH_OF[name])
    assert check["details"]["without_gradient"] == [] and check["value"] >= check["threshold"] == 1e-2


def test_quick_run_plots_have_content(quick):
    for name in PLOTS:
        assert_png_has_content(quick("v7a")["out"] / name)


def test_best_model_loads_into_torchvision(quick):
    """The point of torchvision's names: v7a's checkpoint loads, strictly, into torchvision's ResNet18."""
    best = torch.load(quick("v7a")["out"] / "best_model.pth", map_location="cpu", weights_only=True)
    reference = torchvision.models.resnet18(num_classes=10)
    reference.load_state_dict(best["model_state"])
    assert best["epoch"] == 1 and best["val_accuracy"] == quick("v7a")["results"]["best_val_accuracy"]
    with pytest.raises(RuntimeError):  # control: strict loading does check
        torchvision.models.resnet34(num_classes=10).load_state_dict(best["model_state"])


def test_wandb_gets_the_seeds_metrics_and_additions(quick):
    run = quick("v7a")
    calls, history = run["wandb"], run["history"]
    assert [c[0] for c in calls][:2] == ["init", "watch"] and calls[-1][:2] == ("finish", None)
    logs = [c for c in calls if c[0] == "log"]
    assert [c[1] for c in logs] == [0, 1, None]
    data = logs[1][2]
    assert data["val/accuracy"] == history[1]["val_accuracy"] and data["train/loss"] == history[1]["train_loss"]
    assert data["train_val_gap"] == history[1]["train_accuracy"] - history[1]["val_accuracy"]
    assert {k for k in data if k.startswith("grad_norm/")} == {f"grad_norm/{g}" for g in GROUPS}
    assert logs[2][2] == {"test/accuracy": run["results"]["test_accuracy"], "test/loss": run["results"]["test_loss"]}
    init = calls[0][2]
    assert init["config"]["arch"] == "resnet18" and init["config"]["wandb"] is True and VERSIONS["v7a"] in init["tags"]
    # seed 002's additions to v6a's summary
    summary = run["wandb_module"].run.summary
    assert (summary["num_params"], summary["architecture"], summary["version"]) == \
        (NUM_PARAMETERS["resnet18"], "resnet18", "v7a")
    assert summary["epoch_to_target"] == run["results"]["epoch_to_target"]
    # the quick runs without --wandb send nothing
    assert quick("v7b")["wandb"] == []


# ---------------------------------------------------------------------------
# --optimizer sgd, --no-maxpool, --amp on the CPU
# ---------------------------------------------------------------------------
def one_cycle_trace(optimizer, scheduler, steps: int) -> list[tuple[float, float]]:
    """(lr, momentum) of the first group before each of `steps` steps (no gradients: nothing moves)."""
    trace = []
    for _ in range(steps):
        group = optimizer.param_groups[0]
        trace.append((group["lr"], group["betas"][0] if "betas" in group else group["momentum"]))
        optimizer.step()
        scheduler.step()
    return trace


def check_cycle(trace, peak_lr):
    lrs, momenta = [t[0] for t in trace], [t[1] for t in trace]
    assert max(lrs) == pytest.approx(peak_lr) and lrs[0] == pytest.approx(peak_lr / 25)
    assert momenta[0] == pytest.approx(0.95) and min(momenta) == pytest.approx(0.85)
    assert lrs.index(max(lrs)) == momenta.index(min(momenta))  # momentum lowest where lr peaks
    assert momenta[-1] > 0.94


def test_optimizer_sgd_is_nesterov_with_one_cycle(v7a, pristine):
    train = v7a.train
    model = copy.deepcopy(pristine["resnet18"])
    cfg = train.parse_args(["--optimizer", "sgd", "--lr", "0.1", "--weight-decay", "5e-4"])
    optimizer, scheduler = train.make_optimizer(model, cfg, total_steps=20)
    assert type(optimizer) is torch.optim.SGD and isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
    assert scheduler.total_steps == 20
    assert all(g["nesterov"] is True for g in optimizer.param_groups)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [5e-4, 0.0]
    assert all(p.ndim > 1 for p in optimizer.param_groups[0]["params"])
    assert all(p.ndim <= 1 for p in optimizer.param_groups[1]["params"])
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    check_cycle(one_cycle_trace(optimizer, scheduler, 20), 0.1)
    # control: the default is AdamW, whose beta1 OneCycle cycles the same way
    optimizer, scheduler = train.make_optimizer(model, train.parse_args([]), total_steps=20)
    assert type(optimizer) is torch.optim.AdamW and "nesterov" not in optimizer.param_groups[0]
    check_cycle(one_cycle_trace(optimizer, scheduler, 20), 1e-3)
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        train.parse_args(["--optimizer", "rmsprop"])


def test_no_maxpool_keeps_four_times_the_positions(v7a):
    train = v7a.train
    shapes = {}
    for flags in ([], ["--no-maxpool"]):
        cfg = train.parse_args(flags)
        model = train.build_model(cfg).eval()
        assert count(model) == NUM_PARAMETERS["resnet18"]
        seen = []
        model.layer1.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
        with torch.no_grad():
            assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 10)
        shapes[cfg.maxpool] = (type(model.maxpool), seen[0])
    assert shapes[True] == (nn.MaxPool2d, (1, 64, 16, 16))
    assert shapes[False] == (nn.Identity, (1, 64, 32, 32))


def test_amp_changes_nothing_on_the_cpu(v7a, pristine):
    """training_step with amp=True on the CPU: the same loss, logits and weights as amp=False, bit for
    bit. Control: bf16 autocast on the CPU (which PyTorch supports) would change the loss."""
    train = v7a.train
    cfg = train.parse_args([])
    assert cfg.amp is True and train.parse_args(["--no-amp"]).amp is False
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(4, 3, 32, 32, generator=generator), torch.randint(0, 10, (4,), generator=generator)
    outcome = {}
    for amp in (False, True):
        model = copy.deepcopy(pristine["resnet18"])
        optimizer, scheduler = train.make_optimizer(model, cfg, total_steps=5)
        loss, logits = train.training_step(model, images, labels, optimizer, scheduler, amp=amp)
        outcome[amp] = (loss, logits, model.state_dict())
    assert outcome[True][0] == outcome[False][0]
    assert outcome[True][1].dtype == torch.float32 and torch.equal(outcome[True][1], outcome[False][1])
    assert all(torch.equal(v, outcome[False][2][k]) for k, v in outcome[True][2].items())
    model = copy.deepcopy(pristine["resnet18"]).train()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(images)
    assert low.dtype == torch.bfloat16
    assert train.loss_fn(low.float(), labels).item() != outcome[False][0]


# ---------------------------------------------------------------------------
# sweep.yaml
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sweep():
    return yaml.safe_load((V7 / "sweep.yaml").read_text())


def sweep_values(spec: dict) -> list:
    return [spec[k] for k in ("min", "max") if k in spec] + list(spec.get("values", []))


def parse_fails(train, argv) -> bool:
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            train.parse_args(argv)
    except SystemExit as err:
        return err.code == 2
    return False


@pytest.mark.parametrize("name", VERSIONS)
def test_sweep_parameters_are_flags_of_train_py(sweep, name):
    """W&B starts `python train.py --wandb --<name>=<value>`: every name a flag, every value accepted
    (and read as that value). Control: a name that is not a flag, and a value out of range, fail."""
    train = load(VERSIONS[name]).train
    parameters = sweep["parameters"]
    assert set(parameters) == {"lr", "weight-decay", "batch-size", "dropout"}
    for parameter, spec in parameters.items():
        values = sweep_values(spec)
        assert values, parameter
        for value in values:
            cfg = train.parse_args(["--wandb", f"--{parameter}={value}"])
            assert getattr(cfg, parameter.replace("-", "_")) == value, (parameter, value)
    cfg = train.parse_args(["--wandb", *(f"--{p}={sweep_values(s)[-1]}" for p, s in parameters.items())])
    assert cfg.wandb is True and cfg.dropout == 0.1 and cfg.batch_size == 96
    assert parse_fails(train, ["--learning-rate=0.001"]) and parse_fails(train, ["--dropout=1.0"])
    assert not parse_fails(train, ["--dropout=0.1"])


def test_sweep_program_command_and_metric(sweep, quick):
    assert sweep["program"] == "train.py" and all((V7 / v / "train.py").is_file() for v in ("v7a", "v7b", "v7c"))
    assert "--wandb" in sweep["command"] and "${args}" in sweep["command"]
    assert sweep["command"].index("${program}") < sweep["command"].index("--wandb")
    assert sweep["method"] == "bayes" and sweep["metric"]["goal"] == "maximize"
    metric = sweep["metric"]["name"]
    assert metric == "val/accuracy"
    # the metric is one the run logs under --wandb, at every epoch's step
    epoch_logs = [c[2] for c in quick("v7a")["wandb"] if c[0] == "log" and c[1] not in (0, None)]
    assert epoch_logs and all(metric in data for data in epoch_logs)
    assert "val_accuracy" not in epoch_logs[0]  # control: a near miss is not among them


# ---------------------------------------------------------------------------
# The diffs: v7a vs v7b and v7c, v7a vs v6a
# ---------------------------------------------------------------------------
def files(version: str) -> list[str]:
    return sorted(p.name for p in (REPO_ROOT / version).iterdir() if p.is_file())


def text(version: str, file: str) -> str:
    return (REPO_ROOT / version / file).read_text()


@pytest.mark.parametrize("other", ["v7b", "v7c"])
def test_versions_differ_in_the_architecture_line_only(other):
    a, b = VERSIONS["v7a"], VERSIONS[other]
    assert files(a) == files(b)
    assert {"debug_tools.py", "metrics.py", "normalize.py", "train.py", "visualization.py"} <= set(files(a))
    assert [f for f in files(a) if (REPO_ROOT / a / f).read_bytes() != (REPO_ROOT / b / f).read_bytes()] == \
        ["train.py"]
    diff = list(difflib.unified_diff(text(a, "train.py").splitlines(), text(b, "train.py").splitlines(),
                                     lineterm="", n=0))
    removed = [line[1:] for line in diff if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff if line.startswith("+") and not line.startswith("+++")]
    assert len([line for line in diff if line.startswith("@@")]) == 1
    pattern = re.compile(r'^ARCHITECTURE = "(resnet\d+)"  # (v7[abc]): ')
    assert [pattern.match(line).groups() for line in removed] == [("resnet18", "v7a")]
    assert [pattern.match(line).groups() for line in added] == [(ARCH_OF[other], other)]


@pytest.mark.parametrize("name", VERSIONS)
def test_versions_load_with_their_architecture(name):
    with VersionContext(VERSIONS[name]) as train:
        assert train.ARCHITECTURE == ARCH_OF[name] == train.parse_args([]).arch
        assert train.VERSION == VERSIONS[name] and train.REPO_ROOT == REPO_ROOT
        assert sys.modules["normalize"].REPO_ROOT == REPO_ROOT
        assert sys.modules["models.resnet"].__file__ == str(V7 / "models" / "resnet.py")


@pytest.mark.parametrize("file", ["metrics.py", "normalize.py", "visualization.py"])
def test_file_is_v6as(file):
    reference = (REPO_ROOT / V6A / file).read_bytes()
    assert [v for v in VERSIONS.values() if (REPO_ROOT / v / file).read_bytes() != reference] == []


def test_debug_tools_is_v6as_with_the_resnet_gradient_flow():
    """The only in-place edits: _block_of (ResNet blocks and their projections) and verify_gradient_flow
    (weakest / median; `import statistics` is v6's since the battery came, issue 26)."""
    problems = growth_problems(text(V6A, "debug_tools.py"), text(VERSIONS["v7a"], "debug_tools.py"),
                               {"functions": {"_block_of", "verify_gradient_flow"}})
    assert problems == []


# ---------------------------------------------------------------------------
# --help
# ---------------------------------------------------------------------------
FLAG_OF = {"LEARNING_RATE": "--lr", "OUT_DIR": "--out", "ARCHITECTURE": "--arch",
           "RUN_INPUT_INDEPENDENT_BASELINE": "--input-independent-baseline", "RUN_OVERFIT_TEST": "--overfit-test",
           "RUN_BATCH_INDEPENDENCE_TEST": "--batch-independence-test"}
NEW_FLAGS = ["--arch", "--optimizer", "--maxpool", "--no-maxpool", "--amp", "--no-amp", "--channels-last",
             "--no-channels-last"]


def test_help_lists_the_new_flags_and_one_for_every_constant():
    constants = configuration_constants(VERSIONS["v7a"])
    assert {"ARCHITECTURE", "OPTIMIZER", "MAXPOOL", "AMP", "CHANNELS_LAST"} <= set(constants)
    stdout = io.StringIO()
    with VersionContext(VERSIONS["v7a"]) as train:
        with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as exit_info:
            train.main(["--help"])
        defaults = vars(train.parse_args([]))
        values = {name: getattr(train, name) for name in constants}
    assert exit_info.value.code == 0
    help_text = stdout.getvalue()
    assert help_text.startswith("usage:") and "Imagenette v7" in help_text
    for flag in NEW_FLAGS:
        assert re.search(rf"(^|\s){re.escape(flag)}[\s,]", help_text), flag
    for name in constants:
        flag = FLAG_OF.get(name, "--" + name.lower().replace("_", "-"))
        assert re.search(rf"(^|\s){re.escape(flag)}[\s,]", help_text), f"{name} has no flag {flag}"
        if name == "OUT_DIR":  # the outputs root: --out's default None means a new dated folder in it
            assert defaults["out"] is None
            continue
        assert defaults[flag[2:].replace("-", "_")] == values[name], f"{flag}'s default is not {name}"


# ---------------------------------------------------------------------------
# --resume refuses another --arch
# ---------------------------------------------------------------------------
class Resumed(Exception):
    """Raised right after resume() accepted the saved state: the test needs no more of the run."""


def resume_attempt(quick_run, data_dir, tmp_path, *extra):
    """v7a's quick run's resume.pth and history in a fresh --out, and main() with the quick run's flags, --resume
    and `extra`. checks_before_training is switched off (resume() happens at the start of train(),
    and needs nothing from the checks). Returns (exception, stdout + stderr, out)."""
    out = tmp_path / "out"
    out.mkdir()
    for file in ("resume.pth", "history.jsonl"):  # what resume() reads
        shutil.copy(quick_run["out"] / file, out / file)
    stdout, stderr = io.StringIO(), io.StringIO()
    with VersionContext(VERSIONS["v7a"]) as train, pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "checks_before_training", lambda *args, **kwargs: {})
        resume = train.resume

        def stop_after_resume(*args):
            raise Resumed(resume(*args))

        patch.setattr(train, "resume", stop_after_resume)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), \
                pytest.raises((SystemExit, Resumed)) as info:
            train.main(quick_args(data_dir, out, "--resume", *extra))
    return info.value, stdout.getvalue() + stderr.getvalue(), out


def test_resume_refuses_another_arch(quick, imagenette_folder, tmp_path):
    error, output, out = resume_attempt(quick("v7a"), imagenette_folder, tmp_path, "--arch", "resnet34")
    assert isinstance(error, SystemExit) and error.code == 2, output
    assert "--resume needs the flags of the interrupted run" in output
    changed = output.split("(saved -> now): ", 1)[1].split(". Start again", 1)[0]
    assert changed == "arch 'resnet18' -> 'resnet34'"  # the one flag that differs
    results = json.loads((out / "results.json").read_text())
    assert (results["status"], results["exit_code"], results["architecture"]) == ("resume refused", 2, "resnet34")
    assert (out / "resume.pth").is_file()


def test_resume_with_the_same_flags_goes_on(quick, imagenette_folder, tmp_path):
    """Control: the same flags (--wandb and --channels-last may differ) are accepted: after epoch 1."""
    run = quick("v7a")
    error, output, _ = resume_attempt(run, imagenette_folder, tmp_path, "--no-channels-last")
    assert isinstance(error, Resumed), output
    assert error.args[0] == (1, 1, run["results"]["best_val_accuracy"])
    assert "Resuming after epoch 1" in output


# ---------------------------------------------------------------------------
# summarize.py: FAZIT's table from the committed H100 records
# ---------------------------------------------------------------------------
RUNS_V7 = REPO_ROOT / "runs" / "2026-11-24-h100-imagenette" / "v7"


def _summarize_module():
    spec = importlib.util.spec_from_file_location("v7_summarize", REPO_ROOT / "imagenette" / "v7" / "summarize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summarize_reproduces_the_fazit_numbers_from_the_records():
    summarize = _summarize_module()
    table, skipped = summarize.summarize({
        "ResNet18": sorted(RUNS_V7.glob("screen/base-r18-s*")),
        "picked ResNet18": [RUNS_V7 / "screen/aug-r18-s0", *sorted(RUNS_V7.glob("final/tuned-r18-s*"))]})
    assert skipped == []
    rows = table.splitlines()[2:]
    assert rows[0].startswith("| ResNet18 | 3 | 81.94 ± 0.80 |") and "11,181,642" in rows[0]
    assert rows[1].startswith("| picked ResNet18 | 3 | 84.70 ± 0.24 |")
    fazit = (REPO_ROOT / "imagenette" / "v7" / "FAZIT.md").read_text()
    assert "81.94% ± 0.80%" in fazit and "84.70% ± 0.24%" in fazit


def test_summarize_leaves_out_runs_that_did_not_complete(tmp_path):
    summarize = _summarize_module()
    good, cut = tmp_path / "good", tmp_path / "cut"
    for folder in (good, cut):
        shutil.copytree(RUNS_V7 / "screen" / "base-r18-s0", folder)
    results = json.loads((cut / "results.json").read_text())
    results["status"] = "interrupted"
    (cut / "results.json").write_text(json.dumps(results))
    table, skipped = summarize.summarize({"runs": [good, cut]})
    assert skipped == [f"{cut} (interrupted)"]
    assert "| runs | 1 | 82.80 (1 run) |" in table
