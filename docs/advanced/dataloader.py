"""Data-loading questions of docs/questions.md, answered in code on Fashion-MNIST.

1. Labels from file names: an ambiguous name raises an exception that names the file,
   instead of silently picking the first class that matches.
2. Class imbalance: WeightedRandomSampler (draw rare classes more often) beside
   downsampling (drop images of frequent classes), with the class counts each one
   feeds the model in one epoch and the validation accuracy of a small model trained on each.
3. Resize vs centre crop on a large image: what each keeps of the object.
4. Augmentation: a random training transform per image in a DataLoader, a deterministic
   evaluation transform, and the checks that tell them apart.

    python docs/advanced/dataloader.py                  # everything, figures into docs/advanced/outputs/
    python docs/advanced/dataloader.py --data-dir DIR   # Fashion-MNIST files elsewhere (see shared/data.py)
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset, WeightedRandomSampler

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = Path(__file__).resolve().parent / "outputs"
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # for shared/ (data location only)

# One keyword per Fashion-MNIST class, as it appears in a file name ("coat_00017.png").
KEYWORDS = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


# ---------------------------------------------------------------------------
# 1. Labels from file names
# ---------------------------------------------------------------------------
class AmbiguousLabelError(ValueError):
    """A file name that names no class or more than one."""


def label_naive(name: str) -> int:
    """The rule of many tutorials: the first class whose keyword occurs in the name wins.
    'coat_dress_00042.png' becomes a dress (KEYWORDS lists dress before coat), silently;
    'tshirt_00003.png' matches 'shirt' too and is saved only by the order of the list."""
    for index, keyword in enumerate(KEYWORDS):
        if keyword in name.lower():
            return index
    raise AmbiguousLabelError(f"{name}: no class keyword in the file name")


def label_strict(path: Path) -> int:
    """Exactly one class keyword among the name's words (split at _ - . and spaces), or an
    exception that names the file and what it matched. Whole words: 'tshirt' is not 'shirt'."""
    words = set(re.split(r"[_\-.\s]+", path.stem.lower()))
    matches = [keyword for keyword in KEYWORDS if keyword in words]
    if len(matches) != 1:
        what = f"matches {len(matches)} classes ({', '.join(matches)})" if matches else "matches no class"
        raise AmbiguousLabelError(f"{path}: the file name {what}; rename the file or remove it "
                                  f"(one of {', '.join(KEYWORDS)})")
    return KEYWORDS.index(matches[0])


class FilenameLabelledImages(Dataset):
    """PNG images in one folder, labelled by their file name. Every name is checked when the
    dataset is built, not when a batch happens to contain it: a bad name stops the run at
    once, naming the file, instead of crashing (or mislabelling) in epoch 7."""

    def __init__(self, folder: Path, transform=None):
        self.paths = sorted(Path(folder).glob("*.png"))
        if not self.paths:
            raise FileNotFoundError(f"no .png files in {folder}")
        self.labels = [label_strict(path) for path in self.paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        # Pillow reads the file, as in torchvision's ImageFolder (it comes with torchvision)
        with Image.open(self.paths[index]) as file:
            image = torch.from_numpy(np.array(file.convert("L"))).unsqueeze(0).float().div(255.0)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


def write_png_folder(folder: Path, images: torch.Tensor, labels: torch.Tensor, extra: dict) -> Path:
    """Save uint8 images (N, 28, 28) as '<keyword>_<index>.png', plus `extra` (file name -> image)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image.numpy()).save(folder / f"{KEYWORDS[int(label)]}_{i:05d}.png")
    for name, image in extra.items():
        Image.fromarray(image.numpy()).save(folder / name)
    return folder


def demo_labels(images, labels, work: Path) -> dict:
    ambiguous = "coat_dress_00042.png"  # a coat, saved under a name that names two classes
    clean = write_png_folder(work / "clean", images[:40], labels[:40], {})  # coat_00017.png, dress_00003.png, ...
    dataset = FilenameLabelledImages(clean)
    loader = DataLoader(dataset, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    batch_images, batch_labels = next(iter(loader))
    # the labels read from the names are the labels the images were saved with
    names_agree = all(int(labels[int(path.stem.split("_")[-1])]) == label
                      for path, label in zip(dataset.paths, dataset.labels))
    print(f"   {len(dataset)} files, labels from their names agree with the data set: {names_agree}; "
          f"a batch: {tuple(batch_images.shape)}, labels {batch_labels[:8].tolist()}...")
    print(f"   naive rule on '{ambiguous}': {KEYWORDS[label_naive(ambiguous)]} (silently)")
    coats = torch.nonzero(labels == KEYWORDS.index("coat")).flatten()
    coat = images[coats[0]] if len(coats) else images[0]
    broken = write_png_folder(work / "broken", images[:40], labels[:40], {ambiguous: coat})
    try:
        FilenameLabelledImages(broken)
        error = None
    except AmbiguousLabelError as err:
        error = str(err)
    print(f"   strict rule: AmbiguousLabelError: {error}")
    return {"files": len(dataset), "names_agree": names_agree, "naive_label": KEYWORDS[label_naive(ambiguous)],
            "error": error}


# ---------------------------------------------------------------------------
# 2. Class imbalance
# ---------------------------------------------------------------------------
def imbalanced_subset(labels: torch.Tensor, frequent: int, rare: int, rare_classes, seed: int) -> torch.Tensor:
    """Indices with `frequent` images of every class except `rare_classes`, which get `rare`."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(10):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        chosen.append(idx[:rare if c in rare_classes else frequent])
    return torch.cat(chosen)


def balancing_sampler(labels: torch.Tensor, seed: int) -> WeightedRandomSampler:
    """Each image drawn with probability 1 / (its class's count): every class equally often per
    epoch on average, rare images repeated (with replacement), nothing thrown away."""
    counts = torch.bincount(labels, minlength=10).float()
    weights = (1.0 / counts)[labels]
    return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True,
                                 generator=torch.Generator().manual_seed(seed))


def downsample(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Indices with as many images of every class as the rarest class has."""
    generator = torch.Generator().manual_seed(seed)
    smallest = int(torch.bincount(labels, minlength=10).min())
    keep = []
    for c in range(10):
        idx = torch.nonzero(labels == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=generator)[:smallest]])
    return torch.cat(keep)


def class_counts_of_one_epoch(loader) -> list[int]:
    counts = Counter()
    for _, labels in loader:
        counts.update(labels.tolist())
    return [counts[c] for c in range(10)]


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 10))


def train_and_score(loader, val_images, val_labels, epochs: int, seed: int, rare_classes) -> dict:
    torch.manual_seed(seed)
    model = small_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        model.train()
        for images, labels in loader:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(val_images).argmax(1)
    recall = [((predicted == c) & (val_labels == c)).sum().item() / max(1, (val_labels == c).sum().item())
              for c in range(10)]
    rare = [recall[c] for c in rare_classes]
    return {"accuracy": (predicted == val_labels).float().mean().item(),
            "recall_rare_classes": sum(rare) / len(rare), "recall_per_class": recall}


def demo_imbalance(images, labels, val_images, val_labels, args) -> dict:
    rare_classes = (5, 6, 7, 8, 9)
    subset = imbalanced_subset(labels, args.frequent, args.rare, rare_classes, args.seed)
    x, y = images[subset], labels[subset]
    dataset = TensorDataset(x, y)
    loaders = {
        "shuffle (as is)": DataLoader(dataset, batch_size=64, shuffle=True,
                                      generator=torch.Generator().manual_seed(args.seed)),
        "WeightedRandomSampler": DataLoader(dataset, batch_size=64, sampler=balancing_sampler(y, args.seed)),
        "downsampled": DataLoader(TensorDataset(*dataset[downsample(y, args.seed)]), batch_size=64, shuffle=True,
                                  generator=torch.Generator().manual_seed(args.seed)),
    }
    print(f"   training subset: {args.frequent} images of classes 0-4, {args.rare} of classes 5-9 "
          f"({len(y)} images); validation: {len(val_labels)} balanced images")
    print(f"   {'loader':<24}{'images/epoch':>13}  class counts drawn in one epoch (0..9)")
    results = {}
    for name, loader in loaders.items():
        counts = class_counts_of_one_epoch(loader)
        results[name] = {"counts": counts, "max_over_min": max(counts) / max(1, min(counts))}
        print(f"   {name:<24}{sum(counts):>13}  {counts}")
    print(f"   a small CNN, {args.epochs} epochs on each, scored on the balanced validation set:")
    print(f"   {'loader':<24}{'accuracy':>9}  {'recall of classes 5-9':>22}")
    for name, loader in loaders.items():
        score = train_and_score(loader, val_images, val_labels, args.epochs, args.seed, rare_classes)
        results[name].update(score)
        print(f"   {name:<24}{score['accuracy']:>9.1%}  {score['recall_rare_classes']:>22.1%}")
    return results


# ---------------------------------------------------------------------------
# 3. Resize vs centre crop
# ---------------------------------------------------------------------------
def demo_resize_vs_crop(image: torch.Tensor) -> dict:
    """A 28x28 image blown up to 112x112 stands in for a high-resolution photo of the same object.
    The model takes 28x28. CenterCrop(28) keeps the middle sixteenth of the photo; Resize(28) keeps
    all of it at lower resolution."""
    photo = F.interpolate(image[None], size=(112, 112), mode="bilinear", align_corners=False)[0].clamp(0, 1)
    cropped = T.CenterCrop(28)(photo)
    resized = T.Resize(28, antialias=True)(photo)
    on = photo > 0.1  # the object's pixels in the photo
    crop_share = on[..., 42:70, 42:70].sum().item() / on.sum().item()  # CenterCrop(28) of 112: rows/cols 42..69
    correlation = {name: float(np.corrcoef(view.flatten().numpy(), image.flatten().numpy())[0, 1])
                   for name, view in (("center_crop", cropped), ("resize", resized))}
    print(f"   photo {tuple(photo.shape)} -> model input (1, 28, 28): CenterCrop(28) shows "
          f"{28 * 28 / (112 * 112):.0%} of the photo and {crop_share:.0%} of the object's pixels; "
          f"Resize(28) shows all of it")
    print(f"   correlation with the object as a 28x28 image: crop {correlation['center_crop']:.2f}, "
          f"resize {correlation['resize']:.2f}")
    return {"photo": photo, "center_crop": cropped, "resize": resized, "crop_object_share": crop_share,
            "correlation": correlation}


# ---------------------------------------------------------------------------
# 4. Augmentation
# ---------------------------------------------------------------------------
TRAIN_TRANSFORM = T.Compose([
    T.RandomHorizontalFlip(p=0.5),  # a mirrored shirt is still a shirt
    T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),  # small shifts, turns and zooms
    T.RandomErasing(p=0.25, scale=(0.02, 0.1), value=0),  # a missing patch: do not rely on one spot
])  # no vertical flip: an upside-down shoe is not a Fashion-MNIST image
EVAL_TRANSFORM = None  # evaluation sees the images as they are: the same input, the same score, every time


class Augmented(Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = self.images[index]
        return (self.transform(image) if self.transform else image), self.labels[index]


def demo_augmentation(images, labels, seed: int) -> dict:
    torch.manual_seed(seed)
    train_set, eval_set = Augmented(images, labels, TRAIN_TRANSFORM), Augmented(images, labels, EVAL_TRANSFORM)
    first, second = train_set[0][0], train_set[0][0]
    batch, batch_labels = next(iter(DataLoader(train_set, batch_size=16, shuffle=False)))
    checks = {
        "training transform is random (two reads of image 0 differ)": not torch.equal(first, second),
        "evaluation transform is deterministic (two reads are equal)": torch.equal(eval_set[0][0], eval_set[0][0]),
        "shape kept (B, 1, 28, 28)": tuple(batch.shape) == (16, 1, 28, 28),
        "pixels stay in [0, 1]": bool(batch.min() >= 0 and batch.max() <= 1),
        "labels unchanged": torch.equal(batch_labels, labels[:16]),
    }
    for name, ok in checks.items():
        print(f"   [{'PASS' if ok else 'FAIL'}] {name}")
    variants = torch.stack([train_set[i][0] for i in range(2) for _ in range(3)])  # three draws of two images
    return {"checks": checks, "variants": variants}


# ---------------------------------------------------------------------------
def plot(resize_crop: dict, augmentation: dict, images: torch.Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 6, figsize=(12, 4.6))
    panels = [(resize_crop["photo"], "large photo 112x112"), (resize_crop["center_crop"], "CenterCrop(28)"),
              (resize_crop["resize"], "Resize(28)")]
    for i in range(3):
        panels.append((images[i], f"original {i}"))
    for i, variant in enumerate(augmentation["variants"]):
        panels.append((variant, f"augmented {i // 3}"))
    for ax, (image, title) in zip(axes.flat, panels):
        ax.imshow(image.squeeze(0).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle("Resize keeps the object, a centre crop keeps its middle; augmented training views")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_fashion_mnist(data_dir):
    from torchvision.datasets import FashionMNIST

    from shared.data import fashion_mnist_root

    root = fashion_mnist_root(data_dir)
    train = FashionMNIST(str(root), train=True, download=False)
    return train.data, train.targets


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=None, help="folder with the Fashion-MNIST files")
    p.add_argument("--out", type=Path, default=OUT_DIR, help="where dataloader.png goes")
    p.add_argument("--frequent", type=int, default=1000, help="training images of each frequent class (0-4)")
    p.add_argument("--rare", type=int, default=100, help="training images of each rare class (5-9)")
    p.add_argument("--val-per-class", type=int, default=200, help="balanced validation images per class")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the small CNN per loader")
    p.add_argument("--seed", type=int, default=0, help="seed of subsets, samplers and models")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    if min(args.frequent, args.rare, args.val_per_class, args.epochs, args.threads) < 1:
        p.error("counts, --epochs and --threads must be >= 1")
    if args.rare > args.frequent:
        p.error("--rare must not exceed --frequent")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from shared.data import DataNotFoundError

    try:
        raw_images, raw_labels = load_fashion_mnist(args.data_dir)
    except DataNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    # Validation: the first `--val-per-class` images of each class among the last images of the
    # training file; the training subsets come from the images before them, so the two never overlap.
    pool_start = len(raw_labels) - 30 * args.val_per_class
    pool = torch.arange(pool_start, len(raw_labels))
    val_idx = torch.cat([pool[raw_labels[pool] == c][:args.val_per_class] for c in range(10)])
    images = raw_images.unsqueeze(1).float().div(255.0)
    images_train, labels_train = images[:pool_start], raw_labels[:pool_start]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        print("1. Labels from file names")
        results["labels"] = demo_labels(raw_images[:50], raw_labels[:50], Path(tmp))
    print("\n2. Class imbalance")
    results["imbalance"] = demo_imbalance(images_train, labels_train, images[val_idx], raw_labels[val_idx], args)
    print("\n3. Resize vs centre crop")
    results["resize_vs_crop"] = demo_resize_vs_crop(images[0])
    print("\n4. Augmentation")
    results["augmentation"] = demo_augmentation(images[:16], raw_labels[:16], args.seed)
    plot(results["resize_vs_crop"], results["augmentation"], images[:3], args.out / "dataloader.png")
    print(f"\nFigure: {args.out / 'dataloader.png'}")
    return results


if __name__ == "__main__":
    main()
