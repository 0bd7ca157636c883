"""cifar100/v1-baseline: a quick run writes real outputs, and its own records
expose the clipping bug it carries (seed 004), next to v2 on the same data."""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from conftest import load_version
from test_cifar100_data import CLASSES, TEST_PER_CLASS, make_image_folder

HISTORY_KEYS = {"epoch", "loss", "accuracy", "learning_rate", "mean_grad_norm", "min_grad_norm", "max_grad_norm",
                "weight_update_norm", "num_batches", "val_loss", "val_accuracy", "epoch_time_s", "images_per_second"}
# --width 8: the same ResNet18 layout at 1/8 of the channels, so a run takes seconds on a CPU.
QUICK = ["--quick", "--device", "cpu", "--width", "8", "--seed", "0"]
LOSS_SCALE = 65536.0  # GradScaler's initial scale (2**16)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """v1 and v2 quick runs with the same data, seed and flags."""
    root = tmp_path_factory.mktemp("cifar_v1")
    images = make_image_folder(root / "images")
    out = {}
    for version in ("v1-baseline", "v2-diagnostics"):
        main = load_version(f"cifar100/{version}", "main")
        results = main.main([*QUICK, "--data-dir", str(images), "--out", str(root / version)])
        history = [json.loads(line) for line in (root / version / "history.jsonl").read_text().splitlines()]
        out[version] = (results, history, root / version)
    return out


def test_v1_quick_run_writes_every_output(runs):
    results, history, out = runs["v1-baseline"]
    assert results["status"] == "completed" and results["version"] == "v1-baseline"
    assert results["config"]["num_epochs"] == 2 and results["config"]["batch_size"] == 32
    assert results["data"]["num_classes"] == len(CLASSES) and results["data"]["val"] == 16
    assert results["amp"] == {"autocast_float16": False, "grad_scaler": True}  # the scaler is on, even on CPU
    assert results["torch_version"] == torch.__version__ and results["seed"] == 0
    assert results["wall_time_s"] > 0 and results["images_per_second"] > 0
    assert 0 <= results["test_accuracy"] <= 100 and math.isfinite(results["test_loss"])
    assert results["test_images"] == len(CLASSES) * TEST_PER_CLASS
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results, default=str))
    assert [r["epoch"] for r in history] == [1, 2]
    for r in history:
        assert set(r) == HISTORY_KEYS
        assert r["num_batches"] == 144 // 32  # 160 images - 16 for validation, last partial batch dropped
        assert all(math.isfinite(r[k]) for k in HISTORY_KEYS)
        assert 0 <= r["accuracy"] <= 100 and 0 <= r["val_accuracy"] <= 100
        assert r["min_grad_norm"] <= r["mean_grad_norm"] <= r["max_grad_norm"]
    assert (out / "curves.png").stat().st_size > 10_000
    state = torch.load(out / "best_model.pth", weights_only=True)
    assert state["fc.weight"].shape == (len(CLASSES), 64)  # width 8 -> 8 * 8 channels before the classifier


def test_v1_gradient_norms_are_scaled_by_the_loss_scale(runs):
    """v1 logs the norm clip_grad_norm_ returns, i.e. of the still-scaled gradients:
    ~65536x the true norm that v2 logs for the same model, data and seed."""
    (_, v1, _), (_, v2, _) = runs["v1-baseline"], runs["v2-diagnostics"]
    assert v1[0]["mean_grad_norm"] > 1e3 > 100 > v2[0]["mean_grad_norm"]
    # Epoch 1 starts from identical weights and batches; the ratio is the loss scale
    # (not exactly: v1's first steps already move the weights differently).
    ratio = v1[0]["max_grad_norm"] / v2[0]["max_grad_norm"]
    assert LOSS_SCALE / 3 < ratio < LOSS_SCALE * 3, ratio


def test_v1_weight_updates_collapse(runs):
    """Clipped to norm 1 while scaled, then divided by 65536 in scaler.step(), v1's steps
    are ~1e-5 of v2's: only weight decay still moves its weights."""
    (_, v1, _), (_, v2, _) = runs["v1-baseline"], runs["v2-diagnostics"]
    for a, b in zip(v1, v2):
        assert a["weight_update_norm"] < b["weight_update_norm"] / 5, (a["weight_update_norm"], b["weight_update_norm"])


def test_the_analyzer_diagnoses_v1_from_its_own_history(runs, capsys):
    analyzer = load_version("cifar100/v2-diagnostics", "scripts.analyze_diagnostics")
    _, _, out = runs["v1-baseline"]
    code = analyzer.main(["--file", str(out / "history.jsonl"), "--num-classes", str(len(CLASSES)),
                          "--plot", str(out / "analysis.png")])
    text = capsys.readouterr().out
    assert code == 1
    assert "clipping before unscale_" in text and "scaler.unscale_(optimizer)" in text
    records, _ = analyzer.load_records(out / "history.jsonl")
    # With the run's config (AMP on) the analyzer may name the AMP bug; without it, it must not guess.
    config = analyzer.RunConfig.from_results(json.loads((out / "results.json").read_text()))
    assert analyzer.analyze(records, len(CLASSES), config=config).ids[0] == "amp_scaled_gradients"
    assert (out / "analysis.png").stat().st_size > 10_000


def test_the_analyzer_finds_no_clipping_bug_in_v2(runs):
    """The same check on v2's diagnostics from the same data: nothing about scaling or stalled updates."""
    analyzer = load_version("cifar100/v2-diagnostics", "scripts.analyze_diagnostics")
    _, _, out = runs["v2-diagnostics"]
    records, _ = analyzer.load_records(out / "diagnostics" / "train_diagnostics.jsonl")
    ids = analyzer.analyze(records, len(CLASSES)).ids
    assert "amp_scaled_gradients" not in ids and "weight_updates_collapsed" not in ids


def test_v1_validation_shares_the_training_augmentation(tmp_path):
    """The second bug: one dataset instance, so validation images are augmented."""
    v1 = load_version("cifar100/v1-baseline", "scripts.train_utils")
    data = sys.modules["scripts.data"].load_cifar100(make_image_folder(tmp_path / "img", 4, 1))
    train_ds, val_ds, _ = v1.build_datasets(data, 0.25, 11)
    assert train_ds.dataset is val_ds.dataset
    assert not torch.equal(val_ds[0][0], val_ds[0][0])  # the same validation image, read twice
