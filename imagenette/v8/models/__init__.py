"""The networks of imagenette/v7: ResNet18, ResNet34 and ResNet50 (models/resnet.py)."""
from .resnet import ARCHITECTURES, BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50

__all__ = ["ARCHITECTURES", "BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50"]
