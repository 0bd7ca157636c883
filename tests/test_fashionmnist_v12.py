"""fashionmnist/v12-step4 (recipe step 4, regularize).

- One quick run end to end: every promised output (augmented_batch.png, first_layer_filters.png
  among the plots), the checks with their keys, `augmentation` passing, the regularisers in the
  config, label smoothing's floor under the overfit check, the first-layer filter statistics,
  and `train_test_gap` a real check again (a threshold of the flag fails it, with no "expected"
  excuse: v11 excused gaps up to 10 points).
- The new check `verify_augmentation` twice and more: it passes on the version's loaders and
  with augmentation off, and fails on a validation loader that shares the training
  augmentation, on stored tensors augmented once, on a training loader without augmentation,
  on labels moved, on pixels outside [0, 1], on a shuffled evaluation loader.
- The new pieces on tiny tensors: smoothing_floor, verify_step_gradient's forward_context
  (CPU bf16 autocast stands in for CUDA's), filter_statistics, learning_curve_verdict, the
  nested --train-fraction subsets, early stopping (train() on 64 images with a scripted
  validation accuracy), the flags.
- regularize.py: the arms (each adds one regulariser to its parent), the Welch interval
  against tabulated t quantiles, summarise/markdown on synthetic runs, main() end to end with
  train.main replaced (the flags every arm would run with are parsed by train.py itself).
  learning_curve.py: one real quick point (50% = 256 images) next to the module's run as the
  100% point, as runs/2026-12-05-h100-fashionmnist-v12/run.sh does with the +smoothing arm.

The augmentation check judges the training batch by half the share the configured augmentation
changes (a flip-only configuration passes on every seed) and follows every image's label through
the loader's own code (images reordered within a batch fail).

Budget: the input-independent baseline (v10's, ~30 s in --quick with the ResNet) is off
everywhere; the module's run is the one full quick run.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import re
import shutil
import sys
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from conftest import _forget_version_modules, load_version
from fmnist_helpers import (  # noqa: F401  (fixtures)
    CLASSES,
    VersionContext,
    assert_check_dict,
    assert_finite,
    assert_png_has_content,
    fmnist_data,
    quick_args,
    read_jsonl,
)

V12 = "fashionmnist/v12-step4"
NUM_PARAMETERS = 696_042  # v11's ResNet: dropout has no parameters
PNGS = ["data_samples.png", "class_means.png", "pixel_histogram.png", "human_baseline_samples.png",
        "input_visualization.png", "augmented_batch.png", "lr_schedule.png", "overfit_one_batch.png",
        "training_curves.png", "batch_level_loss.png", "prediction_dynamics.png", "confusion_matrix.png",
        "train_vs_test_comparison.png", "misclassifications.png", "first_layer_filters.png"]
PROMISED = [*PNGS, "best_model_v12.pth", "results.json", "history.jsonl", "REPORT.md"]
CHECKS = ["input_before_net", "augmentation", "loss_at_init", "optimizer_config", "lr_schedule", "gradient_flow",
          "step_gradient", "overfit_one_batch", "batch_independence", "train_eval_modes", "training_loss_decreases",
          "train_test_gap", "batch_independence_after_training"]
# One epoch of four batches cannot bring the loss down by 10%; the gap fails on the module's threshold.
FAIL_IN_QUICK = {"training_loss_decreases", "train_test_gap"}
GAP_THRESHOLD = -0.5  # a train - test gap is never below -50 points near chance: the check must fail
FLAGS = ["--quick", "--preflight", "--out", "--overwrite", "--data-dir", "--device", "--seed", "--epochs",
         "--batch-size", "--lr", "--lr-schedule", "--channels", "--weight-decay", "--crop-padding",
         "--flip-probability", "--erase-probability", "--label-smoothing", "--dropout", "--patience",
         "--train-fraction", "--bf16", "--val-size", "--loss-at-init-tolerance", "--diverged-loss",
         "--human-baseline", "--input-independent-baseline", "--overfit-test", "--batch-independence-test",
         "--baseline-steps", "--overfit-steps", "--overfit-max-loss", "--max-train-test-gap"]
# The config keys of the regularisers and the flags that set them.
REGULARISERS = ["crop_padding", "flip_probability", "erase_probability", "weight_decay", "label_smoothing",
                "dropout", "patience"]


@pytest.fixture(scope="module")
def run(fmnist_data, tmp_path_factory):
    data_dir, is_real = fmnist_data
    out = tmp_path_factory.mktemp("v12_run") / "out"
    stdout = io.StringIO()
    with VersionContext(V12) as train, contextlib.redirect_stdout(stdout):
        defaults = vars(train.parse_args([]))
        results = train.main(quick_args(out, data_dir, "--no-input-independent-baseline",
                                        "--max-train-test-gap", str(GAP_THRESHOLD)))
    return {"results": results, "stdout": stdout.getvalue(), "out": out, "data_dir": data_dir, "is_real": is_real,
            "defaults": defaults}


# ---------------------------------------------------------------------------
# The quick run
# ---------------------------------------------------------------------------
def test_every_promised_file_is_written_and_listed(run):
    out = run["out"]
    for name in PROMISED:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert sorted(p.name for p in out.iterdir()) == sorted(PROMISED), "an unexpected or leftover file"
    assert sorted(run["results"]["outputs"]) == sorted(PROMISED)


@pytest.mark.parametrize("name", PNGS)
def test_plots_are_real_images(run, name):
    assert_png_has_content(run["out"] / name)


def test_results_json_holds_the_regularisers_and_the_new_records(run):
    results, defaults = run["results"], run["defaults"]
    on_disk = json.loads((run["out"] / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results)), "results.json differs from what main() returned"
    assert on_disk["version"] == V12 and on_disk["status"] == "completed" and on_disk["exit_code"] == 0
    assert on_disk["num_parameters"] == NUM_PARAMETERS
    config = on_disk["config"]
    assert config["quick"] is True and config["epochs"] == 1 and config["train_fraction"] == 1.0
    # every regulariser is in the config with train.py's default (the lesson's values are asserted below)
    assert {key: config[key] for key in REGULARISERS} == {key: defaults[key] for key in REGULARISERS}
    assert (config["crop_padding"], config["flip_probability"], config["erase_probability"]) != (0, 0, 0)
    assert config["weight_decay"] > 0 and 0 < config["label_smoothing"] < 1 and config["bf16"] is True
    for gone in ("expected_train_test_gap", "min_train_accuracy", "max_train_loss"):
        assert gone not in config, f"v11's {gone} is still configured"
    assert on_disk["epochs_run"] == 1 and "stopped_early" not in on_disk  # patience 0: never stops early
    assert on_disk["data_report"]["train_size"] == 512
    assert 0 < on_disk["checks_time_s"] < on_disk["wall_time_s"]
    assert_finite(on_disk["test_loss"], on_disk["train_time_s"], on_disk["best_val_accuracy"])
    header = re.search(r"^regularisers: .*$", run["stdout"], re.M).group(0)
    assert header == (f"regularisers: crop padding {config['crop_padding']}, flip {config['flip_probability']}, "
                      f"erasing {config['erase_probability']}, weight decay {config['weight_decay']}, "
                      f"label smoothing {config['label_smoothing']}, dropout {config['dropout']}, patience off")


def test_every_check_is_recorded_and_only_the_quick_failures_fail(run):
    checks = run["results"]["checks"]
    assert list(checks) == CHECKS
    for name, check in checks.items():
        assert_check_dict(check, name)
    failed = {name for name, c in checks.items() if not c["passed"]}
    assert failed == FAIL_IN_QUICK, {name: checks[name]["criterion"] for name in failed}
    stdout = run["stdout"]
    assert f"{len(CHECKS) - 2}/{len(CHECKS)} passed; FAILED: training_loss_decreases, train_test_gap" in stdout
    assert "(--quick: training_loss_decreases, train_test_gap judge a full run;" in stdout  # and why
    assert "failed as expected" not in stdout
    assert re.search(r"^augmentation\s+PASS", stdout, re.M)


def test_the_augmentation_check_of_the_run(run):
    check = run["results"]["checks"]["augmentation"]
    # crop (1 in 25 centred), flip and erasing (each 0.5): all but 1% of the images change; half that is the bar
    expected = 1 - (1 / 25) * 0.5 * 0.5
    assert check["passed"] and math.isclose(check["threshold"], expected / 2)
    assert check["value"] > 0.9  # nearly every image of a batch differs
    assert check["details"] == {"problems": [], "training_batch_changed": check["value"],
                                "expected_changed": pytest.approx(expected)}
    assert "validation and test batches are the images in the files" in check["criterion"]


def test_train_test_gap_is_a_real_check_again(run):
    """v11 marked a gap up to 10 points as expected (step 3 overfits on purpose); v12 must close it:
    a failure is a failure, with the threshold of --max-train-test-gap."""
    results = run["results"]
    check = results["checks"]["train_test_gap"]
    assert not check["passed"] and check["threshold"] == GAP_THRESHOLD and check["expected"] == ""
    assert check["value"] == pytest.approx(results["train_metrics"]["accuracy"] - results["test_metrics"]["accuracy"])
    assert re.search(r"^train_test_gap\s+FAIL\s", run["stdout"], re.M)


def test_label_smoothing_puts_a_floor_under_the_overfit_check(run):
    """With smoothing 0.1 the loss cannot go below 0.50 (smoothing_floor): v11's 'loss <= 0.05' could
    never pass; the version's threshold is the floor + 0.05, and the run memorises its 8 images."""
    train = load_version(V12)
    import debug_tools

    check = run["results"]["checks"]["overfit_one_batch"]
    floor = debug_tools.smoothing_floor(run["results"]["config"]["label_smoothing"], 10)
    assert check["passed"] and check["threshold"] == pytest.approx(floor + train.OVERFIT_MAX_LOSS)
    assert floor - 1e-4 <= check["value"] <= check["threshold"]
    assert check["value"] > 0.05 and check["value"] > 10 * train.OVERFIT_MAX_LOSS  # v11's threshold fails it


def test_first_layer_filters_at_init_and_trained(run):
    """At init: the statistics of the ResNet the seed builds; trained: the best checkpoint's stem,
    moved by training (a snapshot that is not a copy would show the trained filters twice)."""
    results = run["results"]
    stats = results["first_layer_filters"]
    assert set(stats) == {"at_init", "trained"}
    for key in ("at_init", "trained"):
        assert set(stats[key]) == {"neighbour_correlation", "filters", "rms"} and stats[key]["filters"] == 32
        assert -1 <= stats[key]["neighbour_correlation"] <= 1
    train = load_version(V12)
    import debug_tools

    train.set_seed(results["seed"])
    assert stats["at_init"] == debug_tools.filter_statistics(train.ResNet().stem[0].weight)
    checkpoint = torch.load(run["out"] / "best_model_v12.pth", map_location="cpu", weights_only=True)
    assert stats["trained"] == pytest.approx(debug_tools.filter_statistics(checkpoint["model_state"]["stem.0.weight"]))
    assert stats["trained"] != stats["at_init"]
    model = train.ResNet(dropout=0.3)
    model.load_state_dict(checkpoint["model_state"])  # strict: dropout adds no parameter, v11's layout
    assert train.count_parameters(model) == NUM_PARAMETERS


def test_report_md_places_the_new_plots(run):
    report = (run["out"] / "REPORT.md").read_text()
    assert report.startswith(f"# Run report: {V12}")
    for name in PNGS:
        assert f"![{name}]({name})" in report, name
    positions = [report.index(f"![{name}]") for name in ("input_visualization.png", "augmented_batch.png",
                                                         "lr_schedule.png", "misclassifications.png",
                                                         "first_layer_filters.png")]
    assert positions == sorted(positions)
    assert re.search(r"^\| augmentation \| PASS \|", report, re.M)


def test_history_and_training(run):
    history = read_jsonl(run["out"] / "history.jsonl")
    assert [h["epoch"] for h in history] == [1] and len(history[0]["batch_losses"]) == 4
    assert_finite(*history[0]["batch_losses"])
    # the step's loss is label-smoothed: at init it is still ln(10) (smoothing a uniform prediction changes nothing)
    assert abs(run["results"]["checks"]["loss_at_init"]["value"] - math.log(10)) <= 0.3


# ---------------------------------------------------------------------------
# verify_augmentation on the version's own loaders
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw(fmnist_data):
    with VersionContext(V12) as train:
        return train.load_raw_data(fmnist_data[0])


@pytest.fixture
def v12(raw):
    """The version, its quick splits (on the CPU), the originals from the files and verify_augmentation
    as checks_before_training calls it; augmented_batch.png only where a test asks for it (plot_to)."""
    train = load_version(V12)
    import debug_tools

    cfg = train.parse_args(["--quick"])
    train_set, val_set, test_set = train.split_data(*raw, cfg, torch.device("cpu"))
    originals = train.unaugmented_images(raw, cfg)
    augmentation = train.Augmentation(cfg.crop_padding, cfg.flip_probability, cfg.erase_probability)

    def loaders(train_augment=augmentation, val_augment=None, loader_class=train.TensorLoader):
        return (loader_class(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=train_augment),
                {"validation": train.TensorLoader(val_set, 1024, augment=val_augment),
                 "test": train.TensorLoader(test_set, 1024)})

    def check(train_loader, eval_loaders, augmented=True, plot_to=None, expected=None):
        """augmented: the configured augmentation (the version's, or all off); expected: a share of its own."""
        if expected is None:
            expected = augmentation.changed_share() if augmented else 0.0
        with contextlib.ExitStack() as stack:
            if plot_to is None:  # a third of a second per plot, not needed to judge
                stack.enter_context(mock.patch.object(debug_tools, "plot_augmented_batch", lambda *a, **k: None))
            return debug_tools.verify_augmentation(train_loader, eval_loaders, originals, expected_changed=expected,
                                                   out_dir=plot_to or "not-written")

    return {"train": train, "debug_tools": debug_tools, "cfg": cfg, "sets": (train_set, val_set, test_set),
            "originals": originals, "augmentation": augmentation, "loaders": loaders, "check": check}


def test_augmentation_passes_on_the_versions_loaders(v12, tmp_path):
    train_loader, eval_loaders = v12["loaders"]()
    result = v12["check"](train_loader, eval_loaders, plot_to=tmp_path)
    assert result.passed, result.report()
    assert result.value > 0.9 and result.details["problems"] == []
    assert_png_has_content(tmp_path / "augmented_batch.png")


def test_augmentation_fails_when_validation_shares_the_training_augmentation(v12):
    """Seed 004's bug (cifar100): one transform for both loaders."""
    train_loader, eval_loaders = v12["loaders"](val_augment=v12["augmentation"])
    result = v12["check"](train_loader, eval_loaders)
    assert not result.passed
    assert result.details["problems"] == ["validation batch at image 0 differs from the images in the files "
                                          "(augmented, shuffled or transformed)"]
    assert "Only the training loader gets the augmentation" in result.hint


def test_augmentation_fails_when_the_stored_validation_images_were_augmented_once(v12):
    """Augmenting once into the stored tensors: every evaluation sees the same images, but not the real ones."""
    train, (train_set, val_set, test_set) = v12["train"], v12["sets"]
    val_set.images = v12["augmentation"](val_set.images, torch.Generator().manual_seed(0))
    train_loader, _ = v12["loaders"]()
    result = v12["check"](train_loader, {"validation": train.TensorLoader(val_set, 1024),
                                         "test": train.TensorLoader(test_set, 1024)})
    assert not result.passed and "validation batch at image 0 differs" in result.criterion
    # the same goes for a test set: the problem names the split
    test_set.images = test_set.images.flip(3)
    result = v12["check"](train_loader, {"test": train.TensorLoader(test_set, 1024)})
    assert not result.passed and result.details["problems"][0].startswith("test batch at image 0 differs")


def test_augmentation_fails_on_a_shuffled_or_short_evaluation_loader(v12):
    train, (train_set, val_set, test_set) = v12["train"], v12["sets"]
    train_loader, _ = v12["loaders"]()
    shuffled = v12["check"](train_loader, {"validation": train.TensorLoader(val_set, 1024, shuffle=True)})
    assert not shuffled.passed and "validation batch at image 0 differs" in shuffled.criterion
    half = train.FashionMNISTTensors(val_set.images[:128], val_set.labels[:128], CLASSES)
    short = v12["check"](train_loader, {"validation": train.TensorLoader(half, 1024)})
    assert not short.passed and "validation loader yields 128 images, the split has 256" in short.criterion


def test_augmentation_fails_when_the_training_loader_does_not_augment(v12):
    train_loader, eval_loaders = v12["loaders"](train_augment=None)
    result = v12["check"](train_loader, eval_loaders, augmented=True)
    assert not result.passed and result.value == 0.0
    assert "yet only 0% of the training batch differs" in result.criterion


def test_augmentation_off_passes_unchanged_batches_and_fails_changed_ones(v12, tmp_path):
    train = v12["train"]
    off = train.Augmentation(0, 0, 0)
    assert off.changed_share() == 0 and v12["augmentation"].changed_share() > 0.98
    train_loader, eval_loaders = v12["loaders"](train_augment=off)
    result = v12["check"](train_loader, eval_loaders, augmented=False)
    assert result.passed and result.value == 0.0 and result.threshold == 0.0, result.report()
    train_loader, eval_loaders = v12["loaders"](train_augment=None)  # no augment at all: the same
    assert v12["check"](train_loader, eval_loaders, augmented=False).passed
    train_loader, eval_loaders = v12["loaders"]()  # augmentation on, the config says off
    result = v12["check"](train_loader, eval_loaders, augmented=False)
    assert not result.passed and "augmentation is off, yet" in result.criterion


def test_augmentation_fails_when_labels_move(v12):
    train = v12["train"]

    class RollsLabels(train.TensorLoader):
        def __iter__(self):
            for images, labels in super().__iter__():
                yield images, labels.roll(1)

    train_loader, eval_loaders = v12["loaders"](loader_class=RollsLabels)
    result = v12["check"](train_loader, eval_loaders)
    assert not result.passed and "the augmentation moved labels" in result.criterion


def test_augmentation_fails_on_pixels_outside_the_range(v12):
    """torchvision's RandomErasing(value="random") fills with N(0, 1) noise: outside [0, 1]."""
    train = v12["train"]

    def normal_erasing(images, generator):
        erased = train.random_erasing(images, 1.0, generator)
        return torch.where(erased != images, torch.randn(images.shape, generator=generator), images)

    train_loader, eval_loaders = v12["loaders"](train_augment=normal_erasing)
    result = v12["check"](train_loader, eval_loaders)
    assert not result.passed and "outside [0, 1]" in result.criterion


def test_augmentation_fails_when_an_augmentation_reorders_the_images(v12):
    """A vectorised flip written with boolean masks: the flipped images first, the rest after. Every
    image now sits next to another image's label."""
    augmentation = v12["augmentation"]

    def masked_flip(images, generator):
        images = augmentation(images, generator)
        flip = torch.rand(len(images), generator=generator) < 0.5
        return torch.cat([images[flip].flip(3), images[~flip]])

    train_loader, eval_loaders = v12["loaders"](train_augment=masked_flip)
    result = v12["check"](train_loader, eval_loaders)
    assert not result.passed and "carry another image's label" in result.criterion


def test_augmentation_passes_a_flip_only_configuration_on_every_seed(v12):
    train_set = v12["sets"][0]
    train, eval_loaders = v12["train"], v12["loaders"]()[1]
    flip_only = train.Augmentation(0, 0.5, 0)
    verdicts = [v12["check"](train.TensorLoader(train_set, 128, shuffle=True, seed=seed, augment=flip_only),
                             eval_loaders, expected=flip_only.changed_share()).passed for seed in range(10)]
    assert all(verdicts), verdicts


def test_the_augmentation_is_reproducible_and_only_moves_pixels(v12):
    """Same generator state, same batch; crop shifts by at most the padding (black borders);
    flip mirrors; erasing stays in [0, 1]."""
    train, images = v12["train"], v12["originals"]["training"][0][:64]
    augmentation = v12["augmentation"]
    a = augmentation(images, torch.Generator().manual_seed(3))
    b = augmentation(images, torch.Generator().manual_seed(3))
    c = augmentation(images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == images.shape
    assert 0 <= a.min() and a.max() <= 1
    g = torch.Generator().manual_seed(0)
    flipped = train.random_flip(images, 1.0, g)
    assert torch.equal(flipped, images.flip(3)) and torch.equal(train.random_flip(images, 0.0, g), images)
    cropped = train.random_crop(images, 2, g)
    # every crop is one of the 25 shifts of the padded image
    padded = F.pad(images, (2, 2, 2, 2))
    shifts = torch.stack([padded[:, :, dy:dy + 28, dx:dx + 28] for dy in range(5) for dx in range(5)], 1)
    assert ((shifts == cropped.unsqueeze(1)).flatten(2).all(2)).any(1).all()
    erased = train.random_erasing(images, 1.0, g)
    changed = (erased != images).flatten(1).float().mean(1)
    assert (changed > 0).float().mean() > 0.9 and changed.max() <= 0.45


# ---------------------------------------------------------------------------
# Label smoothing's floor
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("smoothing, classes", [(0.1, 10), (0.2, 10), (0.1, 100), (0.05, 3)])
def test_smoothing_floor_is_the_loss_of_the_smoothed_target(smoothing, classes):
    """A model that predicts exactly the smoothed target reaches the floor, and no model gets below it."""
    load_version(V12)
    from debug_tools import smoothing_floor

    target = torch.full((classes,), smoothing / classes)
    target[0] += 1 - smoothing
    labels = torch.zeros(4, dtype=torch.long)
    exact = F.cross_entropy(target.log().expand(4, -1), labels, label_smoothing=smoothing).item()
    assert smoothing_floor(smoothing, classes) == pytest.approx(exact, rel=1e-6)
    confident = F.cross_entropy(torch.tensor([[30.0] + [0.0] * (classes - 1)] * 4), labels,
                                label_smoothing=smoothing).item()
    assert confident > smoothing_floor(smoothing, classes)  # more confident than the target: a higher loss


def test_smoothing_floor_values():
    load_version(V12)
    from debug_tools import smoothing_floor

    assert smoothing_floor(0.0) == 0.0 and smoothing_floor(-0.1) == 0.0
    assert smoothing_floor(0.1) == pytest.approx(-(0.91 * math.log(0.91) + 9 * 0.01 * math.log(0.01)))
    assert 0.50 < smoothing_floor(0.1) < 0.501  # "0.50 for 0.1 and 10 classes"
    assert smoothing_floor(0.9999, 10) == pytest.approx(math.log(10), rel=1e-3)  # all smoothing: uniform


# ---------------------------------------------------------------------------
# verify_step_gradient's forward_context
# ---------------------------------------------------------------------------
def test_step_gradient_compares_like_with_like_precision(raw, monkeypatch):
    """On CUDA the step runs in bf16 autocast; on a CPU mixed_precision is off. CPU bf16 autocast
    stands in: the step in bf16 against a float32 fresh pass differs by ~1e-2 (a false alarm the
    forward_context exists to prevent); with the step's own context the two passes are the same
    computation (0 difference). Like with like in float32 passes too."""
    train = load_version(V12)
    import debug_tools

    x = train.to_tensor(raw[0][:32]).contiguous(memory_format=torch.channels_last)
    y = raw[1][:32]
    cpu = torch.device("cpu")
    cfg = train.parse_args([])
    assert train.mixed_precision(cpu, True).fast_dtype == torch.bfloat16  # the version's own context ...
    assert not train.mixed_precision(cpu, True)._enabled  # ... is off on a CPU
    monkeypatch.setattr(train, "mixed_precision",
                        lambda device, bf16: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16))

    def check(bf16, context):
        torch.manual_seed(0)
        return debug_tools.verify_step_gradient(
            train.ResNet(channels=4), x, y, make_optimizer=functools.partial(train.make_optimizer, cfg=cfg),
            training_step=functools.partial(train.training_step, label_smoothing=0.1, bf16=bf16),
            loss_fn=functools.partial(train.loss_fn, label_smoothing=0.1), forward_context=context)

    same = functools.partial(train.mixed_precision, cpu, True)
    matched = check(True, same)
    assert matched.passed and matched.value < 1e-6, matched.report()
    mismatched = check(True, contextlib.nullcontext)  # the default: float32
    assert not mismatched.passed and 3e-3 < mismatched.value < 0.1, mismatched.report()
    float32 = check(False, contextlib.nullcontext)
    assert float32.passed and float32.value < 1e-5, float32.report()


def test_step_gradient_fails_when_the_step_drops_label_smoothing(raw):
    """The check's loss is the run's smoothed loss: a step that trains on plain cross-entropy differs
    by ~10% of the gradient (0.1 x (one-hot - uniform) on the logits' gradient)."""
    train = load_version(V12)
    import debug_tools

    x, y = train.to_tensor(raw[0][:32]).contiguous(memory_format=torch.channels_last), raw[1][:32]
    cfg = train.parse_args([])
    torch.manual_seed(0)
    result = debug_tools.verify_step_gradient(
        train.ResNet(channels=4), x, y, make_optimizer=functools.partial(train.make_optimizer, cfg=cfg),
        training_step=functools.partial(train.training_step, label_smoothing=0.0),
        loss_fn=functools.partial(train.loss_fn, label_smoothing=0.1))
    assert not result.passed and result.value > 0.03
    assert "computes its loss on something else" in result.hint


# ---------------------------------------------------------------------------
# filter_statistics and learning_curve_verdict
# ---------------------------------------------------------------------------
def test_filter_statistics_random_near_zero_edges_positive():
    load_version(V12)
    from debug_tools import filter_statistics

    g = torch.Generator().manual_seed(0)
    noise = [filter_statistics(torch.randn(64, 1, 3, 3, generator=g))["neighbour_correlation"] for _ in range(5)]
    assert all(abs(value) < 0.2 for value in noise), noise
    yy, xx = torch.meshgrid(torch.arange(3.0), torch.arange(3.0), indexing="ij")
    c = torch.randn(64, 3, generator=g)
    ramps = (c[:, 0, None, None] * xx + c[:, 1, None, None] * yy + c[:, 2, None, None]).unsqueeze(1)
    blurred = F.avg_pool2d(torch.randn(64, 1, 9, 9, generator=g), 7, stride=1)  # smooth noise, 3x3
    sobel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    assert filter_statistics(ramps)["neighbour_correlation"] > 0.7
    assert filter_statistics(blurred)["neighbour_correlation"] > 0.3
    assert filter_statistics(sobel)["neighbour_correlation"] > 0.6
    checkerboard = ((xx + yy) % 2 * 2 - 1).view(1, 1, 3, 3)
    assert filter_statistics(checkerboard)["neighbour_correlation"] == pytest.approx(-1.0)
    stats = filter_statistics(torch.full((4, 3, 3, 3), 2.0))  # 4 filters of 3 input channels: 12 kernels
    assert stats["filters"] == 12 and stats["rms"] == pytest.approx(2.0) and stats["neighbour_correlation"] == 0


def points(*pairs, full=55_000):
    return [{"fraction": f, "images": round(f * full), "val_accuracy": acc} for f, acc in pairs]


def test_learning_curve_verdict():
    load_version(V12)
    from debug_tools import learning_curve_verdict

    rising = learning_curve_verdict(points((1.0, 0.90), (0.1, 0.80), (0.5, 0.88), (0.25, 0.85)))  # any order
    assert rising["verdict"] == "more data would still help"
    assert rising["gain_per_doubling"] == pytest.approx(0.02) and (rising["from_images"], rising["to_images"]) == (
        27_500, 55_000)
    flat = learning_curve_verdict(points((0.5, 0.930), (1.0, 0.932)))
    assert flat["verdict"] == "has flattened" and flat["gain_per_doubling"] == pytest.approx(0.002)
    # two doublings from 25% to 100%: the gain is halved; log2(10) doublings from 10%
    assert learning_curve_verdict(points((0.25, 0.90), (1.0, 0.91)))["gain_per_doubling"] == pytest.approx(0.005)
    ten = learning_curve_verdict(points((0.1, 0.80), (1.0, 0.90)))
    assert ten["gain_per_doubling"] == pytest.approx(0.1 / math.log2(10))
    # no share at most half the full one: the nearest, scaled to one doubling
    close = learning_curve_verdict(points((0.75, 0.90), (1.0, 0.901)))  # +0.1 over 0.415 doublings: +0.24
    assert close["gain_per_doubling"] == pytest.approx(0.001 / math.log2(4 / 3), rel=1e-3)
    assert close["verdict"] == "has flattened" and learning_curve_verdict(
        points((0.75, 0.90), (1.0, 0.901)), min_gain=0.002)["verdict"] == "more data would still help"
    one = learning_curve_verdict(points((1.0, 0.9)))
    assert one["verdict"] == "one point is no curve" and math.isnan(one["gain_per_doubling"])


# ---------------------------------------------------------------------------
# --train-fraction and early stopping
# ---------------------------------------------------------------------------
def test_train_fraction_takes_nested_subsets_and_keeps_validation():
    train = load_version(V12)
    splits = {}
    for fraction in (0.1, 0.25, 0.5, 1.0):
        cfg = train.parse_args(["--train-fraction", str(fraction)])
        splits[fraction] = train.split_indices(60_000, 10_000, cfg)
    full_train, full_val, full_test = splits[1.0]
    assert len(full_train) == 55_000 and len(full_val) == 5_000 and len(full_test) == 10_000
    for fraction, (train_idx, val_idx, test_idx) in splits.items():
        assert len(train_idx) == round(fraction * 55_000)
        assert torch.equal(train_idx, full_train[:len(train_idx)])  # nested: each share holds the smaller ones
        assert torch.equal(val_idx, full_val) and torch.equal(test_idx, full_test)
    assert not set(full_train.tolist()) & set(full_val.tolist())
    quick = train.split_indices(60_000, 10_000, train.parse_args(["--quick", "--train-fraction", "0.5"]))
    assert [len(idx) for idx in quick] == [256, 256, 512]
    tiny = train.split_indices(60_000, 10_000, train.parse_args(["--quick", "--train-fraction", "0.0001"]))
    assert len(tiny[0]) == 1  # never empty


@pytest.fixture
def scripted_training(raw, tmp_path, monkeypatch):
    """train() of the version on 64 images and a tiny ResNet, with the validation accuracy of each
    epoch scripted (the loss stays the real one): early stopping decided on known numbers."""
    train = load_version(V12)
    x, y = train.to_tensor(raw[0][:64]), raw[1][:64]
    dataset = train.FashionMNISTTensors(x, y, CLASSES)

    def train_with(accuracies, *argv):
        cfg = train.parse_args(["--channels", "4", "--batch-size", "32", "--epochs", str(len(accuracies)), *argv])
        real_evaluate, scripted = train.evaluate, iter(accuracies)
        monkeypatch.setattr(train, "evaluate", lambda *args: (real_evaluate(*args)[0], next(scripted)))
        data = train.Data(dataset, dataset, dataset, train.TensorLoader(dataset, 32, shuffle=True,
                                                                        augment=train.Augmentation()),
                          train.TensorLoader(dataset, 64), train.TensorLoader(dataset, 64))
        torch.manual_seed(0)
        model = train.ResNet(channels=4)
        optimizer, scheduler = train.make_optimizer(model, cfg, total_steps=cfg.epochs * 2)
        out = tmp_path / f"patience{cfg.patience}"
        out.mkdir()
        run = train.Run(cfg, out, torch.device("cpu"), {})
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            train.train(run, data, model, optimizer, scheduler)
        return run.results, read_jsonl(out / "history.jsonl"), out, stdout.getvalue()

    return train, train_with


ACCURACIES = [0.30, 0.50, 0.50, 0.40, 0.90]  # best at epoch 2; 3 only equals it, 4 is worse, 5 would be best


def test_early_stopping_stops_after_patience_epochs_without_a_better_one(scripted_training):
    train, train_with = scripted_training
    results, history, out, stdout = train_with(ACCURACIES, "--patience", "2")
    assert results["stopped_early"] == 4 and results["epochs_run"] == 4
    assert results["best_epoch"] == 2 and results["best_val_accuracy"] == 0.50
    assert [h["val_accuracy"] for h in history] == ACCURACIES[:4]  # epoch 5 never ran
    checkpoint = torch.load(out / train.MODEL_FILE, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["val_accuracy"] == 0.50
    assert "Early stopping: no better validation accuracy for 2 epochs (best epoch 2)." in stdout


def test_without_patience_every_epoch_runs(scripted_training):
    train, train_with = scripted_training
    results, history, out, stdout = train_with(ACCURACIES)
    assert "stopped_early" not in results and results["epochs_run"] == 5
    assert results["best_epoch"] == 5 and results["best_val_accuracy"] == 0.90
    assert len(history) == 5 and "Early stopping" not in stdout


# ---------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------
def test_help_lists_every_flag_with_its_default(capsys):
    train = load_version(V12)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    lines = [line.split() for line in help_text.split("options:")[1].splitlines() if line.startswith("  -")]
    options = {token.rstrip(",") for line in lines for token in line if token.startswith("-")
               and not token.startswith("--no-")} - {"-h"}
    assert sorted(options) == sorted(["--help", *FLAGS])
    assert help_text.count("(default:") == len(FLAGS)
    assert "--no-bf16" in help_text


def test_flags_reach_the_config():
    train = load_version(V12)
    cfg = vars(train.parse_args(["--crop-padding", "3", "--flip-probability", "0.25", "--erase-probability", "0",
                                 "--weight-decay", "0.1", "--label-smoothing", "0.2", "--dropout", "0.3",
                                 "--patience", "4", "--train-fraction", "0.25", "--no-bf16"]))
    assert {key: cfg[key] for key in [*REGULARISERS, "train_fraction", "bf16"]} == {
        "crop_padding": 3, "flip_probability": 0.25, "erase_probability": 0.0, "weight_decay": 0.1,
        "label_smoothing": 0.2, "dropout": 0.3, "patience": 4, "train_fraction": 0.25, "bf16": False}
    model = train.ResNet(channels=4, dropout=cfg["dropout"])
    assert model.dropout.p == 0.3 and train.ResNet(channels=4).dropout.p == train.DROPOUT


@pytest.mark.parametrize("argv, message", [
    (["--erase-probability", "2"], "--erase-probability must be in [0, 1]"),
    (["--flip-probability", "-0.1"], "--flip-probability must be in [0, 1]"),
    (["--dropout", "1.5"], "--dropout must be in [0, 1]"),
    (["--train-fraction", "0"], "--train-fraction in (0, 1]"),
    (["--train-fraction", "1.5"], "--train-fraction in (0, 1]"),
    (["--crop-padding", "-1"], "--crop-padding and --patience must be >= 0"),
    (["--patience", "-1"], "--crop-padding and --patience must be >= 0"),
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
    (["--label-smoothing", "-0.1"], "--label-smoothing must be in [0, 1)"),
    (["--patience", "2.5"], "argument --patience: invalid int value"),
    (["--min-train-accuracy", "0.9"], "unrecognized arguments: --min-train-accuracy 0.9"),  # v11's capacity
    (["--expected-train-test-gap", "0.1"], "unrecognized arguments: --expected-train-test-gap 0.1"),
    (["--label-smothing", "0.1"], "unrecognized arguments: --label-smothing 0.1"),
])
def test_bad_flags_exit_2(argv, message, capsys):
    train = load_version(V12)
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------
# regularize.py
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def script(name):
    """regularize.py or learning_curve.py (and with them the version's train.py), imported fresh and
    forgotten after: conftest's list of version module names does not know them."""
    saved = list(sys.path)
    sys.modules.pop(name, None)
    try:
        yield load_version(V12, name)
    finally:
        sys.modules.pop(name, None)
        _forget_version_modules()
        sys.path[:] = saved


# What each arm adds to its parent, as train.py config keys.
ADDS = {"+crop-flip": {"crop_padding", "flip_probability"}, "+erasing": {"erase_probability"},
        "+weight-decay": {"weight_decay"}, "+smoothing": {"label_smoothing"}, "+dropout": {"dropout"},
        "+early-stop": {"patience"}}

def arm_config(rg, arm):
    return vars(rg.train.parse_args(rg.ARMS[arm][1]))


def test_arms_form_a_tree_in_order_from_v11_to_the_defaults():
    with script("regularize") as rg:
        arms = list(rg.ARMS)
        assert arms[0] == "v11" and rg.ARMS["v11"][0] is None
        for arm, (parent, flags, adds) in rg.ARMS.items():
            assert parent is None or arms.index(parent) < arms.index(arm), arm
            assert isinstance(adds, str) and adds
        assert set(ADDS) == set(arms) - {"v11"}
        # +smoothing is train.py's defaults, exactly
        assert rg.ARMS["+smoothing"][1] == [] and arm_config(rg, "+smoothing") == vars(rg.train.parse_args([]))
        # v11: every regulariser off (dropout and patience included, whatever train.py's defaults become)
        v11 = arm_config(rg, "v11")
        assert all(v11[key] == 0 for key in REGULARISERS), {key: v11[key] for key in REGULARISERS}


@pytest.mark.parametrize("arm", list(ADDS))
def test_each_arm_adds_exactly_its_regulariser_to_its_parent(arm):
    with script("regularize") as rg:
        parent = rg.ARMS[arm][0]
        mine, theirs = arm_config(rg, arm), arm_config(rg, parent)
        differing = {key for key in mine if mine[key] != theirs[key]}
        assert differing == ADDS[arm], f"{arm} vs {parent}: {sorted(differing)}"
        assert all(mine[key] > theirs[key] for key in differing)  # it switches a regulariser on or up


def test_t_quantiles_and_the_welch_interval():
    with script("regularize") as rg:
        assert rg.t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-4)
        assert rg.t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
        assert rg.t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-4)
        assert rg.t_quantile(0.975, 1e6) == pytest.approx(1.95996, abs=1e-4)
        assert rg.t_quantile(0.5, 3) == pytest.approx(0, abs=1e-6) and rg.t_cdf(-2.7764, 4) == pytest.approx(0.025,
                                                                                                             abs=1e-5)
        # 3 seeds each, the same spread: Welch's df = 4; standard error sqrt(2 x 1e-4 / 3)
        difference, low, high = rg.welch_interval([0.93, 0.94, 0.95], [0.90, 0.91, 0.92])
        half = 2.7764 * math.sqrt(2e-4 / 3)
        assert difference == pytest.approx(0.03) and (low, high) == pytest.approx((0.03 - half, 0.03 + half), abs=1e-5)
        # 2 seeds each: df = 2, a much wider interval for the same difference
        difference, low, high = rg.welch_interval([0.93, 0.95], [0.90, 0.92])
        half = 4.3027 * math.sqrt(2 * 2e-4 / 2)
        assert (low, high) == pytest.approx((0.03 - half, 0.03 + half), abs=1e-5) and low < 0 < high
        assert rg.welch_interval([0.9, 0.9], [0.8, 0.8]) == pytest.approx((0.1, 0.1, 0.1))  # no spread at all


def synthetic_results(arm, seed, val, test=None, epochs=40):
    return {"status": "completed", "seed": seed, "best_val_accuracy": val, "test_accuracy": val - 0.002
            if test is None else test, "checks": {"train_test_gap": {"value": 0.01 * seed}}, "epochs_run": epochs,
            "train_time_s": 100.0 + seed, "device": "cuda (NVIDIA H100)", "torch_version": "2.5.1"}


VAL = {"v11": [0.90, 0.91, 0.92], "+crop-flip": [0.93, 0.94, 0.95],  # +3 points, resolved
       "+erasing": [0.935, 0.945, 0.955],  # +0.5: kept, within the noise
       "+weight-decay": [0.905, 0.915, 0.925],  # -3: dropped, resolved
       "+smoothing": [0.93, 0.93, 0.93], "+early-stop": [0.931]}  # one seed: no interval


def test_summarise_and_markdown_on_synthetic_runs():
    with script("regularize") as rg:
        runs = {arm: [synthetic_results(arm, seed, val) for seed, val in enumerate(values)]
                for arm, values in VAL.items()}
        summary = rg.summarise(runs)
        rows = {row["arm"]: row for row in summary["rows"]}
        assert list(rows) == [arm for arm in rg.ARMS if arm in VAL]  # the ARMS order; +dropout has no runs
        assert "difference" not in rows["v11"] and "difference" not in rows["+early-stop"]
        crop = rows["+crop-flip"]
        assert crop["difference"] == pytest.approx(0.03) and crop["kept"] and crop["resolved"]
        assert crop["low"] == pytest.approx(0.03 - 2.7764 * math.sqrt(2e-4 / 3), abs=1e-5)
        assert rows["+erasing"]["kept"] and not rows["+erasing"]["resolved"]
        assert not rows["+weight-decay"]["kept"] and rows["+weight-decay"]["resolved"]
        assert crop["epochs"] == [40, 40, 40] and crop["gap"] == [0.0, 0.01, 0.02] and crop["seeds"] == [0, 1, 2]
        table = rg.markdown(summary)
        lines = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
        assert "| (baseline) |  |" in lines["v11"]
        assert "| +3.00 [+0.73, +5.27] vs v11 | kept |" in lines["+crop-flip"]
        assert lines["+erasing"].endswith("| kept (within the noise) |")
        assert lines["+weight-decay"].endswith("| dropped |")
        assert lines["+early-stop"].endswith("| - | needs 2+ seeds per side |")
        assert "| 93.00 ± 0.00 |" in lines["+smoothing"] and "| 94.00 ± 1.00 |" in lines["+crop-flip"]
        assert "Welch t over seeds, 95%. Devices: cuda (NVIDIA H100); torch 2.5.1." in table


def test_regularize_main_runs_every_arm_and_seed_with_train_py_flags(tmp_path, monkeypatch, fmnist_data):
    """train.main replaced by a recorder: every arm and seed gets its flags, which train.py itself
    accepts, into out/ARM/seedS; a completed run is not run again; the table is written."""
    out = tmp_path / "regularize"
    with script("regularize") as rg:
        calls = []

        def fake_main(argv):
            cfg = rg.train.parse_args(argv)  # exit 2 on a flag train.py does not know
            calls.append(cfg)
            results = synthetic_results("", cfg.seed, 0.9 + 0.01 * cfg.label_smoothing + 0.001 * cfg.seed)
            cfg.out.mkdir(parents=True)
            (cfg.out / "results.json").write_text(json.dumps(results))
            return results

        monkeypatch.setattr(rg.train, "main", fake_main)
        stdout = io.StringIO()
        argv = ["--quick", "--seeds", "0", "1", "--out", str(out), "--data-dir", str(fmnist_data[0]), "--device",
                "cpu", "--train-flags", "--no-input-independent-baseline --overfit-steps 5"]
        with contextlib.redirect_stdout(stdout):
            summary = rg.main(argv)
        assert len(calls) == 2 * len(rg.ARMS)
        assert [(c.out.parent.name, c.out.name) for c in calls[:2]] == [("v11", "seed0"), ("+crop-flip", "seed0")]
        for cfg in calls:
            assert cfg.quick and cfg.device == "cpu" and cfg.overwrite and not cfg.human_baseline
            assert not cfg.input_independent_baseline and cfg.overfit_steps == 5
            assert cfg.out == out / cfg.out.parent.name / f"seed{cfg.seed}"
        assert {row["arm"]: len(row["seeds"]) for row in summary["rows"]} == {arm: 2 for arm in rg.ARMS}
        assert (out / "regularize.md").read_text() in stdout.getvalue()
        assert json.loads((out / "regularize.json").read_text()) == json.loads(json.dumps(summary))
        # again: every run is complete, nothing is trained; --summarise reads the same folder
        calls.clear()
        with contextlib.redirect_stdout(io.StringIO()) as again:
            rg.main(argv)
        assert calls == [] and again.getvalue().count("done already") == 2 * len(rg.ARMS)
        with contextlib.redirect_stdout(io.StringIO()):
            assert rg.main(["--summarise", "--out", str(out)]) == json.loads(json.dumps(summary))


def test_regularize_reads_the_keys_a_real_run_records(run):
    """summarise on the module's real run: every key it reads is one train.py writes."""
    with script("regularize") as rg:
        summary = rg.summarise({"+smoothing": [run["results"], run["results"]]})
        row = summary["rows"][0]
        assert row["best_val"] == [run["results"]["best_val_accuracy"]] * 2 and row["epochs"] == [1, 1]
        assert "difference" not in row  # no parent runs: no interval


@pytest.mark.parametrize("argv", [["--arms", "+mixup"], ["--summarise"], ["--seeds", "one"]])
def test_regularize_bad_flags_exit_2(argv, capsys):
    with script("regularize") as rg, pytest.raises(SystemExit) as stop:
        rg.parse_args(argv)
    assert stop.value.code == 2 and "error:" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# learning_curve.py
# ---------------------------------------------------------------------------
def test_learning_curve_quick_with_two_shares(run, tmp_path, monkeypatch):
    """50% trained here for real (256 images); 100% is the module's run, put where learning_curve.py
    looks for it (as run.sh does with regularize.py's +smoothing arm), so it is not trained again.
    train.py's own plots are switched off in the 50% run (the module's run tests them; they cost
    half of a quick run); learning_curve.png is drawn."""
    out = tmp_path / "curve"
    seed = run["results"]["seed"]
    shutil.copytree(run["out"], out / "fraction1" / f"seed{seed}")
    stdout = io.StringIO()
    with script("learning_curve") as lc, contextlib.redirect_stdout(stdout):
        for module in (lc.train, sys.modules["debug_tools"]):
            for name in [n for n in vars(module) if n.startswith("plot_")]:
                monkeypatch.setattr(module, name, lambda *args, **kwargs: None)
        summary = lc.main(["--quick", "--fractions", "0.5", "1.0", "--seeds", str(seed), "--device", "cpu",
                           "--data-dir", str(run["data_dir"]), "--out", str(out), "--train-flags",
                           "--no-input-independent-baseline --no-overfit-test --no-batch-independence-test"])
        verdict = lc.learning_curve_verdict(summary["points"], lc.MIN_GAIN_PER_DOUBLING)
    assert "100% of the split, seed 42: done already" in stdout.getvalue()
    half = json.loads((out / "fraction0.5" / f"seed{seed}" / "results.json").read_text())
    assert half["status"] == "completed" and half["config"]["train_fraction"] == 0.5
    assert half["data_report"]["train_size"] == 256 and half["checks"]["augmentation"]["passed"]
    assert half["checks"]["train_test_gap"]["passed"]  # train.py's own threshold: the gap near chance is small
    points = summary["points"]
    assert [(p["fraction"], p["images"], p["seeds"]) for p in points] == [(0.5, 256, [seed]), (1.0, 512, [seed])]
    assert [p["val_accuracy"] for p in points] == [half["best_val_accuracy"], run["results"]["best_val_accuracy"]]
    last_epoch = read_jsonl(out / "fraction0.5" / f"seed{seed}" / "history.jsonl")[-1]
    assert points[0]["train_accuracy"] == last_epoch["train_accuracy"]
    assert summary["verdict"] == verdict and summary["verdict"]["gain_per_doubling"] == pytest.approx(
        points[1]["val_accuracy"] - points[0]["val_accuracy"])
    assert json.loads((out / "learning_curve.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["command"].startswith("python learning_curve.py --quick --fractions 0.5 1.0")
    assert_png_has_content(out / "learning_curve.png")
    assert f"Verdict: {verdict['verdict']}" in stdout.getvalue()


def test_learning_curve_summary_shows_the_spread_over_seeds(tmp_path):
    """Several seeds per share: the table prints mean ± sample std and the seed count, one seed prints
    no spread (a std of one number is not one). Over real records: runs/2026-12-05's +smoothing seeds
    0 and 1 (train.py's defaults, the curve's 100% point) and one 50% run of 2026-12-06."""
    import statistics

    from conftest import REPO_ROOT
    runs = REPO_ROOT / "runs"
    out = tmp_path / "curve"
    for seed in (0, 1):
        shutil.copytree(runs / "2026-12-05-h100-fashionmnist-v12" / "records" / f"+smoothing-s{seed}",
                        out / "fraction1" / f"seed{seed}")
    shutil.copytree(runs / "2026-12-06-h200-fashionmnist-v12" / "records" / "lc-0.5-s0", out / "fraction0.5" / "seed0")
    stdout = io.StringIO()
    with script("learning_curve") as lc, contextlib.redirect_stdout(stdout):
        summary = lc.main(["--summarise", "--out", str(out)])
    full = summary["points"][1]
    assert full["seeds"] == [0, 1] and len(full["val_accuracies"]) == 2
    spread = 100 * statistics.stdev(full["val_accuracies"])
    lines = {line.split()[0]: line for line in stdout.getvalue().splitlines() if line.strip().endswith(
        tuple("0123456789")) and "%" in line.split()[0]}
    assert f"{100 * full['val_accuracy']:.2f} ± {spread:.2f}" in lines["100%"] and lines["100%"].split()[2] == "2"
    assert "±" not in lines["50%"] and lines["50%"].split()[2] == "1"
    assert_png_has_content(out / "learning_curve.png")


@pytest.mark.parametrize("argv", [["--fractions", "0", "1"], ["--fractions", "0.5", "0.5"],
                                  ["--summarise"]])
def test_learning_curve_bad_flags_exit_2(argv, capsys):
    with script("learning_curve") as lc, pytest.raises(SystemExit) as stop:
        lc.parse_args(argv)
    assert stop.value.code == 2 and "error:" in capsys.readouterr().err
