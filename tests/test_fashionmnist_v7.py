"""fashionmnist/v7, evaluation that explains: every metric exact on hand-made tensors
(confusion matrix, per-class precision/recall/F1, top-k accuracy, calibration bins and ECE,
most confident mistakes); one quick run whose evaluation report is consistent with itself
and with evaluate(), with every picture written; an evaluation left in train mode changes
the reported metrics (they then depend on the batch size), in eval mode they do not."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import load_version
from fmnist_helpers import assert_png_has_content, fmnist_data  # noqa: F401
from fmnist_v1_v4_helpers import (  # noqa: F401  (fixtures)
    V2_RESULT_KEYS,
    assert_bad_flag_exits_2,
    assert_help_lists_every_flag,
    assert_results_header,
    load_quick_data,
    quick_run,
)

V7 = "fashionmnist/v7"
EXTRA = ["--channels", "16"]  # a narrower ResNet: the same code paths in half the time
PNGS = ["confusion_matrix.png", "per_class_metrics.png", "confident_mistakes.png", "reliability_diagram.png",
        "training_curves.png", "lr_finder.png", "mixed_batch.png", "gradient_flow.png"]
EVALUATION_KEYS = {"size", "accuracy", "top_k_accuracy", "per_class", "macro_f1", "confusion_matrix", "calibration",
                   "mean_confidence", "most_confident_mistakes", "matches_evaluate"}


@pytest.fixture(scope="module")
def run(fmnist_data, tmp_path_factory):
    data_dir, is_real = fmnist_data
    out = tmp_path_factory.mktemp("v7_run") / "out"
    results, stdout = quick_run(V7, data_dir, out, *EXTRA)
    return {"results": results, "stdout": stdout, "out": out, "data_dir": data_dir, "is_real": is_real}


@pytest.fixture
def metrics():
    load_version(V7)
    import metrics as module
    return module


# ---------------------------------------------------------------------------
# Exact values on hand-made tensors
# ---------------------------------------------------------------------------
LABELS = torch.tensor([0, 0, 0, 1, 1, 2])
PREDICTIONS = torch.tensor([0, 0, 1, 1, 2, 2])


def test_confusion_matrix_exact(metrics):
    confusion = metrics.confusion_matrix(PREDICTIONS, LABELS, 4)
    assert confusion.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert metrics.normalise_rows(confusion).tolist() == [[2 / 3, 1 / 3, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 1, 0],
                                                          [0, 0, 0, 0]]


def test_per_class_metrics_exact(metrics):
    per_class = metrics.per_class_metrics(metrics.confusion_matrix(PREDICTIONS, LABELS, 4))
    # class 0: 2 of 2 predicted right, 2 of 3 found; class 1: 1 of 2, 1 of 2; class 2: 1 of 2, 1 of 1;
    # class 3: never predicted, no images: 0, not NaN
    assert per_class["precision"] == [1.0, 0.5, 0.5, 0.0]
    assert per_class["recall"] == [2 / 3, 0.5, 1.0, 0.0]
    assert per_class["f1"] == pytest.approx([0.8, 0.5, 2 / 3, 0.0], abs=1e-15)
    assert per_class["support"] == [3, 2, 1, 0]


def test_top_k_accuracy_exact(metrics):
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [3.0, 1.0, 2.0], [1.0, 2.0, 3.0]])
    labels = torch.tensor([0, 2, 1, 0])
    assert metrics.top_k_accuracy(logits, labels, 1) == 0.25  # only the first
    assert metrics.top_k_accuracy(logits, labels, 2) == 0.5  # the second's label is its runner-up
    assert metrics.top_k_accuracy(logits, labels, 3) == 1.0
    assert metrics.top_k_accuracy(logits, labels, 5) == 1.0  # k beyond the classes: all of them


def test_calibration_and_ece_exact(metrics):
    # binary fractions, exact in float32: bins (0, 0.25] (0.25, 0.5] (0.5, 0.75] (0.75, 1]; an edge value
    # goes to the bin it closes (0.75 to the third)
    confidences = torch.tensor([0.875, 0.875, 0.75, 0.625, 0.625, 0.5, 0.25])
    correct = torch.tensor([True, False, True, True, True, False, False])
    result = metrics.calibration(confidences, correct, bins=4)
    assert result["count"] == [1, 1, 3, 2]
    assert result["accuracy"] == [0.0, 0.0, 1.0, 0.5]
    assert result["mean_confidence"] == [0.25, 0.5, 2 / 3, 0.875]
    # ECE = sum_b n_b / N |acc_b - conf_b| = (1 x 0.25 + 1 x 0.5 + 3 x 1/3 + 2 x 0.375) / 7 = 2.5 / 7
    assert result["ece"] == pytest.approx(2.5 / 7, abs=1e-15)
    perfect = metrics.calibration(torch.tensor([1.0, 1.0]), torch.tensor([True, True]), bins=15)
    assert perfect["ece"] == 0.0 and perfect["count"][-1] == 2


def test_most_confident_mistakes_exact(metrics):
    probabilities = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05]])
    labels = torch.tensor([0, 0, 1, 1, 1])  # wrong: 1 (0.8), 2 (0.6), 4 (0.95)
    assert metrics.most_confident_mistakes(probabilities, labels, 16) == [4, 1, 2]
    assert metrics.most_confident_mistakes(probabilities, labels, 2) == [4, 1]


# ---------------------------------------------------------------------------
# The quick run
# ---------------------------------------------------------------------------
def test_results_and_outputs(run):
    results = run["results"]
    assert_results_header(results, V7, run["out"], run["data_dir"])
    assert set(results) == V2_RESULT_KEYS | {"evaluation"}
    assert set(results["evaluation"]) == EVALUATION_KEYS
    for name in PNGS:
        assert_png_has_content(run["out"] / name)
    assert "--- Test set, explained (256 images) ---" in run["stdout"] and "calibration: ECE" in run["stdout"]


def test_evaluation_report_is_consistent(run):
    report, results = run["results"]["evaluation"], run["results"]
    confusion = torch.tensor(report["confusion_matrix"])
    assert report["size"] == results["test_size"] == confusion.sum() == 256
    assert report["matches_evaluate"] and report["accuracy"] == results["test_accuracy"]
    assert confusion.diag().sum().item() / 256 == report["accuracy"] == report["top_k_accuracy"]["top1"]
    top = report["top_k_accuracy"]
    assert list(top) == ["top1", "top2", "top3"] and top["top1"] <= top["top2"] <= top["top3"]
    assert report["per_class"]["support"] == confusion.sum(1).tolist()
    assert report["macro_f1"] == pytest.approx(sum(report["per_class"]["f1"]) / 10)
    cal = report["calibration"]
    assert sum(cal["count"]) == 256 and cal["bins"] == 15
    assert cal["ece"] == pytest.approx(sum(n / 256 * abs(a - c) for n, a, c in
                                           zip(cal["count"], cal["accuracy"], cal["mean_confidence"])))
    mistakes = report["most_confident_mistakes"]
    assert len(mistakes) == min(16, 256 - confusion.diag().sum().item())
    assert all(m["label"] != m["predicted"] for m in mistakes)
    assert [m["confidence"] for m in mistakes] == sorted((m["confidence"] for m in mistakes), reverse=True)
    assert all(0.1 <= m["confidence"] <= 1 for m in mistakes)  # the top class of 10 has at least 1/10


# ---------------------------------------------------------------------------
# Planted bug: the evaluation left in train mode
# ---------------------------------------------------------------------------
def test_an_evaluation_in_train_mode_changes_the_reported_metrics(run, metrics):
    """In eval mode the report does not depend on how the test set is batched; with model.eval()
    missing (BatchNorm normalising every batch with its own statistics) it does, and it differs
    from the eval-mode report."""
    train = load_version(V7)
    import metrics as module

    data = load_quick_data(train, run["data_dir"], run["out"], *EXTRA)
    model = train.ResNet(channels=16)
    model.load_state_dict(torch.load(run["out"] / "best_model.pth", weights_only=True)["model_state"])
    small = train.TensorLoader(data.test_loader.images, data.test_loader.labels, 32,
                               transform=data.test_loader.transform)

    def report(loader):
        return module.explain(model, loader, "cpu", 10)[0]

    good, good_small = report(data.test_loader), report(small)
    assert good == good_small  # eval mode: the same numbers however the images are batched
    assert good["accuracy"] == run["results"]["test_accuracy"]

    model.eval = lambda: model  # as if `model.eval()` were missing from predict()
    model.train()
    bad, bad_small = report(data.test_loader), report(small)
    for wrong in (bad, bad_small):
        assert wrong["mean_confidence"] != good["mean_confidence"]
        assert wrong["calibration"] != good["calibration"]
    assert bad["mean_confidence"] != bad_small["mean_confidence"]  # train mode: the batch size changes the result
    assert not math.isclose(bad["mean_confidence"], good["mean_confidence"], rel_tol=1e-3)


# ---------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--top-k", "11"], "--top-k must be between 1 and 10"),
    (["--calibration-bins", "0"], "--calibration-bins >= 1"),
    (["--mistakes", "-1"], "--mistakes >= 0"),
])
def test_bad_flags_exit_2(argv, message, tmp_path, capsys):
    assert_bad_flag_exits_2(V7, argv, message, tmp_path, capsys)


def test_help_lists_every_flag_with_its_default(capsys):
    flags = ["--quick", "--preflight", "--out", "--overwrite", "--data-dir", "--device", "--seed", "--epochs", "--batch-size", "--lr",
             "--lr-schedule", "--warmup-fraction", "--weight-decay", "--val-size", "--split-seed", "--patience",
             "--crop-padding", "--flip-probability", "--normalised-tolerance", "--label-smoothing", "--mixup-alpha",
             "--channels", "--loss-at-init-tolerance", "--min-gradient-ratio", "--max-dead-fraction",
             "--lr-finder-steps", "--lr-finder-min-lr", "--lr-finder-max-lr", "--lr-finder-smoothing",
             "--lr-finder-min-drop", "--schedule-check-batches", "--top-k", "--calibration-bins", "--mistakes",
             "--diverged-loss"]
    assert_help_lists_every_flag(V7, flags, capsys)
