"""cifar100/v2-diagnostics/scripts/analyze_diagnostics.py on hand-written traces.

Each issue gets its diagnosis (name, text and exit code), healthy runs get none. The traces are
small lists of dicts written here, shaped like main.py's records: train_diagnostics.jsonl,
val_diagnostics.jsonl and results.json in a run folder, or v1's history.jsonl.
"""
from __future__ import annotations

import json
import math
import os
import subprocess

import pytest

from conftest import REPO_ROOT, load_version

EPOCHS = 30
REAL_RUNS = REPO_ROOT / "runs" / "2026-11-23-h100"
FULL_RUNS = REPO_ROOT / "runs" / "2026-11-24-h100-cifar100"  # the whole data set, 2026-11-24
DIAGNOSTICS_MD = REPO_ROOT / "cifar100" / "v2-diagnostics" / "DIAGNOSTICS.md"


@pytest.fixture
def analyzer():
    return load_version("cifar100/v2-diagnostics", "scripts.analyze_diagnostics")


def trace(epochs=EPOCHS, lr=None, loss=None, acc=None, grad=None, update=None, num_batches=97, **extra):
    """A train_diagnostics.jsonl trace; every argument is a function of the epoch (1-based).
    `extra` adds keys (grad_update_norm=..., loss_scale=...), also as functions of the epoch."""
    lr = lr or (lambda e: 0.05 * (1 + math.cos(math.pi * (e - 1) / epochs)))  # cosine from 0.1
    loss = loss or (lambda e: 1.2 + 3.0 * math.exp(-e / 10))
    acc = acc or (lambda e: 70 - 62 * math.exp(-e / 10))
    grad = grad or (lambda e: 2.0 + 0.03 * e)
    update = update or (lambda e: 0.3 * lr(e) / 0.1 + 0.005)
    return [{"epoch": e, "loss": loss(e), "accuracy": acc(e), "learning_rate": lr(e), "mean_grad_norm": grad(e),
             "min_grad_norm": 0.5 * grad(e), "max_grad_norm": 2.5 * grad(e), "weight_update_norm": update(e),
             **{k: f(e) for k, f in extra.items()}, "num_batches": num_batches} for e in range(1, epochs + 1)]


def val_trace(train, acc_gap, loss_factor):
    """Validation records beside a training trace: accuracy train + acc_gap(e), loss train x loss_factor(e)."""
    return [{"epoch": r["epoch"], "loss": r["loss"] * loss_factor(r["epoch"]),
             "accuracy": r["accuracy"] + acc_gap(r["epoch"]), "learning_rate": r["learning_rate"],
             "num_batches": 3}
            for r in train]


def healthy_val(train):
    """Clean validation images: easier than augmented training images until overfitting sets in
    (v2's real run: +3 to +5 points and a 3-6% lower loss in epochs 2-10), with some scatter."""
    return val_trace(train, lambda e: 5.0 - 0.25 * e + 0.8 * (-1) ** e, lambda e: 0.94 + 0.003 * e)


def results(scheduler="cosine", amp=True, epochs=EPOCHS, **extra):
    """A results.json as main.py writes it (the keys the analyzer reads)."""
    config = {"num_epochs": epochs, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "label_smoothing": 0.1,
              "randaugment_magnitude": 11, "grad_clip": 1.0, "patience": 3, "batch_size": 512, "amp": amp}
    if scheduler is not None:
        config["scheduler"] = scheduler
    return {"config": config, "amp": {"autocast_float16": amp, "grad_scaler": amp},
            "data": {"num_classes": 100, "train": 13500, "val": 1500, "test": 5000}, "epochs_completed": epochs,
            **extra}


def plateau_lr(first_cut=5, every=4):
    """ReduceLROnPlateau-like: /10 at epoch first_cut, then every `every` epochs."""
    return lambda e: 0.1 * 0.1 ** max(0, (e - first_cut) // every + 1) if e >= first_cut else 0.1


def flat_after(start, first, level):
    """A loss that falls from `first` to `level` by epoch `start`, then stays (+/- 0.1%)."""
    return lambda e: first + (level - first) * min(e - 1, start - 1) / (start - 1) + 0.001 * level * (-1) ** e


def write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run_folder(tmp_path, train, val=None, results_json=None, name="run"):
    """A folder laid out as main.py's --out: diagnostics/*.jsonl and results.json."""
    folder = tmp_path / name
    write(folder / "diagnostics" / "train_diagnostics.jsonl", train)
    if val is not None:
        write(folder / "diagnostics" / "val_diagnostics.jsonl", val)
    if results_json is not None:
        (folder / "results.json").write_text(json.dumps(results_json))
    return folder


def cli(analyzer, capsys, *argv):
    """(exit code, printed text) of `python scripts/analyze_diagnostics.py ARGV`."""
    code = analyzer.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


TRACES = {
    "lr_reduced_too_early": (
        # cut at epoch 5 and again; the loss stays where it was (accuracy 25%: not "very low")
        trace(lr=plateau_lr(), loss=flat_after(4, 4.4, 3.1), acc=lambda e: 25.0),
        ["lr_reduced_too_early"]),
    "loss_plateaued_early": (
        # cosine LR, but the loss stops improving after epoch 5 at 12% accuracy
        trace(loss=flat_after(5, 4.5, 3.6), acc=lambda e: min(12.0, 3 + 2 * e)),
        ["loss_plateaued_early"]),
    "vanishing_gradients": (
        trace(grad=lambda e: 0.004),
        ["vanishing_gradients"]),
    "near_chance": (
        # loss at ln(100), accuracy 1%: the seed lists both symptoms, so both diagnoses fire
        trace(loss=lambda e: 4.605 + 0.001 * (-1) ** e, acc=lambda e: 1.0 + 0.1 * (e % 2)),
        ["near_chance", "loss_plateaued_early"]),
    "weight_updates_collapsed": (
        trace(update=lambda e: 2e-4),
        ["weight_updates_collapsed"]),
}


@pytest.mark.parametrize("name", list(TRACES))
def test_each_trace_gets_exactly_its_diagnosis(analyzer, tmp_path, capsys, name):
    records, expected = TRACES[name]
    assert analyzer.analyze(records).ids == expected
    code, out = cli(analyzer, capsys, run_folder(tmp_path, records))
    assert code == 1, out


# ---------------------------------------------------------------- negative controls

def test_healthy_cosine_run_has_no_diagnosis(analyzer, tmp_path, capsys):
    train = trace()
    folder = run_folder(tmp_path, train, healthy_val(train), results("cosine", test_accuracy=60.5,
                                                                     best_val_accuracy=61.2, best_epoch=29))
    code, out = cli(analyzer, capsys, folder)
    assert code == 0, out
    assert "No issue found" in out
    for section in ("Learning Rate Analysis", "Loss Analysis", "Accuracy Analysis", "Gradient Norm Analysis",
                    "Weight Update Analysis", "Train vs Validation", "Diagnosis & Recommendations"):
        assert f"== {section} ==" in out
    assert "schedule: cosine: smooth (cosine-like)" in out and "no plateau" in out
    assert "unit: percent" in out
    # the plot goes next to the file by default
    assert (folder / "diagnostics" / "train_diagnostics.png").stat().st_size > 10_000


def test_healthy_plateau_run_has_no_diagnosis(analyzer, tmp_path, capsys):
    """ReduceLROnPlateau cutting at epochs 20 and 30 of 40, the loss improving after each cut."""
    lr = lambda e: 0.1 if e < 20 else 0.01 if e < 30 else 0.001  # noqa: E731
    loss = lambda e: 1.0 + 3.5 * math.exp(-e / 12) - 0.15 * (e >= 20) - 0.05 * (e >= 30)  # noqa: E731
    train = trace(epochs=40, lr=lr, loss=loss, acc=lambda e: 75 - 67 * math.exp(-e / 12),
                  grad_update_norm=lambda e: 0.3 * lr(e), decay_update_norm=lambda e: 0.13 * lr(e),
                  loss_scale=lambda e: 65536.0)
    folder = run_folder(tmp_path, train, healthy_val(train), results("plateau", epochs=40))
    code, out = cli(analyzer, capsys, folder)
    assert code == 0, out
    assert "plateau-driven (ReduceLROnPlateau, patience 3)" in out
    assert "first drop at epoch 20: not early" in out and "learning is happening" in out


def test_real_runs_v2_healthy_and_v1_scaled_first(analyzer, tmp_path, capsys):
    """The recorded H100 runs of runs/2026-11-23-h100: v2 (cosine, fixed) has no issue, v1 has the
    clipping bug first. Both folders rebuilt as main.py's --out, with their results.json."""
    v2 = tmp_path / "v2"
    (v2 / "diagnostics").mkdir(parents=True)
    for name in ("train_diagnostics.jsonl", "val_diagnostics.jsonl"):
        (v2 / "diagnostics" / name).write_bytes((REAL_RUNS / "cifar100-v2_e30-diagnostics" / name).read_bytes())
    (v2 / "results.json").write_bytes((REAL_RUNS / "cifar100-v2_e30.results.json").read_bytes())
    code, out = cli(analyzer, capsys, v2)
    assert code == 0 and "No issue found" in out, out
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "history.jsonl").write_bytes((REAL_RUNS / "cifar100-v1_e20.history.jsonl").read_bytes())
    (v1 / "results.json").write_bytes((REAL_RUNS / "cifar100-v1_e20.results.json").read_bytes())
    code, out = cli(analyzer, capsys, v1 / "history.jsonl")
    assert code == 1
    assert out.index("[1] Gradient norms look scaled by the AMP loss scale") > 0
    assert "ReduceLROnPlateau cut first at epoch 6 with patience 3" in out


def copy_run(name, to):
    """A recorded run folder of FULL_RUNS copied, without its plots, into `to`."""
    for path in (FULL_RUNS / name).rglob("*.json*"):
        target = to / name / path.relative_to(FULL_RUNS / name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())


def code_block_after(markdown, heading):
    """The first ``` block after `heading` in `markdown`."""
    rest = markdown[markdown.index(heading):]
    start = rest.index("```\n") + 4
    return rest[start:rest.index("\n```", start)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_data_v2_runs_are_healthy(analyzer, tmp_path, capsys, seed):
    """The three 120-epoch full-data runs (76.1% test): no issue, and learning judged on the gradient's
    own share of the update (v2 records grad_update_norm), not on weight decay's."""
    copy_run(f"v2_full_seed{seed}", tmp_path)
    code, out = cli(analyzer, capsys, tmp_path / f"v2_full_seed{seed}")
    assert code == 0 and "No issue found" in out, out
    assert "the gradient moves the weights: learning is happening" in out
    assert "4997 images (results.json)" in out and "no sign of training augmentation" in out


def test_full_data_v1_run_clipping_bug_first_and_decay_not_taken_for_learning(analyzer, tmp_path, capsys):
    """v1 on the full data: the weights move 4.3% per epoch at chance level, all of it weight decay
    (87 steps x 0.1 x 5e-4 / 0.1). The analyzer must neither call that learning nor invent an early
    LR cut (ReduceLROnPlateau cut first at epoch 28)."""
    copy_run("v1_e30", tmp_path)
    code, out = cli(analyzer, capsys, tmp_path / "v1_e30" / "history.jsonl")
    assert code == 1
    assert "[1] Gradient norms look scaled by the AMP loss scale" in out
    assert "learning is happening" not in out
    assert "learning cannot be confirmed from the weight updates" in out
    assert "first drop at epoch 28: not early" in out and "Learning rate reduced too early" not in out


@pytest.mark.parametrize("with_test", [True, False], ids=["with_results_json", "records_only"])
def test_full_data_v1_with_only_clipping_fixed_shows_the_augmented_validation(analyzer, tmp_path, capsys,
                                                                               with_test):
    """v1 plus scaler.unscale_ (bug 2 kept), full data: best validation 56.75% against 64.56% test, and
    validation only +0.37 points over augmented training in its first epochs (clean: +6.18). Found with
    results.json (test vs validation) and from the records alone (a run still going)."""
    copy_run("v1_clipfix_e30", tmp_path)
    if not with_test:
        (tmp_path / "v1_clipfix_e30" / "results.json").unlink()
    code, out = cli(analyzer, capsys, tmp_path / "v1_clipfix_e30" / "history.jsonl")
    assert code == 1, out
    assert "[1] Validation looks augmented: it may share the training transforms" in out
    assert "in epochs 1-5, before overfitting, validation accuracy is +0.37 points against training" in out
    assert ("is 7.81 points above the best validation accuracy (56.75%)" in out) == with_test
    assert "Gradient norms look scaled" not in out and "noisier" not in out


def test_full_data_v2_at_a_constant_high_lr_is_no_false_alarm(analyzer, tmp_path, capsys):
    """The control: v2 with --scheduler plateau never cut its LR of 0.1 in 30 epochs. Its validation
    accuracy scatters 2.0x the binomial noise because consecutive models differ, which the old noise
    rule reported as a random evaluation; scatter is judged only once the LR is down."""
    copy_run("v2_plateau_e30", tmp_path)
    code, out = cli(analyzer, capsys, tmp_path / "v2_plateau_e30")
    assert code == 0 and "No issue found" in out, out
    assert "epoch-to-epoch scatter not judged: 0 epoch(s) after the LR's peak at <= 0.5x of it" in out
    assert "validation accuracy +6.18 points vs training" in out


def test_scatter_at_a_high_lr_is_not_judged_and_once_it_is_down_it_is(analyzer):
    """The same +-6-point swing on 1500 images: at a constant LR 0.1 it is not judged (the models
    themselves change); with the LR down to half its peak it is (a random evaluation)."""
    def swinging(train):
        val = healthy_val(train)
        for r in val:
            r["accuracy"] += 6.0 * (-1) ** r["epoch"]
        return val
    constant = trace(lr=lambda e: 0.1)
    result = analyzer.analyze(constant, val_records=swinging(constant), config=analyzer.RunConfig(n_val=1500))
    assert "val_noisy" not in result.ids
    decayed = trace()  # cosine: epochs past the middle are at <= half the peak
    result = analyzer.analyze(decayed, val_records=swinging(decayed), config=analyzer.RunConfig(n_val=1500))
    assert result.ids == ["val_noisy"]


@pytest.mark.parametrize("run, argument, heading", [
    ("v1_e30", "v1_e30/history.jsonl", "### v1-baseline, 30 epochs"),
    ("v1_clipfix_e30", "v1_clipfix_e30/history.jsonl", "### v1 with only the clipping bug fixed"),
    ("v2_full_seed0", "v2_full_seed0", "### v2-diagnostics, 120 epochs"),
])
def test_diagnostics_md_shows_what_the_analyzer_prints(analyzer, tmp_path, capsys, monkeypatch, run, argument,
                                                        heading):
    """DIAGNOSTICS.md's real-run blocks are the analyzer's output on the recorded runs, verbatim: a
    changed analyzer that is not re-run on them fails here."""
    copy_run(run, tmp_path)
    monkeypatch.chdir(tmp_path)
    _, out = cli(analyzer, capsys, argument)
    assert code_block_after(DIAGNOSTICS_MD.read_text(), heading).strip() == out.strip()
    assert out.strip() == (FULL_RUNS / f"{run}.analysis.txt").read_text().strip()


# ---------------------------------------------------------------- accuracy units

def v2_like(unit_scale):
    """A learning run (loss 4.5 -> 2.6, accuracy 3% -> 47%) with accuracy in percent (1) or fractions (0.01)."""
    return trace(loss=lambda e: 2.4 + 2.3 * math.exp(-e / 8),
                 acc=lambda e: unit_scale * (50 - 48 * math.exp(-e / 9)))


def test_fraction_units_are_recognised(analyzer, tmp_path, capsys):
    """0.466 means 46.6%: the old analyzer called this 'stuck near chance' (0.47% ... loss 2.559)."""
    train = v2_like(0.01)
    val = [{**r, "accuracy": r["accuracy"] / 100} for r in healthy_val(v2_like(1.0))]
    code, out = cli(analyzer, capsys, run_folder(tmp_path, train, val))
    assert code == 0, out
    assert "unit: fraction, shown in percent below (every value is <= 1, and read as percent (0.483%)" in out
    assert "Accuracy stuck near chance" not in out and "initial 7.05%, final 48.29%" in out


def test_percent_units_are_recognised(analyzer, tmp_path, capsys):
    code, out = cli(analyzer, capsys, run_folder(tmp_path, v2_like(1.0)))
    assert code == 0 and "unit: percent (values up to" in out, out
    # every value <= 1 and the loss at ln(100): percent at chance, not 90-100% as fractions
    chance = trace(loss=lambda e: 4.69 - 0.0005 * e, acc=lambda e: 0.95 + 0.04 * (-1) ** e)
    code, out = cli(analyzer, capsys, run_folder(tmp_path, chance, name="chance"))
    assert code == 1
    assert "unit: percent (every value is <= 1, and read as fraction" in out
    assert "[1] Accuracy stuck near chance" in out and "final accuracy 0.99% (percent in the file)" in out


@pytest.mark.parametrize("acc, loss, why, told", [
    # values <= 1 that fit the loss neither way: 0.0047 at a loss of 2.56 is 0.0047% or 0.47%;
    # told "fraction", 0.49% is near chance (exit 1)
    (lambda e: 0.004 + 0.00003 * e, lambda e: 2.4 + 2.3 * math.exp(-e / 8), "neither reading fits", 1),
    # 0.4 at a loss near ln(100): 0.4% (at chance) or 40% (an underconfident model) both fit;
    # told "fraction", 40% is no issue (exit 0)
    (lambda e: 0.4 + 0.01 * (-1) ** e, lambda e: 4.5 - 0.001 * e, "both readings fit", 0),
], ids=["neither", "both"])
def test_ambiguous_units_are_refused(analyzer, tmp_path, capsys, acc, loss, why, told):
    folder = run_folder(tmp_path, trace(acc=acc, loss=loss))
    code, out = cli(analyzer, capsys, folder)
    assert code == 2, out
    assert "NOT ANALYSED: the unit of the training accuracy (percent or fraction) cannot be decided" in out
    assert why in out and "--accuracy-unit percent" in out and "unit: UNDECIDED" in out
    assert "Accuracy stuck near chance" not in out and "No issue found:" not in out
    # told the unit, it analyses
    code, out = cli(analyzer, capsys, folder, "--accuracy-unit", "fraction")
    assert code == told and "NOT ANALYSED" not in out
    assert "unit: fraction, shown in percent below (given with --accuracy-unit)" in out


# ---------------------------------------------------------------- learning-rate schedules

def step_from_epoch_4(e):
    """Halved every 3 epochs from epoch 4: 0.1 x3, 0.05 x3, 0.025 x3, ..."""
    return 0.1 * 0.5 ** ((e - 4) // 3 + 1) if e >= 4 else 0.1


def stalled_after_4(e):
    """Improving until the cut at epoch 4 (a dip in it), then flat, with a short dip at epochs 11-12."""
    if e <= 4:
        return [4.4, 4.0, 3.7, 3.5][e - 1]
    return 3.49 - 0.002 * (e - 5) - (0.09 if e in (11, 12) else 0.0)


def test_step_decay_too_early_with_a_short_dip(analyzer, tmp_path, capsys):
    train = trace(lr=step_from_epoch_4, loss=stalled_after_4, acc=lambda e: 20 + 0.2 * e)
    # the whole-remainder rule is fooled by the dip: its best loss after the cut is > 1% below the one before
    before = stalled_after_4(3)
    assert min(stalled_after_4(e) for e in range(4, EPOCHS + 1)) < 0.99 * before
    code, out = cli(analyzer, capsys, run_folder(tmp_path, train))
    assert code == 1, out
    assert analyzer.analyze(train).ids == ["lr_reduced_too_early"]
    assert "schedule: step: piecewise constant, 9 drop(s) of about x0.5, every 3 epochs" in out
    assert "[1] Learning rate reduced too early" in out
    assert "LR cut at epoch 4 (0.1 -> 0.05), and in the 2 epochs right after it (epochs 5-6)" in out
    advice = out.split("== Diagnosis & Recommendations ==")[1]
    assert "The first step comes at epoch 4 (0.1 -> 0.05, x0.5): move it later" in advice
    assert "ReduceLROnPlateau" not in advice and "patience" not in advice


def test_halvings_logged_with_few_digits_are_steps(analyzer, tmp_path, capsys):
    """0.1, 0.05, 0.025 -> '0.03', 0.0125 -> '0.01', ...: 0.05 -> 0.03 keeps 60% and was missed before."""
    logged = {e: float(f"{step_from_epoch_4(e):.1g}") for e in range(1, EPOCHS + 1)}
    assert [logged[e] for e in (3, 4, 7, 10)] == [0.1, 0.05, 0.03, 0.01]
    train = trace(lr=logged.get, loss=stalled_after_4, acc=lambda e: 20 + 0.2 * e)
    code, out = cli(analyzer, capsys, run_folder(tmp_path, train))
    assert code == 1, out
    assert "schedule: step: piecewise constant, 9 drop(s)" in out and "logged with 1 significant digit" in out
    assert "epoch 4: 0.1 -> 0.05, epoch 7: 0.05 -> 0.03, epoch 10: 0.03 -> 0.01" in out
    assert "[1] Learning rate reduced too early" in out


def test_decay_factor_0_6_is_a_step_schedule(analyzer, tmp_path, capsys):
    """StepLR(step_size=5, gamma=0.6): the old analyzer called it 'smooth (cosine-like)'. The loss
    keeps improving after the early drop at epoch 6, so that drop is no issue."""
    train = trace(lr=lambda e: 0.1 * 0.6 ** ((e - 1) // 5))
    code, out = cli(analyzer, capsys, run_folder(tmp_path, train))
    assert code == 0, out
    assert "schedule: step: piecewise constant, 5 drop(s) of about x0.6, every 5 epochs" in out
    assert "drop at epoch 6 (early): loss in epochs 7-9" in out and "(still improving)" in out
    assert "smooth" not in out


@pytest.mark.parametrize("lr, kind, words", [
    (lambda e: 0.05 * (1 + math.cos(math.pi * (e - 1) / EPOCHS)), "smooth", "cosine-like"),
    (lambda e: 0.1 * 0.9 ** (e - 1), "smooth", "exponential, x0.9 per epoch"),
    (lambda e: 0.1 - 0.003 * (e - 1), "smooth", "linear"),
    (lambda e: 0.1 * min(e / 9, (EPOCHS - e + 1) / (EPOCHS - 8)), "one-cycle", "rises to 0.1 at epoch 9"),
    (lambda e: 0.05, "constant", "constant at 0.05"),
    (lambda e: 0.1 * 0.6 ** ((e - 1) // 5), "step", "drop(s) of about x0.6"),
], ids=["cosine", "exponential", "linear", "one-cycle", "constant", "step"])
def test_schedule_classification(analyzer, lr, kind, words):
    points = [(e, lr(e)) for e in range(1, EPOCHS + 1)]
    schedule = analyzer.classify_schedule(points, analyzer.RunConfig(), [])
    assert schedule.kind == kind and words in schedule.label, schedule.label


@pytest.mark.parametrize("config, expected, absent", [
    (results("plateau", patience=4) | {"config": {**results("plateau")["config"], "patience": 4}},
     ["ReduceLROnPlateau cut first at epoch 5 with patience 4 (results.json)", "--patience 8"],
     ["MultiStepLR"]),
    (results(None),  # v1: --patience but no --scheduler
     ["v1's ReduceLROnPlateau", "with patience 3 (results.json)", "--patience 6"], ["MultiStepLR"]),
    (None,  # no results.json: the trace shows a step schedule, nothing says it was ReduceLROnPlateau
     ["The first step comes at epoch 5 (0.1 -> 0.01, x0.1): move it later",
      "MultiStepLR(optimizer, milestones=[15, 22]"],
     ["patience"]),
], ids=["plateau", "v1_config", "no_results_json"])
def test_recommendation_names_the_schedule_that_ran(analyzer, tmp_path, capsys, config, expected, absent):
    train = TRACES["lr_reduced_too_early"][0]
    code, out = cli(analyzer, capsys, run_folder(tmp_path, train, results_json=config))
    assert code == 1 and "[1] Learning rate reduced too early" in out, out
    advice = out.split("== Diagnosis & Recommendations ==")[1]
    for words in expected:
        assert words in out
    for words in absent:
        assert words not in advice


def test_cosine_plateau_does_not_recommend_cosine(analyzer, tmp_path, capsys):
    records, _ = TRACES["loss_plateaued_early"]
    code, out = cli(analyzer, capsys, run_folder(tmp_path, records, results_json=results("cosine")))
    assert code == 1 and "[1] Loss plateaued early" in out
    advice = out.split("== Diagnosis & Recommendations ==")[1]
    assert "The schedule (smooth) has no early cut" in advice and "--scheduler cosine" not in advice
    assert "label smoothing 0.1 -> 0.05 or 0.0" in advice  # the recorded value


def test_cosine_quick_run_is_not_an_early_cut(analyzer):
    """Two epochs of cosine halve the LR at epoch 2: a planned decay, not a cut."""
    assert analyzer.analyze(trace(epochs=2, lr=lambda e: 0.1 / e)).ids == []


def test_early_cut_is_judged_on_the_epochs_after_it(analyzer):
    """A 15-epoch run cut at epoch 6 (ReduceLROnPlateau, patience 3, at the earliest) is judged;
    a cut with fewer than 2 epochs after it is not, whatever the loss does."""
    stalled = dict(loss=flat_after(4, 4.4, 3.1), acc=lambda e: 25.0)
    judged = analyzer.analyze(trace(epochs=15, lr=plateau_lr(first_cut=6), **stalled))
    assert judged.ids == ["lr_reduced_too_early"]
    report = analyzer.analyze(trace(epochs=7, lr=plateau_lr(first_cut=6), **stalled))
    assert report.ids == [] and "drop at epoch 6 (early): not judged" in report.text()


# ---------------------------------------------------------------- AMP and gradients

def test_exploding_gradients_without_amp_are_not_the_amp_bug(analyzer, tmp_path, capsys):
    climbing = trace(grad=lambda e: 2.0 * 1.3 ** e, loss_scale=lambda e: None)
    code, out = cli(analyzer, capsys, run_folder(tmp_path, climbing, results_json=results(amp=False)))
    assert code == 1, out
    assert analyzer.analyze(climbing).ids == ["exploding_gradients"]
    assert "[1] Exploding gradients" in out and "AMP was off" in out and "AMP loss scale" not in out
    # huge, flat norms in a run without AMP: no loss scale to blame either
    flat_huge = trace(grad=lambda e: 1.5e5)
    code, out = cli(analyzer, capsys, run_folder(tmp_path, flat_huge, results_json=results(amp=False),
                                                 name="flat"))
    assert code == 1 and "[1] Exploding gradients" in out and "clipping before unscale_" not in out


def amp_bug(scale):
    """v1's clipping bug as the new records show it: norms = loss scale x ~1.8, the gradient part of
    the update ~0, weight decay still moving the weights by 1.2% per epoch, the loss at chance."""
    return trace(lr=lambda e: 0.1, grad=lambda e: 1.8 * scale(e), loss=lambda e: 4.69 - 0.0002 * e,
                 acc=lambda e: 1.0 + 0.05 * (-1) ** e,
                 update=lambda e: 0.012, grad_update_norm=lambda e: 2e-6, decay_update_norm=lambda e: 0.012,
                 loss_scale=scale, num_batches=26)


def test_amp_clipping_bug_with_a_dropped_loss_scale(analyzer, tmp_path, capsys):
    """The scale fell from 65536 to 256: norms of ~460 fall below the old 1000 threshold and used to
    read as exploding gradients."""
    records = amp_bug(lambda e: max(256.0, 65536.0 / 4 ** (e - 1)))
    code, out = cli(analyzer, capsys, run_folder(tmp_path, records, results_json=results("plateau")))
    assert code == 1, out
    ids = analyzer.analyze(records, config=analyzer.RunConfig(amp=True)).ids
    assert ids[0] == "amp_scaled_gradients" and "exploding_gradients" not in ids
    assert "[1] Gradient norms look scaled by the AMP loss scale: clipping before unscale_" in out
    assert "divided by the recorded loss scale it is 1.8" in out
    assert "the AMP loss scale fell to 256" in out


def test_real_explosion_under_amp_is_not_the_clipping_bug(analyzer, tmp_path, capsys):
    """Same norms and scale, but the gradient part of the update is healthy: clipping saw true norms."""
    records = trace(grad=lambda e: 460.0 * 1.1 ** e, loss_scale=lambda e: 256.0,
                    grad_update_norm=lambda e: 0.02,
                    decay_update_norm=lambda e: 0.012)
    code, out = cli(analyzer, capsys, run_folder(tmp_path, records, results_json=results()))
    assert code == 1 and "[1] Exploding gradients" in out, out
    assert "clipping before unscale_" not in out and "clipping worked on true norms" in out


def test_amp_unknown_huge_norms_say_so(analyzer, tmp_path, capsys):
    """No results.json, no loss scale: the analyzer does not pretend to know whether AMP was on."""
    code, out = cli(analyzer, capsys, run_folder(tmp_path, trace(grad=lambda e: 1.5e5)))
    assert code == 1
    assert "the AMP clipping bug if AMP was on, exploding gradients if not" in out and "--results" in out


def test_one_spike_in_epoch_1_is_a_note_not_a_diagnosis(analyzer, tmp_path, capsys):
    records = trace()
    records[0]["max_grad_norm"] = 250.0
    code, out = cli(analyzer, capsys, run_folder(tmp_path, records, results_json=results()))
    assert code == 0, out
    assert "No issue found" in out and "note: gradient spike: the largest step norm was 250" in out
    # the same spike in three epochs is a pattern
    for r in records[4:6]:
        r["max_grad_norm"] = 180.0
    code, out = cli(analyzer, capsys, run_folder(tmp_path, records, results_json=results(), name="three"))
    assert code == 1 and "[1] Exploding gradients" in out and "3 epoch(s) (1, 5, 6)" in out


def test_diverged_epoch_with_null_values(analyzer):
    records = trace(epochs=4, grad=lambda e: 3.0)
    records[-1].update(loss=None, mean_grad_norm=None, min_grad_norm=None, max_grad_norm=None)
    report = analyzer.analyze(records)
    assert "exploding_gradients" in report.ids
    assert "1 epoch(s) have a null/NaN loss" in report.text()
    assert "the loss became NaN/inf in epoch(s) 4" in report.text()


# ---------------------------------------------------------------- weight updates

def test_zero_gradient_with_decay_only_updates_is_not_learning(analyzer, tmp_path, capsys):
    """lr 0.1, wd 5e-4, momentum 0.9: decay alone moves the weights 1.3% per epoch (26 steps)."""
    records = trace(grad=lambda e: 0.0, update=lambda e: 0.013, grad_update_norm=lambda e: 0.0,
                    decay_update_norm=lambda e: 0.013, loss=lambda e: 4.61, acc=lambda e: 1.0, lr=lambda e: 0.1,
                    num_batches=26)
    code, out = cli(analyzer, capsys, run_folder(tmp_path, records, results_json=results()))
    assert code == 1
    assert "weight_updates_collapsed" in analyzer.analyze(records).ids
    assert "Weight updates have collapsed: learning has stalled" in out
    assert "the gradient barely moves the weights" in out and "comes from weight decay" in out
    assert "learning is happening" not in out
    # without grad_update_norm the total (all decay) is not taken as proof of learning either
    for r in records:
        del r["grad_update_norm"], r["decay_update_norm"]
    code, out = cli(analyzer, capsys, run_folder(tmp_path, records, results_json=results(), name="total_only"))
    assert "judged on the total change" in out and "cannot show whether the gradient moves the weights" in out
    assert "learning is happening" not in out


# ---------------------------------------------------------------- train vs validation

def test_validation_through_training_augmentation_from_the_records(analyzer, tmp_path, capsys):
    """v1's second bug as a CPU run of v2 with the bug planted showed it (20 classes): validation
    accuracy at or below the training accuracy from the start, the validation loss not below the
    training loss, where clean validation images would score above both."""
    train = trace()
    val = val_trace(train, lambda e: -0.5 - 0.2 * e + 0.8 * (-1) ** e, lambda e: 1.02 + 0.003 * e)
    code, out = cli(analyzer, capsys, run_folder(tmp_path, train, val, results()))
    assert code == 1, out
    assert analyzer.analyze(train, val_records=val).ids == ["val_uses_train_transforms"]
    assert "[1] Validation looks augmented: it may share the training transforms" in out
    assert "check_transforms.sh" in out


# Measured: v2's code on a CPU (20 classes of the CIFAR-100 copy, 300 training images each, width 16,
# batch 128, cosine, 20 epochs, seed 0, --no-amp), once as it is and once with v1's validation bug
# planted (validation drawn through the training transform). Per epoch: train loss, train accuracy,
# validation loss, validation accuracy; then test and best validation accuracy (600 / 2000 images).
CPU_RUN_HEALTHY = ([
    (2.9054, 11.48, 2.8282, 20.50), (2.7081, 19.10, 2.5805, 25.00), (2.6102, 23.08, 2.7318, 20.67),
    (2.5259, 26.60, 2.4049, 30.67), (2.4715, 27.79, 2.3231, 34.67), (2.3834, 31.49, 2.2927, 37.00),
    (2.3395, 32.91, 2.1863, 41.50), (2.2839, 34.51, 2.1416, 41.00), (2.2141, 37.13, 2.0452, 45.50),
    (2.1691, 39.38, 2.0836, 43.67), (2.1177, 41.29, 2.0170, 45.67), (2.0767, 42.69, 1.9820, 45.83),
    (2.0280, 45.09, 1.9020, 50.17), (1.9924, 45.55, 1.8777, 51.50), (1.9422, 47.45, 1.8735, 51.00),
    (1.9290, 48.88, 1.8357, 51.83), (1.9024, 49.70, 1.7946, 54.50), (1.8723, 50.87, 1.7750, 57.50),
    (1.8594, 51.12, 1.7716, 57.17), (1.8548, 51.15, 1.7651, 56.50)], 56.45, 57.50)
CPU_RUN_VAL_BUG = ([
    (2.9054, 11.48, 2.9006, 15.83), (2.7328, 17.54, 2.7506, 14.67), (2.6068, 23.14, 2.6929, 20.33),
    (2.5209, 26.41, 2.6254, 25.67), (2.4647, 27.98, 2.4815, 28.00), (2.3961, 30.86, 2.4624, 30.67),
    (2.3328, 32.76, 2.3968, 32.50), (2.2789, 34.64, 2.3785, 32.50), (2.2355, 37.09, 2.2906, 34.00),
    (2.1820, 38.56, 2.2888, 34.00), (2.1234, 41.16, 2.1995, 38.17), (2.0601, 42.80, 2.3630, 33.17),
    (2.0225, 44.53, 2.1651, 40.33), (2.0054, 45.46, 2.1208, 41.17), (1.9579, 47.23, 2.0710, 43.17),
    (1.9131, 49.27, 2.1174, 43.17), (1.8909, 49.27, 2.0465, 46.00), (1.8814, 51.13, 1.9915, 46.83),
    (1.8515, 51.79, 2.0616, 42.67), (1.8477, 51.80, 2.0656, 43.83)], 55.65, 46.83)


def cpu_run(tmp_path, measured, with_test, name):
    rows, test_accuracy, best_val = measured
    train = trace(epochs=len(rows), loss=lambda e: rows[e - 1][0], acc=lambda e: rows[e - 1][1], num_batches=42)
    val = [{"epoch": e, "loss": row[2], "accuracy": row[3], "num_batches": 5} for e, row in enumerate(rows, 1)]
    config = results(epochs=len(rows), amp=False)
    config["data"].update(num_classes=20, val=600, test=2000)
    if with_test:
        config.update(test_accuracy=test_accuracy, best_val_accuracy=best_val)
    return run_folder(tmp_path, train, val, config, name=name)


@pytest.mark.parametrize("with_test", [True, False], ids=["with_test_accuracy", "records_only"])
def test_measured_runs_with_and_without_the_validation_bug(analyzer, tmp_path, capsys, with_test):
    """Healthy: validation 6.3 points above training in its first epochs above 5x chance, and the
    test accuracy where validation is. With the bug: 0.7 points below, and 8.8 points under the test
    accuracy. Both signals find it; so do the records alone (a run still going)."""
    code, out = cli(analyzer, capsys, cpu_run(tmp_path, CPU_RUN_HEALTHY, with_test, "healthy"))
    assert code == 0 and "No issue found" in out, out
    assert "validation accuracy +6.31 points vs training, validation loss 5.5% below it" in out
    code, out = cli(analyzer, capsys, cpu_run(tmp_path, CPU_RUN_VAL_BUG, with_test, "bug"))
    assert code == 1, out
    assert "[1] Validation looks augmented: it may share the training transforms" in out
    assert "in epochs 4-8, before overfitting, validation accuracy is -0.66 points against training" in out
    assert ("8.82 points above the best validation accuracy" in out) == with_test
    # augmenting validation adds about binomial noise (1.2x in the epochs at <= half the peak LR, the
    # healthy run 0.5x): below the noise rule's 2x, which stays quiet
    assert "scatter of the validation accuracy 2.32 points vs 2.01 binomial for 600 images (1.2x)" in out
    assert "noisier" not in out


def test_validation_noisier_than_its_size_explains(analyzer, tmp_path, capsys):
    """+-6 points from epoch to epoch on 1500 images (binomial: ~1.2): evaluation itself is random."""
    train = trace()
    val = healthy_val(train)
    for r in val:
        r["accuracy"] += 6.0 * (-1) ** r["epoch"]
    code, out = cli(analyzer, capsys, run_folder(tmp_path, train, val, results()))
    assert code == 1, out
    assert analyzer.analyze(train, val_records=val, config=analyzer.RunConfig(n_val=1500)).ids == ["val_noisy"]
    assert "[1] Validation accuracy is noisier than the validation set size explains" in out
    assert "model.eval()" in out


def test_validation_through_training_augmentation_against_the_test_set(analyzer, tmp_path, capsys):
    """The test split always uses the evaluation transform: 8.8 points above the best validation
    accuracy on 600 / 2000 images (the CPU run with the bug planted) is 3.8 standard errors."""
    train = trace()
    config = results(test_accuracy=55.65, best_val_accuracy=46.83, test_images=2000)
    config["data"].update(val=600, test=2000)
    code, out = cli(analyzer, capsys, run_folder(tmp_path, train, healthy_val(train), config))
    assert code == 1, out
    assert "test accuracy (55.65%, evaluation transform) is 8.82 points above the best validation" in out


# ---------------------------------------------------------------- input handling

def test_history_jsonl_of_v1_holds_train_and_validation(analyzer, tmp_path, capsys):
    train = trace()
    history = [{**r, "val_loss": v["loss"], "val_accuracy": v["accuracy"], "epoch_time_s": 1.0}
               for r, v in zip(train, healthy_val(train))]
    write(tmp_path / "history.jsonl", history)
    code, out = cli(analyzer, capsys, tmp_path)
    assert code == 0, out
    assert "validation from" in out and "ignoring keys this analyzer does not use: epoch_time_s" in out
    assert "val_accuracy" not in out.split("ignoring keys")[1].splitlines()[0]


def test_issue_exits_1_with_recommendations_and_plot(analyzer, tmp_path, capsys):
    path = write(tmp_path / "t.jsonl", TRACES["lr_reduced_too_early"][0])
    code, out = cli(analyzer, capsys, "--file", path, "--plot", tmp_path / "p.png")
    assert code == 1
    assert "Learning rate reduced too early" in out and "epoch 5: 0.1 -> 0.01" in out
    assert (tmp_path / "p.png").exists()


def test_one_line_file(analyzer, tmp_path, capsys):
    code, out = cli(analyzer, capsys, "--file", write(tmp_path / "one.jsonl", trace()[:1]))
    assert code == 0
    assert "one epoch only" in out and "plateau detection needs more than 5 epochs (1 so far)" in out
    # a single epoch is enough to see scaled gradients
    one_bad = amp_bug(lambda e: 65536.0)[:1]
    code, out = cli(analyzer, capsys, run_folder(tmp_path, one_bad, results_json=results(epochs=1)))
    assert code == 1 and "clipping before unscale_" in out


def test_unknown_missing_and_broken_lines(analyzer, tmp_path, capsys):
    path = tmp_path / "odd.jsonl"
    lines = [json.dumps({"epoch": e, "loss": 4.0 - 0.2 * e, "accuracy": 10.0 * e, "gpu_temp": 70})
             for e in range(1, 4)]
    path.write_text("\n".join([*lines, '{"epoch": 4, "loss": 3.']) + "\n")  # a run killed mid-write
    code, out = cli(analyzer, capsys, "--file", path)
    assert code == 0
    assert "ignoring keys this analyzer does not use: gpu_temp" in out
    assert "line 4 is not valid JSON" in out
    assert "no learning_rate recorded" in out and "no gradient norms recorded" in out
    assert "no weight_update_norm recorded" in out


def test_results_json_of_another_run_is_not_used(analyzer, tmp_path, capsys):
    code, out = cli(analyzer, capsys, run_folder(tmp_path, trace(), results_json=results(epochs=120)))
    assert code == 0 and "reports 120 epochs but train_diagnostics.jsonl has 30" in out


def test_validation_file_of_a_real_run_is_read(analyzer, tmp_path, capsys):
    val = [{"epoch": e, "loss": 4.0 - 0.1 * e, "accuracy": 5.0 * e, "learning_rate": 0.1, "num_batches": 10}
           for e in range(1, 4)]
    code, out = cli(analyzer, capsys, "--file", write(tmp_path / "val_diagnostics.jsonl", val))
    assert code == 0 and "no gradient norms recorded (a validation file has none)" in out


def test_unreadable_input_exits_2(analyzer, tmp_path, capsys):
    assert cli(analyzer, capsys, "--file", tmp_path / "missing.jsonl")[0] == 2
    (tmp_path / "empty.jsonl").write_text("")
    code, out = cli(analyzer, capsys, "--file", tmp_path / "empty.jsonl")
    assert code == 2 and "no epoch records" in out
    code, out = cli(analyzer, capsys, tmp_path / "nothing_here")
    assert code == 2 and "cannot read the run" in out


def test_script_runs_from_the_command_line_and_bash_wrapper(tmp_path):
    """`python scripts/analyze_diagnostics.py RUN` as learners run it, and the bash wrapper with
    $DIAGNOSTICS_DIR."""
    version = REPO_ROOT / "cifar100" / "v2-diagnostics"
    folder = run_folder(tmp_path, TRACES["vanishing_gradients"][0])
    env = {**os.environ, "MPLBACKEND": "Agg"}
    done = subprocess.run(["python", "scripts/analyze_diagnostics.py", str(folder)], cwd=version, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "[1] Vanishing gradients" in done.stdout, done.stderr
    script = version / "scripts" / "bash" / "analyze_training.sh"
    done = subprocess.run(["bash", str(script)], env={**env, "DIAGNOSTICS_DIR": str(folder / "diagnostics")},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Vanishing gradients" in done.stdout, done.stderr


def test_v3_carries_the_same_analyzer():
    v2, v3 = (REPO_ROOT / "cifar100" / v / "scripts" / "analyze_diagnostics.py"
              for v in ("v2-diagnostics", "v3-ddp"))
    assert v2.read_bytes() == v3.read_bytes()
