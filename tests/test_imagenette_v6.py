"""imagenette/v6/v6a and v6b: the initialisation A/B of seed 001 on v5's DeeperCNN recipe. The two
sides differ in the final layer's two constants only (v6a 0.01 / 0, v6b 0.1 / 0.01). Quick runs of
both sides: check_initialization passes on v6a and fails on v6b, the history starts at epoch 0 and
records gradient norms per layer group; check_initialization on its own (the verdict, the numbers,
the model left as it was); epoch_to_target; --resume gives the numbers of a run in one go (with a
control that a resume which forgets the loader's generator is caught); --wandb (missing package,
a stand-in wandb module, a real offline run where wandb is installed); the diffs between the sides
and to v5; --help."""
from __future__ import annotations

import ast
import contextlib
import copy
import difflib
import functools
import importlib.util
import io
import json
import math
import re
import shutil
import sys
import types

import pytest
import torch

from conftest import REPO_ROOT
from fmnist_helpers import VersionContext, assert_png_has_content, read_jsonl
from fmnist_v1_v4_helpers import assert_checks_do_not_perturb
from test_imagenette_diffs import growth_problems, top_level
from imagenette_helpers import (  # noqa: F401  (fixtures)
    imagenette_folder,
    isolated_cache,
    make_imagenette_folder,
    quick_args,
    run_main_exit,
)
from imagenette_v2_v5_helpers import (  # noqa: F401  (fixtures)
    TIMING_KEYS,
    _fresh_normalize_for_each_test,
    _fresh_normalize_for_the_module,
    forget_normalize,
    history_numbers,
    load_quick_data,
    quiet_quick_run,
)

V5 = "imagenette/v5"
V6A, V6B = "imagenette/v6/v6a", "imagenette/v6/v6b"
SIDES = {"v6a": V6A, "v6b": V6B}
FINAL_INIT = {"v6a": (0.01, 0.0), "v6b": (0.1, 0.01)}  # FINAL_WEIGHT_STD, FINAL_BIAS_STD
LN10 = math.log(10)
NUM_PARAMETERS = 3_080_594
# the battery of fashionmnist/v10-step2 after lr_schedule (the input-independent baseline is off under --quick)
CHECKS = ["first_batch", "activations_at_init", "loss_at_init", "gradient_flow", "initialization", "lr_schedule",
          "step_gradient", "overfit_one_batch", "batch_independence", "train_eval_modes", "normalised_batch", "normalisation_from_train", "train_batches_augmented",
          "eval_deterministic_unaugmented", "class_balance", "activations_after_training"]
GROUPS = ["stem", *(f"stage{i}" for i in range(1, 7)), "classifier"]
INIT_KEYS = {"init_loss", "expected_loss", "loss_ok", "tolerance", "init_accuracy", "logit_std", "class_offset_std",
             "images"}
EPOCH_ZERO_KEYS = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"}
EPOCH_KEYS = EPOCH_ZERO_KEYS | {"learning_rate", *TIMING_KEYS, "grad_norm", "grad_norm_per_group"}
PLOTS = ["first_batch.png", "class_balance.png", "training_curves.png", "augmented_batch.png",
         "activation_statistics.png", "lr_schedule.png", "gradient_flow.png", "gradient_norms.png"]


def epoch_to_target(history: list[dict], target: float):
    """What results["epoch_to_target"] must be: the first epoch after epoch 0 at `target`, else None."""
    return next((h["epoch"] for h in history if h["epoch"] >= 1 and h["val_accuracy"] >= target), None)


# ---------------------------------------------------------------------------
# Quick runs of both sides
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick(imagenette_folder, tmp_path_factory):
    runs = {}
    for side, version in SIDES.items():
        out = tmp_path_factory.mktemp(f"{side}_quick") / "out"
        results, stdout = quiet_quick_run(version, imagenette_folder, out)
        runs[side] = {"results": results, "stdout": stdout, "out": out, "history": read_jsonl(out / "history.jsonl")}
    return runs


@pytest.mark.parametrize("side", SIDES)
def test_quick_run_completes(quick, side):
    results = quick[side]["results"]
    assert results["status"] == "completed" and results["exit_code"] == 0
    assert results["version"] == SIDES[side] and results["num_parameters"] == NUM_PARAMETERS
    assert (results["config"]["final_weight_std"], results["config"]["final_bias_std"]) == FINAL_INIT[side]
    assert list(results["checks"]) == CHECKS
    assert f"{SIDES[side]} | device cpu" in quick[side]["stdout"]
    assert "DeeperCNN: 3,080,594 trainable parameters" in quick[side]["stdout"]
    assert {"best_model.pth", "final_model.pth", "resume.pth", "history.jsonl", *PLOTS} <= set(results["outputs"])


def test_initialization_check_passes_on_v6a_and_fails_on_v6b(quick):
    """The A/B's point: v6a starts at ln 10, v6b's larger final layer starts confidently wrong.
    The run goes on either way (a check does not stop training); on v6b v5's loss_at_init fails too."""
    a, b = quick["v6a"]["results"], quick["v6b"]["results"]
    assert a["all_checks_passed"] is True and all(c["passed"] for c in a["checks"].values())
    assert [n for n, c in b["checks"].items() if not c["passed"]] == ["loss_at_init", "initialization"]
    assert b["all_checks_passed"] is False and b["status"] == "completed"
    assert abs(a["init"]["init_loss"] - LN10) <= 0.3 and a["init"]["loss_ok"] is True
    assert b["init"]["init_loss"] > 2.6 and b["init"]["loss_ok"] is False
    check = b["checks"]["initialization"]
    assert check["value"] == b["init"]["init_loss"] and check["threshold"] == 0.3
    assert "[FAIL] initialization" in quick["v6b"]["stdout"] and "Initialise the final layer" in quick["v6b"]["stdout"]
    assert "[PASS] initialization" in quick["v6a"]["stdout"]


@pytest.mark.parametrize("side", SIDES)
def test_results_init_holds_the_seeds_keys(quick, side):
    results = quick[side]["results"]
    init = results["init"]
    assert set(init) == INIT_KEYS
    assert init["expected_loss"] == LN10 and init["tolerance"] == 0.3
    assert init["loss_ok"] == (abs(init["init_loss"] - LN10) <= 0.3)
    assert 0 <= init["init_accuracy"] <= 1 and init["logit_std"] > 0 and init["class_offset_std"] > 0
    assert init["images"] == min(10 * 32, results["data"]["train_images"])  # --init-check-batches 10 of batch 32
    assert results["checks"]["initialization"]["details"] == init
    assert results["checks"]["initialization"]["passed"] == init["loss_ok"]


def test_v6b_logits_spread_several_times_wider(quick):
    a, b = quick["v6a"]["results"]["init"], quick["v6b"]["results"]["init"]
    assert b["logit_std"] > 4 * a["logit_std"]  # ten times the final weights: about ten times the logits
    assert b["class_offset_std"] > 2 * a["class_offset_std"]
    assert a["logit_std"] < 0.5  # v6a: logits near 0


@pytest.mark.parametrize("side", SIDES)
def test_history_starts_at_epoch_0(quick, side):
    run = quick[side]
    zero, *epochs = run["history"]
    assert set(zero) == EPOCH_ZERO_KEYS and zero["epoch"] == 0
    init = run["results"]["init"]
    assert (zero["train_loss"], zero["train_accuracy"]) == (init["init_loss"], init["init_accuracy"])
    assert math.isfinite(zero["val_loss"]) and 0 <= zero["val_accuracy"] <= 1
    if side == "v6b":  # epoch 0's validation loss is plain cross-entropy at init: v6b's is high there too
        assert zero["val_loss"] > LN10 + 0.3
    else:
        assert abs(zero["val_loss"] - LN10) < 0.3
    assert [h["epoch"] for h in epochs] == [1] == [run["results"]["epochs_done"]]
    assert all(set(h) == EPOCH_KEYS for h in epochs)


@pytest.mark.parametrize("side", SIDES)
def test_history_records_gradient_norms_per_group(quick, side):
    for line in quick[side]["history"][1:]:
        groups = line["grad_norm_per_group"]
        assert list(groups) == GROUPS
        assert all(math.isfinite(v) and v > 0 for v in groups.values())
        # the total is the norm of the mean group norms
        assert line["grad_norm"] == pytest.approx(math.sqrt(sum(v * v for v in groups.values())), rel=1e-5)


def test_v6b_gradients_are_larger_early(quick):
    """The seed's "early gradients": the badly initialised side gets larger gradients in epoch 1."""
    assert quick["v6b"]["history"][1]["grad_norm"] > 3 * quick["v6a"]["history"][1]["grad_norm"]


@pytest.mark.parametrize("side", SIDES)
def test_epoch_to_target_in_the_quick_run(quick, side):
    results = quick[side]["results"]
    assert results["target_val_accuracy"] == 0.8
    assert results["epoch_to_target"] is None or isinstance(results["epoch_to_target"], int)
    assert results["epoch_to_target"] == epoch_to_target(quick[side]["history"], 0.8)


@pytest.mark.parametrize("side", SIDES)
def test_gradient_norms_plot_has_content(quick, side):
    assert_png_has_content(quick[side]["out"] / "gradient_norms.png")


@pytest.mark.parametrize("side", SIDES)
def test_no_resume_key_without_resume(quick, side):
    assert "resumed_after_epoch" not in quick[side]["results"]


# ---------------------------------------------------------------------------
# check_initialization and initialization_verdict on their own
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def v6a(quick, imagenette_folder, tmp_path_factory):
    forget_normalize()
    with VersionContext(V6A) as train:
        debug_tools = sys.modules["debug_tools"]
        cfg, data = load_quick_data(train, imagenette_folder, tmp_path_factory.mktemp("v6a_data"))
    forget_normalize()
    return {"train": train, "debug_tools": debug_tools, "cfg": cfg, "data": data,
            "loss": functools.partial(train.loss_fn, label_smoothing=0.1)}


def initial_check(v6a, model, **kwargs):
    return v6a["debug_tools"].check_initialization(model, v6a["data"].train_loader, v6a["loss"], torch.device("cpu"),
                                                   10, **kwargs)


def test_check_initialization_passes_with_a_small_final_layer(v6a):
    torch.manual_seed(0)
    model = v6a["train"].DeeperCNN(final_weight_std=0.01, final_bias_std=0)
    assert torch.equal(model.classifier[-1].bias, torch.zeros(10))
    init = initial_check(v6a, model, max_batches=2)
    assert init["loss_ok"] is True and abs(init["init_loss"] - LN10) <= 0.3, init
    assert init["images"] == 64 and init["expected_loss"] == LN10


def test_check_initialization_fails_with_a_large_final_layer(v6a):
    torch.manual_seed(0)
    init = initial_check(v6a, v6a["train"].DeeperCNN(final_weight_std=1.0, final_bias_std=0), max_batches=2)
    assert init["loss_ok"] is False and init["init_loss"] > LN10 + 0.3, init
    verdict = v6a["debug_tools"].initialization_verdict(init)
    assert verdict.name == "initialization" and not verdict.passed and verdict.value == init["init_loss"]
    assert "final layer" in verdict.hint and "std 0.01" in verdict.hint and verdict.details == init
    assert "final layer" in verdict.report()


def test_initialization_verdict_on_a_loss_below_ln_10(v6a):
    tools = v6a["debug_tools"]
    low = {"init_loss": 1.0, "expected_loss": LN10, "loss_ok": False, "tolerance": 0.3, "init_accuracy": 0.9,
           "logit_std": 3.0, "class_offset_std": 0.1, "images": 64}
    verdict = tools.initialization_verdict(low)
    assert not verdict.passed and "label leak" in verdict.hint and "final layer" not in verdict.hint
    assert tools.initialization_verdict({**low, "init_loss": 2.3, "loss_ok": True}).passed


def test_check_initialization_numbers_by_hand(v6a):
    """Loss averaged per image over uneven batches (40 images in batches of 16, 16, 8), accuracy,
    the std of all logits and of the per-class mean logit, on a train-mode copy (dropout draws:
    the same seed before both)."""
    train, data = v6a["train"], v6a["data"]
    loader = train.TensorLoader(data.val_loader.images, data.val_loader.labels, 16, transform=data.val_loader.transform)
    torch.manual_seed(3)
    model = train.DeeperCNN(final_weight_std=0.1, final_bias_std=0.01)
    torch.manual_seed(0)
    init = v6a["debug_tools"].check_initialization(model, loader, v6a["loss"], torch.device("cpu"), 10)
    torch.manual_seed(0)
    probe = copy.deepcopy(model).train()
    with torch.no_grad():
        batches = [(probe(images), labels) for images, labels in loader]
    logits = torch.cat([b[0] for b in batches]).double()
    labels = torch.cat([b[1] for b in batches])
    loss = sum(v6a["loss"](lg, lb).item() * len(lb) for lg, lb in batches) / len(labels)
    assert [len(b[1]) for b in batches] == [16, 16, 8] and init["images"] == 40
    assert init["init_loss"] == pytest.approx(loss, rel=1e-6)
    assert init["init_accuracy"] == (logits.argmax(1) == labels).sum().item() / 40
    assert init["logit_std"] == pytest.approx(logits.std().item(), rel=1e-6)
    assert init["class_offset_std"] == pytest.approx(logits.mean(0).std().item(), rel=1e-6)


@pytest.mark.parametrize("training", [False, True])
def test_check_initialization_leaves_the_model_as_it_was(v6a, training):
    torch.manual_seed(0)
    model = v6a["train"].DeeperCNN(final_weight_std=1.0).train(training)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    init = initial_check(v6a, model, max_batches=2)
    assert init["images"] == 64
    assert model.training is training and all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert list(after) == list(state)
    changed = [k for k, v in state.items() if not torch.equal(v, after[k])]
    assert changed == []  # weights, BatchNorm's running_mean/var and num_batches_tracked
    # control: the same forward passes on the model itself do move the running statistics
    model.train()
    with torch.no_grad():
        model(next(iter(v6a["data"].val_loader))[0])
    assert not torch.equal(model.stem[1].running_mean, state["stem.1.running_mean"])


def test_deeper_cnn_final_layer_init(v6a):
    train = v6a["train"]
    torch.manual_seed(0)
    a = train.DeeperCNN(final_weight_std=0.01, final_bias_std=0.0).classifier[-1]
    b = train.DeeperCNN(final_weight_std=0.1, final_bias_std=0.01).classifier[-1]
    assert a.weight.std().item() == pytest.approx(0.01, rel=0.1) and torch.equal(a.bias, torch.zeros(10))
    assert b.weight.std().item() == pytest.approx(0.1, rel=0.1) and not torch.equal(b.bias, torch.zeros(10))
    assert b.bias.abs().max().item() < 0.05


# ---------------------------------------------------------------------------
# Short runs: epoch_to_target, --resume, W&B with a stand-in module
# ---------------------------------------------------------------------------
# The battery's optional checks (hundreds of steps on copies) off: these runs are about resuming.
# test_the_battery_does_not_change_training switches them on and compares.
OPTIONAL_CHECKS_OFF = ["--no-overfit-test", "--no-batch-independence-test", "--no-input-independent-baseline"]
TINY_ARGS = ["--device", "cpu", "--image-size", "32", "--epochs", "4", "--train-fraction", "1.0", "--batch-size",
             "32", *OPTIONAL_CHECKS_OFF]
NO_PLOTS = ("plot_batch", "plot_class_balance", "plot_gradient_flow", "plot_lr_schedule", "plot_augmented_batch",
            "plot_activation_statistics", "plot_training_curves", "plot_gradient_norms")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return make_imagenette_folder(tmp_path_factory.mktemp("v6_tiny"), train_per_class=10, val_per_class=2, seed=5)


def tiny_argv(folder, out, *extra) -> list[str]:
    return [*TINY_ARGS, "--data-dir", str(folder), "--out", str(out), *extra]


def tiny_run(argv, prepare=None, version=V6A):
    """main(argv) of `version` with output captured and the plots switched off (they draw no random
    numbers; the quick runs test them). `prepare(train, monkeypatch)` may patch the module more;
    `epochs` collects the epochs train() trains. Returns (results or the SystemExit code, stdout + stderr, epochs)."""
    stdout, stderr, epochs = io.StringIO(), io.StringIO(), []
    forget_normalize()
    with VersionContext(version) as train, pytest.MonkeyPatch.context() as patch:
        for name in NO_PLOTS:
            patch.setattr(train, name, lambda *args, **kwargs: None)
        one_epoch = train.train_one_epoch

        def counted(*args, **kwargs):
            epoch = args[4] if len(args) > 4 else kwargs.get("epoch", 0)
            if epoch >= 1:  # train(); verify_lr_schedule's calls leave epoch at 0
                epochs.append(epoch)
            return one_epoch(*args, **kwargs)

        patch.setattr(train, "train_one_epoch", counted)
        if prepare is not None:
            prepare(train, patch)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                results = train.main(argv)
            except SystemExit as err:
                results = err.code
    forget_normalize()
    return results, stdout.getvalue() + stderr.getvalue(), epochs


def interrupt_at(epoch_to_stop: int):
    def prepare(train, patch):
        one_epoch = train.train_one_epoch

        def interrupted(*args, **kwargs):
            if len(args) > 4 and args[4] == epoch_to_stop:
                raise KeyboardInterrupt
            return one_epoch(*args, **kwargs)

        patch.setattr(train, "train_one_epoch", interrupted)
    return prepare


def loader_generator_reset_after_resume(train, patch):
    """A resume that forgets the loader's shuffle and augmentation state (it starts from --seed)."""
    resume = train.resume

    def forgetful(run, data, *args):
        answer = resume(run, data, *args)
        data.train_loader.generator.manual_seed(run.cfg.seed)
        return answer

    patch.setattr(train, "resume", forgetful)


@pytest.fixture(scope="module")
def one_go(tiny_folder, tmp_path_factory):
    """Run A: --epochs 4 in one go, --target-val-accuracy 0.05."""
    out = tmp_path_factory.mktemp("v6_one_go") / "out"
    results, text, epochs = tiny_run(tiny_argv(tiny_folder, out, "--target-val-accuracy", "0.05"))
    assert isinstance(results, dict), text
    return {"results": results, "out": out, "epochs": epochs, "history": read_jsonl(out / "history.jsonl")}


@pytest.fixture(scope="module")
def interrupted(tiny_folder, tmp_path_factory):
    """Run B, first part: the same flags, Ctrl-C at the start of epoch 3; a copy of its folder for the controls."""
    out = tmp_path_factory.mktemp("v6_interrupted") / "out"
    argv = tiny_argv(tiny_folder, out, "--target-val-accuracy", "0.05")
    code, text, epochs = tiny_run(argv, interrupt_at(3))
    pristine = tmp_path_factory.mktemp("v6_interrupted_copy") / "out"
    shutil.copytree(out, pristine)
    return {"code": code, "text": text, "epochs": epochs, "out": out, "argv": argv, "pristine": pristine,
            "results": json.loads((out / "results.json").read_text()), "history": read_jsonl(out / "history.jsonl"),
            "resume_state": torch.load(out / "resume.pth", map_location="cpu", weights_only=True)}


@pytest.fixture(scope="module")
def resumed(interrupted):
    """Run B, second part: the same flags and --resume."""
    results, text, epochs = tiny_run([*interrupted["argv"], "--resume"])
    assert isinstance(results, dict), text
    return {"results": results, "text": text, "epochs": epochs, "history": read_jsonl(interrupted["out"] /
                                                                                       "history.jsonl")}


def test_interrupted_run_keeps_its_state(interrupted):
    assert interrupted["code"] == 130, interrupted["text"]
    assert interrupted["epochs"] == [1, 2]  # Ctrl-C as epoch 3 starts
    results = interrupted["results"]
    assert (results["status"], results["exit_code"], results["epochs_done"]) == ("interrupted", 130, 2)
    assert [h["epoch"] for h in interrupted["history"]] == [0, 1, 2]
    state = interrupted["resume_state"]
    assert state["epoch"] == 2 and state["best_epoch"] in (1, 2)
    assert set(state) >= {"model_state", "optimizer_state", "scheduler_state", "torch_rng", "numpy_rng",
                          "python_rng", "loader_rng"}


def test_resume_gives_the_numbers_of_a_run_in_one_go(one_go, resumed):
    assert one_go["epochs"] == [1, 2, 3, 4]
    assert resumed["epochs"] == [3, 4], resumed["text"]  # it trained only what was left
    assert resumed["results"]["resumed_after_epoch"] == 2 and "Resuming after epoch 2" in resumed["text"]
    assert "resumed_after_epoch" not in one_go["results"]
    strip = [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in resumed["history"]]
    assert [h["epoch"] for h in strip] == [0, 1, 2, 3, 4]
    assert strip == history_numbers(one_go["out"])
    for key in ("test_accuracy", "test_loss", "best_epoch", "best_val_accuracy", "val_loss", "train_loss", "init",
                "epochs_done", "epoch_to_target"):
        assert resumed["results"][key] == one_go["results"][key], key
    assert resumed["results"]["status"] == "completed" and resumed["results"]["all_checks_passed"] is True


def test_the_battery_does_not_change_training(one_go, tiny_folder, tmp_path):
    """Issue 26: checks observe, they do not perturb. The same run with the battery's optional checks
    on (overfit one batch, batch independence, the input-independent baseline: dozens of steps of
    the run's own training_step on copies; one_go has them off) trains the same model to the last
    bit. The checks that always run are held to the same by test_the_checks_do_not_change_training."""
    out = tmp_path / "out"
    results, text, _ = tiny_run(tiny_argv(tiny_folder, out, "--target-val-accuracy", "0.05", "--overfit-test",
                                          "--batch-independence-test", "--input-independent-baseline",
                                          "--baseline-steps", "20", "--overfit-steps", "20"))
    assert isinstance(results, dict), text
    optional = {"overfit_one_batch", "batch_independence", "input_independent_baseline"}
    assert optional <= set(results["checks"]) and not optional & set(one_go["results"]["checks"])
    assert history_numbers(out) == history_numbers(one_go["out"])
    for key in ("test_accuracy", "test_loss", "best_epoch", "best_val_accuracy", "val_loss", "train_loss", "init"):
        assert results[key] == one_go["results"][key], key
    weights = [torch.load(folder / "final_model.pth", weights_only=True, map_location="cpu")
               for folder in (out, one_go["out"])]
    state = [w["model_state"] if "model_state" in w else w for w in weights]
    assert all(torch.equal(state[0][k], state[1][k]) for k in state[1])


def test_the_checks_do_not_change_training(imagenette_folder, isolated_cache, tmp_path, monkeypatch):
    """Every check before training, the battery included (the input-independent baseline switched on,
    which --quick leaves off): afterwards every generator, the model's weights and buffers, and the
    optimizer's and scheduler's state are as they were. Control inside: without rng_untouched the
    loader's generator moves."""
    forget_normalize()
    with VersionContext(V6A) as train:
        cfg, data = load_quick_data(train, imagenette_folder, tmp_path, "--input-independent-baseline",
                                    "--baseline-steps", "4", "--overfit-steps", "4")
        model = train.DeeperCNN(dropout=cfg.dropout)
        optimizer, scheduler = train.make_optimizer(model, cfg, total_steps=cfg.epochs * len(data.train_loader))
        optimizer_state, scheduler_state = repr(optimizer.state_dict()), repr(scheduler.state_dict())
        runner = train.Run(cfg, tmp_path, torch.device("cpu"), {})
        for plot in NO_PLOTS + ("plot_overfit_one_batch",):
            monkeypatch.setattr(train, plot, lambda *args, **kwargs: None, raising=False)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            checks = train.checks_before_training(runner, data, model, optimizer, scheduler)
            assert {"step_gradient", "input_independent_baseline", "train_eval_modes"} <= set(checks)
            assert_checks_do_not_perturb(
                train, monkeypatch, lambda: train.checks_before_training(runner, data, model, optimizer, scheduler),
                model, data.train_loader)
    forget_normalize()
    assert repr(optimizer.state_dict()) == optimizer_state and repr(scheduler.state_dict()) == scheduler_state


def test_resume_that_forgets_the_loader_generator_is_caught(interrupted, one_go, tmp_path):
    """Control: the comparison above is sharp enough to see a resume that restores everything but
    the training loader's generator (epoch 3 then reshuffles and re-augments like epoch 1)."""
    out = tmp_path / "out"
    shutil.copytree(interrupted["pristine"], out)
    results, text, epochs = tiny_run([*interrupted["argv"], "--out", str(out), "--resume"],
                                     loader_generator_reset_after_resume)
    assert isinstance(results, dict) and results["resumed_after_epoch"] == 2 and epochs == [3, 4], text
    history, reference = history_numbers(out), history_numbers(one_go["out"])
    assert history[:3] == reference[:3]  # the epochs before the interruption are kept as they were
    assert history[3]["train_loss"] != reference[3]["train_loss"] and history[3:] != reference[3:]


def test_without_resume_the_run_starts_again(interrupted, one_go, tiny_folder, tmp_path):
    """The interrupted folder (resume.pth at epoch 2) run again without --resume: it trains epochs
    1-4 from scratch, with the numbers of the run in one go, and records no resumed_after_epoch.
    --target-val-accuracy 1.0 is never reached here."""
    out = tmp_path / "out"
    shutil.copytree(interrupted["pristine"], out)
    assert (out / "resume.pth").is_file()
    # --overwrite: the folder holds the interrupted run's results; without it the run is refused
    results, text, epochs = tiny_run(tiny_argv(tiny_folder, out, "--target-val-accuracy", "1.0", "--overwrite"))
    assert isinstance(results, dict), text
    assert epochs == [1, 2, 3, 4] and "resumed_after_epoch" not in results and "Resuming" not in text
    assert [h["epoch"] for h in read_jsonl(out / "history.jsonl")] == [0, 1, 2, 3, 4]
    assert history_numbers(out) == history_numbers(one_go["out"])
    assert all(h["val_accuracy"] < 1.0 for h in read_jsonl(out / "history.jsonl"))
    assert results["epoch_to_target"] is None and results["target_val_accuracy"] == 1.0


def test_resume_with_other_flags_is_refused(interrupted, tmp_path):
    """Another --epochs would stretch OneCycle past its planned end (a ValueError mid-run): refused
    at the start with exit 2, naming the flag; the interrupted run's folder is left to resume."""
    out = tmp_path / "out"
    shutil.copytree(interrupted["pristine"], out)
    argv = [*interrupted["argv"], "--resume"]
    argv[argv.index("--out") + 1] = str(out)
    argv[argv.index("--epochs") + 1] = "6"
    code, text, epochs = tiny_run(argv)
    assert code == 2 and epochs == []
    assert "--resume needs the flags of the interrupted run" in text and "epochs 4 -> 6" in text
    assert (out / "resume.pth").is_file()


def test_epoch_to_target_is_the_first_epoch_at_the_target(one_go):
    results, history = one_go["results"], one_go["history"]
    assert results["target_val_accuracy"] == 0.05
    assert isinstance(results["epoch_to_target"], int) and not isinstance(results["epoch_to_target"], bool)
    assert results["epoch_to_target"] == epoch_to_target(history, 0.05) >= 1  # epoch 0 does not count
    assert json.loads((one_go["out"] / "results.json").read_text())["epoch_to_target"] == results["epoch_to_target"]


# ---------------------------------------------------------------------------
# Weights & Biases
# ---------------------------------------------------------------------------
def test_wandb_flag_without_the_package_exits_2(imagenette_folder, tmp_path, monkeypatch):
    """sys.modules["wandb"] = None makes `import wandb` fail whether or not it is installed."""
    monkeypatch.setitem(sys.modules, "wandb", None)
    with VersionContext(V6A) as train:
        code, stderr = run_main_exit(train, quick_args(imagenette_folder, tmp_path / "out", "--wandb"))
    assert code == 2 and "requirements-wandb.txt" in stderr and "--wandb" in stderr
    assert not (tmp_path / "out").exists()  # checked before anything is written


class FakeWandbRun:
    def __init__(self, calls):
        self.calls, self.summary = calls, {}

    def log(self, data, step=None):
        self.calls.append(("log", step, dict(data)))

    def finish(self, exit_code=None):
        self.calls.append(("finish", exit_code, None))


def fake_wandb(calls: list) -> types.ModuleType:
    module = types.ModuleType("wandb")

    def init(**kwargs):
        calls.append(("init", None, kwargs))
        module.run = FakeWandbRun(calls)
        return module.run

    module.init = init
    module.watch = lambda model, **kwargs: calls.append(("watch", None, kwargs))
    return module


def test_wandb_logs_the_seeds_metrics_on_a_stand_in(tiny_folder, tmp_path, monkeypatch):
    """A stand-in `wandb` module records what the run sends: init (project, config, dir=--out), the
    epoch-0 loss at step 0, every epoch at its own step with the seed's metric names and the
    gradient norms per group, the test numbers, and finish."""
    calls = []
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(calls))
    out = tmp_path / "out"
    results, text, _ = tiny_run(tiny_argv(tiny_folder, out, "--wandb", "--epochs", "2"))
    assert isinstance(results, dict), text
    kinds = [c[0] for c in calls]
    assert kinds[:2] == ["init", "watch"] and kinds[-1] == "finish" and calls[-1][1] is None
    init = calls[0][2]
    assert init["project"] == "imagenette-training" and init["dir"] == str(out.resolve())
    assert init["config"]["wandb"] is True and V6A in init["tags"]
    logs = [c for c in calls if c[0] == "log"]
    assert [c[1] for c in logs] == [0, 1, 2, None]
    history = read_jsonl(out / "history.jsonl")
    assert logs[0][2] == {"init/loss": history[0]["train_loss"], "init/accuracy": history[0]["train_accuracy"]}
    for (_, step, data), line in zip(logs[1:3], history[1:]):
        assert data["train/loss"] == line["train_loss"] and data["val/accuracy"] == line["val_accuracy"]
        assert data["grad_norm"] == line["grad_norm"]
        assert {k: v for k, v in data.items() if k.startswith("grad_norm/")} == \
            {f"grad_norm/{g}": v for g, v in line["grad_norm_per_group"].items()}
    assert logs[3][2] == {"test/accuracy": results["test_accuracy"], "test/loss": results["test_loss"]}
    summary = sys.modules["wandb"].run.summary
    assert summary["num_params"] == NUM_PARAMETERS and summary["epoch_to_target"] == results["epoch_to_target"]


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason="wandb is not installed (optional: pip install -r requirements-wandb.txt)")
def test_wandb_offline_run_writes_under_out(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "out"
    results, text, _ = tiny_run(tiny_argv(tiny_folder, out, "--wandb", "--epochs", "1"))
    assert isinstance(results, dict) and results["status"] == "completed", text
    assert (out / "wandb").is_dir() and any((out / "wandb").iterdir())


# ---------------------------------------------------------------------------
# The diffs: v6a vs v6b, v6a vs v5
# ---------------------------------------------------------------------------
def text(version: str, file: str) -> str:
    return (REPO_ROOT / version / file).read_text()


def test_the_sides_differ_in_the_two_constants_only():
    files_a = sorted(p.name for p in (REPO_ROOT / V6A).iterdir() if p.is_file())
    files_b = sorted(p.name for p in (REPO_ROOT / V6B).iterdir() if p.is_file())
    assert files_a == files_b  # README.md and FAZIT.md too, where present: the same text on both sides
    assert {"debug_tools.py", "metrics.py", "normalize.py", "train.py", "visualization.py"} <= set(files_a)
    assert [f for f in files_a if text(V6A, f) != text(V6B, f)] == ["train.py"]
    diff = list(difflib.unified_diff(text(V6A, "train.py").splitlines(), text(V6B, "train.py").splitlines(),
                                     lineterm="", n=0))
    removed = [line[1:] for line in diff if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff if line.startswith("+") and not line.startswith("+++")]
    assert len([line for line in diff if line.startswith("@@")]) == 1  # one hunk
    pattern = re.compile(r"^(FINAL_WEIGHT_STD|FINAL_BIAS_STD) = ([0-9.]+)  # ")
    assert [pattern.match(line).groups() for line in removed] == [("FINAL_WEIGHT_STD", "0.01"), ("FINAL_BIAS_STD", "0.0")]
    assert [pattern.match(line).groups() for line in added] == [("FINAL_WEIGHT_STD", "0.1"), ("FINAL_BIAS_STD", "0.01")]


@pytest.mark.parametrize("side", SIDES)
def test_the_sides_load_with_their_constants(side):
    forget_normalize()
    with VersionContext(SIDES[side]) as train:
        assert (train.FINAL_WEIGHT_STD, train.FINAL_BIAS_STD) == FINAL_INIT[side]
        assert train.VERSION == SIDES[side] and train.REPO_ROOT == REPO_ROOT
        assert sys.modules["normalize"].REPO_ROOT == REPO_ROOT
        assert (train.TARGET_VAL_ACCURACY, train.WANDB, train.INIT_CHECK_BATCHES) == (0.8, False, 10)
    forget_normalize()


def test_metrics_is_v5s():
    assert text(V6A, "metrics.py") == text(V5, "metrics.py")


def test_normalize_is_v5s_one_folder_deeper():
    old_line = "REPO_ROOT = VERSION_DIR.parents[1]\n"
    new_line = "REPO_ROOT = VERSION_DIR.parents[2]  # imagenette/v6/v6a: one folder deeper than v1-v5\n"
    assert text(V5, "normalize.py").count(old_line) == 1
    assert text(V6A, "normalize.py") == text(V5, "normalize.py").replace(old_line, new_line)


# v6 appends check_initialization (its idea) and, since issue 26, fashionmnist/v10-step2's battery on
# the run's own step; verify_gradient_flow learns to excuse branches behind zero-initialised scales.
APPENDED = {
    "visualization.py": ({"plot_gradient_norms", "plot_overfit_one_batch"}, set()),
    "debug_tools.py": ({"check_initialization", "initialization_verdict", "_copy_for_training", "_endless",
                        "_accuracy", "test_input_independent_baseline", "overfit_one_batch",
                        "verify_batch_independence", "_flat", "verify_step_gradient", "zero_initialised_scales",
                        "gradients_behind_zero_scales", "_names", "verify_train_eval_modes"},
                       {"NORM_LAYERS", "MODE_DEPENDENT_LAYERS"}),
}
INTENDED_V6_EDITS = {
    "visualization.py": {},
    "debug_tools.py": {"imports": {"import itertools", "import statistics", "from pathlib import Path",
                                   "from visualization import plot_overfit_one_batch"},
                       "functions": {"verify_gradient_flow"}, "constants": {"NORM_LAYERS", "MODE_DEPENDENT_LAYERS"}},
}


@pytest.mark.parametrize("file", sorted(APPENDED))
def test_file_is_v5s_plus_appended_functions(file):
    old, new = text(V5, file), text(V6A, file)
    assert growth_problems(old, new, INTENDED_V6_EDITS[file]) == []
    functions, constants = APPENDED[file]
    old_names = {name for kind, name, _ in top_level(old)[0] if name}
    appended = [(kind, name) for kind, name, _ in top_level(new)[0] if name and name not in old_names]
    assert {name for kind, name in appended if kind == "definition"} == functions
    assert {name for kind, name in appended if kind == "Assign"} == constants


# ---------------------------------------------------------------------------
# --help
# ---------------------------------------------------------------------------
NEW_FLAGS = ["--final-weight-std", "--final-bias-std", "--resume", "--wandb", "--target-val-accuracy",
             "--init-check-batches", "--wandb-project"]
FLAG_OF = {"LEARNING_RATE": "--lr", "OUT_DIR": "--out",
           "RUN_INPUT_INDEPENDENT_BASELINE": "--input-independent-baseline", "RUN_OVERFIT_TEST": "--overfit-test",
           "RUN_BATCH_INDEPENDENCE_TEST": "--batch-independence-test"}


@pytest.mark.parametrize("side", SIDES)
def test_help_lists_the_new_flags_and_one_for_every_constant(side):
    block = text(SIDES[side], "train.py").split("# Configuration: every constant can be overridden on the command "
                                                "line.", 1)[1].split("\n# --quick", 1)[0]
    constants = re.findall(r"^([A-Z][A-Z0-9_]*) = ", block, flags=re.M)
    assert {"FINAL_WEIGHT_STD", "FINAL_BIAS_STD", "TARGET_VAL_ACCURACY", "WANDB"} <= set(constants)
    stdout = io.StringIO()
    forget_normalize()
    with VersionContext(SIDES[side]) as train:
        with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as exit_info:
            train.main(["--help"])
        defaults = vars(train.parse_args([]))
        values = {name: getattr(train, name) for name in constants}
    forget_normalize()
    assert exit_info.value.code == 0
    help_text = stdout.getvalue()
    assert help_text.startswith("usage:") and "Imagenette v6" in help_text
    for flag in NEW_FLAGS:
        assert re.search(rf"(^|\s){re.escape(flag)}[\s,]", help_text), f"{side}: no {flag}"
    for name in constants:
        flag = FLAG_OF.get(name, "--" + name.lower().replace("_", "-"))
        assert re.search(rf"(^|\s){re.escape(flag)}[\s,]", help_text), f"{side}: {name} has no flag {flag}"
        if name == "OUT_DIR":  # the outputs root: --out's default None means a new dated folder in it
            assert defaults["out"] is None
            continue
        assert defaults[flag[2:].replace("-", "_")] == values[name], f"{side}: {flag}'s default is not {name}"
