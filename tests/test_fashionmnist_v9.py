"""fashionmnist/v9-step1 end to end in quick mode: every promised output, with its
content checked, and the same numbers from the same seed."""
from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch

from conftest import load_version
from fmnist_helpers import (  # noqa: F401  (fixtures)
    CHECK_KEYS,
    NUM_PARAMETERS,
    V9,
    VersionContext,
    assert_check_dict,
    assert_finite,
    assert_png_has_content,
    fmnist_data,
    generated_data,
    load_checkpoint_into,
    quick_args,
    read_jsonl,
)

PNGS = ["training_curves.png", "data_samples.png", "class_means.png", "pixel_histogram.png"]
PROMISED = ["results.json", "history.jsonl", *PNGS, "best_model_v9.pth"]


def quick_run(data_dir, out, *extra):
    """main() in-process; returns (results, stdout)."""
    stdout = io.StringIO()
    with VersionContext(V9) as train, contextlib.redirect_stdout(stdout):
        results = train.main(quick_args(out, data_dir, *extra))
    return results, stdout.getvalue()


@pytest.fixture(scope="module")
def run(fmnist_data, tmp_path_factory):
    data_dir, is_real = fmnist_data
    out = tmp_path_factory.mktemp("v9_run") / "out"
    results, stdout = quick_run(data_dir, out)
    return {"results": results, "stdout": stdout, "out": out, "data_dir": data_dir, "is_real": is_real}


def test_every_promised_file_is_written(run):
    out = run["out"]
    for name in PROMISED:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not list(out.glob("*.tmp")), "a half-written results file was left behind"


def test_results_json(run):
    results = run["results"]
    on_disk = json.loads((run["out"] / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results)), "results.json differs from what main() returned"
    assert on_disk["version"] == V9
    assert on_disk["status"] == "completed" and on_disk["exit_code"] == 0
    assert on_disk["device"] == "cpu"
    assert on_disk["torch_version"] == torch.__version__
    assert on_disk["seed"] == 42 == on_disk["config"]["seed"]
    assert on_disk["config"]["quick"] is True and on_disk["config"]["epochs"] == 1
    assert on_disk["config"]["out"] == str(run["out"]) and on_disk["config"]["data_dir"] == str(run["data_dir"])
    assert on_disk["num_parameters"] == NUM_PARAMETERS
    assert 0 < on_disk["test_accuracy"] <= 1
    assert_finite(on_disk["test_loss"], on_disk["wall_time_s"], on_disk["train_time_s"], on_disk["checks_time_s"])
    assert 0 < on_disk["checks_time_s"] < on_disk["wall_time_s"]
    assert 0 < on_disk["train_time_s"] < on_disk["wall_time_s"]
    assert on_disk["best_epoch"] == 1 and 0 < on_disk["best_val_accuracy"] <= 1
    # v9 has one check: the loss at initialisation
    assert list(on_disk["checks"]) == ["loss_at_init"]
    check = on_disk["checks"]["loss_at_init"]
    assert_check_dict(check, "loss_at_init")
    assert check["passed"] is True and on_disk["all_checks_passed"] is True
    assert abs(check["value"] - math.log(10)) <= check["threshold"] == 0.3
    assert check["details"]["expected"] == pytest.approx(math.log(10))


def test_data_report(run):
    report = run["results"]["data_report"]
    assert len(report["classes"]) == 10 and report["image_shape"] == [28, 28]
    assert report["train_size"] == sum(report["train_class_counts"].values())
    assert report["test_size"] == sum(report["test_class_counts"].values())
    # quick mode: the report describes the 512 training images of the split that trains, not the
    # first 512 raw images, and the test images that are evaluated
    train = load_version(V9)
    cfg = train.parse_args(quick_args(run["out"], run["data_dir"]))
    train_set, _, test_set = train.split_data(*train.load_raw_data(run["data_dir"]), cfg, torch.device("cpu"))
    assert report["train_size"] == len(train_set) == 512 and report["test_size"] == len(test_set)
    assert list(report["train_class_counts"].values()) == torch.bincount(train_set.labels, minlength=10).tolist()
    assert list(report["test_class_counts"].values()) == torch.bincount(test_set.labels, minlength=10).tolist()
    stats = report["pixel_stats"]
    assert 0 == stats["min"] < stats["mean"] < stats["max"] <= 1  # reported after /255
    assert 0 < stats["fraction_zero"] < 1 and stats["std"] > 0
    assert all(0 < v < 1 for v in report["class_mean_intensity"].values())
    if run["is_real"]:
        assert report["classes"][0] == "T-shirt/top" and 0.2 < stats["mean"] < 0.4  # Fashion-MNIST: ~0.29


def test_history_has_one_finite_line_per_epoch(run):
    results = run["results"]
    history = read_jsonl(run["out"] / "history.jsonl")
    assert [h["epoch"] for h in history] == list(range(1, results["config"]["epochs"] + 1))
    for h in history:
        assert_finite(h["train_loss"], h["val_loss"], h["learning_rate"], h["seconds"])
        assert 0 < h["train_loss"] < 10 and 0 < h["val_loss"] < 10
        assert 0 <= h["train_accuracy"] <= 1 and 0 <= h["val_accuracy"] <= 1
    assert results["best_val_accuracy"] == max(h["val_accuracy"] for h in history)


def test_best_epoch_is_the_one_with_the_highest_validation_accuracy(generated_data, tmp_path, monkeypatch):
    """Three epochs on the small generated set, with validation accuracies scripted as 0.5, 0.9,
    0.7: the kept checkpoint must be epoch 2, not the last one, and the test accuracy is the
    one of that checkpoint."""
    train = load_version(V9)
    import metrics

    scripted = iter([0.5, 0.9, 0.7])

    def evaluate_with_scripted_validation(model, loader, device):
        loss, accuracy = metrics.evaluate(model, loader, device)
        return (loss, next(scripted)) if loader is val_loaders[0] else (loss, accuracy)

    val_loaders = []
    real_load_data = train.load_data

    def load_data(run):
        raw, data = real_load_data(run)
        val_loaders.append(data.val_loader)
        return raw, data

    monkeypatch.setattr(train, "load_data", load_data)
    monkeypatch.setattr(train, "evaluate", evaluate_with_scripted_validation)
    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        results = train.main(["--device", "cpu", "--out", str(out), "--data-dir", str(generated_data),
                              "--val-size", "200", "--epochs", "3"])
    history = read_jsonl(out / "history.jsonl")
    assert [h["val_accuracy"] for h in history] == [0.5, 0.9, 0.7]
    assert results["best_epoch"] == 2 and results["best_val_accuracy"] == 0.9
    model, checkpoint = load_checkpoint_into(train, out / "best_model_v9.pth")
    assert checkpoint["epoch"] == 2
    cfg = train.parse_args(["--data-dir", str(generated_data), "--val-size", "200"])
    _, _, test_set = train.split_data(*train.load_raw_data(generated_data), cfg, torch.device("cpu"))
    _, accuracy = metrics.evaluate(model, train.TensorLoader(test_set, 1024), "cpu")
    assert accuracy == results["test_accuracy"]


def test_checkpoint_loads_with_weights_only_and_reproduces_the_test_accuracy(run):
    train = load_version(V9)
    model, checkpoint = load_checkpoint_into(train, run["out"] / "best_model_v9.pth")
    results = run["results"]
    assert checkpoint["epoch"] == results["best_epoch"]
    assert checkpoint["val_accuracy"] == results["best_val_accuracy"]
    cfg = train.parse_args(quick_args(run["out"], run["data_dir"]))
    _, _, test_set = train.split_data(*train.load_raw_data(run["data_dir"]), cfg, torch.device("cpu"))
    assert len(test_set) == results["data_report"]["test_size"]
    import metrics

    loss, accuracy = metrics.evaluate(model, train.TensorLoader(test_set, 1024), "cpu")
    assert accuracy == pytest.approx(results["test_accuracy"], abs=1e-9)
    assert loss == pytest.approx(results["test_loss"], rel=1e-4)


@pytest.mark.parametrize("name", PNGS)
def test_plots_are_real_images(run, name):
    assert_png_has_content(run["out"] / name)


def test_summary_table_is_printed(run):
    stdout = run["stdout"]
    assert "CHECK SUMMARY" in stdout and "1/1 passed" in stdout
    assert "[PASS] loss_at_init" in stdout
    assert "Test accuracy" in stdout


def test_same_seed_same_numbers(run, tmp_path):
    """Same seed, same machine, CPU: the same numbers, bit for bit (and another seed differs,
    so this test can fail)."""
    again, _ = quick_run(run["data_dir"], tmp_path / "again")
    other, _ = quick_run(run["data_dir"], tmp_path / "other_seed", "--seed", "7")

    def numbers(out, results):
        history = [{k: v for k, v in h.items() if k != "seconds"} for h in read_jsonl(out / "history.jsonl")]
        checks = {name: c["value"] for name, c in results["checks"].items()}
        return history, checks, results["test_accuracy"], results["test_loss"], results["best_val_accuracy"]

    first = numbers(run["out"], run["results"])
    assert numbers(tmp_path / "again", again) == first
    assert numbers(tmp_path / "other_seed", other) != first
    weights = [torch.load(d / "best_model_v9.pth", weights_only=True)["model_state"]
               for d in (run["out"], tmp_path / "again")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_check_dict_keys_are_the_documented_ones():
    """Guards the helper itself: a CheckResult has exactly the keys the tests hold results.json to."""
    load_version(V9)
    import debug_tools

    fields = set(debug_tools.CheckResult.__dataclass_fields__)
    assert fields == CHECK_KEYS
