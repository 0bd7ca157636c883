"""imagenette/v5: DeeperCNN (12 separable blocks with squeeze-excitation), MixUp, batch 32, early
stopping with the best epoch's weights tested. One quick run with its new outputs checked;
gradient_flow passing on the real model and failing on a block cut out of forward(), a detached
graph and a vanishing gradient; mix_batch's blends; a short run that stops early, with the
rules of early stopping and the test set measured on best_model.pth; same seed, same numbers."""
from __future__ import annotations

import contextlib
import functools
import io
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from fmnist_helpers import VersionContext, assert_png_has_content, read_jsonl
from fmnist_v1_v4_helpers import assert_checks_do_not_perturb
from imagenette_helpers import imagenette_folder, isolated_cache, make_imagenette_folder  # noqa: F401  (fixtures)
from imagenette_v2_v5_helpers import (  # noqa: F401  (fixtures)
    PNG_COMMON,
    TIMING_KEYS,
    _fresh_normalize_for_each_test,
    _fresh_normalize_for_the_module,
    assert_completed_with_checks,
    history_numbers,
    load_quick_data,
    quiet_quick_run,
    quiet_run,
)

V5 = "imagenette/v5"
CHECKS = ["first_batch", "activations_at_init", "loss_at_init", "gradient_flow", "lr_schedule", "normalised_batch",
          "normalisation_from_train", "train_batches_augmented", "eval_deterministic_unaugmented", "class_balance",
          "activations_after_training"]
NUM_PARAMETERS = 3_080_594
BLOCKS = ["stem", *(f"blocks.{i}" for i in range(12)), "classifier"]
HISTORY_KEYS = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate", *TIMING_KEYS}


@pytest.fixture(scope="module")
def run(imagenette_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("v5_run") / "out"
    results, stdout = quiet_quick_run(V5, imagenette_folder, out)
    return {"results": results, "stdout": stdout, "out": out, "data_dir": imagenette_folder}


@pytest.fixture(scope="module")
def v5(run, tmp_path_factory):
    with VersionContext(V5) as train:
        debug_tools = sys.modules["debug_tools"]
        cfg, data = load_quick_data(train, run["data_dir"], tmp_path_factory.mktemp("v5_data"))
    images, labels = next(iter(data.train_loader))
    return {"train": train, "debug_tools": debug_tools, "cfg": cfg, "images": images[:8], "labels": labels[:8]}


# ---------------------------------------------------------------------------
# The quick run
# ---------------------------------------------------------------------------
def test_quick_run_completes_with_every_check_passed(run):
    results = run["results"]
    assert_completed_with_checks(results, CHECKS)
    assert results["version"] == V5 and results["num_parameters"] == NUM_PARAMETERS
    config = results["config"]
    assert (config["batch_size"], config["patience"], config["dropout"], config["mixup_alpha"],
            config["min_gradient_ratio"]) == (32, 20, 0.25, 0.2, 1e-3)
    assert "DeeperCNN: 3,080,594 trainable parameters" in run["stdout"] and "11/11 passed" in run["stdout"]


def test_quick_run_reports_the_best_epoch(run):
    results = run["results"]
    assert results["epochs_done"] == 1 and results["best_epoch"] == 1 and results["stopped_early"] is False
    history = read_jsonl(run["out"] / "history.jsonl")
    assert results["best_val_accuracy"] == results["val_accuracy"] == history[0]["val_accuracy"]
    assert results["train_loss"] == history[0]["train_loss"] and results["val_loss"] == history[0]["val_loss"]
    assert {"best_model.pth", "final_model.pth", "gradient_flow.png"} <= set(results["outputs"])


def test_history_records_the_learning_rate(run):
    history = read_jsonl(run["out"] / "history.jsonl")
    assert len(history) == 1 and set(history[0]) == HISTORY_KEYS
    assert 0 < history[0]["learning_rate"] <= 1e-3


@pytest.mark.parametrize("name", PNG_COMMON + ["activation_statistics.png", "lr_schedule.png", "gradient_flow.png"])
def test_plots_have_content(run, name):
    assert_png_has_content(run["out"] / name)


def test_gradient_flow_details_of_the_run(run):
    check = run["results"]["checks"]["gradient_flow"]
    details = check["details"]
    assert list(details["block_relative_gradient"]) == BLOCKS and details["without_gradient"] == []
    assert all(v > 0 for v in details["block_relative_gradient"].values())
    assert check["value"] >= check["threshold"] == 1e-3


def test_loss_at_init_is_measured_on_the_mixed_batch(run):
    details = run["results"]["checks"]["loss_at_init"]["details"]
    assert details["expected"] == pytest.approx(math.log(10)) and details["batch_size"] == 32
    # soft targets: the floor is the entropy of the smoothed blends, above the one-hot target's 0.50
    assert details["floor"] > 0.5003


def test_best_model_checkpoint_loads(run):
    with VersionContext(V5) as train:
        best = torch.load(run["out"] / "best_model.pth", map_location="cpu", weights_only=True)
        model = train.DeeperCNN()
        model.load_state_dict(best["model_state"])  # strict
        assert train.count_parameters(model) == NUM_PARAMETERS
    assert best["epoch"] == 1 and best["val_accuracy"] == run["results"]["best_val_accuracy"]
    assert best["normalisation"] == {k: run["results"]["normalisation"][k] for k in ("mean", "std")}


def test_model_layout(v5):
    model = v5["train"].DeeperCNN()
    names = {name.split(".")[0] + ("." + name.split(".")[1] if name.startswith("blocks.") else "")
             for name, _ in model.named_parameters()}
    assert names == set(BLOCKS)
    assert len(model.blocks) == 12 and all(type(b).__name__ == "SeparableBlock" for b in model.blocks)
    assert sum(p.numel() for p in model.parameters()) == NUM_PARAMETERS
    assert model.classifier[2].p == 0.25 and v5["train"].DeeperCNN(dropout=0.1).classifier[2].p == 0.1


# ---------------------------------------------------------------------------
# gradient_flow: passes on the real model, fails on a block cut out, a detach, a vanishing gradient
# ---------------------------------------------------------------------------
def planted_models(train):
    class LoopsOverBlocks(train.DeeperCNN):
        """Control: DeeperCNN's forward written as the loop the bugs below change."""

        cut = None

        def forward(self, x):
            x = self.stem(x)
            for i, block in enumerate(self.blocks):
                if i != self.cut:
                    x = block(x)
            return self.classifier(x)

    class SkipsBlock5(LoopsOverBlocks):
        cut = 5  # blocks.5 (192 -> 192, stride 1) keeps the shapes: nothing crashes

    class DetachesAfterBlock3(train.DeeperCNN):
        def forward(self, x):
            x = self.blocks[4:](self.blocks[:4](self.stem(x)).detach())
            return self.classifier(x)

    class ShrinksTheFeatures(train.DeeperCNN):
        """The features reach the classifier scaled by 1e-6: every block's gradient vanishes."""

        def forward(self, x):
            return self.classifier(self.blocks(self.stem(x)) * 1e-6)

    return LoopsOverBlocks, SkipsBlock5, DetachesAfterBlock3, ShrinksTheFeatures


def gradient_check(v5, model):
    train = v5["train"]
    torch.manual_seed(0)
    mixed = train.mix_batch(v5["images"], v5["labels"], 0.2)
    return v5["debug_tools"].verify_gradient_flow(model, mixed.images, mixed.targets,
                                                  functools.partial(train.loss_fn, label_smoothing=0.1), 1e-3)


def test_gradient_flow_passes_on_the_real_model_and_the_loop_control(v5):
    torch.manual_seed(1)
    real = v5["train"].DeeperCNN()
    check = gradient_check(v5, real)
    assert check.passed and check.details["without_gradient"] == [] and check.value >= 1e-3, check.report()
    loops = planted_models(v5["train"])[0]()
    loops.load_state_dict(real.state_dict())
    real.eval(), loops.eval()
    assert torch.equal(real(v5["images"]), loops(v5["images"]))  # the control is the same function
    assert gradient_check(v5, loops).passed


def test_gradient_flow_leaves_the_model_as_it_was(v5):
    model = v5["train"].DeeperCNN().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gradient_check(v5, model)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_gradient_flow_fails_on_a_block_cut_out_of_forward(v5):
    check = gradient_check(v5, planted_models(v5["train"])[1]())
    assert not check.passed, check.report()
    assert check.details["without_gradient"] and {name.split(".")[1] for name in check.details["without_gradient"]} \
        == {"5"} and all(name.startswith("blocks.5.") for name in check.details["without_gradient"])
    assert "blocks.5." in check.hint and "forward() uses every block's output" in check.hint


def test_gradient_flow_fails_on_a_detach_after_block_3(v5):
    check = gradient_check(v5, planted_models(v5["train"])[2]())
    assert not check.passed, check.report()
    cut = {name.split(".")[0] + ("." + name.split(".")[1] if name.startswith("blocks.") else "")
           for name in check.details["without_gradient"]}
    assert cut == {"stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3"}


def test_gradient_flow_fails_on_a_vanishing_gradient(v5):
    check = gradient_check(v5, planted_models(v5["train"])[3]())
    assert not check.passed and check.details["without_gradient"] == [], check.report()
    assert check.value < 1e-3 and "the gradient vanishes" in check.hint


# ---------------------------------------------------------------------------
# activation_statistics in v5: squeeze-excitation gates are reported, not judged
# ---------------------------------------------------------------------------
def test_activation_statistics_fails_on_a_dead_feature_map(v5):
    torch.manual_seed(0)
    model = v5["train"].DeeperCNN()
    with torch.no_grad():
        # BatchNorm shift before blocks.3's depthwise ReLU, beyond the largest normalised value a batch of
        # N values can hold (sqrt(N - 1)): every unit is dead for sure
        model.blocks[3].depthwise[1].bias.fill_(-1000.0)
    check = v5["debug_tools"].activation_statistics(model, v5["images"], "activations", 0.5)
    assert not check.passed and check.value == 1.0, check.report()
    assert "Layer blocks.3.depthwise.2: 100% of its units never fire" in check.hint


def test_activation_statistics_judges_a_dead_last_stage_at_64_px(v5):
    torch.manual_seed(0)
    model = v5["train"].DeeperCNN()
    with torch.no_grad():
        model.blocks[10].depthwise[1].bias.fill_(-1000.0)
    check = v5["debug_tools"].activation_statistics(model, v5["images"], "activations", 0.5)
    assert check.details["layers"]["blocks.10.depthwise.2"]["dead_fraction"] == 1.0
    assert not check.passed


def test_activation_statistics_judges_fully_connected_relus(v5):
    import torch.nn as nn

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 10))
    check = v5["debug_tools"].activation_statistics(mlp, torch.randn(8, 3, 2, 2), "activations", 0.5)
    assert check.passed, check.report()
    with torch.no_grad():
        mlp[1].bias.fill_(-1000.0)
    check = v5["debug_tools"].activation_statistics(mlp, torch.randn(8, 3, 2, 2), "activations", 0.5)
    assert not check.passed and check.value == 1.0, check.report()


def test_squeeze_excitation_gates_are_reported_not_judged(v5):
    """A gate that is off for the whole batch is drawn but does not fail the check; the same
    layer fails when it is not named in reported_only (the control)."""
    torch.manual_seed(0)
    model = v5["train"].DeeperCNN()
    with torch.no_grad():
        model.blocks[4].se.gate[1].bias.fill_(-1000.0)
    tools = v5["debug_tools"]
    reported = tools.activation_statistics(model, v5["images"], "activations", 0.5, reported_only=("se.gate",))
    assert reported.passed, reported.report()
    assert reported.details["layers"]["blocks.4.se.gate.2"]["dead_fraction"] == 1.0
    judged = tools.activation_statistics(model, v5["images"], "activations", 0.5)
    assert not judged.passed and "blocks.4.se.gate.2" in judged.hint


# ---------------------------------------------------------------------------
# MixUp
# ---------------------------------------------------------------------------
def test_mix_batch_blends_images_and_targets_alike(v5):
    train = v5["train"]
    images, labels = torch.rand(16, 3, 4, 4), torch.arange(16) % 10
    torch.manual_seed(0)
    mixed = train.mix_batch(images, labels, 0.2)
    assert mixed.targets.shape == (16, 10)
    assert torch.allclose(mixed.targets.sum(1), torch.ones(16)) and (mixed.targets >= 0).all()
    assert (mixed.lam >= 0.5).all() and (mixed.lam <= 1).all() and (mixed.lam < 1).any()
    assert sorted(mixed.partner.tolist()) == list(range(16))  # a permutation of the batch
    lam = mixed.lam.view(-1, 1, 1, 1)
    assert torch.allclose(mixed.images, lam * images + (1 - lam) * images[mixed.partner])
    one_hot = F.one_hot(labels, 10).float()
    assert torch.allclose(mixed.targets, mixed.lam.view(-1, 1) * one_hot + (1 - mixed.lam.view(-1, 1))
                          * one_hot[mixed.partner])
    assert (mixed.targets[torch.arange(16), labels] >= 0.5).all()  # the own label keeps the larger part
    torch.manual_seed(0)
    again = train.mix_batch(images, labels, 0.2)
    assert torch.equal(again.images, mixed.images) and torch.equal(again.partner, mixed.partner)


def test_mix_batch_alpha_0_is_the_identity(v5):
    train = v5["train"]
    images, labels = torch.rand(8, 3, 4, 4), torch.arange(8)
    state = torch.get_rng_state()
    mixed = train.mix_batch(images, labels, 0.0)
    assert torch.equal(mixed.images, images) and torch.equal(mixed.targets, F.one_hot(labels, 10).float())
    assert torch.equal(mixed.lam, torch.ones(8)) and torch.equal(mixed.partner, torch.arange(8))
    assert torch.equal(torch.get_rng_state(), state)  # draws nothing


def test_mix_batch_lam_follows_beta_0_2(v5):
    """Beta(0.2, 0.2) is U-shaped: folded to >= 0.5, about two thirds of the images stay over 90% whole."""
    torch.manual_seed(0)
    lam = v5["train"].mix_batch(torch.zeros(4000, 1, 1, 1), torch.zeros(4000, dtype=torch.long), 0.2).lam
    assert 0.55 < (lam > 0.9).float().mean().item() < 0.8 and lam.min() >= 0.5


def test_loss_at_init_floor_with_soft_targets(v5):
    train, debug_tools = v5["train"], v5["debug_tools"]
    model, loss = train.DeeperCNN(), functools.partial(train.loss_fn, label_smoothing=0.1)
    hard = debug_tools.verify_loss_at_init(model, v5["images"], v5["labels"], loss_fn=loss, expected=math.log(10),
                                           label_smoothing=0.1)
    assert hard.passed and hard.details["floor"] == pytest.approx(debug_tools.smoothing_floor(10, 0.1))
    soft = F.one_hot(v5["labels"], 10).float() * 0.7 + F.one_hot(v5["labels"].roll(1), 10).float() * 0.3
    mixed = debug_tools.verify_loss_at_init(model, v5["images"], soft, loss_fn=loss, expected=math.log(10),
                                            label_smoothing=0.1)
    target = soft * 0.9 + 0.01
    entropy = -(target * target.log()).sum(1).mean().item()
    assert mixed.passed and mixed.details["floor"] == pytest.approx(entropy, rel=1e-6)
    assert entropy > hard.details["floor"]


# ---------------------------------------------------------------------------
# Early stopping and the best model; same seed, same numbers
# ---------------------------------------------------------------------------
SHORT_ARGS = ["--device", "cpu", "--image-size", "32", "--train-fraction", "1.0", "--batch-size", "32",
              "--epochs", "6", "--patience", "1"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return make_imagenette_folder(tmp_path_factory.mktemp("tiny"), train_per_class=10, val_per_class=2, seed=5)


def short_argv(folder, out, *extra) -> list[str]:
    return [*SHORT_ARGS, "--data-dir", str(folder), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def short_run(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("v5_short") / "out"
    results, stdout = quiet_run(V5, short_argv(tiny_folder, out))
    return {"results": results, "stdout": stdout, "out": out, "argv": short_argv(tiny_folder, out)}


def test_early_stopping_follows_its_rules(short_run):
    results, history = short_run["results"], read_jsonl(short_run["out"] / "history.jsonl")
    assert results["status"] == "completed" and results["all_checks_passed"] is True
    val = [h["val_accuracy"] for h in history]
    epochs_done, best_epoch, patience = results["epochs_done"], results["best_epoch"], 1
    assert [h["epoch"] for h in history] == list(range(1, epochs_done + 1))
    assert best_epoch == val.index(max(val)) + 1  # the first epoch with the highest accuracy: ties keep the earlier
    assert results["best_val_accuracy"] == max(val) == results["val_accuracy"]
    assert (results["train_loss"], results["val_loss"]) == (history[best_epoch - 1]["train_loss"],
                                                             history[best_epoch - 1]["val_loss"])
    assert epochs_done - best_epoch <= patience
    assert results["stopped_early"] == (epochs_done < 6)
    if results["stopped_early"]:
        assert epochs_done - best_epoch == patience
        assert f"stopping after epoch {epochs_done} (best: epoch {best_epoch}" in short_run["stdout"]
    # With --patience 1 a tie already ends the run: these 6 epochs do stop early (this is what makes
    # the best model differ from the final one in the next test).
    assert results["stopped_early"] is True and best_epoch < epochs_done


def test_test_set_is_measured_on_the_best_model(short_run):
    """test_loss/test_accuracy are those of best_model.pth, evaluated afresh; the final model's
    differ (so a run that tested the final model would fail here)."""
    results = short_run["results"]
    with VersionContext(V5) as train:
        cfg = train.parse_args(short_run["argv"])
        with contextlib.redirect_stderr(io.StringIO()):
            data = train.load_data(cfg, torch.device("cpu"))
        measured = {}
        for name in ("best_model.pth", "final_model.pth"):
            checkpoint = torch.load(short_run["out"] / name, map_location="cpu", weights_only=True)
            model = train.DeeperCNN(dropout=cfg.dropout)
            model.load_state_dict(checkpoint["model_state"])
            measured[name] = (checkpoint["epoch"], *train.evaluate(model, data.test_loader, torch.device("cpu")))
    assert measured["best_model.pth"][0] == results["best_epoch"]
    assert measured["final_model.pth"][0] == results["epochs_done"] != results["best_epoch"]
    assert measured["best_model.pth"][1:] == pytest.approx((results["test_loss"], results["test_accuracy"]), rel=1e-6)
    assert measured["final_model.pth"][1] != pytest.approx(results["test_loss"], rel=1e-6)


def test_same_seed_same_numbers_other_seed_other_numbers(short_run, tiny_folder, tmp_path):
    first = history_numbers(short_run["out"])
    again, _ = quiet_run(V5, short_argv(tiny_folder, tmp_path / "again"))
    assert history_numbers(tmp_path / "again") == first
    assert (again["test_loss"], again["best_epoch"]) == (short_run["results"]["test_loss"],
                                                         short_run["results"]["best_epoch"])
    other, _ = quiet_run(V5, short_argv(tiny_folder, tmp_path / "other", "--seed", "7"))
    assert history_numbers(tmp_path / "other") != first  # control: the seed matters
    assert other["data"]["subset_fingerprint"] == again["data"]["subset_fingerprint"]  # on the same images


def test_the_checks_do_not_change_training(run, tmp_path, monkeypatch):
    """There is no flag to skip the checks, so instead of comparing two runs: after v5's checks
    (which draw a batch, mix it with the global RNG, run dropout, step the run's own scheduler
    through its plan) every generator, the model's weights and buffers, and the optimizer's and
    scheduler's state are as they were. Control inside: without rng_untouched the loader moves."""
    with VersionContext(V5) as train:
        cfg, data = load_quick_data(train, run["data_dir"], tmp_path)
        model = train.DeeperCNN(dropout=cfg.dropout)
        optimizer, scheduler = train.make_optimizer(model, cfg, total_steps=cfg.epochs * len(data.train_loader))
        optimizer_state, scheduler_state = repr(optimizer.state_dict()), repr(scheduler.state_dict())
        runner = train.Run(cfg, tmp_path, torch.device("cpu"), {})
        for plot in ("plot_batch", "plot_class_balance", "plot_gradient_flow", "plot_lr_schedule",
                     "plot_augmented_batch"):  # drawing takes most of the time and draws no random numbers
            monkeypatch.setattr(train, plot, lambda *args, **kwargs: None)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert_checks_do_not_perturb(
                train, monkeypatch, lambda: train.checks_before_training(runner, data, model, optimizer, scheduler),
                model, data.train_loader)
    assert repr(optimizer.state_dict()) == optimizer_state and repr(scheduler.state_dict()) == scheduler_state
