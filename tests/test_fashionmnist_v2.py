"""fashionmnist/v2, honest evaluation: one quick run end to end with every output checked,
the same numbers from the same seed; the split check passing on the real split and failing
on overlapping indices, a validation set cut from the test file and repeated indices (while
duplicates the files themselves hold are tolerated); early stopping keeping the best epoch
and touching the test set once; the standard error; NaN, Ctrl-C and bad input."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import load_version
from fmnist_helpers import assert_check_dict, assert_png_has_content, fmnist_data, read_jsonl  # noqa: F401
from fmnist_v1_v4_helpers import (  # noqa: F401  (fixtures)
    V2,
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

NUM_PARAMETERS = 421_642  # v1's SmallCNN, unchanged
PNGS = ["training_curves.png", "first_batch.png"]
FLAGS = ["--quick", "--preflight", "--out", "--overwrite", "--data-dir", "--device", "--seed", "--epochs", "--batch-size", "--lr",
         "--val-size", "--split-seed", "--patience", "--diverged-loss"]


@pytest.fixture(scope="module")
def run(fmnist_data, tmp_path_factory):
    data_dir, is_real = fmnist_data
    out = tmp_path_factory.mktemp("v2_run") / "out"
    results, stdout = quick_run(V2, data_dir, out)
    return {"results": results, "stdout": stdout, "out": out, "data_dir": data_dir, "is_real": is_real}


def test_every_output_is_written(run):
    for name in ["results.json", "history.jsonl", *PNGS, "best_model.pth"]:
        assert (run["out"] / name).is_file() and (run["out"] / name).stat().st_size > 0, name
    assert not (run["out"] / "final_model.pth").exists()  # v1's checkpoint is gone


def test_results_json(run):
    results = run["results"]
    assert_results_header(results, V2, run["out"], run["data_dir"])
    assert set(results) == V2_RESULT_KEYS
    assert results["num_parameters"] == NUM_PARAMETERS
    assert results["config"]["val_size"] == 5000 and results["config"]["patience"] == 8
    assert list(results["checks"]) == ["first_batch", "splits_disjoint"]
    check = results["checks"]["splits_disjoint"]
    assert_check_dict(check, "splits_disjoint")
    assert check["value"] == 0 and check["threshold"] == 0
    details = check["details"]
    assert details["split_sizes"] == {"train": 512, "val": 256, "test": 256}  # quick mode
    assert details["index_overlap_train_val"] == 0 and details["repeated_indices"] == 0
    assert details["shared_images"] == {"train-val": 0, "train-test": 0, "val-test": 0}
    if run["is_real"]:
        # Fashion-MNIST holds no exact duplicate image (counted over all 70,000)
        assert details["duplicates_in_files"] == {"within_train_file": 0, "train_file_and_test_file": 0}
    assert results["test_size"] == 256
    accuracy = results["test_accuracy"]
    assert results["test_accuracy_std_error"] == pytest.approx(math.sqrt(accuracy * (1 - accuracy) / 256))
    assert results["stopped_early"] is False and results["epochs_done"] == 1


def test_history_holds_train_and_validation_but_never_test(run):
    history = read_jsonl(run["out"] / "history.jsonl")
    assert len(history) == 1
    assert set(history[0]) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"}
    assert history[0]["val_accuracy"] == run["results"]["best_val_accuracy"]
    assert 0 < history[0]["val_loss"] < 10 and 0 < history[0]["train_loss"] < 2.31


def test_checkpoint_reloads_and_reproduces_the_test_accuracy(run):
    train = load_version(V2)
    import metrics

    checkpoint = torch.load(run["out"] / "best_model.pth", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == run["results"]["best_epoch"]
    assert checkpoint["val_accuracy"] == run["results"]["best_val_accuracy"]
    model = train.SmallCNN()
    model.load_state_dict(checkpoint["model_state"])
    data = load_quick_data(train, run["data_dir"], run["out"])
    loss, accuracy = metrics.evaluate(model, data.test_loader, "cpu")
    assert accuracy == run["results"]["test_accuracy"]
    assert loss == pytest.approx(run["results"]["test_loss"], rel=1e-5)


@pytest.mark.parametrize("name", PNGS)
def test_plots_have_content(run, name):
    assert_png_has_content(run["out"] / name)


def test_summary_is_printed(run):
    stdout = run["stdout"]
    assert "2/2 passed" in stdout and "[PASS] splits_disjoint" in stdout
    assert "Split: 512 train, 256 validation, 256 test" in stdout
    se = run["results"]["test_accuracy_std_error"]
    assert f"+- {se:.2%} (one standard error over 256 test images)" in stdout


def test_same_seed_same_numbers(run, tmp_path):
    again, _ = quick_run(V2, run["data_dir"], tmp_path / "again")
    other, _ = quick_run(V2, run["data_dir"], tmp_path / "other", "--seed", "7")
    first = numbers_of(run["out"], run["results"])
    assert numbers_of(tmp_path / "again", again) == first
    assert numbers_of(tmp_path / "other", other) != first
    assert_same_weights(run["out"] / "best_model.pth", tmp_path / "again" / "best_model.pth")


def test_the_split_does_not_depend_on_the_training_seed(run, tmp_path):
    train = load_version(V2)
    first = load_quick_data(train, run["data_dir"], tmp_path)
    other_seed = load_quick_data(train, run["data_dir"], tmp_path, "--seed", "7")
    other_split = load_quick_data(train, run["data_dir"], tmp_path, "--split-seed", "1")
    assert torch.equal(first.val_idx, other_seed.val_idx) and torch.equal(first.train_idx, other_seed.train_idx)
    assert not torch.equal(first.val_idx, other_split.val_idx)


# ---------------------------------------------------------------------------
# The split check: passes on the real split, fails on each kind of leak
# ---------------------------------------------------------------------------
@pytest.fixture
def split(run):
    train = load_version(V2)
    import debug_tools

    data = load_quick_data(train, run["data_dir"], run["out"])
    return train, debug_tools, data


def images_of(train, file, indices):
    return train.to_tensor(file[indices])


def test_split_check_passes_on_the_real_split(split):
    train, debug_tools, data = split
    check = debug_tools.verify_splits_disjoint(
        data.train_idx, data.val_idx,
        {"train": data.train_loader.images, "val": data.val_loader.images, "test": data.test_loader.images},
        data.train_file, data.test_file)
    assert check.passed and check.value == 0, check.report()


def test_split_check_fails_on_overlapping_indices(split):
    """Validation and training cut from one permutation with 100 positions in common."""
    train, debug_tools, data = split
    order = torch.randperm(len(data.train_file), generator=torch.Generator().manual_seed(0))
    val_idx, train_idx = order[:256], order[156:156 + 512]
    check = debug_tools.verify_splits_disjoint(
        train_idx, val_idx, {"train": images_of(train, data.train_file, train_idx),
                             "val": images_of(train, data.train_file, val_idx), "test": data.test_loader.images},
        data.train_file, data.test_file)
    assert not check.passed and check.value == 100
    assert check.details["index_overlap_train_val"] == 100 and check.details["shared_images"]["train-val"] == 100
    assert "100 indices in both train and validation" in check.hint


def test_split_check_fails_on_a_validation_set_cut_from_the_test_file(split):
    """Indices that look fine, pixels that are the test set's: only the pixel comparison sees it."""
    train, debug_tools, data = split
    check = debug_tools.verify_splits_disjoint(
        data.train_idx, data.val_idx,
        {"train": data.train_loader.images, "val": images_of(train, data.test_file, torch.arange(256)),
         "test": data.test_loader.images}, data.train_file, data.test_file)
    assert not check.passed and check.value == 256
    assert check.details["index_overlap_train_val"] == 0
    assert check.details["shared_images"] == {"train-val": 0, "train-test": 0, "val-test": 256}


def test_split_check_fails_on_repeated_indices(split):
    """Sampling with replacement: one training image twice."""
    train, debug_tools, data = split
    train_idx = torch.cat([data.train_idx[:-1], data.train_idx[:1]])
    check = debug_tools.verify_splits_disjoint(
        train_idx, data.val_idx,
        {"train": images_of(train, data.train_file, train_idx), "val": data.val_loader.images,
         "test": data.test_loader.images}, data.train_file, data.test_file)
    assert not check.passed and check.value == 1 and check.details["repeated_indices"] == 1


def test_split_check_tolerates_duplicates_the_file_itself_holds(split):
    """A training file in which image 10 is a copy of image 5: 5 in train and 10 in validation
    share their pixels, but the data set, not the split, put them there. The same shared image
    without a duplicate in the file (the split copied it) fails."""
    train, debug_tools, data = split
    file = data.train_file[:100].clone()
    file[10] = file[5]
    train_idx = torch.tensor([i for i in range(50) if i != 10])
    val_idx = torch.tensor([10, *range(50, 100)])
    splits = {"train": images_of(train, file, train_idx), "val": images_of(train, file, val_idx),
              "test": images_of(train, data.test_file, torch.arange(50))}
    tolerated = debug_tools.verify_splits_disjoint(train_idx, val_idx, splits, file, data.test_file[:50])
    assert tolerated.passed, tolerated.report()
    assert tolerated.details["shared_images"]["train-val"] == 1
    assert tolerated.details["duplicates_in_files"]["within_train_file"] == 2  # images 5 and 10

    clean_file = data.train_file[:100]
    copied = {**splits, "val": torch.cat([images_of(train, clean_file, val_idx[1:]), splits["train"][:1]])}
    failed = debug_tools.verify_splits_disjoint(train_idx, val_idx, copied, clean_file, data.test_file[:50])
    assert not failed.passed and failed.value == 1
    assert failed.details["duplicates_in_files"]["within_train_file"] == 0


def test_preflight_fails_when_the_split_overlaps(run, tmp_path):
    folder = mutated_copy(V2, tmp_path, "train.py", "val_idx, train_idx = order[:val_size], order[val_size:]",
                          "val_idx, train_idx = order[:val_size], order[val_size - 100:]")
    bad = preflight(folder, run["data_dir"], tmp_path / "bad")
    assert bad["exit_code"] == 1 and failed_checks(bad) == ["splits_disjoint"]
    assert bad["checks"]["splits_disjoint"]["details"]["index_overlap_train_val"] == 100
    assert run["results"]["checks"]["splits_disjoint"]["passed"]  # the unedited code passes (the module's run)


def test_standard_error():
    load_version(V2)
    import debug_tools

    assert debug_tools.standard_error(0.5, 100) == pytest.approx(0.05)
    assert debug_tools.standard_error(0.91, 10_000) == pytest.approx(0.002862, abs=1e-6)  # the README's 0.29 points
    assert debug_tools.standard_error(1.0, 512) == 0.0


def test_the_checks_do_not_change_training(run, tmp_path, monkeypatch):
    train = load_version(V2)
    cfg = train.parse_args(["--quick", "--device", "cpu", "--out", str(tmp_path), "--data-dir", str(run["data_dir"])])
    data = train.load_data(cfg, torch.device("cpu"))
    runner = train.Run(cfg, tmp_path, torch.device("cpu"), {})
    assert_checks_do_not_perturb(train, monkeypatch, lambda: train.checks_before_training(runner, data),
                                 train.SmallCNN(), data.train_loader)


# ---------------------------------------------------------------------------
# Early stopping, the best epoch, the test set once
# ---------------------------------------------------------------------------
def test_early_stopping_keeps_the_best_epoch_and_tests_it_once(tiny_data, tmp_path, monkeypatch):
    """Validation accuracies scripted as 0.5, 0.7, 0.6, 0.65: with patience 2 the run stops after
    epoch 4, keeps epoch 2's weights, and evaluates the test set once, after training, with them."""
    train = load_version(V2)
    real_evaluate, scripted, calls = train.evaluate, iter([0.5, 0.7, 0.6, 0.65, 0.99, 0.99]), []

    def scripted_evaluate(model, loader, device):
        loss, accuracy = real_evaluate(model, loader, device)
        split = "val" if len(loader.labels) == 32 else "test"  # tiny_data: 32 validation, 64 test images
        calls.append((split, {k: v.clone() for k, v in model.state_dict().items()}, accuracy))
        return (loss, next(scripted)) if split == "val" else (loss, accuracy)

    monkeypatch.setattr(train, "evaluate", scripted_evaluate)
    out = tmp_path / "out"
    results = train.main(["--device", "cpu", "--out", str(out), "--data-dir", str(tiny_data), "--val-size", "32",
                          "--epochs", "10", "--patience", "2"])
    assert [split for split, _, _ in calls] == ["val"] * 4 + ["test"]
    assert [h["val_accuracy"] for h in read_jsonl(out / "history.jsonl")] == [0.5, 0.7, 0.6, 0.65]
    assert (results["best_epoch"], results["best_val_accuracy"]) == (2, 0.7)
    assert results["epochs_done"] == 4 and results["stopped_early"] is True
    checkpoint = torch.load(out / "best_model.pth", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["val_accuracy"]) == (2, 0.7)
    epoch_2, epoch_4, tested = calls[1][1], calls[3][1], calls[4][1]
    assert all(torch.equal(checkpoint["model_state"][k], v) for k, v in epoch_2.items())
    assert any(not torch.equal(epoch_4[k], v) for k, v in epoch_2.items())  # training went on after the best
    assert all(torch.equal(tested[k], v) for k, v in epoch_2.items())  # the test set saw the best weights
    assert results["test_accuracy"] == calls[4][2] and results["test_size"] == 64
    assert_png_has_content(out / "training_curves.png")


def test_patience_0_trains_every_epoch(tiny_data, tmp_path):
    train = load_version(V2)
    results = train.main(["--device", "cpu", "--out", str(tmp_path / "out"), "--data-dir", str(tiny_data),
                          "--val-size", "32", "--epochs", "3", "--patience", "0"])
    assert results["epochs_done"] == 3 and results["stopped_early"] is False
    assert len(read_jsonl(tmp_path / "out" / "history.jsonl")) == 3


# ---------------------------------------------------------------------------
# NaN, Ctrl-C and bad input
# ---------------------------------------------------------------------------
TINY = ["--device", "cpu", "--val-size", "32", "--batch-size", "1024", "--epochs", "5", "--patience", "0"]


def test_nan_after_two_epochs_exits_1_and_keeps_the_best_checkpoint(tiny_data, tmp_path):
    train = load_version(V2)
    results = assert_nan_keeps_records(train, "SmallCNN", [*TINY, "--out", str(tmp_path / "out"), "--data-dir",
                                                           str(tiny_data)], "val_accuracy")
    assert results["best_epoch"] in (1, 2) and results["epochs_done"] == 2


def test_ctrl_c_exits_130_and_keeps_epoch_1(tiny_data, tmp_path):
    train = load_version(V2)
    results = assert_ctrl_c_keeps_records(train, "SmallCNN", [*TINY, "--out", str(tmp_path / "out"), "--data-dir",
                                                              str(tiny_data)])
    assert results["best_epoch"] == 1


def test_missing_data_exits_2(no_data_anywhere, tmp_path, capsys):
    assert_missing_data_exits_2(V2, tmp_path, capsys)


@pytest.mark.parametrize("argv, message", [
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--crop-padding", "2"], "unrecognized arguments: --crop-padding"),  # v3's idea is not in v2
    (["--val-size", "0"], "--val-size must be between 1 and 59,999"),
    (["--val-size", "60000"], "--val-size must be between 1 and 59,999"),
    (["--patience", "-1"], "--patience >= 0"),
    (["--patience", "1.5"], "invalid int value: '1.5'"),
    (["--lr", "-1"], "--lr a number > 0"),
])
def test_bad_flags_exit_2(argv, message, tmp_path, capsys):
    assert_bad_flag_exits_2(V2, argv, message, tmp_path, capsys)


def test_help_lists_every_flag_with_its_default(capsys):
    assert_help_lists_every_flag(V2, FLAGS, capsys)
