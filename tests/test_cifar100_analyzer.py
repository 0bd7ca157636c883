"""cifar100/v2-diagnostics/scripts/analyze_diagnostics.py on hand-written traces:
each common issue of seed 004 gets its diagnosis, a healthy run gets none."""
from __future__ import annotations

import json
import math
import os
import subprocess

import pytest

from conftest import REPO_ROOT, load_version

EPOCHS = 30


@pytest.fixture
def analyzer():
    return load_version("cifar100/v2-diagnostics", "scripts.analyze_diagnostics")


def trace(epochs=EPOCHS, lr=None, loss=None, acc=None, grad=None, update=None, num_batches=97):
    """A train_diagnostics.jsonl trace; every argument is a function of the epoch (1-based)."""
    lr = lr or (lambda e: 0.05 * (1 + math.cos(math.pi * (e - 1) / epochs)))  # cosine from 0.1
    loss = loss or (lambda e: 1.2 + 3.0 * math.exp(-e / 10))
    acc = acc or (lambda e: 70 - 62 * math.exp(-e / 10))
    grad = grad or (lambda e: 2.0 + 0.03 * e)
    update = update or (lambda e: 0.3 * lr(e) / 0.1 + 0.005)
    return [{"epoch": e, "loss": loss(e), "accuracy": acc(e), "learning_rate": lr(e), "mean_grad_norm": grad(e),
             "min_grad_norm": 0.5 * grad(e), "max_grad_norm": 2.5 * grad(e), "weight_update_norm": update(e),
             "num_batches": num_batches} for e in range(1, epochs + 1)]


def plateau_lr(first_cut=5, every=4):
    """ReduceLROnPlateau-like: /10 at epoch first_cut, then every `every` epochs."""
    return lambda e: 0.1 * 0.1 ** max(0, (e - first_cut) // every + 1) if e >= first_cut else 0.1


def flat_after(start, first, level):
    """A loss that falls from `first` to `level` by epoch `start`, then stays (+/- 0.1%)."""
    return lambda e: first + (level - first) * min(e - 1, start - 1) / (start - 1) + 0.001 * level * (-1) ** e


TRACES = {
    "healthy": (trace(), []),
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
    "exploding_gradients": (
        trace(grad=lambda e: 2.0 * 1.3 ** e),
        ["exploding_gradients"]),
    "weight_updates_collapsed": (
        trace(update=lambda e: 2e-4),
        ["weight_updates_collapsed"]),
    "amp_scaled_gradients": (
        # v1's picture: norms ~65536x too large, tiny updates, LR cut early, loss at chance
        trace(lr=plateau_lr(), grad=lambda e: 1.5e5, update=lambda e: 5e-4, loss=lambda e: 4.61 - 0.0001 * e,
              acc=lambda e: 1.2),
        ["amp_scaled_gradients", "weight_updates_collapsed", "near_chance", "lr_reduced_too_early", "loss_plateaued_early"]),
}


@pytest.mark.parametrize("name", list(TRACES))
def test_each_trace_gets_exactly_its_diagnosis(analyzer, name):
    records, expected = TRACES[name]
    report = analyzer.analyze(records)
    assert report.ids == expected, report.text()


def test_healthy_trace_says_so_and_exits_0(analyzer, tmp_path, capsys):
    path = write(tmp_path / "train_diagnostics.jsonl", TRACES["healthy"][0])
    assert analyzer.main(["--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "No issue found" in out
    for section in ("Learning Rate Analysis", "Loss Analysis", "Accuracy Analysis", "Gradient Norm Analysis",
                    "Weight Update Analysis", "Diagnosis & Recommendations"):
        assert f"== {section} ==" in out
    assert "no plateau" in out and "first reduction at epoch 29: not early" in out  # cosine's last two epochs
    assert (tmp_path / "train_diagnostics.png").stat().st_size > 10_000  # default: next to the file


def test_issue_exits_1_with_recommendations(analyzer, tmp_path, capsys):
    path = write(tmp_path / "t.jsonl", TRACES["lr_reduced_too_early"][0])
    assert analyzer.main(["--file", str(path), "--plot", str(tmp_path / "p.png")]) == 1
    out = capsys.readouterr().out
    assert "Learning rate reduced too early" in out and "--patience 5" in out and "epoch 5: 0.1 -> 0.01" in out
    assert (tmp_path / "p.png").exists()


def test_cosine_quick_run_is_not_an_early_cut(analyzer):
    """Two epochs of cosine halve the LR at epoch 2: a planned decay, not ReduceLROnPlateau's cut."""
    assert analyzer.analyze(trace(epochs=2, lr=lambda e: 0.1 / e)).ids == []


def test_early_cut_is_judged_on_the_epochs_after_it(analyzer):
    """A 15-epoch run cut at epoch 6 (ReduceLROnPlateau, patience 3, at the earliest) is judged;
    a cut with fewer than 3 epochs after it is not, whatever the loss does."""
    stalled = dict(loss=flat_after(4, 4.4, 3.1), acc=lambda e: 25.0)
    assert analyzer.analyze(trace(epochs=15, lr=plateau_lr(first_cut=6), **stalled)).ids == ["lr_reduced_too_early"]
    assert analyzer.analyze(trace(epochs=7, lr=plateau_lr(first_cut=6), **stalled)).ids == []


def test_one_line_file(analyzer, tmp_path, capsys):
    path = write(tmp_path / "one.jsonl", TRACES["healthy"][0][:1])
    assert analyzer.main(["--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "one epoch only" in out and "plateau detection needs more than 5 epochs (1 so far)" in out
    # a single epoch is enough to see scaled gradients
    path = write(tmp_path / "one_bad.jsonl", TRACES["amp_scaled_gradients"][0][:1])
    assert analyzer.main(["--file", str(path)]) == 1


def test_unknown_missing_and_broken_lines(analyzer, tmp_path, capsys):
    path = tmp_path / "odd.jsonl"
    lines = [json.dumps({"epoch": e, "loss": 4.0 - 0.2 * e, "accuracy": 10.0 * e, "gpu_temp": 70}) for e in range(1, 4)]
    path.write_text("\n".join([*lines, '{"epoch": 4, "loss": 3.'] ) + "\n")  # a run killed mid-write
    assert analyzer.main(["--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ignoring keys this analyzer does not use: gpu_temp" in out
    assert "line 4 is not valid JSON" in out
    assert "no learning_rate recorded" in out and "no gradient norms recorded" in out and "no weight_update_norm recorded" in out


def test_validation_file_of_a_real_run_is_read(analyzer, tmp_path, capsys):
    val = [{"epoch": e, "loss": 4.0 - 0.1 * e, "accuracy": 5.0 * e, "learning_rate": 0.1, "num_batches": 10} for e in range(1, 4)]
    assert analyzer.main(["--file", str(write(tmp_path / "val_diagnostics.jsonl", val))]) == 0
    assert "no gradient norms recorded (a validation file has none)" in capsys.readouterr().out


def test_diverged_epoch_with_null_values(analyzer):
    records = trace(epochs=4, grad=lambda e: 3.0)
    records[-1].update(loss=None, mean_grad_norm=None, min_grad_norm=None, max_grad_norm=None)
    report = analyzer.analyze(records)
    assert "exploding_gradients" in report.ids
    assert "1 epoch(s) have a null/NaN loss" in report.text()


def test_unreadable_input_exits_2(analyzer, tmp_path, capsys):
    assert analyzer.main(["--file", str(tmp_path / "missing.jsonl")]) == 2
    (tmp_path / "empty.jsonl").write_text("")
    assert analyzer.main(["--file", str(tmp_path / "empty.jsonl")]) == 2
    assert "no epoch records" in capsys.readouterr().err


def test_bash_wrapper_reads_diagnostics_dir(tmp_path):
    write(tmp_path / "train_diagnostics.jsonl", TRACES["vanishing_gradients"][0])
    script = REPO_ROOT / "cifar100" / "v2-diagnostics" / "scripts" / "bash" / "analyze_training.sh"
    env = {**os.environ, "DIAGNOSTICS_DIR": str(tmp_path), "MPLBACKEND": "Agg"}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Vanishing gradients" in done.stdout, done.stderr


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
