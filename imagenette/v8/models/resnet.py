"""ResNet18, ResNet34 and ResNet50 (He et al. 2016), written out for reading.

The layout, the names and the shape of every tensor are torchvision's
(`torchvision.models.resnet18(num_classes=10)` has the same state_dict keys, shapes and
order; tests/test_imagenette_v7.py holds us to it), so you can check this file against a
reference we did not write, or load its weights. At 10 classes:

    resnet18  BasicBlock  [2, 2, 2, 2]  11,181,642 parameters
    resnet34  BasicBlock  [3, 4, 6, 3]  21,289,802 parameters
    resnet50  Bottleneck  [3, 4, 6, 3]  23,528,522 parameters

What differs from torchvision (no parameter count changes):
- `maxpool=False` drops the stem's 3x3 max-pool. At 160 px the standard stem (7x7 conv with
  stride 2, then the max-pool) leaves 40x40 positions for layer1 and 5x5 for layer4; without
  the pool, 80x80 and 10x10: four times the compute, and more spatial detail for small images.
- v6a's initialisation: Kaiming (fan-out, ReLU) for every convolution, BatchNorm at scale 1 and
  shift 0, and the final layer N(0, 0.01) with bias 0, so every logit starts near 0 and the loss
  at init is ln 10 (torchvision leaves PyTorch's default uniform init on the final layer).
- Two ReLU modules per block instead of one used twice, so that the activation statistics name
  each of them; a ReLU has no parameters, so the state_dict is unchanged.
- An optional dropout before the final layer (0 in v7: BatchNorm regularises).
"""
from __future__ import annotations

import torch
import torch.nn as nn


def conv3x3(channels_in: int, channels_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, 3, stride, padding=1, bias=False)  # BN follows: no bias


def conv1x1(channels_in: int, channels_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, 1, stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm, plus the input: out = ReLU(F(x) + shortcut(x)).

    The shortcut is the identity when the shapes match. Where the block halves the
    resolution (stride 2) or changes the width, it is a projection: a strided 1x1
    convolution and BatchNorm (`downsample`, torchvision's name), the only parameters on
    the shortcut path. The identity path is why a deep ResNet trains: the gradient reaches
    early layers through the additions without passing through every convolution."""
    expansion = 1

    def __init__(self, channels_in: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(channels_in, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 (reduce to `width`) - 3x3 (stride here, as torchvision's "ResNet v1.5") - 1x1 (expand
    to 4 x width), each with BatchNorm, plus the shortcut. Three cheap layers in place of two
    wide 3x3 ones: ResNet50 is deeper than ResNet34 at a similar cost."""
    expansion = 4

    def __init__(self, channels_in: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(channels_in, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU()
        self.conv3 = conv1x1(width, width * self.expansion)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.downsample = downsample
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + shortcut)


class ResNet(nn.Module):
    """Stem (7x7 conv, stride 2, 64 channels - BN - ReLU - 3x3 max-pool, stride 2), four stages of
    blocks at widths 64, 128, 256, 512 (stages 2-4 start with stride 2), global average pool,
    dropout, Linear to `num_classes`. Parameter names: conv1/bn1 (stem), layer1.0 ... layer4.N
    (blocks), layerK.0.downsample (shortcut projections), fc (classifier)."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], num_classes: int = 10,
                 maxpool: bool = True, dropout: float = 0.0, final_weight_std: float = 0.01,
                 final_bias_std: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if maxpool else nn.Identity()
        self.channels = 64
        self.layer1 = self._make_stage(block, 64, layers[0], stride=1)
        self.layer2 = self._make_stage(block, 128, layers[1], stride=2)
        self.layer3 = self._make_stage(block, 256, layers[2], stride=2)
        self.layer4 = self._make_stage(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self._init_weights(final_weight_std, final_bias_std)

    def _make_stage(self, block, width: int, blocks: int, stride: int) -> nn.Sequential:
        """`blocks` blocks; the first one changes resolution and width, so it gets the projection."""
        downsample = None
        if stride != 1 or self.channels != width * block.expansion:
            downsample = nn.Sequential(conv1x1(self.channels, width * block.expansion, stride),
                                       nn.BatchNorm2d(width * block.expansion))
        stage = [block(self.channels, width, stride, downsample)]
        self.channels = width * block.expansion
        stage += [block(self.channels, width) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self, final_weight_std: float, final_bias_std: float) -> None:
        """v6a's init: Kaiming normal (fan-out, ReLU) for the convolutions, BatchNorm at scale 1
        and shift 0, the final layer N(0, final_weight_std) with bias N(0, final_bias_std)
        (0: exactly zero). With 0.01 / 0 the loss at init is ln 10 (check_initialization)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.fc.weight, 0.0, final_weight_std)
        if final_bias_std > 0:
            nn.init.normal_(self.fc.bias, 0.0, final_bias_std)
        else:
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


def resnet18(num_classes: int = 10, **kwargs) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, **kwargs)


def resnet34(num_classes: int = 10, **kwargs) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, **kwargs)


def resnet50(num_classes: int = 10, **kwargs) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, **kwargs)


# name -> (constructor, parameters at 10 classes, as seed 002 lists them)
ARCHITECTURES = {"resnet18": (resnet18, 11_181_642), "resnet34": (resnet34, 21_289_802),
                 "resnet50": (resnet50, 23_528_522)}
