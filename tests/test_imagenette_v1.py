"""imagenette/v1, the smallest complete loop, on the generated stand-in: one quick run
with every output checked, a short real run that learns, the two checks passing on
correct data and failing on each planted bug, the same numbers from the same seed,
--preflight, and bad input (missing data, a corrupt image, bad flags, unwritable --out)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import load_version
from fmnist_helpers import assert_png_has_content, read_jsonl
from fmnist_v1_v4_helpers import assert_checks_do_not_perturb
from imagenette_helpers import (  # noqa: F401  (fixtures)
    CLASS_NAMES,
    V1,
    add_corrupt_image,
    imagenette_folder,
    isolated_cache,
    make_imagenette_folder,
    quick_args,
    quick_run,
    run_main_exit,
    run_version,
)


NUM_PARAMETERS = 390_986  # convs 896 + 18,496 + 73,856 + 295,168, linear 2,570
PNGS = ["first_batch.png", "class_balance.png", "training_curves.png"]
TIMING_KEYS = {"seconds", "train_seconds", "images_per_second"}
HISTORY_KEYS = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", *TIMING_KEYS}
RESULT_KEYS = {"version", "status", "command", "date", "config", "seed", "device", "torch_version", "checks",
               "data", "num_parameters", "checks_time_s", "all_checks_passed", "train_time_s", "epochs_done",
               "train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy",
               "test_accuracy_se", "seconds_per_epoch", "images_per_second", "exit_code", "outputs",
               "wall_time_s"}
# --quick on the generated folder (60 train/ and 8 val/ images per class): the 40% subset holds
# 24 per class, 4 of them validation; the caps take 16 training, 4 validation, 8 test images.
QUICK_SIZES = {"train_images": 160, "val_images": 40, "test_images": 80}


@pytest.fixture(scope="module")
def run(imagenette_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("v1_run") / "out"
    results, stdout = quick_run(V1, imagenette_folder, out)
    return {"results": results, "stdout": stdout, "out": out, "data_dir": imagenette_folder}


def numbers_of(out, results) -> tuple:
    """Everything a run measured, without the timings."""
    history = [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in read_jsonl(out / "history.jsonl")]
    checks = {name: (c["passed"], c["value"], json.dumps(c["details"], sort_keys=True))
              for name, c in results["checks"].items()}
    return history, checks, results["test_accuracy"], results["test_loss"]


def error_message(stderr: str) -> str:
    """stderr from the first line that starts with "error:" on (the decoding progress bars,
    which end in carriage returns, come before it)."""
    lines = stderr.replace("\r", "\n").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert starts, stderr
    return "\n".join(lines[starts[0]:])


# ---------------------------------------------------------------------------
# One quick run, every output
# ---------------------------------------------------------------------------
def test_results_json(run):
    results, out = run["results"], run["out"]
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results)), "results.json differs from what main() returned"
    assert set(on_disk) == RESULT_KEYS
    assert on_disk["version"] == V1 and on_disk["status"] == "completed" and on_disk["exit_code"] == 0
    assert on_disk["device"] == "cpu" and on_disk["torch_version"] == torch.__version__
    assert on_disk["seed"] == 42 == on_disk["config"]["seed"]
    config = on_disk["config"]
    assert config["quick"] is True and config["epochs"] == 1 and config["image_size"] == 64
    assert config["out"] == str(out) and config["data_dir"] == str(run["data_dir"])
    assert on_disk["command"].startswith("python train.py --quick --device cpu")
    assert on_disk["num_parameters"] == NUM_PARAMETERS
    assert on_disk["epochs_done"] == 1
    assert on_disk["all_checks_passed"] is True and list(on_disk["checks"]) == ["first_batch", "class_balance"]
    assert all(c["passed"] for c in on_disk["checks"].values())
    for key in ("train_accuracy", "val_accuracy", "test_accuracy"):
        assert 0 <= on_disk[key] <= 1, key
    for key in ("train_loss", "val_loss", "test_loss"):
        assert math.isfinite(on_disk[key]) and 1.0 < on_disk[key] < 4.0, key  # ln(10) = 2.30 at chance
    se = math.sqrt(on_disk["test_accuracy"] * (1 - on_disk["test_accuracy"]) / QUICK_SIZES["test_images"])
    assert on_disk["test_accuracy_se"] > 0 and on_disk["test_accuracy_se"] == pytest.approx(se)
    assert on_disk["images_per_second"] > 0 and on_disk["seconds_per_epoch"] > 0
    assert 0 < on_disk["checks_time_s"] < on_disk["wall_time_s"] and 0 < on_disk["train_time_s"] < on_disk["wall_time_s"]
    assert sorted(on_disk["outputs"]) == sorted(p.name for p in out.iterdir() if p.is_file())
    assert not list(out.glob("*.tmp"))


def test_results_hold_the_data_report(run):
    data = run["results"]["data"]
    assert {k: data[k] for k in QUICK_SIZES} == QUICK_SIZES
    assert data["root"] == str(run["data_dir"]) and data["found_via"] == "--data-dir"
    assert data["train_folder_images"] == 600 and data["train_folder_class_counts"] == [60] * 10
    assert data["subset_images"] == 240 and data["image_size"] == 64 and len(data["subset_fingerprint"]) == 16
    assert (data["train_fraction"], data["val_fraction"], data["subset_seed"]) == (0.4, 0.15, 0)
    assert set(data["from_cache"]) == {"train", "val", "test"}


def test_history_has_one_epoch(run):
    history = read_jsonl(run["out"] / "history.jsonl")
    assert len(history) == 1
    line, results = history[0], run["results"]
    assert set(line) == HISTORY_KEYS and line["epoch"] == 1
    assert (line["train_loss"], line["train_accuracy"], line["val_loss"], line["val_accuracy"]) == (
        results["train_loss"], results["train_accuracy"], results["val_loss"], results["val_accuracy"])
    assert 0 < line["train_seconds"] <= line["seconds"]
    assert line["images_per_second"] == pytest.approx(QUICK_SIZES["train_images"] / line["train_seconds"])
    assert results["images_per_second"] == line["images_per_second"]
    assert results["seconds_per_epoch"] == line["seconds"]


@pytest.mark.parametrize("name", PNGS)
def test_plots_have_content(run, name):
    assert_png_has_content(run["out"] / name)


def test_checkpoint_loads_with_weights_only(run):
    train = load_version(V1)
    checkpoint = torch.load(run["out"] / "final_model.pth", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["val_accuracy"] == run["results"]["val_accuracy"]
    model = train.BasicCNN()
    model.load_state_dict(checkpoint["model_state"])  # strict: every key and shape matches
    assert sum(v.numel() for v in checkpoint["model_state"].values()) == NUM_PARAMETERS


def test_stdout_reports_data_checks_and_speed(run):
    stdout, results = run["stdout"], run["results"]
    data = results["data"]
    assert f"Imagenette from {run['data_dir']} (--data-dir)" in stdout
    assert f"fingerprint {data['subset_fingerprint']}" in stdout
    assert "-> 160 training, 40 validation (15% of the subset), 80 test images (val/ folder), 64 px" in stdout
    assert "BasicCNN: 390,986 trainable parameters" in stdout
    assert "First batch: images [64, 3, 64, 64] torch.float32" in stdout
    assert "[PASS] first_batch" in stdout and "[PASS] class_balance" in stdout and "2/2 passed" in stdout
    assert "epoch   1/1  train loss" in stdout and " img/s)" in stdout
    assert f"test accuracy {results['test_accuracy']:.2%}" in stdout


def test_class_balance_plot_uses_readable_names(run, monkeypatch):
    """The class names that reach the plots are the readable ones, in label order."""
    train = load_version(V1)
    seen = {}
    monkeypatch.setattr(train, "plot_class_balance", lambda details, classes, path: seen.setdefault("c", classes))
    cfg = train.parse_args(quick_args(run["data_dir"], run["out"]))
    data = train.load_data(cfg, torch.device("cpu"))
    assert data.classes == CLASS_NAMES
    train.checks_before_training(train.Run(cfg, run["out"], torch.device("cpu"), {}), data)
    assert seen["c"] == CLASS_NAMES and seen["c"][:2] == ["tench", "English springer"]


# ---------------------------------------------------------------------------
# It learns: a short real run (not --quick) on a small generated folder
# ---------------------------------------------------------------------------
def test_a_short_run_learns(tmp_path):
    root = make_imagenette_folder(tmp_path / "data", train_per_class=25, val_per_class=4, seed=3)
    out = tmp_path / "out"
    results, stdout = run_version(V1, ["--device", "cpu", "--image-size", "32", "--epochs", "8",
                                       "--train-fraction", "1.0", "--batch-size", "32", "--lr", "3e-3",
                                       "--data-dir", str(root), "--out", str(out)])
    history = read_jsonl(out / "history.jsonl")
    assert [h["epoch"] for h in history] == list(range(1, 9))
    assert results["data"]["train_images"] == 210 and results["data"]["val_images"] == 40
    assert history[0]["val_accuracy"] < 0.5  # it starts near chance (10%) ...
    assert results["val_accuracy"] >= 0.5 and results["test_accuracy"] >= 0.5  # ... and ends far above it
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert results["config"]["quick"] is False and results["config"]["image_size"] == 32


# ---------------------------------------------------------------------------
# The checks: pass on correct data, fail on each planted bug
# ---------------------------------------------------------------------------
@pytest.fixture
def quick_data(run):
    train = load_version(V1)
    import debug_tools

    cfg = train.parse_args(quick_args(run["data_dir"], run["out"]))
    return train, debug_tools, train.load_data(cfg, torch.device("cpu"))


@pytest.fixture
def first_batch(quick_data):
    _, debug_tools, data = quick_data
    images, labels = next(iter(data.train_loader))
    assert labels.max().item() == 9 and len(labels) == 64
    return debug_tools, images, labels


def test_first_batch_passes_on_the_real_batch(first_batch):
    debug_tools, images, labels = first_batch
    check = debug_tools.inspect_batch(images, labels, 10, image_shape=(3, 64, 64))
    assert check.passed and check.value == 0 and check.details["problems"] == [], check.report()
    assert check.details["shape"] == [64, 3, 64, 64] and 0 <= check.details["min"] < check.details["max"] <= 1
    assert len(check.details["channel_means"]) == 3 and "PASS" in check.report()


BATCH_BUGS = {  # bug: (plant it, a problem the check must name)
    "uint8 range (x 255)": (lambda x, y: (x * 255, y), "outside [0, 1]"),
    "channels last": (lambda x, y: (x.permute(0, 2, 3, 1), y), "one image has shape (64, 64, 3), not (3, 64, 64)"),
    "single channel": (lambda x, y: (x[:, :1], y), "one image has shape (1, 64, 64)"),
    "labels 1..10": (lambda x, y: (x, y + 1), "labels in [1, 10], outside [0, 9]"),
    "one class only": (lambda x, y: (x, torch.full_like(y, 3)), "only 1 of 10 classes"),
    "NaN pixels": (lambda x, y: (x.masked_fill(x > 0.5, float("nan")), y), "NaN or infinite"),
    "all black": (lambda x, y: (torch.zeros_like(x), y), "(nearly) constant"),
    "uint8 pixels": (lambda x, y: ((x * 255).round().to(torch.uint8), y), "images are torch.uint8"),
    "labels as float": (lambda x, y: (x, y.float()), "labels are torch.float32"),
}


@pytest.mark.parametrize("bug", list(BATCH_BUGS))
def test_first_batch_fails_on_a_planted_bug(first_batch, bug):
    debug_tools, images, labels = first_batch
    plant, message = BATCH_BUGS[bug]
    check = debug_tools.inspect_batch(*plant(images, labels), 10, image_shape=(3, 64, 64))
    problems = check.details["problems"]
    assert not check.passed and check.value == len(problems) >= 1
    assert any(message in problem for problem in problems), problems
    assert message in check.hint and "FAIL" in check.report()


def test_one_class_in_a_small_batch_is_not_flagged(first_batch):
    """Fewer than 4 x 10 labels: one class only can happen by chance, the check stays quiet."""
    debug_tools, images, labels = first_batch
    check = debug_tools.inspect_batch(images[:39], torch.full_like(labels[:39], 3), 10, image_shape=(3, 64, 64))
    assert check.passed, check.details["problems"]
    assert not debug_tools.inspect_batch(images[:40], torch.full_like(labels[:40], 3), 10,
                                         image_shape=(3, 64, 64)).passed


def _balance(debug_tools, train_labels, val_labels, reference=(60,) * 10):
    splits = {"train": torch.tensor(train_labels), "val": torch.tensor(val_labels),
              "test": torch.tensor([k for k in range(10) for _ in range(8)])}
    return debug_tools.class_balance(splits, list(reference), 10)


def test_class_balance_passes_on_the_stratified_splits(quick_data, run):
    _, debug_tools, data = quick_data
    reference = run["results"]["data"]["train_folder_class_counts"]
    check = debug_tools.class_balance({"train": data.train_loader.labels, "val": data.val_loader.labels,
                                       "test": data.test_loader.labels}, reference, 10)
    assert check.passed and check.value == pytest.approx(0.0, abs=1e-9), check.report()
    assert check.details["counts"]["train"] == [16] * 10 and check.details["missing"] == []
    # the full (not capped) stratified subset of an uneven folder keeps its mix too
    import shared.imagenette as imagenette

    uneven = [k for k in range(10) for _ in range(40 + 5 * k)]
    subset = imagenette.stratified_subset(uneven, 0.4, 0)
    chosen = [uneven[i] for i in subset]
    held = set(imagenette.stratified_subset(chosen, 0.15, 1))
    train_labels = [y for j, y in enumerate(chosen) if j not in held]
    val_labels = [chosen[j] for j in sorted(held)]
    counts = [uneven.count(k) for k in range(10)]
    assert _balance(debug_tools, train_labels, val_labels, counts).passed


def test_class_balance_fails_on_the_first_40_percent_of_the_sorted_list(imagenette_folder):
    load_version(V1)
    import debug_tools

    import shared.imagenette as imagenette

    _, labels, _ = imagenette.list_split(imagenette_folder, "train")
    first = labels[:int(0.4 * len(labels))]  # sorted by class: only classes 0..3
    check = _balance(debug_tools, first[:200], first[200:])
    assert not check.passed and check.value > 10
    assert "train: class 4" in check.details["missing"] and "val: class 9" in check.details["missing"]
    assert "missing: train: class 4" in check.hint


def test_class_balance_fails_on_a_mildly_skewed_split_and_passes_within_2_points():
    load_version(V1)
    import debug_tools

    balanced = [k for k in range(10) for _ in range(20)]  # 200 labels, 10% each
    skewed = balanced[:-5] + [0] * 5  # class 0: 25 of 200 = 12.5%, class 9: 15 = 7.5%
    check = _balance(debug_tools, skewed, balanced[::5])
    assert not check.passed and check.value == pytest.approx(2.5) and check.details["missing"] == []
    assert check.details["max_deviation_points"]["train"] == pytest.approx(2.5)
    slight = balanced[:-3] + [0] * 3  # 11.5% / 8.5%: within the 2 points
    ok = _balance(debug_tools, slight, balanced[::5])
    assert ok.passed and ok.value == pytest.approx(1.5)
    # the test split is reported, but not held to it
    splits = {"train": torch.tensor(balanced), "val": torch.tensor(balanced[::5]), "test": torch.tensor([0] * 50)}
    assert debug_tools.class_balance(splits, [60] * 10, 10).passed


def test_the_checks_do_not_change_training(run, tmp_path, monkeypatch):
    """Drawing the first batch advances the training loader's shuffle; rng_untouched puts it back
    (control inside: without rng_untouched the generator does move)."""
    train = load_version(V1)
    cfg = train.parse_args(quick_args(run["data_dir"], tmp_path))
    data = train.load_data(cfg, torch.device("cpu"))
    runner = train.Run(cfg, tmp_path, torch.device("cpu"), {})
    assert_checks_do_not_perturb(train, monkeypatch, lambda: train.checks_before_training(runner, data),
                                 train.BasicCNN(), data.train_loader)


def test_class_balance_fails_on_a_missing_small_class_within_2_points():
    """A class with 1% of the images, missing from the validation split, moves the shares by only
    about 1 point; it fails all the same."""
    load_version(V1)
    import debug_tools

    reference = [100] * 9 + [10]
    train_labels = [k for k, n in enumerate(reference) for _ in range(n // 2)]
    val_labels = [k for k in range(9) for _ in range(10)]  # no class 9
    check = debug_tools.class_balance({"train": torch.tensor(train_labels), "val": torch.tensor(val_labels)},
                                      reference, 10)
    assert check.value < 2 and not check.passed and check.details["missing"] == ["val: class 9"]
    assert "missing: val: class 9" in check.hint


# ---------------------------------------------------------------------------
# Same seed, same numbers; --preflight
# ---------------------------------------------------------------------------
def test_same_seed_same_numbers(run, tmp_path):
    again, _ = quick_run(V1, run["data_dir"], tmp_path / "again")
    assert again["data"]["from_cache"] == {"train": True, "val": True, "test": True}  # the first run filled it
    first = numbers_of(run["out"], run["results"])
    assert numbers_of(tmp_path / "again", again) == first
    a = torch.load(run["out"] / "final_model.pth", weights_only=True)["model_state"]
    b = torch.load(tmp_path / "again" / "final_model.pth", weights_only=True)["model_state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "same seed, different weights"
    other, _ = quick_run(V1, run["data_dir"], tmp_path / "other", "--seed", "7")
    assert numbers_of(tmp_path / "other", other)[0] != first[0]  # control: the seed matters
    c = torch.load(tmp_path / "other" / "final_model.pth", weights_only=True)["model_state"]
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert other["data"]["subset_fingerprint"] == run["results"]["data"]["subset_fingerprint"]  # same images


def test_preflight_runs_only_the_checks(run, tmp_path):
    out = tmp_path / "pre"
    results, stdout = quick_run(V1, run["data_dir"], out, "--preflight")
    assert results["status"] == "preflight" and results["exit_code"] == 0 and results["all_checks_passed"] is True
    assert json.loads((out / "results.json").read_text())["status"] == "preflight"
    assert not (out / "history.jsonl").exists() and not (out / "final_model.pth").exists()
    assert (out / "first_batch.png").is_file() and (out / "class_balance.png").is_file()
    assert "CHECK SUMMARY" in stdout and "--- Training ---" not in stdout
    assert results["checks"]["first_batch"]["details"] == run["results"]["checks"]["first_batch"]["details"]


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------
def test_missing_data_exits_2(tmp_path):
    train = load_version(V1)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_main_exit(train, quick_args(empty, tmp_path / "out"))
    assert code == 2
    assert error_message(err).startswith("error: Imagenette was not found. Looked in:")
    assert str(empty) in err
    assert "not tried: --data-dir names the folder to use" in err and "Traceback" not in err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["status"] == "no data" and results["exit_code"] == 2
    assert list(empty.iterdir()) == []  # nothing downloaded into the user's folder


def test_corrupt_image_exits_2_naming_the_file(tmp_path):
    root = make_imagenette_folder(tmp_path / "data", train_per_class=20, val_per_class=8)
    ok, _ = run_version(V1, quick_args(root, tmp_path / "ok", "--train-fraction", "1.0", "--preflight"))
    assert ok["exit_code"] == 0  # control: the folder is fine before the corrupt file is added
    bad = add_corrupt_image(root)
    train = load_version(V1)
    code, err = run_main_exit(train, quick_args(root, tmp_path / "out", "--train-fraction", "1.0"))
    assert code == 2
    message = error_message(err)
    assert message.startswith("error: cannot decode image") and str(bad) in message and "Traceback" not in err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["status"] == "no data" and str(bad) in results["error"]
    assert not (tmp_path / "out" / "history.jsonl").exists()


@pytest.mark.parametrize("argv, message", [
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--train-fraction", "0"], "--train-fraction must be in (0, 1]"),
    (["--train-fraction", "1.5"], "--train-fraction must be in (0, 1]"),
    (["--val-fraction", "1"], "--val-fraction in (0, 1)"),
    (["--image-size", "16"], "--image-size >= 32"),
    (["--epochs", "0"], "--epochs and --batch-size must be >= 1"),
    (["--lr", "nan"], "--lr a number > 0"),
])
def test_bad_flags_exit_2(argv, message, tmp_path):
    train = load_version(V1)
    code, err = run_main_exit(train, ["--device", "cpu", "--out", str(tmp_path / "out"), *argv])
    assert code == 2 and message in err and "usage:" in err, err
    assert not (tmp_path / "out").exists()  # rejected before anything is written


def test_unwritable_out_exits_2(imagenette_folder, tmp_path):
    train = load_version(V1)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a regular file")
    code, err = run_main_exit(train, quick_args(imagenette_folder, blocker / "out"))
    assert code == 2
    assert err.startswith(f"error: cannot write to output folder {blocker / 'out'}") and "Traceback" not in err
    assert blocker.read_text() == "a regular file"
