"""imagenette/v2: normalisation from the training split (normalize.py, cached) and batched
RandomResizedCrop + flip. One quick run with its new outputs checked; normalize.py's cache
written by the first run and read by the second (same numbers); normalize.main(); and each of
the four new checks passing on v2's own loaders and failing on the bug it exists to catch."""
from __future__ import annotations

import contextlib
import io
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fmnist_helpers import VersionContext, assert_png_has_content
from imagenette_helpers import imagenette_folder, isolated_cache  # noqa: F401  (fixtures)
from imagenette_v2_v5_helpers import (  # noqa: F401  (fixtures)
    PNG_COMMON,
    _fresh_normalize_for_each_test,
    _fresh_normalize_for_the_module,
    assert_completed_with_checks,
    check_numbers,
    history_numbers,
    load_quick_data,
    quiet_quick_run,
)

ROOT = Path(__file__).resolve().parents[1]
V2 = "imagenette/v2"
CHECKS = ["first_batch", "normalised_batch", "normalisation_from_train", "train_batches_augmented",
          "eval_deterministic_unaugmented", "class_balance"]
NUM_PARAMETERS = 390_986  # v1's BasicCNN: v2 changes the data, not the net


@pytest.fixture(scope="module")
def run(imagenette_folder, tmp_path_factory, isolated_cache):
    out = tmp_path_factory.mktemp("v2_run") / "out"
    results, stdout = quiet_quick_run(V2, imagenette_folder, out)
    return {"results": results, "stdout": stdout, "out": out, "data_dir": imagenette_folder, "cache": isolated_cache}


@pytest.fixture(scope="module")
def v2(run, tmp_path_factory):
    """v2's train and debug_tools modules, and the Data of a quick run (images from the cache)."""
    with VersionContext(V2) as train:
        debug_tools = sys.modules["debug_tools"]
        normalize = sys.modules["normalize"]
        cfg, data = load_quick_data(train, run["data_dir"], tmp_path_factory.mktemp("v2_data"))
    return {"train": train, "debug_tools": debug_tools, "normalize": normalize, "cfg": cfg, "data": data}


def stats_by_hand(images_uint8: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and (unbiased) std in NumPy float64: an independent reference."""
    pixels = images_uint8.numpy().astype(np.float64) / 255.0
    return pixels.mean(axis=(0, 2, 3)).tolist(), pixels.std(axis=(0, 2, 3), ddof=1).tolist()


# ---------------------------------------------------------------------------
# The quick run
# ---------------------------------------------------------------------------
def test_quick_run_completes_with_every_check_passed(run):
    results = run["results"]
    assert_completed_with_checks(results, CHECKS)
    assert results["version"] == V2 and results["num_parameters"] == NUM_PARAMETERS
    config = results["config"]
    assert (config["crop_scale_min"], config["flip_probability"], config["normalised_tolerance"]) == (0.35, 0.5, 0.15)
    assert config["epochs"] == 1 and config["image_size"] == 64 and results["epochs_done"] == 1
    assert "[PASS] normalised_batch" in run["stdout"] and "6/6 passed" in run["stdout"]


def test_normalisation_is_the_training_splits_and_computed_on_the_first_run(run, v2):
    stats = run["results"]["normalisation"]
    assert set(stats) == {"mean", "std", "from_cache", "file"}
    assert len(stats["mean"]) == 3 and len(stats["std"]) == 3 and stats["from_cache"] is False
    mean, std = stats_by_hand(v2["data"].train_loader.images)
    assert stats["mean"] == pytest.approx(mean, abs=1e-9) and stats["std"] == pytest.approx(std, abs=1e-9)
    val_mean, _ = stats_by_hand(v2["data"].val_loader.images)
    assert max(abs(a - b) for a, b in zip(val_mean, mean)) > 1e-4  # control: the splits do differ
    assert f"Normalisation (training split, computed by normalize.py): mean [{stats['mean'][0]:.4f}" in run["stdout"]


def test_cache_file_is_written_keyed_by_content(run):
    stats, key = run["results"]["normalisation"], run["results"]["data"]["train_content_key"]
    cache_file = run["cache"] / f"normalize-{key}.json"
    assert stats["file"] == str(cache_file) and cache_file.is_file()
    stored = json.loads(cache_file.read_text())
    assert stored == {"content_key": key, "images": 160, "mean": stats["mean"], "std": stats["std"]}
    assert not list(run["cache"].glob("*.partial"))


def test_second_run_reads_the_cache_and_repeats_the_numbers(run, tmp_path):
    again, stdout = quiet_quick_run(V2, run["data_dir"], tmp_path / "again")
    first = run["results"]["normalisation"]
    assert again["normalisation"] == {**first, "from_cache": True}  # exactly the same six numbers, same file
    assert "Normalisation (training split, cached by normalize.py)" in stdout
    assert history_numbers(tmp_path / "again") == history_numbers(run["out"])
    assert check_numbers(again) == check_numbers(run["results"])
    assert again["test_accuracy"] == run["results"]["test_accuracy"]


@pytest.mark.parametrize("name", PNG_COMMON)
def test_plots_have_content(run, name):
    assert_png_has_content(run["out"] / name)


def test_checkpoint_carries_the_normalisation(run):
    checkpoint = torch.load(run["out"] / "final_model.pth", map_location="cpu", weights_only=True)
    stats = run["results"]["normalisation"]
    assert checkpoint["normalisation"] == {"mean": stats["mean"], "std": stats["std"]}


def test_first_batch_is_judged_in_the_normalised_range(run, v2):
    batch = run["results"]["checks"]["first_batch"]
    low, high = v2["data"].train_loader.transform.output_range()
    assert low < -1 and high > 1  # normalised: no longer [0, 1]
    assert low - 1e-4 <= batch["details"]["min"] < 0 < batch["details"]["max"] <= high + 1e-4
    assert f"in [{low:.3g}, {high:.3g}]" in batch["criterion"]


def first_batch_with(v2, transform, normalised: bool = True):
    """first_batch on the first training batch as `transform` makes it, judged as train.py judges it."""
    loader = loader_with(v2, "train", transform, shuffle=True)
    images, labels = next(iter(loader))
    return v2["debug_tools"].inspect_batch(images, labels, 10, value_range=transform.output_range(),
                                           image_shape=tuple(images.shape[1:]), normalised=normalised)


def test_first_batch_passes_a_correctly_normalised_batch(v2):
    check = first_batch_with(v2, v2["data"].train_loader.transform)
    assert check.passed, check.report()
    assert all(abs(m) <= 0.5 for m in check.details["channel_means"])
    assert all(0.5 <= s <= 2.0 for s in check.details["channel_stds"])


@pytest.mark.parametrize("bug", ["statistics of uint8 pixels", "no normalisation"])
def test_first_batch_fails_on_wrong_statistics_its_range_cannot_see(v2, bug):
    """The range a batch may span is derived from the loader's own statistics, so wrong statistics
    move the range with the batch: only the batch's own mean and std give them away."""
    mean, std = v2["data"].normalisation["mean"], v2["data"].normalisation["std"]
    if bug == "statistics of uint8 pixels":  # computed on [0, 255], applied to [0, 1] floats
        wrong = v2["train"].Transform([m * 255 for m in mean], [s * 255 for s in std], augment=True)
    else:
        wrong = v2["train"].Transform([0.0] * 3, [1.0] * 3, augment=True)
    range_only = first_batch_with(v2, wrong, normalised=False)
    assert range_only.passed, range_only.report()  # what the check saw before: the bug passed
    check = first_batch_with(v2, wrong)
    assert not check.passed and check.value == 1, check.report()
    assert check.details["problems"][0].startswith("not normalised: channel means")
    assert max(check.details["channel_stds"]) < 0.5  # 0.004 (uint8 statistics) or ~0.3 (none)


@pytest.mark.parametrize("version", ["imagenette/v2", "imagenette/v3", "imagenette/v4", "imagenette/v5",
                                     "imagenette/v6/v6a", "imagenette/v6/v6b", "imagenette/v7/v7a",
                                     "imagenette/v7/v7b", "imagenette/v7/v7c", "imagenette/v8"])
def test_every_normalising_version_judges_its_first_batch_as_normalised(version):
    source = (ROOT / version / "train.py").read_text()
    assert "image_shape=(3, cfg.image_size, cfg.image_size), normalised=True)" in source


def test_loaders_share_the_training_statistics(v2):
    data = v2["data"]
    train_t, val_t, test_t = (loader.transform for loader in (data.train_loader, data.val_loader, data.test_loader))
    assert train_t.augment is True and val_t.augment is False and test_t.augment is False
    assert train_t.mean == val_t.mean == test_t.mean == data.normalisation["mean"]
    assert train_t.std == val_t.std == test_t.std == data.normalisation["std"]
    assert data.train_loader.shuffle and not data.val_loader.shuffle and not data.test_loader.shuffle


# ---------------------------------------------------------------------------
# normalize.py on its own
# ---------------------------------------------------------------------------
def test_normalize_main_prints_mean_and_std(imagenette_folder, isolated_cache):
    stdout = io.StringIO()
    with VersionContext(V2):
        import normalize
        import shared.imagenette as imagenette

        argv = ["--data-dir", str(imagenette_folder), "--image-size", "32"]
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
            assert normalize.main(argv) == 0
            data = imagenette.load_imagenette(imagenette_folder, size=32, show_progress=False)
        again = io.StringIO()
        with contextlib.redirect_stdout(again), contextlib.redirect_stderr(io.StringIO()):
            assert normalize.main(argv) == 0
    # the data line ("data: Imagenette from ...") is the finder's, printed by every run
    lines = [line for line in stdout.getvalue().splitlines() if not line.startswith("data: ")]
    assert lines[0].startswith(f"{len(data.train_images)} training images at 32 px (computed, {isolated_cache}")
    mean, std = stats_by_hand(data.train_images)
    printed = {}
    for line in lines[1:]:
        match = re.fullmatch(r"(mean|std) += \[(.*)\]", line)
        assert match, line
        printed[match[1]] = [float(v) for v in match[2].split(", ")]
    assert printed["mean"] == pytest.approx(mean, abs=5e-5) and printed["std"] == pytest.approx(std, abs=5e-5)
    again_lines = [line for line in again.getvalue().splitlines() if not line.startswith("data: ")]
    assert "(cached, " in again.getvalue() and again_lines[1:] == lines[1:]


def test_normalize_main_without_data_returns_2(tmp_path):
    stderr = io.StringIO()
    with VersionContext(V2):
        import normalize

        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            assert normalize.main(["--data-dir", str(tmp_path / "nowhere")]) == 2
    assert stderr.getvalue().startswith(f"error: no such folder: {tmp_path / 'nowhere'}")
    assert not (tmp_path / "nowhere").exists()


def test_cache_is_read_and_only_for_its_key(v2, tmp_path):
    """A cached file is returned as stored (so a second run really reads it); a file for other
    images (count differs) is recomputed, and another key never sees it."""
    normalize = v2["normalize"]
    images = v2["data"].train_loader.images
    computed = normalize.training_set_statistics(images, "key-a", cache_dir=tmp_path)
    assert computed["from_cache"] is False and (tmp_path / "normalize-key-a.json").is_file()
    planted = {"content_key": "key-a", "images": len(images), "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    (tmp_path / "normalize-key-a.json").write_text(json.dumps(planted))
    read = normalize.training_set_statistics(images, "key-a", cache_dir=tmp_path)
    assert read["from_cache"] is True and (read["mean"], read["std"]) == (planted["mean"], planted["std"])
    (tmp_path / "normalize-key-a.json").write_text(json.dumps({**planted, "images": len(images) + 1}))
    stale = normalize.training_set_statistics(images, "key-a", cache_dir=tmp_path)
    assert stale["from_cache"] is False and stale["mean"] == computed["mean"]
    other = normalize.training_set_statistics(images, "key-b", cache_dir=tmp_path)
    assert other["from_cache"] is False and other["mean"] == computed["mean"]


# ---------------------------------------------------------------------------
# The batched augmentation
# ---------------------------------------------------------------------------
def test_random_resized_crop_is_reproducible_and_flip_mirrors(v2):
    train = v2["train"]
    images = v2["data"].train_loader.images[:6].float().div(255)
    draw = train.random_resized_crop_and_flip
    a = draw(images, 0.35, 0.0, torch.Generator().manual_seed(3))
    assert a.shape == images.shape and a.dtype == torch.float32
    assert torch.equal(a, draw(images, 0.35, 0.0, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, draw(images, 0.35, 0.0, torch.Generator().manual_seed(4)))
    assert not torch.allclose(a, images, atol=1e-3)  # a crop, not the image
    mirrored = draw(images, 0.35, 1.0, torch.Generator().manual_seed(3))  # the same crops, all flipped
    assert torch.allclose(mirrored, a.flip(-1), atol=1e-5)
    assert a.min() >= images.min() - 1e-5 and a.max() <= images.max() + 1e-5  # bilinear: no new extremes


def test_transform_without_augmentation_only_normalises(v2):
    train, data = v2["train"], v2["data"]
    images = data.val_loader.images[:5]
    mean, std = data.normalisation["mean"], data.normalisation["std"]
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(train.Transform(mean, std, augment=False)(images, None), expected, atol=1e-6)
    switched_off = train.Transform(mean, std, augment=True, crop_scale_min=1.0, flip_probability=0.0)
    assert torch.allclose(switched_off(images, torch.Generator().manual_seed(0)), expected, atol=1e-6)


# ---------------------------------------------------------------------------
# The new checks: pass on v2's loaders, fail on the planted bug
# ---------------------------------------------------------------------------
def loader_with(v2, split: str, transform, shuffle: bool = False, seed: int = 0):
    loader = getattr(v2["data"], f"{split}_loader")
    return v2["train"].TensorLoader(loader.images, loader.labels, loader.batch_size, shuffle=shuffle, seed=seed,
                                    transform=transform)


def test_normalised_batch_passes_on_the_training_loader(v2):
    check = v2["debug_tools"].verify_normalised_batch(v2["data"].train_loader, v2["cfg"].normalised_tolerance)
    assert check.passed and check.value <= 0.15, check.report()
    assert len(check.details["channel_means"]) == 3 and check.details["images"] == 160


def test_normalised_batch_fails_without_normalisation(v2):
    unnormalised = v2["train"].Transform([0.0] * 3, [1.0] * 3, augment=True)
    check = v2["debug_tools"].verify_normalised_batch(loader_with(v2, "train", unnormalised, shuffle=True), 0.15)
    assert not check.passed and check.value > 0.3, check.report()
    assert all(m > 0.2 for m in check.details["channel_means"])  # raw [0, 1] pixels: means far above 0


def test_normalised_batch_fails_when_normalised_twice(v2):
    once = v2["data"].train_loader.transform
    mean, std = torch.tensor(once.mean).view(1, 3, 1, 1), torch.tensor(once.std).view(1, 3, 1, 1)
    twice = lambda images, generator: (once(images, generator) - mean) / std  # noqa: E731
    check = v2["debug_tools"].verify_normalised_batch(loader_with(v2, "train", twice, shuffle=True), 0.15)
    assert not check.passed, check.report()


def eval_transform(v2, mean, std):
    return v2["train"].Transform(mean, std, augment=False)


def stats_check(v2, transforms: dict):
    """verify_normalisation_stats with the given split -> Transform (the others keep v2's)."""
    data = v2["data"]
    loaders = {split: (loader_with(v2, split, transforms[split]) if split in transforms
                       else getattr(data, f"{split}_loader")) for split in ("train", "val", "test")}
    splits = {split: getattr(data, f"{split}_loader").images for split in ("train", "val", "test")}
    return v2["debug_tools"].verify_normalisation_stats(splits, loaders)


def test_normalisation_from_train_passes_on_v2s_loaders(v2):
    check = stats_check(v2, {})
    assert check.passed and check.value <= 1e-4, check.report()
    assert check.details["closest_split"] == {"train": "train", "val": "train", "test": "train"}


def test_normalisation_from_train_fails_on_validation_statistics(v2):
    mean, std = v2["normalize"].channel_statistics(v2["data"].val_loader.images)
    check = stats_check(v2, {split: eval_transform(v2, mean, std) for split in ("train", "val", "test")})
    assert not check.passed and check.value > 1e-3, check.report()
    assert check.details["closest_split"] == {"train": "val", "val": "val", "test": "val"}
    assert "'val'" in check.hint


def test_normalisation_from_train_fails_when_the_test_loader_uses_test_statistics(v2):
    mean, std = v2["normalize"].channel_statistics(v2["data"].test_loader.images)
    check = stats_check(v2, {"test": eval_transform(v2, mean, std)})
    assert not check.passed, check.report()
    assert check.details["closest_split"] == {"train": "train", "val": "train", "test": "test"}


def test_normalisation_from_train_fails_on_statistics_of_all_splits(v2):
    data = v2["data"]
    every = torch.cat([data.train_loader.images, data.val_loader.images, data.test_loader.images])
    mean, std = v2["normalize"].channel_statistics(every)
    check = stats_check(v2, {split: eval_transform(v2, mean, std) for split in ("train", "val", "test")})
    assert not check.passed, check.report()


def test_train_batches_augmented_passes_on_the_training_loader(v2):
    check = v2["debug_tools"].verify_train_augmented(v2["data"].train_loader, expected=True)
    assert check.passed and check.value >= 0.9, check.report()


def test_train_batches_augmented_fails_on_an_unaugmented_training_loader(v2):
    data = v2["data"]
    plain = v2["train"].Transform(data.normalisation["mean"], data.normalisation["std"], augment=False)
    check = v2["debug_tools"].verify_train_augmented(loader_with(v2, "train", plain, shuffle=True), expected=True)
    assert not check.passed and check.value == 0, check.report()
    assert "augment=True" in check.hint


def test_train_batches_augmented_fails_when_switched_off_but_augmenting(v2):
    debug_tools, data = v2["debug_tools"], v2["data"]
    assert not debug_tools.verify_train_augmented(data.train_loader, expected=False).passed
    off = v2["train"].Transform(data.normalisation["mean"], data.normalisation["std"], augment=True,
                                crop_scale_min=1.0, flip_probability=0.0)
    assert debug_tools.verify_train_augmented(loader_with(v2, "train", off, shuffle=True), expected=False).passed


def test_eval_deterministic_unaugmented_passes_on_the_validation_loader(v2):
    check = v2["debug_tools"].verify_eval_unaugmented(v2["data"].val_loader)
    assert check.passed and check.value <= 1e-5, check.report()
    assert check.details["batch_size"] == 40


def test_eval_deterministic_unaugmented_fails_with_the_training_transform(v2):
    check = v2["debug_tools"].verify_eval_unaugmented(loader_with(v2, "val", v2["data"].train_loader.transform))
    assert not check.passed and check.details["between_passes"] > 0.1 and check.details["from_plain"] > 0.1


def test_eval_deterministic_unaugmented_fails_when_shuffled(v2):
    shuffled = loader_with(v2, "val", v2["data"].val_loader.transform, shuffle=True)
    check = v2["debug_tools"].verify_eval_unaugmented(shuffled)
    assert not check.passed and check.details["from_plain"] > 0.1, check.report()
    assert math.isfinite(check.value)
