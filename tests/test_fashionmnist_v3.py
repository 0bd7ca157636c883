"""fashionmnist/v3, normalisation and augmentation: one quick run end to end with every
output checked, the same numbers from the same seed; the batched crop and flip doing what
RandomCrop and RandomHorizontalFlip do; each new check passing on the version's code and
failing on its planted bug (statistics from the test set, no normalisation, augmentation
left on at evaluation or missing in training); NaN, Ctrl-C and bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import load_version
from fmnist_helpers import assert_check_dict, assert_png_has_content, fmnist_data, read_jsonl  # noqa: F401
from fmnist_v1_v4_helpers import (  # noqa: F401  (fixtures)
    V3,
    V2_RESULT_KEYS,
    assert_bad_flag_exits_2,
    assert_checks_do_not_perturb,
    assert_ctrl_c_keeps_records,
    assert_help_lists_every_flag,
    assert_missing_data_exits_2,
    assert_nan_keeps_records,
    assert_results_header,
    assert_same_weights,
    failed_checks,
    load_quick_data,
    mutated_copy,
    no_data_anywhere,
    numbers_of,
    preflight,
    quick_run,
    tiny_data,
)

PNGS = ["training_curves.png", "first_batch.png"]
CHECKS = ["first_batch", "normalised_batch", "normalisation_from_train", "train_batches_augmented",
          "eval_batches_deterministic", "splits_disjoint"]
FLAGS = ["--quick", "--preflight", "--out", "--overwrite", "--data-dir", "--device", "--seed", "--epochs", "--batch-size", "--lr",
         "--val-size", "--split-seed", "--patience", "--crop-padding", "--flip-probability", "--normalised-tolerance",
         "--diverged-loss"]


@pytest.fixture(scope="module")
def run(fmnist_data, tmp_path_factory):
    data_dir, is_real = fmnist_data
    out = tmp_path_factory.mktemp("v3_run") / "out"
    results, stdout = quick_run(V3, data_dir, out)
    return {"results": results, "stdout": stdout, "out": out, "data_dir": data_dir, "is_real": is_real}


@pytest.fixture
def v3(run):
    """The v3 modules and the quick run's data, rebuilt."""
    train = load_version(V3)
    import debug_tools

    return train, debug_tools, load_quick_data(train, run["data_dir"], run["out"])


def test_every_output_is_written(run):
    for name in ["results.json", "history.jsonl", *PNGS, "best_model.pth"]:
        assert (run["out"] / name).is_file() and (run["out"] / name).stat().st_size > 0, name


def test_results_json(run):
    results = run["results"]
    assert_results_header(results, V3, run["out"], run["data_dir"])
    assert set(results) == V2_RESULT_KEYS
    assert results["config"]["crop_padding"] == 2 and results["config"]["flip_probability"] == 0.5
    assert list(results["checks"]) == CHECKS
    for name in CHECKS:
        assert_check_dict(results["checks"][name], name)
    checks = results["checks"]
    assert checks["normalised_batch"]["value"] <= 0.15
    assert abs(checks["normalised_batch"]["details"]["mean"]) < 0.15
    stats = checks["normalisation_from_train"]["details"]
    assert checks["normalisation_from_train"]["value"] < 1e-9
    assert stats["closest_split"] == {"train": "train", "val": "train", "test": "train"}
    assert all(used == stats["split_stats"]["train"] for used in stats["used"].values())
    if run["is_real"]:
        assert 0.27 < stats["split_stats"]["train"]["mean"] < 0.31 and 0.33 < stats["split_stats"]["train"]["std"] < 0.37
    assert checks["train_batches_augmented"]["value"] > 0.9  # two draws agree for ~2% of the images
    assert checks["eval_batches_deterministic"]["value"] == 0.0
    first = checks["first_batch"]["details"]
    mean, std = stats["split_stats"]["train"]["mean"], stats["split_stats"]["train"]["std"]
    assert first["min"] == pytest.approx(-mean / std, rel=1e-5)  # black, normalised (the crop's border too)
    assert first["max"] <= (1 - mean) / std + 1e-5


def test_checkpoint_holds_the_normalisation_and_reproduces_the_test_accuracy(run, v3):
    train, _, data = v3
    import metrics

    checkpoint = torch.load(run["out"] / "best_model.pth", map_location="cpu", weights_only=True)
    assert checkpoint["normalisation"] == {"mean": data.mean, "std": data.std}
    assert (data.mean, data.std) == train.normalisation_stats(data.train_loader.images)
    model = train.SmallCNN()
    model.load_state_dict(checkpoint["model_state"])
    loss, accuracy = metrics.evaluate(model, data.test_loader, "cpu")
    assert accuracy == run["results"]["test_accuracy"]
    assert loss == pytest.approx(run["results"]["test_loss"], rel=1e-5)


def test_history(run):
    history = read_jsonl(run["out"] / "history.jsonl")
    assert len(history) == 1 and history[0]["val_accuracy"] == run["results"]["best_val_accuracy"]
    assert 0 < history[0]["train_loss"] < 2.31


@pytest.mark.parametrize("name", PNGS)
def test_plots_have_content(run, name):
    assert_png_has_content(run["out"] / name)


def test_summary_is_printed(run):
    assert "6/6 passed" in run["stdout"]
    for name in CHECKS:
        assert f"[PASS] {name}" in run["stdout"]


def test_same_seed_same_numbers(run, tmp_path):
    again, _ = quick_run(V3, run["data_dir"], tmp_path / "again")
    other, _ = quick_run(V3, run["data_dir"], tmp_path / "other", "--seed", "7")
    first = numbers_of(run["out"], run["results"])
    assert numbers_of(tmp_path / "again", again) == first
    assert numbers_of(tmp_path / "other", other) != first
    assert_same_weights(run["out"] / "best_model.pth", tmp_path / "again" / "best_model.pth")


# ---------------------------------------------------------------------------
# The batched augmentation does what torchvision's per-image transforms do
# ---------------------------------------------------------------------------
def test_random_crop_shifts_every_image_by_its_own_offset(v3):
    train, _, data = v3
    images = data.train_loader.images[:64]
    cropped = train.random_crop(images, 2, torch.Generator().manual_seed(0))
    assert cropped.shape == images.shape and cropped.dtype == images.dtype
    padded = F.pad(images, (2, 2, 2, 2))
    offsets = []
    for i in range(len(images)):
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if torch.equal(cropped[i], padded[i, :, dy:dy + 28, dx:dx + 28])]
        assert found, f"image {i} is not a 28x28 window of the padded image"
        offsets.append(found[0])
    assert len(set(offsets)) >= 15  # 25 possible offsets, drawn per image
    again = train.random_crop(images, 2, torch.Generator().manual_seed(0))
    assert torch.equal(again, cropped)  # the same generator state, the same crops


def test_random_flip_mirrors_about_half_of_the_images(v3):
    train, _, data = v3
    images = data.train_loader.images[:64]
    flipped = train.random_flip(images, 0.5, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(flipped[i], images[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(flipped[i], images[i]) for i in range(64)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 16 <= sum(m and not k for m, k in zip(mirrored, kept)) <= 48
    assert torch.equal(train.random_flip(images, 0.0, torch.Generator()), images)


def test_evaluation_transform_only_normalises(v3):
    train, _, data = v3
    images = data.val_loader.images[:32]
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    out = train.Transform(data.mean, data.std, augment=False)(images, generator)
    assert torch.equal(out, (images - data.mean) / data.std)
    assert torch.equal(generator.get_state(), state)  # no random number drawn


# ---------------------------------------------------------------------------
# The new checks: pass on the version's code, fail on their planted bugs
# ---------------------------------------------------------------------------
def splits_and_loaders(data):
    splits = {"train": data.train_loader.images, "val": data.val_loader.images, "test": data.test_loader.images}
    loaders = {"train": data.train_loader, "val": data.val_loader, "test": data.test_loader}
    return splits, loaders


def test_normalisation_stats_fail_when_computed_on_the_test_set(v3):
    train, debug_tools, data = v3
    good = debug_tools.verify_normalisation_stats(*splits_and_loaders(data))
    assert good.passed and good.value < 1e-9, good.report()
    test_mean, test_std = train.normalisation_stats(data.test_loader.images)
    data.train_loader.transform = train.Transform(test_mean, test_std, augment=True)
    data.val_loader.transform = data.test_loader.transform = train.Transform(test_mean, test_std, augment=False)
    bad = debug_tools.verify_normalisation_stats(*splits_and_loaders(data))
    assert not bad.passed and bad.value > 1e-4
    assert bad.details["closest_split"] == {"train": "test", "val": "test", "test": "test"}
    assert "'train': 'test'" in bad.hint


def test_normalisation_stats_fail_when_one_loader_uses_other_numbers(v3):
    train, debug_tools, data = v3
    val_mean, val_std = train.normalisation_stats(data.val_loader.images)
    data.val_loader.transform = train.Transform(val_mean, val_std, augment=False)
    bad = debug_tools.verify_normalisation_stats(*splits_and_loaders(data))
    assert not bad.passed and bad.details["closest_split"] == {"train": "train", "val": "val", "test": "train"}


@pytest.mark.parametrize("bug", ["not normalised", "normalised twice"])
def test_normalised_batch_fails_without_or_with_double_normalisation(v3, bug):
    train, debug_tools, data = v3
    images, _ = next(iter(data.train_loader))
    assert debug_tools.verify_normalised_batch(images).passed
    bad_images = images * data.std + data.mean if bug == "not normalised" else (images - data.mean) / data.std
    bad = debug_tools.verify_normalised_batch(bad_images)
    assert not bad.passed and bad.value > 0.5


def test_eval_batches_fail_with_augmentation_or_shuffling_left_on(v3):
    train, debug_tools, data = v3
    assert debug_tools.verify_eval_deterministic(data.val_loader).passed
    augmented = train.TensorLoader(data.val_loader.images, data.val_loader.labels, 1024,
                                   transform=train.Transform(data.mean, data.std, augment=True))
    bad = debug_tools.verify_eval_deterministic(augmented)
    assert not bad.passed and bad.value > 1.0  # shifted and flipped pixels differ by whole grey levels
    shuffled = train.TensorLoader(data.val_loader.images, data.val_loader.labels, 100, shuffle=True,
                                  transform=data.val_loader.transform)
    assert not debug_tools.verify_eval_deterministic(shuffled).passed


def test_train_batches_fail_without_augmentation(v3):
    train, debug_tools, data = v3
    good = debug_tools.verify_train_augmented(data.train_loader)
    assert good.passed and good.value > 0.9
    data.train_loader.transform = train.Transform(data.mean, data.std, augment=False)
    bad = debug_tools.verify_train_augmented(data.train_loader)
    assert not bad.passed and bad.value == 0.0
    # switched off on purpose (--crop-padding 0 --flip-probability 0): nothing may change
    assert debug_tools.verify_train_augmented(data.train_loader, expected=False).passed


def test_preflight_fails_on_statistics_from_the_test_set(run, tmp_path):
    folder = mutated_copy(V3, tmp_path, "train.py", "normalisation_stats(to_tensor(train_file[train_idx]))",
                          "normalisation_stats(to_tensor(test_file[test_idx]))")
    bad = preflight(folder, run["data_dir"], tmp_path / "bad")
    assert bad["exit_code"] == 1 and failed_checks(bad) == ["normalisation_from_train"]
    assert bad["checks"]["normalisation_from_train"]["details"]["closest_split"]["train"] == "test"


def test_preflight_fails_on_augmentation_at_evaluation(run, tmp_path):
    folder = mutated_copy(V3, tmp_path, "train.py", "eval_transform = Transform(mean, std, augment=False)",
                          "eval_transform = Transform(mean, std, augment=True)")
    bad = preflight(folder, run["data_dir"], tmp_path / "bad")
    assert bad["exit_code"] == 1 and failed_checks(bad) == ["eval_batches_deterministic"]
    assert run["results"]["checks"]["eval_batches_deterministic"]["passed"]  # the unedited code passes


def test_switching_augmentation_off_passes_its_check(run, tmp_path):
    train = load_version(V3)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        results = train.main(["--preflight", "--quick", "--device", "cpu", "--out", str(tmp_path),
                              "--data-dir", str(run["data_dir"]), "--crop-padding", "0", "--flip-probability", "0"])
    check = results["checks"]["train_batches_augmented"]
    assert results["exit_code"] == 0 and check["passed"] and check["value"] == 0.0
    assert check["details"]["augmentation_expected"] is False


def test_the_checks_do_not_change_training(run, tmp_path, monkeypatch):
    train = load_version(V3)
    cfg = train.parse_args(["--quick", "--device", "cpu", "--out", str(tmp_path), "--data-dir", str(run["data_dir"])])
    data = train.load_data(cfg, torch.device("cpu"))
    runner = train.Run(cfg, tmp_path, torch.device("cpu"), {})
    assert_checks_do_not_perturb(train, monkeypatch, lambda: train.checks_before_training(runner, data),
                                 train.SmallCNN(), data.train_loader)


# ---------------------------------------------------------------------------
# NaN, Ctrl-C and bad input
# ---------------------------------------------------------------------------
TINY = ["--device", "cpu", "--val-size", "32", "--batch-size", "1024", "--epochs", "5", "--patience", "0"]


def test_nan_after_two_epochs_exits_1_and_keeps_the_best_checkpoint(tiny_data, tmp_path):
    train = load_version(V3)
    assert_nan_keeps_records(train, "SmallCNN", [*TINY, "--out", str(tmp_path / "out"), "--data-dir", str(tiny_data)],
                             "normalisation")


def test_ctrl_c_exits_130_and_keeps_epoch_1(tiny_data, tmp_path):
    train = load_version(V3)
    assert_ctrl_c_keeps_records(train, "SmallCNN", [*TINY, "--out", str(tmp_path / "out"), "--data-dir", str(tiny_data)])


def test_missing_data_exits_2(no_data_anywhere, tmp_path, capsys):
    assert_missing_data_exits_2(V3, tmp_path, capsys)


@pytest.mark.parametrize("argv, message", [
    (["--dropout", "0.5"], "unrecognized arguments: --dropout"),  # v4's idea is not in v3
    (["--crop-padding", "-1"], "--crop-padding must be between 0 and 14"),
    (["--crop-padding", "15"], "--crop-padding must be between 0 and 14"),
    (["--flip-probability", "1.5"], "--flip-probability between 0 and 1"),
    (["--normalised-tolerance", "0"], "--normalised-tolerance > 0"),
    (["--patience", "-2"], "--patience >= 0"),
])
def test_bad_flags_exit_2(argv, message, tmp_path, capsys):
    assert_bad_flag_exits_2(V3, argv, message, tmp_path, capsys)


def test_help_lists_every_flag_with_its_default(capsys):
    assert_help_lists_every_flag(V3, FLAGS, capsys)
