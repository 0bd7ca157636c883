"""Screen of v5 variants (not part of the repo): python screen.py NAME OUT [flags...]"""
import sys, torch.nn as nn
sys.path.insert(0, "imagenette/v5")
import train

class Variant(train.DeeperCNN):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, 1, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
                                  nn.Conv2d(24, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())

name, out, *flags = sys.argv[1:]
if name.startswith("stem"):
    train.DeeperCNN = Variant
train.main(["--data-dir", ".gpu/imagenette", "--train-fraction", "1.0", "--seed", "0", "--out", out, *flags])
