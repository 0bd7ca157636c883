"""Mutation tests for imagenette/v5: the preflight sees the training code a learner edits.

Each test copies imagenette/v5 into a temporary folder, applies one textual edit to its
train.py, runs `--preflight --quick` and asserts exit code 1 with the check that exists for
that bug among the failures and a hint that points at it; the unedited copy passes.
"""
from __future__ import annotations

import contextlib
import io
import shutil

import pytest

import shared.imagenette as imagenette
from conftest import REPO_ROOT, load_version
from imagenette_helpers import imagenette_folder, isolated_cache  # noqa: F401  (fixtures)

V5 = "imagenette/v5"

# name: (text in train.py, replacement, check that must fail, words of its hint)
MUTATIONS = {
    "scheduler.step() deleted from training_step": (
        "    scheduler.step()\n    return loss_value", "    return loss_value",
        "lr_schedule", "per epoch or not at all"),
    "schedule planned in epochs, stepped per batch": (
        "total_steps=cfg.epochs * len(data.train_loader)", "total_steps=cfg.epochs",
        "lr_schedule", "planned in epochs"),
    "normalisation statistics from the validation split": (
        "training_set_statistics(train_images,", "training_set_statistics(data.val_images.to(device),",
        "normalisation_from_train", "closest to these splits"),
    "validation loader with the training transform": (
        "256, transform=eval_transform),\n        TensorLoader(data.test_images",
        "256, transform=train_transform),\n        TensorLoader(data.test_images",
        "eval_deterministic_unaugmented", "augment=False"),
    "final layer initialised large": (
        "nn.init.normal_(self.classifier[-1].weight, std=0.01)", "nn.init.normal_(self.classifier[-1].weight, std=1.0)",
        "loss_at_init", "init of the last layer"),
    "a detach cuts the graph in forward()": (
        "return self.classifier(self.blocks(self.stem(x)))", "return self.classifier(self.blocks(self.stem(x)).detach())",
        "gradient_flow", "detaches the graph"),
}


def copy_with_edit(tmp_path, old: str | None = None, new: str | None = None):
    folder = tmp_path / "imagenette" / "v5"
    shutil.copytree(REPO_ROOT / V5, folder, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    (tmp_path / "shared").symlink_to(REPO_ROOT / "shared")
    if old is not None:
        source = (folder / "train.py").read_text()
        assert source.count(old) == 1, f"the edit does not apply: {old!r} occurs {source.count(old)} times"
        (folder / "train.py").write_text(source.replace(old, new))
    return folder


def preflight(folder, data_dir, monkeypatch, cache, *extra):
    # A cache of its own: normalize.py's cached statistics are keyed by the training split's
    # content, so a cache written by the unedited copy would hide the statistics edit.
    monkeypatch.setattr(imagenette, "CACHE_DIR", cache)
    train = load_version(folder)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        results = train.main(["--preflight", "--quick", "--device", "cpu", "--data-dir", str(data_dir),
                              "--out", str(folder / "outputs"), *extra])
    return results, stdout.getvalue()


def test_the_unedited_copy_passes(tmp_path, imagenette_folder, monkeypatch):
    results, stdout = preflight(copy_with_edit(tmp_path), imagenette_folder, monkeypatch, tmp_path / "cache")
    assert results["exit_code"] == 0 and results["all_checks_passed"], stdout[-3000:]


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_preflight_fails_on_the_edit(mutation, tmp_path, imagenette_folder, monkeypatch):
    old, new, check, hint_words = MUTATIONS[mutation]
    results, stdout = preflight(copy_with_edit(tmp_path, old, new), imagenette_folder, monkeypatch,
                                tmp_path / "cache")
    failed = {name: c for name, c in results["checks"].items() if not c["passed"]}
    assert results["exit_code"] == 1 and results["status"] == "preflight", stdout[-3000:]
    assert check in failed, f"{mutation}: {check} passed; failed were {sorted(failed)}"
    assert hint_words in failed[check]["hint"], failed[check]["hint"]


def test_preflight_fails_on_statistics_of_uint8_pixels(tmp_path, imagenette_folder, monkeypatch):
    """Issue 27: normalize.py's statistics computed on [0, 255] and applied to [0, 1] pixels squeeze
    every batch into [-1.7, -1.4] with std 0.004. first_batch's range is derived from those same
    statistics and could not see it; the batch's own mean and std do."""
    folder = copy_with_edit(tmp_path)
    normalize = folder / "normalize.py"
    old = "        pixels = images_uint8[start:start + batch_size].to(dtype).div(255.0)\n"
    assert normalize.read_text().count(old) == 1
    normalize.write_text(normalize.read_text().replace(old, old.replace(".div(255.0)", "")))
    results, stdout = preflight(folder, imagenette_folder, monkeypatch, tmp_path / "cache")
    failed = {name: c for name, c in results["checks"].items() if not c["passed"]}
    assert results["exit_code"] == 1 and {"first_batch", "normalised_batch"} <= set(failed), stdout[-3000:]
    assert failed["first_batch"]["details"]["problems"][0].startswith("not normalised: channel means")
    assert max(failed["first_batch"]["details"]["channel_stds"]) < 0.05


# ---------------------------------------------------------------------------
# imagenette/v7: the same for the ResNets; the edits go into ../models/resnet.py (shared by
# v7a/b/c) or train.py of a copy of v7a, and v7a's --preflight must fail with the check meant.
# ---------------------------------------------------------------------------
# name: (file, text, replacement, check that must fail, words of its hint)
V7_MUTATIONS = {
    "shortcut detached in BasicBlock (the projection learns nothing)": (
        "models/resnet.py", "        return self.relu2(out + shortcut)\n\n\nclass Bottleneck",
        "        return self.relu2(out + shortcut.detach())\n\n\nclass Bottleneck",
        "gradient_flow", "detaches the graph"),
    # (Scaling every block's branch alike moves the median with it; one scaled block is tested
    # in test_imagenette_v7.py.)
    "a stage skipped in forward()": (
        "models/resnet.py", "x = self.layer4(self.layer3(self.layer2(self.layer1(x))))",
        "x = self.layer4(self.layer3(self.layer2(x)))",
        "gradient_flow", "forward() uses every block"),
    "final layer initialised large": (
        "v7a/train.py", "FINAL_WEIGHT_STD = 0.01", "FINAL_WEIGHT_STD = 1.0",
        "loss_at_init", "init of the last layer"),
    # issue 26: the battery of fashionmnist/v10-step2 on the run's own step
    "model left in eval() by the training epoch": (
        "v7a/train.py", "    model.train()\n    total_loss, correct, seen = 0.0, 0, 0\n",
        "    model.eval()\n    total_loss, correct, seen = 0.0, 0, 0\n",
        "train_eval_modes", "must call model.train()"),
    "BatchNorm frozen inside the training loop": (
        "v7a/train.py", "        batch = mix_batch(images, labels, mixup_alpha)\n",
        "        model.apply(lambda m: m.eval() if isinstance(m, nn.BatchNorm2d) else None)  # freeze BN\n"
        "        batch = mix_batch(images, labels, mixup_alpha)\n",
        "train_eval_modes", "'freeze BatchNorm'"),
    "loss on detached logits, requires_grad_() after": (
        "v7a/train.py", "    loss = loss_fn(logits.float(), labels, label_smoothing)\n",
        "    loss = loss_fn(logits.detach().float(), labels, label_smoothing).requires_grad_()\n",
        "step_gradient", "No gradient reaches optimizer.step()"),
    # issue 27: an identity skip has no parameters; only gradient_flow's skips test sees it dropped
    "identity skips dropped in BasicBlock": (
        "models/resnet.py", "        return self.relu2(out + shortcut)\n\n\nclass Bottleneck",
        "        return self.relu2(out + (shortcut if self.downsample is not None else 0))\n\n\nclass Bottleneck",
        "gradient_flow", "a block has dropped its skip"),
}
SHUFFLED = ("v7a/train.py", "    train_images = data.train_images.to(device)\n",
            "    train_images = data.train_images[torch.randperm(len(data.train_images))].to(device)\n")
LEGITIMATE = {
    "zero_grad() after step() instead of before backward()": (
        "v7a/train.py", "    optimizer.zero_grad(set_to_none=True)\n    loss.backward()\n    optimizer.step()\n",
        "    loss.backward()\n    optimizer.step()\n    optimizer.zero_grad(set_to_none=True)\n"),
    "zero-initialised residual scales (Goyal et al. 2017)": (
        "models/resnet.py", "            nn.init.zeros_(self.fc.bias)\n\n    def forward",
        "            nn.init.zeros_(self.fc.bias)\n        for block in self.modules():\n"
        "            if isinstance(block, (BasicBlock, Bottleneck)):\n"
        "                nn.init.zeros_(getattr(block, 'bn3', block.bn2).weight)\n\n    def forward"),
}


def copy_v7_with_edit(tmp_path, file: str | None = None, old: str | None = None, new: str | None = None):
    root = tmp_path / "imagenette" / "v7"
    for part in ("models", "v7a"):
        shutil.copytree(REPO_ROOT / "imagenette" / "v7" / part, root / part,
                        ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    (tmp_path / "shared").symlink_to(REPO_ROOT / "shared")
    if file is not None:
        source = (root / file).read_text()
        assert source.count(old) == 1, f"the edit does not apply: {old!r} occurs {source.count(old)} times"
        (root / file).write_text(source.replace(old, new))
    return root / "v7a"


V7_SIZE = ("--image-size", "32")  # ResNet18 at 32 px: the same checks, a quarter of the CPU time of 64 px


def test_v7_unedited_copy_passes(tmp_path, imagenette_folder, monkeypatch):
    results, stdout = preflight(copy_v7_with_edit(tmp_path), imagenette_folder, monkeypatch, tmp_path / "cache",
                                *V7_SIZE)
    assert results["exit_code"] == 0 and results["all_checks_passed"], stdout[-3000:]


@pytest.mark.parametrize("mutation", list(V7_MUTATIONS))
def test_v7_preflight_fails_on_the_edit(mutation, tmp_path, imagenette_folder, monkeypatch):
    file, old, new, check, hint_words = V7_MUTATIONS[mutation]
    results, stdout = preflight(copy_v7_with_edit(tmp_path, file, old, new), imagenette_folder, monkeypatch,
                                tmp_path / "cache", *V7_SIZE)
    failed = {name: c for name, c in results["checks"].items() if not c["passed"]}
    assert results["exit_code"] == 1 and results["status"] == "preflight", stdout[-3000:]
    assert check in failed, f"{mutation}: {check} passed; failed were {sorted(failed)}"
    assert hint_words in failed[check]["hint"], failed[check]["hint"]


def test_v7_input_independent_baseline_passes_unedited_and_fails_on_images_shuffled_from_labels(
        tmp_path, imagenette_folder, monkeypatch):
    """Off under --quick by default (real images at 64 px learn nothing in seconds); the generated
    data here is learnable within the quick budget, so the check is asked for and must discriminate."""
    clean, stdout = preflight(copy_v7_with_edit(tmp_path / "clean"), imagenette_folder, monkeypatch,
                              tmp_path / "cache_clean", "--input-independent-baseline", *V7_SIZE,
                              "--baseline-steps", "30")
    assert clean["checks"]["input_independent_baseline"]["passed"], stdout[-3000:]
    assert clean["exit_code"] == 0
    shuffled, stdout = preflight(copy_v7_with_edit(tmp_path / "shuffled", *SHUFFLED), imagenette_folder,
                                 monkeypatch, tmp_path / "cache_shuffled", "--input-independent-baseline", *V7_SIZE,
                                 "--baseline-steps", "30")
    failed = [name for name, c in shuffled["checks"].items() if not c["passed"]]
    assert failed == ["input_independent_baseline"], stdout[-3000:]
    assert "keeps every image with its label" in shuffled["checks"]["input_independent_baseline"]["hint"]


@pytest.mark.parametrize("practice", list(LEGITIMATE))
def test_v7_legitimate_practice_passes(practice, tmp_path, imagenette_folder, monkeypatch):
    results, stdout = preflight(copy_v7_with_edit(tmp_path, *LEGITIMATE[practice]), imagenette_folder, monkeypatch,
                                tmp_path / "cache", *V7_SIZE)
    assert results["exit_code"] == 0 and results["all_checks_passed"], stdout[-3000:]
    if practice.startswith("zero-initialised"):
        flow = results["checks"]["gradient_flow"]["details"]
        assert len(flow["zero_initialised_scales"]) == 8 and flow["waiting_behind_zero_scales"]


# ---------------------------------------------------------------------------
# imagenette/v6/v6a (issue 26): the battery on DeeperCNN, the run's own step with label smoothing
# and MixUp; the same bug classes as v7a above, planted in a copy of v6a's train.py.
# ---------------------------------------------------------------------------
# name: (text, replacement, check that must fail, words of its hint)
V6A_MUTATIONS = {
    "model left in eval() by the training epoch": (
        "    model.train()\n    total_loss, correct, seen = 0.0, 0, 0\n",
        "    model.eval()\n    total_loss, correct, seen = 0.0, 0, 0\n",
        "train_eval_modes", "must call model.train()"),
    "BatchNorm frozen inside the training loop": (
        "        batch = mix_batch(images, labels, mixup_alpha)\n",
        "        model.apply(lambda m: m.eval() if isinstance(m, nn.BatchNorm2d) else None)  # freeze BN\n"
        "        batch = mix_batch(images, labels, mixup_alpha)\n",
        "train_eval_modes", "'freeze BatchNorm'"),
    "loss on detached logits, requires_grad_() after": (
        "    loss = loss_fn(logits, labels, label_smoothing)\n",
        "    loss = loss_fn(logits.detach(), labels, label_smoothing).requires_grad_()\n",
        "step_gradient", "No gradient reaches optimizer.step()"),
}


def copy_v6a_with_edit(tmp_path, old: str | None = None, new: str | None = None):
    folder = tmp_path / "imagenette" / "v6" / "v6a"
    shutil.copytree(REPO_ROOT / "imagenette" / "v6" / "v6a", folder,
                    ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    (tmp_path / "shared").symlink_to(REPO_ROOT / "shared")
    if old is not None:
        source = (folder / "train.py").read_text()
        assert source.count(old) == 1, f"the edit does not apply: {old!r} occurs {source.count(old)} times"
        (folder / "train.py").write_text(source.replace(old, new))
    return folder


V6A_FAST = ("--image-size", "32")  # the same checks at a quarter of the CPU time of 64 px


def test_v6a_unedited_copy_passes(tmp_path, imagenette_folder, monkeypatch):
    results, stdout = preflight(copy_v6a_with_edit(tmp_path), imagenette_folder, monkeypatch, tmp_path / "cache",
                                *V6A_FAST)
    assert results["exit_code"] == 0 and results["all_checks_passed"], stdout[-3000:]


@pytest.mark.parametrize("mutation", list(V6A_MUTATIONS))
def test_v6a_preflight_fails_on_the_edit(mutation, tmp_path, imagenette_folder, monkeypatch):
    old, new, check, hint_words = V6A_MUTATIONS[mutation]
    results, stdout = preflight(copy_v6a_with_edit(tmp_path, old, new), imagenette_folder, monkeypatch,
                                tmp_path / "cache", *V6A_FAST)
    failed = {name: c for name, c in results["checks"].items() if not c["passed"]}
    assert results["exit_code"] == 1 and results["status"] == "preflight", stdout[-3000:]
    assert check in failed, f"{mutation}: {check} passed; failed were {sorted(failed)}"
    assert hint_words in failed[check]["hint"], failed[check]["hint"]


# ---------------------------------------------------------------------------
# The summary line names what the training accuracy was measured on
# ---------------------------------------------------------------------------
SUMMARY_VERSIONS = ["imagenette/v5", "imagenette/v6/v6a", "imagenette/v6/v6b", "imagenette/v7/v7a",
                    "imagenette/v7/v7b", "imagenette/v7/v7c"]


@pytest.mark.parametrize("version", SUMMARY_VERSIONS)
def test_summary_says_mixup_batches_only_when_mixup_is_on(version, tmp_path, capsys):
    # The bug: "train accuracy 91% (on MixUp batches)" printed for --mixup-alpha 0, where the
    # batches were only augmented; a learner reads the train-validation gap against the wrong batches.
    from types import SimpleNamespace

    from fmnist_helpers import VersionContext

    results = {"epochs_done": 3, "stopped_early": False, "best_epoch": 2, "train_accuracy": 0.9,
               "val_accuracy": 0.8, "test_accuracy": 0.79, "test_loss": 0.6, "test_accuracy_se": 0.004,
               "seconds_per_epoch": 1.0, "images_per_second": 1000.0, "wall_time_s": 5.0, "outputs": []}
    lines = {}
    with VersionContext(version) as train:
        for alpha in (0.2, 0.0):
            run = SimpleNamespace(results=results, out=tmp_path, cfg=SimpleNamespace(mixup_alpha=alpha))
            train.print_summary(run, {})
            lines[alpha] = next(l for l in capsys.readouterr().out.splitlines() if "train accuracy" in l)
    assert "90.00% (on MixUp batches)" in lines[0.2]
    assert "90.00% (on augmented batches)" in lines[0.0] and "MixUp" not in lines[0.0]
