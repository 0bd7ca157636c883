"""Per-channel mean and std of the training images, computed once and cached.

Normalize(mean, std) needs these six numbers. They come from the training split
only: statistics that include validation or test images let those images shape
the input pipeline (a small leak, but a habit that matters on data sets where the
splits differ). train.py calls `training_set_statistics`; run this file on its own
to see the numbers for the default subset:

    python normalize.py                      # the 40% subset, 160 px
    python normalize.py --data-dir FOLDER    # another copy of Imagenette

The result is cached as JSON next to the decoded images (data/imagenette-cache/),
keyed by the training split's content key: another subset, another image size or
a changed image file gives another key, so stale numbers are never reused.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

VERSION_DIR = Path(__file__).resolve().parent
REPO_ROOT = VERSION_DIR.parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # for shared/ (data location only)

import shared.imagenette as imagenette  # noqa: E402
from shared.data import DataNotFoundError  # noqa: E402


@torch.no_grad()
def channel_statistics(images_uint8: torch.Tensor, batch_size: int = 256) -> tuple[list[float], list[float]]:
    """Mean and std of each of the three channels over every pixel of `images_uint8` (N, 3, H, W).

    Summed batch by batch in float64 (on the images' device), so 100 million pixels
    neither round away nor need a float copy of the whole set in memory.
    """
    dtype = torch.float64 if images_uint8.device.type != "mps" else torch.float32  # MPS has no float64
    total = torch.zeros(3, dtype=dtype, device=images_uint8.device)
    total_sq = torch.zeros(3, dtype=dtype, device=images_uint8.device)
    for start in range(0, len(images_uint8), batch_size):
        pixels = images_uint8[start:start + batch_size].to(dtype).div(255.0)
        total += pixels.sum(dim=(0, 2, 3))
        total_sq += pixels.pow(2).sum(dim=(0, 2, 3))
    count = images_uint8.shape[0] * images_uint8.shape[2] * images_uint8.shape[3]
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(0).mul(count / (count - 1)).sqrt()
    return mean.tolist(), std.tolist()


def training_set_statistics(train_images_uint8: torch.Tensor, content_key: str,
                            cache_dir: Path | None = None) -> dict:
    """The training split's channel mean and std: read from the cache, or computed and cached.

    Returns {"mean": [r, g, b], "std": [r, g, b], "from_cache": bool, "file": path or None}.
    """
    cache_dir = imagenette.CACHE_DIR if cache_dir is None else Path(cache_dir)
    cache_file = cache_dir / f"normalize-{content_key}.json"
    if cache_file.is_file():
        try:
            stored = json.loads(cache_file.read_text())
            if stored.get("content_key") == content_key and stored.get("images") == len(train_images_uint8):
                return {"mean": stored["mean"], "std": stored["std"], "from_cache": True, "file": str(cache_file)}
        except (OSError, ValueError, KeyError):
            pass  # unreadable: compute again
    mean, std = channel_statistics(train_images_uint8)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".json.partial")
        tmp.write_text(json.dumps({"content_key": content_key, "images": len(train_images_uint8),
                                   "mean": mean, "std": std}, indent=2))
        tmp.replace(cache_file)
    except OSError:
        cache_file = None  # a read-only checkout: the numbers are cheap to compute again
    return {"mean": mean, "std": std, "from_cache": False, "file": str(cache_file) if cache_file else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with train/<wnid>/ and val/<wnid>/")
    parser.add_argument("--train-fraction", type=float, default=0.4, help="stratified share of train/")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="share of the subset held out")
    parser.add_argument("--subset-seed", type=int, default=0, help="which images form the subset")
    parser.add_argument("--image-size", type=int, default=160, help="side of the square images, in px")
    args = parser.parse_args(argv)
    try:
        data = imagenette.load_imagenette(args.data_dir, train_fraction=args.train_fraction,
                                          val_fraction=args.val_fraction, subset_seed=args.subset_seed,
                                          size=args.image_size)
    except DataNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    stats = training_set_statistics(data.train_images, data.info["train_content_key"])
    print(f"{len(data.train_images):,} training images at {args.image_size} px "
          f"({'cached' if stats['from_cache'] else 'computed'}{', ' + stats['file'] if stats['file'] else ''})")
    print(f"mean = [{', '.join(f'{m:.4f}' for m in stats['mean'])}]")
    print(f"std  = [{', '.join(f'{s:.4f}' for s in stats['std'])}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
