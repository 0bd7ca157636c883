"""The path from imagenette/v4 to v5, one change at a time (issue 25). Not part of the lessons.

    python runs/2026-12-05-h100-imagenette-v4-to-v5/ablate.py ARM SEED OUT [extra flags]

Every arm runs v5's own train.py (its loop, checks and records) with flags; the arms with v4's
network swap v5's DeeperCNN for v4's BatchNormCNN, whose class is read from imagenette/v4/train.py
(so it is v4's code, not a copy). v5 changed six things at once: the network (DeeperCNN), batch
64 -> 32, MixUp 0.2, dropout 0.25 (a layer of DeeperCNN only: BatchNormCNN has none, so
"v4 + dropout" has no arm), 40 -> 100 epochs, early stopping with patience 20. The "v4" arm is
v4's recipe run by v5's code: a patience of 40 in 40 epochs never stops early. v5's code tests
the best validation epoch's weights, v4 tests its last epoch's: compare arms on validation.
"""
import ast
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "imagenette" / "v5"))
import train  # noqa: E402  (imagenette/v5/train.py)

V4_RECIPE = ["--batch-size", "64", "--mixup-alpha", "0", "--dropout", "0", "--epochs", "40", "--patience", "40"]
# arm: (network, flags on top of v5's defaults)
ARMS = {
    "v4": ("BatchNormCNN", V4_RECIPE),
    "v4+DeeperCNN": ("DeeperCNN", V4_RECIPE),
    "v4+batch32": ("BatchNormCNN", V4_RECIPE + ["--batch-size", "32"]),
    "v4+MixUp": ("BatchNormCNN", V4_RECIPE + ["--mixup-alpha", "0.2"]),
    "v4+100epochs-ES": ("BatchNormCNN", V4_RECIPE + ["--epochs", "100", "--patience", "20"]),
    "v5": ("DeeperCNN", []),
    "v5-DeeperCNN": ("BatchNormCNN", []),
    "v5-batch32": ("DeeperCNN", ["--batch-size", "64"]),
    "v5-MixUp": ("DeeperCNN", ["--mixup-alpha", "0"]),
    "v5-dropout": ("DeeperCNN", ["--dropout", "0"]),
    "v5-100epochs-ES": ("DeeperCNN", ["--epochs", "40", "--patience", "40"]),
}


def v4_network():
    """imagenette/v4's BatchNormCNN class, compiled from v4's source in v5's namespace."""
    tree = ast.parse((REPO / "imagenette" / "v4" / "train.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "BatchNormCNN")
    namespace = {"nn": train.nn, "torch": train.torch, "NUM_CLASSES": train.NUM_CLASSES}
    exec(compile(ast.Module([node], []), str(REPO / "imagenette" / "v4" / "train.py"), "exec"), namespace)
    return namespace["BatchNormCNN"]


def main(argv):
    arm, seed, out, *extra = argv
    network, flags = ARMS[arm]
    if network == "BatchNormCNN":
        batchnorm_cnn = v4_network()
        train.DeeperCNN = lambda dropout=0.0, **kwargs: batchnorm_cnn()  # v4's net has no dropout layer
    return train.main([*flags, "--seed", seed, "--out", out, *extra])


if __name__ == "__main__":
    main(sys.argv[1:])
