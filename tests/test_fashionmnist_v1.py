"""fashionmnist/v1, the smallest complete loop: one quick run end to end with every
output checked, the same numbers from the same seed, the first-batch check passing on
the real batch and failing on each bug it exists for, the NaN stop, Ctrl-C and bad input."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import load_version
from fmnist_helpers import assert_check_dict, assert_png_has_content, fmnist_data, read_jsonl  # noqa: F401
from fmnist_v1_v4_helpers import (  # noqa: F401  (fixtures)
    V1,
    V1_RESULT_KEYS,
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
    quick_args,
    quick_run,
    run_main,
    tiny_data,
)

NUM_PARAMETERS = 421_642  # conv 320 + 18,496, FC 401,536 + 1,290
PNGS = ["training_curves.png", "first_batch.png"]
FLAGS = ["--quick", "--preflight", "--out", "--overwrite", "--data-dir", "--device", "--seed", "--epochs", "--batch-size", "--lr",
         "--diverged-loss"]


@pytest.fixture(scope="module")
def run(fmnist_data, tmp_path_factory):
    data_dir, is_real = fmnist_data
    out = tmp_path_factory.mktemp("v1_run") / "out"
    results, stdout = quick_run(V1, data_dir, out)
    return {"results": results, "stdout": stdout, "out": out, "data_dir": data_dir, "is_real": is_real}


def test_every_output_is_written(run):
    for name in ["results.json", "history.jsonl", *PNGS, "final_model.pth"]:
        assert (run["out"] / name).is_file() and (run["out"] / name).stat().st_size > 0, name


def test_results_json(run):
    results = run["results"]
    assert_results_header(results, V1, run["out"], run["data_dir"])
    assert set(results) == V1_RESULT_KEYS
    assert results["num_parameters"] == NUM_PARAMETERS
    assert list(results["checks"]) == ["first_batch"]
    check = results["checks"]["first_batch"]
    assert_check_dict(check, "first_batch")
    assert check["value"] == 0 and check["threshold"] == 0 and check["details"]["problems"] == []
    details = check["details"]
    assert details["shape"] == [128, 1, 28, 28] and details["dtype"] == "torch.float32"
    assert 0 <= details["min"] < details["mean"] < details["max"] <= 1
    assert 0 <= details["label_min"] < details["label_max"] <= 9
    if run["is_real"]:
        assert details["distinct_labels"] == 10 and 0.2 < details["mean"] < 0.4  # Fashion-MNIST: ~0.29
        # 4 Adam steps on 512 images already beat chance (10%) clearly
        assert results["test_accuracy"] > 0.25
    assert 0 < results["train_accuracy"] < 1 and 0 < results["test_accuracy"] <= 1


def test_history_holds_train_and_test_per_epoch(run):
    history = read_jsonl(run["out"] / "history.jsonl")
    assert len(history) == 1
    line = history[0]
    assert set(line) == {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds"}
    results = run["results"]
    assert line["epoch"] == 1 and line["seconds"] > 0
    assert (line["train_loss"], line["train_accuracy"]) == (results["train_loss"], results["train_accuracy"])
    assert (line["test_loss"], line["test_accuracy"]) == (results["test_loss"], results["test_accuracy"])
    assert line["train_loss"] < 2.31  # below ln(10) on average: the 4 steps learned something


def test_checkpoint_reloads_and_reproduces_the_test_accuracy(run):
    train = load_version(V1)
    import metrics

    checkpoint = torch.load(run["out"] / "final_model.pth", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["test_accuracy"] == run["results"]["test_accuracy"]
    model = train.SmallCNN()
    model.load_state_dict(checkpoint["model_state"])
    data = load_quick_data(train, run["data_dir"], run["out"])
    loss, accuracy = metrics.evaluate(model, data.test_loader, "cpu")
    assert len(data.test_loader.labels) == 256
    assert accuracy == run["results"]["test_accuracy"]
    assert loss == pytest.approx(run["results"]["test_loss"], rel=1e-5)


@pytest.mark.parametrize("name", PNGS)
def test_plots_have_content(run, name):
    assert_png_has_content(run["out"] / name)


def test_summary_is_printed(run):
    stdout = run["stdout"]
    assert "CHECK SUMMARY" in stdout and "1/1 passed" in stdout and "[PASS] first_batch" in stdout
    assert "First batch: images [128, 1, 28, 28] torch.float32 in [0.000, 1.000]" in stdout
    assert f"test accuracy {run['results']['test_accuracy']:.2%}" in stdout


def test_same_seed_same_numbers(run, tmp_path):
    again, _ = quick_run(V1, run["data_dir"], tmp_path / "again")
    other, _ = quick_run(V1, run["data_dir"], tmp_path / "other", "--seed", "7")
    first = numbers_of(run["out"], run["results"])
    assert numbers_of(tmp_path / "again", again) == first
    assert numbers_of(tmp_path / "other", other) != first
    assert_same_weights(run["out"] / "final_model.pth", tmp_path / "again" / "final_model.pth")


# ---------------------------------------------------------------------------
# The first-batch check: passes on the real batch, fails on each bug it exists for
# ---------------------------------------------------------------------------
@pytest.fixture
def first_batch(run):
    train = load_version(V1)
    import debug_tools

    images, labels = next(iter(load_quick_data(train, run["data_dir"], run["out"]).train_loader))
    return debug_tools, images, labels


BATCH_BUGS = {  # bug: (plant it, a problem the check must name, how many problems in all)
    "forgot /255": (lambda x, y: (x * 255, y), "outside [0, 1]", 1),
    "no channel dimension": (lambda x, y: (x[:, 0], y), "one image has shape (28, 28)", 1),
    "uint8 pixels": (lambda x, y: ((x * 255).round().to(torch.uint8), y), "images are torch.uint8", 2),  # and 0..255
    "NaN pixels": (lambda x, y: (x.masked_fill(x > 0.5, float("nan")), y), "NaN or infinite", 1),
    "all black": (lambda x, y: (torch.zeros_like(x), y), "(nearly) constant", 1),
    "labels 1..10": (lambda x, y: (x, y + 1), "labels in [1, 10], outside [0, 9]", 1),
    "labels as float": (lambda x, y: (x, y.float()), "labels are torch.float32", 1),
    "sorted, not shuffled": (lambda x, y: (x, torch.full_like(y, 3)), "only 1 of 10 classes", 1),
}


def test_first_batch_passes_on_the_real_batch(first_batch):
    debug_tools, images, labels = first_batch
    check = debug_tools.inspect_batch(images, labels, 10)
    assert check.passed and check.value == 0, check.report()


@pytest.mark.parametrize("bug", list(BATCH_BUGS))
def test_first_batch_fails_on_a_planted_bug(first_batch, bug):
    debug_tools, images, labels = first_batch
    plant, message, count = BATCH_BUGS[bug]
    check = debug_tools.inspect_batch(*plant(images, labels), 10)
    assert not check.passed and check.value == count == len(check.details["problems"]), check.details["problems"]
    assert any(message in problem for problem in check.details["problems"]) and message in check.hint
    assert "FAIL" in check.report()


def test_preflight_fails_when_to_tensor_forgets_the_division(run, tmp_path):
    """The mutation a learner makes: ToTensor's /255 dropped. --preflight must see it."""
    good = preflight(V1, run["data_dir"], tmp_path / "good")
    assert good["exit_code"] == 0 and good["status"] == "preflight" and failed_checks(good) == []
    folder = mutated_copy(V1, tmp_path, "train.py", "return images_uint8.unsqueeze(1).float().div(255.0)",
                          "return images_uint8.unsqueeze(1).float()")
    bad = preflight(folder, run["data_dir"], tmp_path / "bad")
    assert bad["exit_code"] == 1 and failed_checks(bad) == ["first_batch"]
    assert "pixel values in [0, 255], outside [0, 1]" in bad["checks"]["first_batch"]["details"]["problems"]
    assert not (tmp_path / "bad" / "history.jsonl").exists()  # --preflight does not train


def test_the_check_does_not_change_training(run, tmp_path, monkeypatch):
    train = load_version(V1)
    cfg = train.parse_args(["--quick", "--device", "cpu", "--out", str(tmp_path), "--data-dir", str(run["data_dir"])])
    data = train.load_data(cfg, torch.device("cpu"))
    model = train.SmallCNN()
    runner = train.Run(cfg, tmp_path, torch.device("cpu"), {})
    assert_checks_do_not_perturb(train, monkeypatch, lambda: train.checks_before_training(runner, data), model,
                                 data.train_loader)


# ---------------------------------------------------------------------------
# The non-finite-loss stop, Ctrl-C and bad input
# ---------------------------------------------------------------------------
def test_training_step_stops_before_the_update(first_batch):
    train = load_version(V1)
    _, images, labels = first_batch
    torch.manual_seed(0)
    model = train.SmallCNN()
    optimizer = train.make_optimizer(model, train.parse_args([]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(train.TrainingDiverged, match="is not finite"):
        train.training_step(model, images * float("nan"), labels, optimizer)
    with pytest.raises(train.TrainingDiverged, match="is above --diverged-loss 0.5"):
        train.training_step(model, images, labels, optimizer, diverged_loss=0.5)  # the loss at init is ~2.3
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items()), "a diverged step changed weights"
    loss, logits = train.training_step(model, images, labels, optimizer)
    assert 2.0 < loss < 2.6 and logits.shape == (128, 10) and not logits.requires_grad
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in before.items()), "a good step changed nothing"


def test_nan_after_two_epochs_exits_1_and_keeps_the_last_good_epoch(tiny_data, tmp_path):
    """One step per epoch (160 generated images, batch 1024), NaN from the third step on."""
    train = load_version(V1)
    argv = ["--device", "cpu", "--out", str(tmp_path / "out"), "--data-dir", str(tiny_data),
            "--batch-size", "1024", "--epochs", "5"]
    results = assert_nan_keeps_records(train, "SmallCNN", argv, "test_accuracy")
    assert results["epochs_done"] == 2
    assert torch.load(tmp_path / "out" / "final_model.pth", weights_only=True)["epoch"] == 2


def test_huge_learning_rate_stops_as_diverged(run, tmp_path):
    """Adam with lr 1e6 explodes the loss far above --diverged-loss on its second step."""
    train = load_version(V1)
    out = tmp_path / "out"
    assert run_main(train, quick_args(out, run["data_dir"], "--lr", "1e6")) == 1
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "diverged" and "is above --diverged-loss 25" in results["error"]
    assert results["epochs_done"] == 0 and (out / "history.jsonl").read_text() == ""


def test_ctrl_c_exits_130_and_keeps_epoch_1(tiny_data, tmp_path):
    train = load_version(V1)
    argv = ["--device", "cpu", "--out", str(tmp_path / "out"), "--data-dir", str(tiny_data),
            "--batch-size", "1024", "--epochs", "5"]
    assert_ctrl_c_keeps_records(train, "SmallCNN", argv)


def test_missing_data_exits_2(no_data_anywhere, tmp_path, capsys):
    assert_missing_data_exits_2(V1, tmp_path, capsys)


@pytest.mark.parametrize("argv, message", [
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--patience", "3"], "unrecognized arguments: --patience"),  # v2's idea is not in v1
    (["--epochs", "two"], "invalid int value: 'two'"),
    (["--epochs", "0"], "--epochs and --batch-size must be >= 1"),
    (["--lr", "0"], "--lr a number > 0"),
    (["--lr", "nan"], "--lr a number > 0"),
    (["--diverged-loss", "0"], "--diverged-loss must be > 0"),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
])
def test_bad_flags_exit_2(argv, message, tmp_path, capsys):
    assert_bad_flag_exits_2(V1, argv, message, tmp_path, capsys)


def test_help_lists_every_flag_with_its_default(capsys):
    assert_help_lists_every_flag(V1, FLAGS, capsys)


def test_unwritable_out_exits_2_before_loading_data(tmp_path, capsys):
    """Tests run as root, so chmod cannot make a folder unwritable; a path through a regular file can.
    (prepare_out_dir is the same in v1 ... v4: test_fashionmnist_diffs.py holds it to that.)"""
    train = load_version(V1)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a regular file")
    assert run_main(train, quick_args(blocker / "out", tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write to output folder {blocker / 'out'}")
    assert "Choose another with --out" in err and "Traceback" not in err
    assert blocker.read_text() == "a regular file"
