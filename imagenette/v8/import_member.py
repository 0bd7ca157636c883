"""Seed 002's third option, "v6a + best ResNet": a finished v6a run as a v8 member.

v6a (../v6/v6a, the seeds' DeeperCNN) writes a checkpoint and a test accuracy, not per-image outputs,
and it stays as it is: it is the seeds' lesson. This script reads a finished v6a run folder (its
results.json and best_model.pth) and writes a v8 member folder: predictions.pt in exactly the format
and with the fingerprint of train.py's members (softmax outputs on validation and test, plain and
mirrored), computed by v6a's own code: its train.py is imported from its folder, its load_data draws
the images, its evaluation Transform (with the checkpoint's normalisation) prepares them, its
DeeperCNN holds the weights. Beside it: a copy of best_model.pth (for members_differ_trained's digest)
and a results.json that says where the member came from.

It refuses (exit 2, one line) a run whose images are not v8's: another subset fingerprint, training
or validation fraction, image size or --quick caps than the data these flags give v8 (its defaults:
the 40% subset at 160 px), and a folder without results.json or best_model.pth, or a run that did
not finish. Before writing, it checks that the outputs are the checkpoint's: they reproduce v6a's
recorded validation loss and accuracy of that checkpoint (exit 1 if not), and the saved mirrored
outputs are the model's on torch.flip's mirror image (tta_flip, run here with v6a's model: train.py
cannot rebuild a DeeperCNN, so it checks only its own ResNets' saved outputs).

    python import_member.py ../v6/v6a/outputs/v6a-seed0 --out outputs/v6a-seed0
    python train.py --members 0 --add-members outputs/v6a-seed0 outputs/ens-seed0/members/member-0 \\
        --out outputs/mix-v6a-seed0
"""
from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

VERSION_DIR = Path(__file__).resolve().parent
REPO_ROOT = VERSION_DIR.parents[1]
if str(VERSION_DIR) not in sys.path:
    sys.path.insert(0, str(VERSION_DIR))  # v8's train.py: the format, the fingerprint, the data flags

import train  # noqa: E402
from shared.data import DataNotFoundError  # noqa: E402
from shared.runs import save_checkpoint, write_json  # noqa: E402

# The runs this script can read: v6's two sides share the model and the data code (they differ in the
# final layer's initialisation only); the seed's option names v6a.
IMPORTABLE = ("imagenette/v6/v6a", "imagenette/v6/v6b")
# What makes two runs' rows the same images: results.json's `data` of v6a and v8 (shared/imagenette.py).
SAME_IMAGES = ("subset_fingerprint", "subset_seed", "train_fraction", "val_fraction", "image_size",
               "train_images", "val_images", "test_images")
# The imported outputs must reproduce v6a's own evaluation of the checkpoint: its validation loss to this
# (float32, another batch split or device: ~1e-6; another transform or wrong weights: whole units) ...
REPRODUCE_LOSS_TOLERANCE = 1e-3
# ... and its validation accuracy to this many images (a near-tie may flip on another device).
REPRODUCE_ACCURACY_IMAGES = 1
# v6's own modules, imported from v6's folder and forgotten afterwards: v8 has modules of the same names.
V6_MODULES = ("train", "debug_tools", "metrics", "normalize", "visualization")


class Refused(Exception):
    """The run folder cannot become a v8 member; the message says why, in one line."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished v6a run folder (results.json, best_model.pth)")
    p.add_argument("--out", type=Path, required=True, help="the member folder to write (new or empty)")
    p.add_argument("--data-dir", type=train.existing_dir, default=train.DATA_DIR,
                   help="folder with train/<wnid>/ and val/<wnid>/ (default: as train.py finds it)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default=train.DEVICE,
                   help="where v6a's model predicts (default: %(default)s)")
    # v8's data: the member must be for the images a v8 run with these flags sees (train.py's defaults).
    p.add_argument("--quick", action="store_true", help="v8's --quick data (a few images per class at <= 64 px)")
    p.add_argument("--train-fraction", type=float, default=train.TRAIN_FRACTION,
                   help="v8's share of train/ (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=train.VAL_FRACTION,
                   help="v8's validation share of the subset (default: %(default)s)")
    p.add_argument("--subset-seed", type=int, default=train.SUBSET_SEED,
                   help="v8's subset seed (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=train.IMAGE_SIZE, help="v8's image size (default: %(default)s)")
    return p.parse_args(argv)


def v8_config(args) -> argparse.Namespace:
    """The configuration of the v8 run the member is for: train.py's own parse_args (its --quick caps too)."""
    return train.parse_args([*(["--quick"] if args.quick else []), "--device", args.device,
                             *(["--data-dir", str(args.data_dir)] if args.data_dir else []),
                             "--train-fraction", str(args.train_fraction), "--val-fraction", str(args.val_fraction),
                             "--subset-seed", str(args.subset_seed), "--image-size", str(args.image_size)])


def read_run(folder: Path) -> tuple[dict, dict]:
    """The v6a run's results.json and best checkpoint; Refused when either is missing or the run is
    not a finished v6 run."""
    results_path, checkpoint_path = folder / "results.json", folder / train.BEST_MODEL_FILE
    if not results_path.is_file():
        raise Refused(f"{folder} holds no results.json: not a v6a run folder")
    if not checkpoint_path.is_file():
        raise Refused(f"{folder} holds no {train.BEST_MODEL_FILE}: the checkpoint to import is missing")
    try:
        results = json.loads(results_path.read_text())
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    except (OSError, json.JSONDecodeError, RuntimeError) as err:
        raise Refused(f"{folder}: cannot read results.json or {train.BEST_MODEL_FILE} ({err})") from None
    if results.get("version") not in IMPORTABLE:
        raise Refused(f"{folder} is a run of {results.get('version')}, not of {' or '.join(IMPORTABLE)}")
    if results.get("status") != "completed":
        raise Refused(f"{folder} did not finish (status {results.get('status')}): its best checkpoint is no "
                      "final choice; finish the run (--resume) first")
    return results, checkpoint


def same_images(v6_data: dict, v8_data: dict, folder: Path) -> None:
    """Refused unless the v6a run's recorded subset and split are v8's, key by key."""
    differing = [f"{key} {v6_data.get(key)} (v8: {v8_data.get(key)})" for key in SAME_IMAGES
                 if v6_data.get(key) != v8_data.get(key)]
    if differing:
        raise Refused(f"{folder} was trained on other images than v8's: {', '.join(differing)}; a member must "
                      "share v8's subset and split (retrain v6a with v8's --subset-seed, --train-fraction, "
                      "--val-fraction, --image-size, --quick)")


def load_v6(version: str):
    """v6a's train.py from its own folder, as fashionmnist/benchmark.py loads a version: its folder first
    on sys.path, v8's modules of the same names set aside while it imports, and put back afterwards (the
    v6 module keeps references to its own debug_tools, metrics, normalize)."""
    saved_path = list(sys.path)
    saved_modules = {name: sys.modules.pop(name) for name in V6_MODULES if name in sys.modules}
    sys.path[:] = [str(REPO_ROOT / version)] + [p for p in sys.path if Path(p or ".").resolve() != VERSION_DIR]
    try:
        return importlib.import_module("train")
    finally:
        for name in V6_MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved_modules)
        sys.path[:] = saved_path


def v6_outputs(v6, record: dict, checkpoint: dict, cfg8, device: torch.device):
    """v6a's data (its load_data, with the data folder v8 reads), its model with the checkpoint's weights,
    and its evaluation Transform with the checkpoint's normalisation; the outputs in v8's format."""
    cfg6 = argparse.Namespace(**{**record["config"], "data_dir": cfg8.data_dir, "device": str(device)})
    data = v6.load_data(cfg6, device)
    for loader in (data.val_loader, data.test_loader):  # the normalisation the weights were trained with
        loader.transform = v6.Transform(checkpoint["normalisation"]["mean"], checkpoint["normalisation"]["std"],
                                        augment=False)
    model = v6.DeeperCNN(dropout=cfg6.dropout, final_weight_std=cfg6.final_weight_std,
                         final_bias_std=cfg6.final_bias_std).to(device)
    model.load_state_dict(checkpoint["model_state"])
    return data, model, {"val": train.member_probabilities(model, data.val_loader),
                         "test": train.member_probabilities(model, data.test_loader)}


def reproduces_source(outputs: dict, labels: torch.Tensor, record: dict) -> dict:
    """The imported validation outputs against v6a's own record of the same checkpoint (its best epoch's
    validation loss and accuracy, from metrics.evaluate): a wrong transform, normalisation or weights
    shows up here, before a member of wrong outputs joins an ensemble."""
    probabilities, labels = outputs["val"]["plain"], labels.cpu()
    accuracy = train.accuracy_of(probabilities, labels)
    loss = -probabilities[torch.arange(len(labels)), labels].clamp_min(1e-12).log().mean().item()
    images_off = round(abs(accuracy - record["best_val_accuracy"]) * len(labels))
    return {"passed": abs(loss - record["val_loss"]) <= REPRODUCE_LOSS_TOLERANCE
            and images_off <= REPRODUCE_ACCURACY_IMAGES,
            "val_accuracy": accuracy, "recorded_val_accuracy": record["best_val_accuracy"],
            "val_loss": loss, "recorded_val_loss": record["val_loss"], "images_off": images_off,
            "threshold": {"loss": REPRODUCE_LOSS_TOLERANCE, "images": REPRODUCE_ACCURACY_IMAGES}}


def main(argv=None) -> dict:
    """Import one run; return the member's results.json. Exit 2: refused (the message says why), 1: the
    outputs do not reproduce v6a's record or the mirrored outputs are not the mirror image's."""
    args = parse_args(argv)
    try:
        record, checkpoint = read_run(args.run)
        if args.out.exists() and any(args.out.iterdir()):
            raise Refused(f"{args.out} is not empty; import into a new folder")
        cfg8 = v8_config(args)
        device = train.pick_device(cfg8.device)
        v8_data = train.load_data(cfg8, device)  # the images a v8 run of these flags sees
        same_images(record.get("data", {}), v8_data.info, args.run)
        v6 = load_v6(record["version"])
        data, model, outputs = v6_outputs(v6, record, checkpoint, cfg8, device)
        fingerprint = train.data_fingerprint(data)  # v8's definition, on the images v6a's own loader drew
        if fingerprint != train.data_fingerprint(v8_data):
            raise Refused(f"{args.run}'s images are not v8's row by row (fingerprint {fingerprint} against "
                          f"{train.data_fingerprint(v8_data)})")
    except (Refused, DataNotFoundError, train.RunError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    reproduced = reproduces_source(outputs, data.val_loader.labels, record)
    probe = data.val_loader.transform(data.val_loader.images[:16], None)
    tta = train.verify_tta_flip(train.flip_view, probe.cpu(), recorded=[(probe, outputs["val"]["flipped"][:16])],
                                model_outputs=lambda _, images: train.outputs_on(model, images.to(device)))
    print(f"{args.run} ({record['version']}, seed {record['seed']}, best epoch {record['best_epoch']}): validation "
          f"accuracy {reproduced['val_accuracy']:.2%} (its record: {reproduced['recorded_val_accuracy']:.2%}), loss "
          f"{reproduced['val_loss']:.4f} (its record: {reproduced['recorded_val_loss']:.4f})")
    print(tta.report())
    if not (reproduced["passed"] and tta.passed):
        print(f"error: the outputs are not {args.run}'s checkpoint's (reproduced: {reproduced['passed']}, tta_flip: "
              f"{tta.passed}); nothing written", file=sys.stderr)
        raise SystemExit(1)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(args.run / train.BEST_MODEL_FILE, args.out / train.BEST_MODEL_FILE)
    save_checkpoint({"val": outputs["val"], "test": outputs["test"], "val_labels": data.val_loader.labels.cpu(),
                     "fingerprint": fingerprint, "member": None, "seed": record["seed"],
                     "version": record["version"]}, args.out / train.PREDICTIONS_FILE)
    results = {
        "version": record["version"], "imported_by": f"{train.VERSION}/import_member.py", "status": "completed",
        "exit_code": 0, "source": str(args.run), "source_command": record.get("command"),
        "command": " ".join(["python import_member.py", *(sys.argv[1:] if argv is None else map(str, argv))]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": train.device_name(device),
        "torch_version": torch.__version__, "member": None, "seed": record["seed"], "architecture": "DeeperCNN",
        # v6a's configuration, with the architecture's name for train.py's members table
        "config": {**record["config"], "arch": "deepercnn"},
        "best_epoch": record["best_epoch"], "best_val_accuracy": record["best_val_accuracy"],
        "train_time_s": record.get("train_time_s"), "all_checks_passed": record.get("all_checks_passed"),
        "data": record["data"], "fingerprint": fingerprint, "reproduces_source": reproduced,
        "checks": {"tta_flip": tta.to_dict()}, "outputs": sorted([train.BEST_MODEL_FILE, train.PREDICTIONS_FILE,
                                                                  "results.json"]),
    }
    write_json(args.out / "results.json", results)
    print(f"Member written to {args.out}: {', '.join(results['outputs'])}")
    return results


if __name__ == "__main__":
    sys.exit(main()["exit_code"])
