"""fashionmnist/v8, run records: one quick run whose history.jsonl holds the learning rate,
gradient norms and update-to-weight ratios per layer group, with config.json and the
results header; the monitor's numbers exact on a hand-made SGD step, and a run with the
monitor giving the same weights as one without (the hooks only read); --wandb without
wandb exits 2 with one line, and with wandb (offline) logs the issue's metric names, or is
skipped saying so; compare_runs.py's table, mean +- std over seeds, exact."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import statistics
import sys

import pytest
import torch
import torch.nn as nn

from conftest import REPO_ROOT, load_version
from fmnist_helpers import assert_png_has_content, fmnist_data, quick_args, read_jsonl  # noqa: F401
from fmnist_v1_v4_helpers import (  # noqa: F401  (fixtures)
    V2_RESULT_KEYS,
    assert_bad_flag_exits_2,
    assert_help_lists_every_flag,
    assert_results_header,
    quick_run,
    run_main,
    tiny_data,
)

V8 = "fashionmnist/v8"
EXTRA = ["--channels", "16"]  # a narrower ResNet: the same code paths in half the time
GROUPS = ["stem", "layer1", "layer2", "layer3", "fc"]
WANDB_KEYS = {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "learning_rate", "grad_norm",
              "train_val_gap", "init/loss", "init/accuracy", "test/accuracy"}


@pytest.fixture(scope="module")
def run(fmnist_data, tmp_path_factory):
    data_dir, is_real = fmnist_data
    out = tmp_path_factory.mktemp("v8_run") / "out"
    results, stdout = quick_run(V8, data_dir, out, *EXTRA)
    return {"results": results, "stdout": stdout, "out": out, "data_dir": data_dir, "is_real": is_real}


def test_results_config_and_outputs(run):
    results, out = run["results"], run["out"]
    assert_results_header(results, V8, out, run["data_dir"])
    assert set(results) == V2_RESULT_KEYS | {"evaluation", "init_val_loss", "init_val_accuracy", "python_version",
                                             "platform"}
    config = json.loads((out / "config.json").read_text())
    assert config["config"] == results["config"] and config["command"] == results["command"]
    assert config["config"]["wandb"] is False and config["config"]["record_every"] == 10
    assert abs(results["init_val_loss"] - math.log(10)) < 0.3 and 0 <= results["init_val_accuracy"] <= 0.3
    for name in ["training_dynamics.png", "training_curves.png", "confusion_matrix.png"]:
        assert_png_has_content(out / name)
    assert "config.json" in results["outputs"] and "training_dynamics.png" in results["outputs"]


def test_history_records_what_the_optimizer_did(run):
    (record,) = read_jsonl(run["out"] / "history.jsonl")
    planned = run["results"]["checks"]["lr_schedule"]["details"]["lrs"]  # the 4 planned steps of the quick run
    assert record["optimizer_steps"] == 4 and record["monitored_steps"] == 1  # steps 0 of 4, every 10th
    assert record["learning_rate_first"] == planned[0] and record["learning_rate"] == planned[3]
    assert record["learning_rate_max"] == max(planned)
    assert list(record["grad_norm_per_group"]) == GROUPS == list(record["update_ratio_per_group"])
    assert record["grad_norm"] == pytest.approx(math.sqrt(sum(v ** 2 for v in record["grad_norm_per_group"].values())))
    # the first step of OneCycle is lr 3e-3 / 25: AdamW moves every weight by about lr, so each group's
    # ratio is ~1.2e-4 x sqrt(n) / ||W||: between 1e-5 and 1e-1 for every group
    assert all(1e-5 < v < 1e-1 for v in record["update_ratio_per_group"].values())


def test_monitor_exact_on_a_hand_made_sgd_step():
    load_version(V8)
    import metrics

    model = nn.Sequential(nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 4.0]]))  # ||W|| = 5
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = metrics.TrainingMonitor(model, optimizer, every=2)
    for x in ([1.0, 0.0], [0.0, 1.0], [1.0, 1.0]):
        optimizer.zero_grad()
        model(torch.tensor([x])).sum().backward()  # gradient = x
        optimizer.step()
    summary = monitor.epoch_summary()
    # sampled: steps 0 and 2. Step 0: grad (1, 0), update 0.1, W (3, 4): ratio 0.1 / 5.
    # Step 2: W is (2.9, 3.9) after two steps, grad (1, 1): update 0.1 sqrt 2, ratio 0.1 sqrt(2) / ||(2.9, 3.9)||
    assert summary["monitored_steps"] == 2 and summary["optimizer_steps"] == 3
    assert summary["grad_norm"] == pytest.approx((1 + math.sqrt(2)) / 2)
    assert summary["update_ratio_per_group"]["0"] == pytest.approx((0.1 / 5 + 0.1 * math.sqrt(2) / math.hypot(2.9, 3.9)) / 2)
    assert summary["learning_rate"] == 0.1
    assert monitor.epoch_summary()["monitored_steps"] == 0  # a fresh start per epoch
    monitor.remove()


def test_the_monitor_does_not_change_training(run):
    """Two epochs of the run's own train_one_epoch from the same seed, with and without the hooks:
    the same weights, bit for bit. Control: one step more does change them."""
    train = load_version(V8)
    import metrics

    cfg = train.parse_args(quick_args(run["out"], run["data_dir"], "--channels", "4"))
    data = train.load_data(cfg, torch.device("cpu"))

    def trained(monitored: bool, epochs: int = 2):
        train.set_seed(0)
        data.train_loader.generator.manual_seed(0)
        model = train.ResNet(channels=4)
        optimizer, scheduler = train.make_optimizer(model, cfg, 3 * len(data.train_loader))
        if monitored:
            metrics.TrainingMonitor(model, optimizer, every=1)
        with contextlib.redirect_stderr(io.StringIO()):
            for _ in range(epochs):
                train.train_one_epoch(model, data.train_loader, optimizer, scheduler, 0, 0)
        return model.state_dict()

    plain, monitored, longer = trained(False), trained(True), trained(False, 3)
    assert all(torch.equal(plain[k], monitored[k]) for k in plain)
    assert not all(torch.equal(plain[k], longer[k]) for k in plain)


# ---------------------------------------------------------------------------
# Weights & Biases
# ---------------------------------------------------------------------------
def test_wandb_flag_without_wandb_exits_2_with_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError, installed or not
    train = load_version(V8)
    assert run_main(train, ["--wandb", "--quick", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == ("error: --wandb needs the wandb package: pip install wandb (or, from the repository root, "
                   "pip install -r requirements-wandb.txt)\n")
    assert not (tmp_path / "out").exists()


def test_wandb_stays_optional():
    requirements = (REPO_ROOT / "requirements.txt").read_text()
    assert "wandb" not in requirements
    optional = [line for line in (REPO_ROOT / "requirements-wandb.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert optional == ["wandb"]


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason="wandb is not installed (it is optional: pip install -r requirements-wandb.txt); "
                           "the W&B path was not exercised")
def test_wandb_offline_logs_the_metric_names(run, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logged: set[str] = set()
    real_init = wandb.init

    def init(*args, **kwargs):
        wandb_run = real_init(*args, **kwargs)
        real_log = wandb_run.log

        def log(data, *a, **k):
            logged.update(data)
            return real_log(data, *a, **k)

        wandb_run.log = log
        return wandb_run

    monkeypatch.setattr(wandb, "init", init)
    results, _ = quick_run(V8, run["data_dir"], tmp_path / "out", *EXTRA, "--wandb")
    assert results["exit_code"] == 0 and WANDB_KEYS <= logged, sorted(WANDB_KEYS - logged)


# ---------------------------------------------------------------------------
# compare_runs.py
# ---------------------------------------------------------------------------
def fake_results(path, version, seed, accuracy, **config):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": version, "status": "completed", "seed": seed, "test_accuracy": accuracy,
                                "best_val_accuracy": accuracy + 0.001, "test_loss": 0.2, "best_epoch": 30,
                                "wall_time_s": 100.0 + seed, "evaluation": {"calibration": {"ece": 0.01}},
                                "config": {"seed": seed, "out": str(path.parent), "lr": 3e-3, **config}}))
    return path


def test_compare_runs_table(run, tmp_path, capsys):
    compare = load_version(V8, "compare_runs")
    files = [fake_results(tmp_path / f"a{s}" / "results.json", "fashionmnist/v8", s, acc, mixup_alpha=0.2)
             for s, acc in ((0, 0.950), (1, 0.948), (2, 0.946))]
    files += [fake_results(tmp_path / f"b{s}" / "results.json", "fashionmnist/v8", s, acc, mixup_alpha=0.0)
              for s, acc in ((0, 0.940), (1, 0.944))]
    unfinished = tmp_path / "c" / "results.json"
    unfinished.parent.mkdir()
    unfinished.write_text(json.dumps({"version": "fashionmnist/v8", "status": "interrupted"}))
    text = compare.main([str(f) for f in [*files, unfinished]])
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["run", "group", "seeds", "test"]
    # seeds 0, 1, 2 at 95.0, 94.8, 94.6: mean 94.80, sample std 0.20; the other group 94.2 +- 0.28
    assert statistics.stdev([95.0, 94.8, 94.6]) == pytest.approx(0.2)
    assert len(lines) == 4 + 3  # header, rule, two groups; blank line, heading and the unfinished run
    group_a = next(line for line in lines if "fashionmnist/v8 mixup_alpha=0.2 " in line)
    group_b = next(line for line in lines if "fashionmnist/v8 mixup_alpha=0.0 " in line)
    assert "0,1,2" in group_a and "94.80% ± 0.20%" in group_a and "101s ± 1s" in group_a
    assert "0,1" in group_b and "94.20% ± 0.28%" in group_b and "0.0100 ± 0.0000" in group_b
    assert "not completed, left out:" in text and "status 'interrupted'" in text
    one = compare.main([str(run["out"] / "results.json")])  # a real quick run: one seed, no spread
    assert f"{run['results']['test_accuracy'] * 100:.2f}% ± -" in one
    capsys.readouterr()


# ---------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--record-every", "0"], "--record-every and --wandb-watch-every must be >= 1"),
    (["--wandb-watch-every", "0"], "--record-every and --wandb-watch-every must be >= 1"),
    (["--wandb", "yes"], "unrecognized arguments: yes"),
])
def test_bad_flags_exit_2(argv, message, tmp_path, capsys):
    assert_bad_flag_exits_2(V8, argv, message, tmp_path, capsys)


def test_help_lists_every_flag_with_its_default(capsys):
    flags = ["--quick", "--preflight", "--out", "--overwrite", "--data-dir", "--device", "--seed", "--epochs", "--batch-size", "--lr",
             "--lr-schedule", "--warmup-fraction", "--weight-decay", "--val-size", "--split-seed", "--patience",
             "--crop-padding", "--flip-probability", "--normalised-tolerance", "--label-smoothing", "--mixup-alpha",
             "--channels", "--loss-at-init-tolerance", "--min-gradient-ratio", "--max-dead-fraction",
             "--lr-finder-steps", "--lr-finder-min-lr", "--lr-finder-max-lr", "--lr-finder-smoothing",
             "--lr-finder-min-drop", "--schedule-check-batches", "--top-k", "--calibration-bins", "--mistakes",
             "--record-every", "--wandb", "--wandb-project", "--wandb-watch-every", "--diverged-loss"]
    assert_help_lists_every_flag(V8, flags, capsys)


# ---------------------------------------------------------------------------
# NaN and Ctrl-C keep the richer records
# ---------------------------------------------------------------------------
TINY = ["--device", "cpu", "--val-size", "32", "--batch-size", "1024", "--epochs", "5", "--patience", "0",
        "--lr-finder-steps", "0", "--schedule-check-batches", "1", "--channels", "8"]


def test_nan_keeps_history_with_the_optimizer_records(tiny_data, tmp_path):
    from fmnist_v1_v4_helpers import assert_nan_keeps_records

    train = load_version(V8)
    out = tmp_path / "out"
    assert_nan_keeps_records(train, "ResNet", [*TINY, "--out", str(out), "--data-dir", str(tiny_data)],
                             "normalisation")
    history = read_jsonl(out / "history.jsonl")
    assert [h["monitored_steps"] for h in history] == [1, 1] and all(h["grad_norm"] > 0 for h in history)
    assert (out / "config.json").is_file() and (out / "training_dynamics.png").is_file()


def test_ctrl_c_keeps_epoch_1(tiny_data, tmp_path):
    from fmnist_v1_v4_helpers import assert_ctrl_c_keeps_records

    train = load_version(V8)
    assert_ctrl_c_keeps_records(train, "ResNet", [*TINY, "--out", str(tmp_path / "out"), "--data-dir", str(tiny_data)])
