"""shared/imagenette.py: finding Imagenette, the stratified subset, decoding (greyscale,
resize + centre crop), the uint8 cache and its invalidation, corrupt images, and the
export of the subset that the GPU runs trained on. All on the generated stand-in
(tests/imagenette_helpers.py); the cache lives in a temporary folder."""
from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import shared.imagenette as imagenette
from imagenette_helpers import (  # noqa: F401  (fixtures)
    CLASS_NAMES,
    TRAIN_PER_CLASS,
    VAL_PER_CLASS,
    WNIDS,
    add_corrupt_image,
    image_modes,
    imagenette_folder,
    isolated_cache,
    make_imagenette_folder,
)
from shared.data import DataNotFoundError


SIZE = 32  # decoding at 32 px keeps these tests fast; the path is the same at 160


def small_folder(root: Path) -> Path:
    """10 training and 3 test images per class: for tests that change files."""
    return make_imagenette_folder(root, train_per_class=10, val_per_class=3)


def load(root, cache_dir, **kwargs):
    kwargs = {"size": SIZE, "show_progress": False, **kwargs}
    return imagenette.load_imagenette(root, cache_dir=cache_dir, **kwargs)


def cache_files(cache_dir: Path, split: str) -> list[str]:
    return sorted(p.name for p in Path(cache_dir).glob(f"{split}-*.pt"))


# ---------------------------------------------------------------------------
# Finding the data
# ---------------------------------------------------------------------------
def test_data_dir_is_found(imagenette_folder):
    source = imagenette.find_imagenette(imagenette_folder)
    assert (source.root, source.found_via) == (imagenette_folder, "--data-dir")


def test_imagenette2_160_subfolder_is_found(imagenette_folder, tmp_path):
    (tmp_path / "imagenette2-160").symlink_to(imagenette_folder, target_is_directory=True)
    source = imagenette.find_imagenette(tmp_path)
    assert (source.root, source.found_via) == (tmp_path / "imagenette2-160", "--data-dir")


def test_data_dir_env_and_repository_cache(imagenette_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(imagenette, "DATA_CACHE", tmp_path / "empty_repository_cache")
    monkeypatch.setenv("DATA_DIR", str(imagenette_folder))
    assert imagenette.find_imagenette().found_via == "DATA_DIR"
    monkeypatch.delenv("DATA_DIR")
    (tmp_path / "empty_repository_cache").mkdir()
    (tmp_path / "empty_repository_cache" / "imagenette2-160").symlink_to(imagenette_folder)
    source = imagenette.find_imagenette()
    assert (source.root.name, source.found_via) == ("imagenette2-160", "repository cache")


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path):
    nowhere = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError, match=f"^no such folder: {nowhere}$"):  # a typo: refused, not created
        imagenette.find_imagenette(nowhere)
    assert not nowhere.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError) as err:
        imagenette.find_imagenette(empty)
    message = str(err.value)
    assert message.startswith("Imagenette was not found. Looked in:")
    assert f"--data-dir: {empty} (" in message
    assert f"--data-dir: {empty / 'imagenette2-160'} (does not exist)" in message
    assert "not tried: --data-dir names the folder to use" in message  # nothing downloaded into it
    assert "imagenette2-160.tgz" in message and "--data-dir FOLDER" in message and "DATA_DIR" in message
    assert list(empty.iterdir()) == []


def test_missing_data_without_data_dir_names_the_repository_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(imagenette, "DATA_CACHE", tmp_path / "repo_data")
    with pytest.raises(DataNotFoundError, match="repository cache: .*repo_data"):
        imagenette.find_imagenette()


def test_folder_without_train_and_val_is_rejected(tmp_path):
    (tmp_path / "train" / WNIDS[0]).mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match=r"no train/ and val/ folders"):
        imagenette.find_imagenette(tmp_path)


def test_different_class_folders_in_train_and_val_are_rejected(tmp_path):
    root = make_imagenette_folder(tmp_path / "broken", train_per_class=1, val_per_class=1)
    assert imagenette.find_imagenette(root).root == root  # control: intact, it is accepted
    (root / "val" / WNIDS[3]).rename(root / "val" / "n99999999")
    with pytest.raises(DataNotFoundError, match="train/ and val/ hold different class folders"):
        imagenette.find_imagenette(root)


# ---------------------------------------------------------------------------
# Listing, class names, the stratified subset, the fingerprint
# ---------------------------------------------------------------------------
def test_list_split_is_sorted_with_labels_in_folder_order(imagenette_folder):
    paths, labels, wnids = imagenette.list_split(imagenette_folder, "train")
    assert wnids == WNIDS and len(paths) == 10 * TRAIN_PER_CLASS
    assert paths == sorted(paths)
    assert labels == [k for k in range(10) for _ in range(TRAIN_PER_CLASS)]
    assert all(p.parent.name == WNIDS[y] for p, y in zip(paths, labels))


def test_class_names_are_readable_and_in_label_order():
    assert imagenette.class_names(WNIDS) == CLASS_NAMES
    assert CLASS_NAMES[:3] == ["tench", "English springer", "cassette player"]
    assert CLASS_NAMES[-1] == "parachute"
    assert imagenette.class_names(["n01440764", "my_own_class"]) == ["tench", "my_own_class"]


UNEVEN = [0] * 50 + [1] * 33 + [2] * 7 + [3] * 1 + [4] * 20  # 111 labels, sorted by class like list_split's


def test_stratified_subset_keeps_every_class_share():
    subset = imagenette.stratified_subset(UNEVEN, 0.4, seed=0)
    assert subset == sorted(subset) and len(set(subset)) == len(subset)
    counts = Counter(UNEVEN[i] for i in subset)
    # round(0.4 * n) per class, at least one: 20, 13, 3, 1, 8
    assert [counts[c] for c in range(5)] == [20, 13, 3, 1, 8]


def test_stratified_subset_is_reproducible_and_depends_on_the_seed():
    first = imagenette.stratified_subset(UNEVEN, 0.4, seed=0)
    assert imagenette.stratified_subset(UNEVEN, 0.4, seed=0) == first
    other = imagenette.stratified_subset(UNEVEN, 0.4, seed=1)
    assert other != first  # control: the seed does choose the images
    assert Counter(UNEVEN[i] for i in other) == Counter(UNEVEN[i] for i in first)


def test_stratified_subset_of_everything():
    assert imagenette.stratified_subset(UNEVEN, 1.0, seed=3) == list(range(len(UNEVEN)))


def test_fingerprint_depends_on_which_images_and_their_order(imagenette_folder):
    paths, _, _ = imagenette.list_split(imagenette_folder, "train")
    fingerprint = imagenette.fingerprint(paths[:5], imagenette_folder)
    assert len(fingerprint) == 16 and fingerprint == imagenette.fingerprint(paths[:5], imagenette_folder)
    assert imagenette.fingerprint(paths[1:6], imagenette_folder) != fingerprint
    assert imagenette.fingerprint(paths[:5][::-1], imagenette_folder) != fingerprint


# ---------------------------------------------------------------------------
# Decoding one image: greyscale -> RGB, shorter side resized, centre crop
# ---------------------------------------------------------------------------
def test_decode_keeps_the_centre_of_a_wide_image(tmp_path):
    """72 x 96: red left and blue right quarter-bands of 12 columns, green in between.
    Shorter side 72 -> 48 makes the width 64; the centre crop of 48 cuts 8 columns
    (12 original ones) from each side: only green is left. A squashed (not cropped)
    resize would keep red and blue borders; an off-centre crop would keep one."""
    array = np.zeros((72, 96, 3), dtype=np.uint8)
    array[:, :, 1] = 200
    array[:, :12] = (220, 0, 0)
    array[:, 84:] = (0, 0, 220)
    Image.fromarray(array).save(tmp_path / "wide.png")
    image = imagenette.decode_image(tmp_path / "wide.png", 48)
    assert image.shape == (3, 48, 48) and image.dtype == torch.uint8
    assert image[0, :, 1:-1].max() < 30 and image[2, :, 1:-1].max() < 30  # no red, no blue (1 px of filter edge)
    assert image[1].float().mean() > 190
    squashed = imagenette.decode_image(tmp_path / "wide.png", 96)  # wider than the image: upscaled, still cropped
    assert squashed.shape == (3, 96, 96) and squashed[0, :, 2:-2].max() < 30


def test_decode_turns_greyscale_into_three_equal_channels(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50), dtype=np.uint8), mode="L").save(
        tmp_path / "grey.JPEG")
    image = imagenette.decode_image(tmp_path / "grey.JPEG", 32)
    assert image.shape == (3, 32, 32)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2]) and image.float().std() > 10


# ---------------------------------------------------------------------------
# load_imagenette: shapes, greyscale, the splits, the report
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded(imagenette_folder, tmp_path_factory):
    return load(imagenette_folder, tmp_path_factory.mktemp("loaded_cache"))


def test_shapes_dtypes_and_split_sizes(loaded):
    data = loaded
    subset = round(0.4 * TRAIN_PER_CLASS)  # 24 per class
    val = round(0.15 * subset)  # 4 per class
    for images, labels, per_class in ((data.train_images, data.train_labels, subset - val),
                                      (data.val_images, data.val_labels, val),
                                      (data.test_images, data.test_labels, VAL_PER_CLASS)):
        assert images.dtype == torch.uint8 and images.shape == (10 * per_class, 3, SIZE, SIZE)
        assert labels.dtype == torch.int64 and torch.bincount(labels, minlength=10).tolist() == [per_class] * 10
    assert data.classes == CLASS_NAMES and data.wnids == WNIDS
    info = data.info
    assert (info["subset_images"], info["train_images"], info["val_images"], info["test_images"]) == (
        10 * subset, 10 * (subset - val), 10 * val, 10 * VAL_PER_CLASS)
    assert info["train_folder_images"] == 10 * TRAIN_PER_CLASS
    assert info["train_folder_class_counts"] == [TRAIN_PER_CLASS] * 10
    assert (info["train_fraction"], info["val_fraction"], info["subset_seed"], info["image_size"]) == (
        0.4, 0.15, 0, SIZE)
    assert info["found_via"] == "--data-dir" and info["from_cache"] == {"train": False, "val": False, "test": False}


def test_greyscale_files_come_out_as_three_equal_channels(loaded, imagenette_folder):
    """The test split is every file of val/ in sorted order, so its i-th image is the i-th file."""
    paths, _, _ = imagenette.list_split(imagenette_folder, "val")
    modes = image_modes(paths)
    assert 5 <= modes.count("L") < len(modes) // 2  # the folder does hold greyscale JPEGs
    for image, mode in zip(loaded.test_images, modes):
        equal = torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
        assert equal == (mode == "L")  # and colour images stayed colourful


def _row_index(images: torch.Tensor) -> dict[bytes, int]:
    return {image.numpy().tobytes(): i for i, image in enumerate(images)}


def test_train_and_val_are_disjoint_and_together_the_subset(loaded, imagenette_folder):
    """Matched by content: every loaded image is found among all decoded train/ images."""
    paths, labels, _ = imagenette.list_split(imagenette_folder, "train")
    everything, _ = imagenette.decode_images(paths, SIZE, cache_dir=None, show_progress=False)
    index = _row_index(everything)
    assert len(index) == len(paths)  # every generated image is unique, so the match is unambiguous
    train = [index[image.numpy().tobytes()] for image in loaded.train_images]
    val = [index[image.numpy().tobytes()] for image in loaded.val_images]
    assert [labels[i] for i in train] == loaded.train_labels.tolist()
    assert [labels[i] for i in val] == loaded.val_labels.tolist()
    assert not set(train) & set(val)
    subset = imagenette.stratified_subset(labels, 0.4, 0)
    assert sorted(train + val) == subset
    # the validation split is itself a stratified draw (seed subset_seed + 1) from the subset: the same
    # images in every run and every version
    held_out = imagenette.stratified_subset([labels[i] for i in subset], 0.15, 1)
    assert val == [subset[j] for j in held_out] and train == sorted(train)
    assert loaded.info["subset_fingerprint"] == imagenette.fingerprint([paths[i] for i in subset],
                                                                       imagenette_folder)


def test_per_class_caps_take_the_first_images_of_each_class(loaded, imagenette_folder, tmp_path):
    capped = load(imagenette_folder, tmp_path, per_class={"train": 16, "val": 3, "test": 5})
    assert torch.bincount(capped.train_labels, minlength=10).tolist() == [16] * 10
    assert torch.bincount(capped.val_labels, minlength=10).tolist() == [3] * 10
    assert torch.bincount(capped.test_labels, minlength=10).tolist() == [5] * 10
    for label in range(10):
        assert torch.equal(capped.train_images[capped.train_labels == label],
                           loaded.train_images[loaded.train_labels == label][:16])
    assert capped.info["subset_fingerprint"] == loaded.info["subset_fingerprint"]  # the caps come after the subset


def test_uneven_classes_keep_their_mix(tmp_path):
    """A folder whose classes differ in size (as Imagenette's do: 858 ... 993 images):
    the counts are reported per class, and every split keeps each class's share."""
    root = small_folder(tmp_path / "data")
    for label, drop in ((1, 5), (6, 3)):
        for path in sorted((root / "train" / WNIDS[label]).iterdir())[:drop]:
            path.unlink()
    data = load(root, None)
    counts = [10, 5, 10, 10, 10, 10, 7, 10, 10, 10]
    assert data.info["train_folder_class_counts"] == counts and data.info["train_folder_images"] == sum(counts)
    subset = [round(0.4 * n) for n in counts]  # 4, 2, 4, ... 3, ...
    val = [max(1, round(0.15 * n)) for n in subset]
    assert torch.bincount(data.val_labels, minlength=10).tolist() == val
    assert torch.bincount(data.train_labels, minlength=10).tolist() == [s - v for s, v in zip(subset, val)]


# ---------------------------------------------------------------------------
# The decoded-image cache
# ---------------------------------------------------------------------------
def test_second_load_reads_the_cache_and_gives_the_same_tensors(tmp_path):
    root = small_folder(tmp_path / "data")
    cache = tmp_path / "cache"
    first = load(root, cache)
    assert first.info["from_cache"] == {"train": False, "val": False, "test": False}
    assert len(list(cache.glob("*.pt"))) == 3
    second = load(root, cache)
    assert second.info["from_cache"] == {"train": True, "val": True, "test": True}
    for name in ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name


def test_default_cache_dir_is_the_patched_one(tmp_path, isolated_cache):
    """cache_dir left at its default follows CACHE_DIR at call time (this is what keeps tests out of data/)."""
    root = small_folder(tmp_path / "data")
    before = set(isolated_cache.glob("*.pt"))
    imagenette.load_imagenette(root, size=SIZE, show_progress=False)
    assert len(set(isolated_cache.glob("*.pt")) - before) == 3


def test_touching_a_file_invalidates_its_split_and_removes_the_stale_file(tmp_path):
    root = small_folder(tmp_path / "data")
    cache = tmp_path / "cache"
    load(root, cache)
    old_test_cache = cache_files(cache, "test")
    victim = imagenette.list_split(root, "val")[0][7]
    stat = victim.stat()
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # same bytes, newer mtime
    again = load(root, cache)
    assert again.info["from_cache"] == {"train": True, "val": True, "test": False}
    assert len(cache_files(cache, "test")) == 1 and cache_files(cache, "test") != old_test_cache  # stale one gone
    assert load(root, cache).info["from_cache"]["test"] is True  # and the new one is used


def test_rewritten_file_is_decoded_again(tmp_path):
    root = small_folder(tmp_path / "data")
    cache = tmp_path / "cache"
    before = load(root, cache)
    victim = imagenette.list_split(root, "val")[0][4]
    Image.new("RGB", (96, 72), (0, 255, 0)).save(victim, format="JPEG")
    after = load(root, cache)
    assert after.info["from_cache"] == {"train": True, "val": True, "test": False}
    assert not torch.equal(after.test_images[4], before.test_images[4])
    assert after.test_images[4, 1].float().mean() > 240 and after.test_images[4, 0].float().mean() < 15
    assert torch.equal(after.test_images[5:], before.test_images[5:])


def test_added_file_invalidates_its_split(tmp_path):
    root = small_folder(tmp_path / "data")
    cache = tmp_path / "cache"
    before = load(root, cache)
    shutil.copy(imagenette.list_split(root, "val")[0][0], root / "val" / WNIDS[2] / "extra.JPEG")
    after = load(root, cache)
    assert after.info["from_cache"] == {"train": True, "val": True, "test": False}
    assert len(after.test_labels) == len(before.test_labels) + 1
    assert torch.bincount(after.test_labels).tolist()[2] == torch.bincount(before.test_labels).tolist()[2] + 1


def test_another_image_size_does_not_read_the_old_cache(tmp_path):
    root = small_folder(tmp_path / "data")
    cache = tmp_path / "cache"
    load(root, cache)
    other = load(root, cache, size=40)
    assert other.info["from_cache"] == {"train": False, "val": False, "test": False}
    assert other.train_images.shape[-1] == 40
    assert load(root, cache).info["from_cache"] == {"train": True, "val": True, "test": True}  # both kept


def test_quick_load_does_not_evict_the_full_cache(tmp_path):
    root = make_imagenette_folder(tmp_path / "data", train_per_class=30, val_per_class=4)
    cache = tmp_path / "cache"
    load(root, cache)
    quick = load(root, cache, per_class={"train": 5, "val": 1, "test": 2})
    assert quick.info["from_cache"] == {"train": False, "val": False, "test": False}
    assert len(list(cache.glob("*.pt"))) == 6
    assert load(root, cache).info["from_cache"] == {"train": True, "val": True, "test": True}
    assert load(root, cache, per_class={"train": 5, "val": 1, "test": 2}).info["from_cache"]["train"] is True


def test_broken_cache_file_is_rebuilt(tmp_path):
    root = small_folder(tmp_path / "data")
    cache = tmp_path / "cache"
    first = load(root, cache)
    (cache / cache_files(cache, "train")[0]).write_bytes(b"not a torch file")
    again = load(root, cache)
    assert again.info["from_cache"] == {"train": False, "val": True, "test": True}
    assert torch.equal(again.train_images, first.train_images)


def test_no_cache_at_all(tmp_path):
    root = small_folder(tmp_path / "data")
    data = load(root, None)
    assert data.info["from_cache"] == {"train": False, "val": False, "test": False}
    assert load(root, None).info["from_cache"]["train"] is False


# ---------------------------------------------------------------------------
# Corrupt images
# ---------------------------------------------------------------------------
def test_corrupt_image_names_the_file(tmp_path):
    root = small_folder(tmp_path / "data")
    load(root, tmp_path / "cache", train_fraction=1.0)  # control: loads before the file is added
    bad = add_corrupt_image(root)
    with pytest.raises(imagenette.CorruptImageError) as err:
        load(root, tmp_path / "cache", train_fraction=1.0)
    assert str(bad) in str(err.value) and "Delete or replace this file" in str(err.value)
    assert isinstance(err.value, DataNotFoundError)  # train.py's handler catches it: exit 2, no traceback


def test_empty_class_folders_are_reported(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / WNIDS[0]).mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="holds no images"):
        load(tmp_path, None)


# ---------------------------------------------------------------------------
# export_subset: the GPU runs trained on an exported copy with --train-fraction 1.0
# ---------------------------------------------------------------------------
def test_export_then_full_fraction_gives_the_same_data(imagenette_folder, loaded, tmp_path):
    dest = tmp_path / "exported"
    summary = imagenette.export_subset(imagenette_folder, dest)
    assert summary == {"subset_images": loaded.info["subset_images"], "test_images": 10 * VAL_PER_CLASS,
                       "subset_fingerprint": loaded.info["subset_fingerprint"]}
    copied = sorted((dest / "train").rglob("*.JPEG"))
    assert len(copied) == loaded.info["subset_images"]
    originals = [imagenette_folder / p.relative_to(dest) for p in copied]
    assert [p.stat().st_mtime_ns for p in copied] == [p.stat().st_mtime_ns for p in originals]  # copy2
    assert copied[0].read_bytes() == originals[0].read_bytes()
    exported = load(dest, tmp_path / "cache", train_fraction=1.0)
    assert exported.info["subset_fingerprint"] == loaded.info["subset_fingerprint"]
    assert exported.info["train_folder_images"] == loaded.info["subset_images"]
    for name in ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(exported, name), getattr(loaded, name)), name
    # control: the same fraction on the copy draws a different (smaller) subset
    assert load(dest, None, train_fraction=0.4).info["subset_fingerprint"] != loaded.info["subset_fingerprint"]


def test_export_command_line(imagenette_folder, tmp_path, capsys):
    assert imagenette._main(["export-subset", str(tmp_path / "copy"), "--data-dir", str(imagenette_folder)]) == 0
    out = capsys.readouterr().out
    assert f"copied {round(0.4 * TRAIN_PER_CLASS) * 10} training and {10 * VAL_PER_CLASS} test images" in out
    assert imagenette._main(["export-subset", str(tmp_path / "x"), "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith(f"error: no such folder: {tmp_path / 'nowhere'}")
