"""cifar100/v2-diagnostics: the diagnostics files, the two fixes, the scheduler
choice, the transform check (passes on v2, fails on v1) and bad input."""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import REPO_ROOT, load_version
from test_cifar100_data import CLASSES, make_image_folder

V2 = "cifar100/v2-diagnostics"
QUICK = ["--quick", "--device", "cpu", "--width", "8"]
TRAIN_KEYS = ["epoch", "loss", "accuracy", "learning_rate", "mean_grad_norm", "min_grad_norm", "max_grad_norm",
              "weight_update_norm", "grad_update_norm", "decay_update_norm", "loss_scale", "num_batches"]
VAL_KEYS = ["epoch", "loss", "accuracy", "learning_rate", "num_batches"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("cifar_v2"))


@pytest.fixture(scope="module")
def run(images, tmp_path_factory):
    """A quick run with DIAGNOSTICS_DIR set, as in seed 004's `export DIAGNOSTICS_DIR=...`."""
    root = tmp_path_factory.mktemp("v2_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIAGNOSTICS_DIR", str(root / "my_diagnostics"))
        results = load_version(V2, "main").main([*QUICK, "--data-dir", str(images), "--out", str(root / "out")])
    return results, root


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_diagnostics_files_have_one_line_per_epoch_with_the_seed_keys(run):
    results, root = run
    folder = root / "my_diagnostics"
    assert results["diagnostics_dir"] == str(folder)
    assert not (root / "out" / "diagnostics").exists()  # DIAGNOSTICS_DIR wins over <out>/diagnostics
    train, val = read_jsonl(folder / "train_diagnostics.jsonl"), read_jsonl(folder / "val_diagnostics.jsonl")
    assert [list(r) for r in train] == [TRAIN_KEYS] * 2 and [list(r) for r in val] == [VAL_KEYS] * 2
    assert [r["epoch"] for r in train] == [r["epoch"] for r in val] == [1, 2]
    for t, v in zip(train, val):
        assert all(math.isfinite(t[k]) for k in TRAIN_KEYS) and all(math.isfinite(v[k]) for k in VAL_KEYS)
        assert 0 <= t["accuracy"] <= 100 and 0 <= v["accuracy"] <= 100
        # unscaled, before clipping: the O(0.1-10) of a real gradient, not 65536x that
        assert 0.01 < t["min_grad_norm"] <= t["mean_grad_norm"] <= t["max_grad_norm"] < 100
        assert 1e-3 < t["weight_update_norm"] < 1
        assert t["decay_update_norm"] < t["grad_update_norm"] and t["loss_scale"] == 65536.0
        assert t["num_batches"] == 144 // 32 and v["num_batches"] == 1
        assert v["learning_rate"] == t["learning_rate"]
    # cosine over 2 epochs: 0.1, then half of it
    assert [t["learning_rate"] for t in train] == pytest.approx([0.1, 0.05])
    # the same numbers as history.jsonl, which the curves are drawn from
    history = read_jsonl(root / "out" / "history.jsonl")
    assert [{k: h[k] for k in TRAIN_KEYS} for h in history] == train
    assert [h["val_accuracy"] for h in history] == [v["accuracy"] for v in val]


def test_run_outputs(run):
    results, root = run
    out = root / "out"
    assert results["status"] == "completed" and results["config"]["scheduler"] == "cosine"
    assert results["epochs_completed"] == 2 and 0 <= results["test_accuracy"] <= 100
    assert json.loads((out / "results.json").read_text())["test_accuracy"] == results["test_accuracy"]
    assert (out / "curves.png").stat().st_size > 10_000 and (out / "best_model.pth").stat().st_size > 100_000


def test_diagnostics_default_to_out_folder(images, tmp_path, monkeypatch):
    monkeypatch.delenv("DIAGNOSTICS_DIR", raising=False)
    main = load_version(V2, "main")
    assert main.diagnostics_dir(tmp_path / "o") == tmp_path / "o" / "diagnostics"
    monkeypatch.setenv("DIAGNOSTICS_DIR", str(tmp_path / "d"))
    assert main.diagnostics_dir(tmp_path / "o") == tmp_path / "d"


def one_step(version: str):
    """One training step of a version's train_one_epoch on a fixed batch, GradScaler on (scale 65536).

    Returns the true gradient norm (fp32 backward without any scaler on a copy of
    the model), the norm the version logged, and the norm of the gradient the
    optimizer finally used (left in .grad after the step)."""
    train_utils = load_version(f"cifar100/{version}", "scripts.train_utils")
    torch.manual_seed(0)
    model = train_utils.ResNet18(num_classes=5, width=8)
    images, labels = torch.randn(16, 3, 32, 32), torch.arange(16) % 5
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    reference = copy.deepcopy(model)
    criterion(reference(images), labels).backward()
    true_norm = torch.sqrt(sum((p.grad ** 2).sum() for p in reference.parameters())).item()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    assert scaler.get_scale() == 65536.0
    stats = train_utils.train_one_epoch(model, [(images, labels)], criterion, optimizer, scaler, torch.device("cpu"),
                                        use_autocast=False, grad_clip=1.0)
    used = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters())).item()
    return true_norm, stats["mean_grad_norm"], used


def test_v2_clips_unscaled_gradients():
    true_norm, logged, used = one_step("v2-diagnostics")
    assert true_norm > 1.0  # so that clipping at 1.0 acts
    assert logged == pytest.approx(true_norm, rel=1e-4)
    assert used == pytest.approx(1.0, rel=1e-4)  # clipped to exactly the max norm, in true units


def test_v1_clips_scaled_gradients():
    """The planted bug the test above would catch: v1 logs 65536x the norm and steps with 1/65536."""
    true_norm, logged, used = one_step("v1-baseline")
    assert logged == pytest.approx(65536.0 * true_norm, rel=1e-4)
    assert used == pytest.approx(1.0 / 65536.0, rel=1e-4)


def test_scheduler_choices_give_the_expected_learning_rates():
    train_utils = load_version(V2, "scripts.train_utils")
    model = nn.Linear(2, 2)

    def lrs(name, epochs=10, steps=4, val_losses=None):
        _, optimizer, scheduler = train_utils.define_loss_and_optimizer(model, 0.1, 0.9, 5e-4, 0.1, 3, name, epochs, steps)
        seen = []
        for epoch in range(epochs):
            seen.append(optimizer.param_groups[0]["lr"])
            for _ in range(steps):
                optimizer.step()
                if name == "onecycle":
                    scheduler.step()
            if name == "cosine":
                scheduler.step()
            elif name == "plateau":
                scheduler.step(val_losses[epoch])
        return seen

    cosine = lrs("cosine")
    assert cosine[0] == 0.1 and all(b < a for a, b in zip(cosine, cosine[1:])) and cosine[-1] < 0.01
    onecycle = lrs("onecycle")
    peak = onecycle.index(max(onecycle))
    assert onecycle[0] < 0.01 and 0 < peak < 9 and max(onecycle) > 0.08 and onecycle[-1] < 0.01
    plateau = lrs("plateau", val_losses=[4.0, 3.9] + [3.9] * 8)  # no improvement from epoch 2 on
    assert plateau[:6] == [0.1] * 6 and plateau[6] == pytest.approx(0.01)


def test_check_transforms_passes_on_v2_and_fails_on_v1(images, capsys):
    check = load_version(V2, "scripts.check_transforms")
    assert check.main(["--data-dir", str(images)]) == 0
    assert "PASS  separate" in capsys.readouterr().out
    code = check.main(["--data-dir", str(images), "--code", str(REPO_ROOT / "cifar100" / "v1-baseline")])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL  separate" in out and "FAIL  deterministic" in out and "PASS  augmented" in out


def test_check_transforms_catches_lost_augmentation(images, tmp_path):
    """The opposite mistake: eval transforms on both splits. Planted by wrapping v2's builder."""
    check = load_version(V2, "scripts.check_transforms")
    data_module, train_utils = check.load_code(REPO_ROOT / V2)
    data = data_module.load_cifar100(images)
    train_ds, val_ds, _ = train_utils.build_datasets(data, 0.1, 11)
    train_ds.dataset.transform = train_utils.load_transforms("test", 11)
    verdicts = {v.name: v.passed for v in check.check_transforms(train_ds, val_ds)}
    assert verdicts == {"separate": True, "deterministic": True, "augmented": False}


def test_check_transforms_script_exit_codes(images, tmp_path):
    script = REPO_ROOT / V2 / "scripts" / "bash" / "check_transforms.sh"
    ok = subprocess.run(["bash", str(script), "--data-dir", str(images)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(["bash", str(script), "--data-dir", str(images), "--code", str(REPO_ROOT / "cifar100" / "v1-baseline")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "FAILED: separate, deterministic" in bad.stdout


def test_ctrl_c_keeps_history_and_exits_130(images, tmp_path, monkeypatch, capsys):
    main = load_version(V2, "main")
    real_train = main.train_one_epoch
    calls = []

    def interrupted_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(main, "train_one_epoch", interrupted_in_epoch_2)
    out = tmp_path / "out"
    code = main.cli([*QUICK, "--data-dir", str(images), "--out", str(out), "--scheduler", "onecycle"])
    err = capsys.readouterr().err
    assert code == 130 and "Interrupted (Ctrl-C)" in err and f"Run folder: {out}" in err
    assert len(read_jsonl(out / "history.jsonl")) == 1 and len(read_jsonl(out / "diagnostics" / "train_diagnostics.jsonl")) == 1
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted" and results["epochs_completed"] == 1 and results["exit_code"] == 130
    assert (out / "best_model.pth").exists() and (out / "curves.png").exists()
    # every file listed is whole (written to a hidden temporary, then renamed), and no temporary is left
    assert results["complete_files"] == sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert {"best_model.pth", "curves.png", "history.jsonl", "results.json", "resume.pth",
            "diagnostics/train_diagnostics.jsonl"} <= set(results["complete_files"])


def test_nan_loss_stops_with_a_diagnosis(images, tmp_path, capsys):
    out = tmp_path / "out"
    # lr 1e30: the first step throws the weights to ~1e30 and the next forward overflows.
    code = load_version(V2, "main").cli([*QUICK, "--data-dir", str(images), "--out", str(out), "--lr", "1e30", "--scheduler", "plateau"])
    err = capsys.readouterr().err
    assert code == 1 and "loss became nan" in err and "Lower --lr" in err
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "diverged" and results["final"]["loss"] is None and results["exit_code"] == 1
    assert "history.jsonl" in results["complete_files"]
    assert read_jsonl(out / "diagnostics" / "train_diagnostics.jsonl")[-1]["loss"] is None  # null, valid JSON


def test_bad_input_gets_a_message_and_exit_code(tmp_path, monkeypatch, capsys):
    main = load_version(V2, "main")
    monkeypatch.setenv("DATA_OFFLINE", "1")
    (tmp_path / "empty").mkdir()
    assert main.cli([*QUICK, "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "CIFAR-100 was not found" in capsys.readouterr().err
    assert json.loads((tmp_path / "o" / "results.json").read_text())["exit_code"] == 2  # the run folder says why
    (tmp_path / "file").write_text("")
    assert main.cli([*QUICK, "--out", str(tmp_path / "file" / "sub")]) == 2
    assert "cannot write to output folder" in capsys.readouterr().err
    for bad in (["--no-such-flag"], ["--batch_size", "many"], ["--scheduler", "step"], ["--lr", "0"]):
        with pytest.raises(SystemExit) as exc:
            main.parse_args(bad)
        assert exc.value.code == 2


def test_main_is_importable_without_side_effects(tmp_path):
    """Importing main.py must not train or load data."""
    code = f"import sys; sys.path.insert(0, {str(REPO_ROOT / V2)!r}); import main; print(main.VERSION)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "v2-diagnostics"  # main() would print "loading ..."


# ---------------------------------------------------------------------------
# weight_update_norm split into the gradient's and the decay's share
# ---------------------------------------------------------------------------
def _epochs_of_sgd(version: str, zero_gradients: bool, weight_decay: float, epochs: int = 2, steps: int = 6):
    """train_one_epoch with SGD (lr 0.1, momentum 0.9, Nesterov) as define_loss_and_optimizer builds it.
    zero_gradients: the loss is 0 x logits, so every gradient is exactly 0 and only decay moves the weights."""
    train_utils = load_version(f"cifar100/{version}", "scripts.train_utils")
    torch.manual_seed(0)
    model = train_utils.ResNet18(num_classes=5, width=8)
    batches = [(torch.randn(8, 3, 32, 32), torch.arange(8) % 5) for _ in range(steps)]
    cross_entropy = nn.CrossEntropyLoss()
    criterion = (lambda logits, labels: 0.0 * logits.sum()) if zero_gradients else cross_entropy
    _, optimizer, _ = train_utils.define_loss_and_optimizer(model, 0.1, 0.9, weight_decay, 0.0, 3, "cosine", epochs,
                                                            steps)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return [train_utils.train_one_epoch(model, batches, criterion, optimizer, scaler, torch.device("cpu"),
                                        use_autocast=False, grad_clip=1e9) for _ in range(epochs)]


def test_zero_gradients_move_the_weights_by_decay_alone():
    """The bug the split exists to expose: with no gradient at all, decay still moves the weights, and
    weight_update_norm alone reads like learning. The gradient's share must be 0, the decay's all of it."""
    for stats in _epochs_of_sgd("v2-diagnostics", zero_gradients=True, weight_decay=5e-4):
        assert stats["weight_update_norm"] > 1e-3
        assert stats["grad_update_norm"] < 1e-3 * stats["weight_update_norm"]  # float32 round-off only
        assert stats["decay_update_norm"] == pytest.approx(stats["weight_update_norm"], rel=1e-4)


def test_without_decay_the_whole_update_is_the_gradients():
    for stats in _epochs_of_sgd("v2-diagnostics", zero_gradients=False, weight_decay=0.0):
        assert stats["decay_update_norm"] == 0.0
        assert stats["grad_update_norm"] == pytest.approx(stats["weight_update_norm"], rel=1e-4)


def test_gradient_and_decay_shares_add_up_when_both_act():
    """Both parts present: each smaller than the total's square sum allows, and decay's share
    matches the zero-gradient run's in size (decay depends on the weights, not on the gradient)."""
    both = _epochs_of_sgd("v2-diagnostics", zero_gradients=False, weight_decay=5e-4)
    decay_only = _epochs_of_sgd("v2-diagnostics", zero_gradients=True, weight_decay=5e-4)
    for stats, alone in zip(both, decay_only):
        assert stats["grad_update_norm"] > 10 * stats["decay_update_norm"] > 0
        assert stats["decay_update_norm"] == pytest.approx(alone["decay_update_norm"], rel=0.05)
        assert stats["weight_update_norm"] <= stats["grad_update_norm"] + stats["decay_update_norm"] + 1e-9


def test_loss_scale_is_recorded_only_with_a_grad_scaler():
    stats = _epochs_of_sgd("v2-diagnostics", zero_gradients=False, weight_decay=5e-4, epochs=1, steps=1)[0]
    assert stats["loss_scale"] is None
    train_utils = load_version(V2, "scripts.train_utils")  # GradScaler on: the record carries its scale
    torch.manual_seed(0)
    model = train_utils.ResNet18(num_classes=5, width=8)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    stats = train_utils.train_one_epoch(model, [(torch.randn(8, 3, 32, 32), torch.arange(8) % 5)], nn.CrossEntropyLoss(),
                                        torch.optim.SGD(model.parameters(), lr=0.1), scaler, torch.device("cpu"),
                                        use_autocast=False, grad_clip=1.0)
    assert stats["loss_scale"] == scaler.get_scale() == 65536.0


# ---------------------------------------------------------------------------
# Runs that end: worker processes must not outlive the run
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["v1-baseline", "v2-diagnostics"])
def test_loaders_do_not_keep_their_workers(version):
    """Persistent workers with pinned memory kept v1's finished GPU run from exiting (pytorch#81794):
    the loaders must let their workers end with each pass."""
    main = load_version(f"cifar100/{version}", "main")
    args = main.parse_args([*QUICK, "--num_workers", "2"])
    dataset = torch.utils.data.TensorDataset(torch.zeros(64, 3, 32, 32), torch.zeros(64, dtype=torch.long))
    loaders = main.make_loaders(dataset, dataset, dataset, args, torch.device("cpu"))
    assert all(loader.num_workers == 2 and not loader.persistent_workers for loader in loaders)


def test_a_run_with_worker_processes_exits_in_time(images, tmp_path):
    """The whole program, as a user starts it, with two worker processes per loader: it must finish,
    exit 0 and write its results well within the time limit (a hang fails with TimeoutExpired)."""
    script = REPO_ROOT / V2 / "main.py"
    done = subprocess.run([sys.executable, str(script), *QUICK, "--num_workers", "2", "--data-dir", str(images),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["status"] == "completed"


def test_onecycle_keeps_the_momentum_flag():
    """OneCycle's default cycles the momentum (0.85-0.95) and would silently override --momentum."""
    train_utils = load_version(V2, "scripts.train_utils")
    model = nn.Linear(2, 2)
    _, optimizer, scheduler = train_utils.define_loss_and_optimizer(model, 0.1, 0.8, 5e-4, 0.0, 3, "onecycle", 2, 5)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[0]["momentum"] == 0.8


# ---------------------------------------------------------------------------
# --resume: a run cut short goes on where it stopped, with the same numbers
# ---------------------------------------------------------------------------
def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("epoch_time_s", "images_per_second")} for r in records]


def test_resumed_run_continues_the_same_history(images, tmp_path, monkeypatch):
    main = load_version(V2, "main")
    args = [*QUICK, "--data-dir", str(images), "--scheduler", "plateau"]  # --quick: 2 epochs
    straight = main.main([*args, "--out", str(tmp_path / "straight")])

    real_epoch, calls = main.train_one_epoch, []

    def stop_in_epoch_two(*a, **k):  # Ctrl-C during the second epoch: one epoch is on disk
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*a, **k)

    monkeypatch.setattr(main, "train_one_epoch", stop_in_epoch_two)
    with pytest.raises(SystemExit) as stop:
        main.main([*args, "--out", str(tmp_path / "cut")])
    assert stop.value.code == 130
    monkeypatch.setattr(main, "train_one_epoch", real_epoch)
    assert len(read_jsonl(tmp_path / "cut" / "history.jsonl")) == 1
    resumed = main.main([*args, "--out", str(tmp_path / "cut"), "--resume"])

    assert resumed["resumed_after_epoch"] == 1 and resumed["status"] == "completed"
    assert _without_timing(read_jsonl(tmp_path / "cut" / "history.jsonl")) == \
        _without_timing(read_jsonl(tmp_path / "straight" / "history.jsonl"))
    for name in ("train_diagnostics.jsonl", "val_diagnostics.jsonl"):
        assert (tmp_path / "cut" / "diagnostics" / name).read_text() == \
            (tmp_path / "straight" / "diagnostics" / name).read_text()
    assert resumed["test_accuracy"] == straight["test_accuracy"] and resumed["best_epoch"] == straight["best_epoch"]


def test_resume_refuses_other_flags(images, tmp_path, capsys):
    main = load_version(V2, "main")
    args = [*QUICK, "--data-dir", str(images), "--out", str(tmp_path)]
    main.main(args)
    assert main.cli([*args, "--resume", "--lr", "0.05"]) == 2
    assert "--lr 0.1 -> 0.05" in capsys.readouterr().err
    # a finished run resumed with its own flags has nothing left to do, and says so in its record
    assert main.main([*args, "--resume"])["resumed_after_epoch"] == 2
