"""Mutation tests: the v10 preflight sees the training code a learner edits.

Each test copies fashionmnist/v10-step2 into a temporary folder, applies one
textual edit to its train.py (the bugs a reader of train.py can plant), runs
`--preflight` in quick mode and asserts exit code 1 with the check that exists
for that bug among the failures, and a hint that points at it. The unedited copy
must pass. This is what "the checks use the run's own step, loss and optimizer"
means in practice: before the redesign the first five edits below all passed
preflight.
"""
from __future__ import annotations

import contextlib
import io
import shutil

import pytest

from conftest import REPO_ROOT, load_version
from fmnist_helpers import V10, fmnist_data, quick_args  # noqa: F401  (fixture)

# name: (text in train.py, replacement, check that must fail, words of its hint, all failures or None)
MUTATIONS = {
    # the five edits of the issue
    "delete optimizer.step()": (
        "    optimizer.step()\n    scheduler.step()\n", "    scheduler.step()\n",
        "overfit_one_batch", "does not move", None),
    "delete optimizer.zero_grad()": (
        "    optimizer.zero_grad(set_to_none=True)\n", "",
        "step_gradient", "Gradients accumulate", {"step_gradient"}),
    "delete loss.backward()": (
        "    loss.backward()\n", "",
        "step_gradient", "No gradient reaches optimizer.step()", None),
    "softmax into the loss in training_step": (
        "loss = loss_fn(logits, labels)", "loss = loss_fn(F.softmax(logits, dim=1), labels)",
        "overfit_one_batch", "ln(1 + 9/e)", None),
    "labels misaligned in training_step": (
        "loss = loss_fn(logits, labels)", "loss = loss_fn(logits, labels.roll(1))",
        "overfit_one_batch", "trains on other labels", None),
    # learning rate and weight decay from the wrong config value
    "lr read from --weight-decay": (
        "AdamW(model.parameters(), lr=cfg.lr,", "AdamW(model.parameters(), lr=cfg.weight_decay,",
        "optimizer_config", "make_optimizer()", None),
    "weight decay read from --lr": (
        "lr=cfg.lr, weight_decay=cfg.weight_decay)", "lr=cfg.lr, weight_decay=cfg.lr)",
        "optimizer_config", "make_optimizer()", {"optimizer_config"}),
    # more of our own
    "softmax inside loss_fn": (
        "return F.cross_entropy(logits, labels)", "return F.cross_entropy(F.softmax(logits, dim=1), labels)",
        "overfit_one_batch", "ln(1 + 9/e)", {"overfit_one_batch"}),
    "optimizer.step() before loss.backward()": (
        "    loss.backward()\n    optimizer.step()\n", "    optimizer.step()\n    loss.backward()\n",
        "step_gradient", "No gradient reaches optimizer.step()", None),
    "optimizer over the classifier only": (
        "AdamW(model.parameters(),", "AdamW(model.classifier.parameters(),",
        "optimizer_config", "make_optimizer()", None),
    "labels misaligned in the loader": (
        "self.dataset.labels[batch]\n", "self.dataset.labels[batch.roll(1)]\n",
        "input_independent_baseline", "images and labels stay aligned", {"input_independent_baseline"}),
    "forward mixes the batch": (
        "return self.classifier(self.conv2(self.conv1(x)))",
        "return self.classifier(self.conv2(self.conv1(x)).transpose(0, 1).reshape(x.shape[0], -1))",
        "batch_independence", "mixed inside the model", None),
}


def copy_with_edit(tmp_path, old: str | None = None, new: str | None = None):
    """A learner's copy of v10-step2 with one edit to train.py."""
    folder = tmp_path / "fashionmnist" / "v10-step2"
    shutil.copytree(REPO_ROOT / V10, folder, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    (tmp_path / "shared").symlink_to(REPO_ROOT / "shared")
    if old is not None:
        source = (folder / "train.py").read_text()
        assert source.count(old) == 1, f"the edit does not apply: {old!r} occurs {source.count(old)} times"
        (folder / "train.py").write_text(source.replace(old, new))
    return folder


def preflight(folder, data_dir):
    train = load_version(folder)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        results = train.main(["--preflight", *quick_args(folder / "outputs", data_dir), "--no-human-baseline"])
    return results, stdout.getvalue()


def test_the_unedited_copy_passes(tmp_path, fmnist_data):
    results, stdout = preflight(copy_with_edit(tmp_path), fmnist_data[0])
    assert results["exit_code"] == 0 and results["all_checks_passed"], stdout[-3000:]
    assert "8/8 passed" in stdout


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_preflight_fails_on_the_edit(mutation, tmp_path, fmnist_data):
    old, new, check, hint_words, all_failures = MUTATIONS[mutation]
    results, stdout = preflight(copy_with_edit(tmp_path, old, new), fmnist_data[0])
    failed = {name: c for name, c in results["checks"].items() if not c["passed"]}
    assert results["exit_code"] == 1 and results["status"] == "preflight", stdout[-3000:]
    assert check in failed, f"{mutation}: {check} passed; failed were {sorted(failed)}"
    assert hint_words in failed[check]["hint"], failed[check]["hint"]
    if all_failures is not None:
        assert set(failed) == all_failures
    assert f"FAILED: {', '.join(failed)}" in stdout
