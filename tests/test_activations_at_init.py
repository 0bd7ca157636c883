"""activations_at_init can fail on a bug of its kind (issue 27), in every version that judges it.

Behind BatchNorm in training mode every channel is re-centred on the batch, so at init only a
channel that BatchNorm makes constant is dead: the check cannot see unnormalised inputs there
(first_batch and normalised_batch do). What it can see is an init that silences whole channels:
every BatchNorm scale set to 0, zero_init meant for the last BatchNorm of each residual branch
applied to all of them. Each version's own network and its own activation_statistics: the
network as built passes, the same network with every BatchNorm scale at 0 fails with every unit
dead. In the ResNets, zeroing only the last scale of each branch (the legitimate practice) passes.
"""
from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn

from fmnist_helpers import VersionContext

# version: (what builds its network from the version's train module, the shape of one input)
VERSIONS = {
    "fashionmnist/v4": (lambda train: train.DeepCNN(), (1, 28, 28)),
    "fashionmnist/v5": (lambda train: train.DeepCNN(), (1, 28, 28)),
    "fashionmnist/v6": (lambda train: train.ResNet(), (1, 28, 28)),
    "fashionmnist/v7": (lambda train: train.ResNet(), (1, 28, 28)),
    "fashionmnist/v8": (lambda train: train.ResNet(), (1, 28, 28)),
    "imagenette/v3": (lambda train: train.BatchNormCNN(), (3, 64, 64)),
    "imagenette/v4": (lambda train: train.BatchNormCNN(), (3, 64, 64)),
    "imagenette/v5": (lambda train: train.DeeperCNN(), (3, 64, 64)),
    "imagenette/v6/v6a": (lambda train: train.DeeperCNN(), (3, 64, 64)),
    "imagenette/v6/v6b": (lambda train: train.DeeperCNN(), (3, 64, 64)),
    "imagenette/v7/v7a": (lambda train: train.build_model(train.parse_args(["--quick"])), (3, 64, 64)),
}
RESNETS = ["fashionmnist/v6", "imagenette/v7/v7a"]
# as train.py calls it: the squeeze-excitation gates of v5 and v6 are drawn, not judged
REPORTED_ONLY = {"imagenette/v5": ("se.gate",), "imagenette/v6/v6a": ("se.gate",), "imagenette/v6/v6b": ("se.gate",)}


def judge(version: str, edit=None):
    """The version's activation_statistics on its own network (seeded) and 16 normalised-like images."""
    build, shape = VERSIONS[version]
    with VersionContext(version) as train:
        debug_tools = sys.modules["debug_tools"]
        torch.manual_seed(0)
        model = build(train)
        if edit is not None:
            with torch.no_grad():
                edit(model)
        images = torch.randn(16, *shape, generator=torch.Generator().manual_seed(1))
        extra = {"reported_only": REPORTED_ONLY[version]} if version in REPORTED_ONLY else {}
        return debug_tools.activation_statistics(model, images, "activations_at_init", train.MAX_DEAD_FRACTION,
                                                 **extra)


def zero_every_batchnorm_scale(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.weight.zero_()


def zero_last_scale_of_each_branch(model: nn.Module) -> None:
    """Goyal et al. 2017: the last BatchNorm of each residual branch (bn2, or bn3 in a Bottleneck)."""
    for name, module in model.named_modules():
        last = getattr(module, "bn3", None) or getattr(module, "bn2", None)
        if last is not None and isinstance(last, nn.BatchNorm2d) and ("layer" in name or "stage" in name):
            last.weight.zero_()


@pytest.mark.parametrize("version", VERSIONS)
def test_passes_as_built_and_fails_when_every_batchnorm_scale_starts_at_zero(version):
    healthy = judge(version)
    assert healthy.passed, healthy.report()
    assert healthy.value < 0.1  # BatchNorm before every ReLU: hardly a unit is dead at init
    broken = judge(version, zero_every_batchnorm_scale)
    assert not broken.passed and broken.value == 1.0, broken.report()
    assert "never fire on this batch" in broken.hint


@pytest.mark.parametrize("version", RESNETS)
def test_zero_initialised_residual_branches_pass(version):
    check = judge(version, zero_last_scale_of_each_branch)
    assert check.passed, check.report()
