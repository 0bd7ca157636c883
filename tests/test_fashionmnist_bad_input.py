"""Bad input for fashionmnist/v9-step1 and v10-step2: missing data, wrong flags, an
unwritable output folder and a diverging run each end with a clear message, the
documented exit code, no traceback, and nothing already written lost. A corrupt .gz
file (shared/data.py unpacks it for every version) is tried on every version."""
from __future__ import annotations

import json
import re
import sys

import pytest
import torch

from conftest import REPO_ROOT, load_version
from fmnist_helpers import (  # noqa: F401  (fixtures)
    V9,
    V10,
    fmnist_data,
    generated_data,
    load_checkpoint_into,
    quick_args,
    read_jsonl,
)

VERSIONS = [V9, V10]
# v10 only: switch off the checks that cost seconds where a test is about something else
FAST = {V9: [], V10: ["--no-human-baseline", "--no-input-independent-baseline", "--no-overfit-test",
                      "--no-batch-independence-test"]}


def run_main(train, argv):
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    return exit_info.value.code


@pytest.fixture
def no_data_anywhere(monkeypatch, tmp_path):
    """No network, no DATA_DIR, an empty repository cache and no system copy."""
    import shared.data

    monkeypatch.setenv("DATA_OFFLINE", "1")
    monkeypatch.delenv("DATA_DIR", raising=False)
    empty_cache = tmp_path / "empty_cache"
    empty_cache.mkdir()
    monkeypatch.setattr(shared.data, "DATA_CACHE", empty_cache)
    monkeypatch.setattr(shared.data, "FASHION_MNIST_SYSTEM_DIRS", [])
    return empty_cache


@pytest.mark.parametrize("version", VERSIONS)
def test_missing_data_exits_2_saying_where_it_looked(version, no_data_anywhere, tmp_path, capsys):
    train = load_version(version)
    # train.py imported the function by name; it must read the (patched) module globals at call time
    assert train.fashion_mnist_root.__globals__ is sys.modules["shared.data"].__dict__
    assert run_main(train, ["--quick", "--device", "cpu", "--out", str(tmp_path / "out"), *FAST[version]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Fashion-MNIST was not found. Looked in:")
    assert f"repository cache: {no_data_anywhere}" in err
    assert "/usr/share/datasets" not in err  # the system copy was switched off
    assert "skipped because DATA_OFFLINE is set" in err
    assert "apt-get install dataset-fashion-mnist" in err and "--data-dir" in err  # how to get it
    assert "Traceback" not in err
    results = json.loads((tmp_path / "out" / "results.json").read_text())  # the run folder says why it stopped
    assert results["status"] == "failed" and results["exit_code"] == 2
    assert results["complete_files"] == ["results.json"]


@pytest.mark.parametrize("version", VERSIONS)
def test_empty_explicit_data_dir_exits_2(version, no_data_anywhere, tmp_path, capsys):
    train = load_version(version)
    empty = tmp_path / "my_data"
    empty.mkdir()
    assert run_main(train, quick_args(tmp_path / "out", empty) + FAST[version]) == 2
    err = capsys.readouterr().err
    assert f"no Fashion-MNIST files in {empty}" in err
    assert "repository cache" not in err  # an explicit --data-dir is the only place looked at
    assert list(empty.iterdir()) == []  # nothing downloaded or unpacked into the user's folder
    assert "Traceback" not in err


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("argv, message", [
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--epochs", "two"], "invalid int value: 'two'"),
    (["--lr", "0"], "--lr a number > 0"),
    (["--dropout", "1.0"], "0 <= --dropout < 1"),
    (["--diverged-loss", "0"], "--diverged-loss must be > 0"),
    (["--weight-decay", "-0.1"], "--weight-decay >= 0"),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
])
def test_wrong_flags_exit_2(version, argv, message, tmp_path, capsys):
    train = load_version(version)
    assert run_main(train, [*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "usage:" in err
    assert not (tmp_path / "out").exists()  # rejected before anything is written


@pytest.mark.parametrize("version", VERSIONS)
def test_v10_only_flags_are_rejected_by_v9(version, tmp_path, capsys):
    train = load_version(version)
    if version == V9:
        assert run_main(train, ["--no-overfit-test", "--out", str(tmp_path)]) == 2
        assert "unrecognized arguments: --no-overfit-test" in capsys.readouterr().err
    else:
        assert train.parse_args(["--no-overfit-test"]).overfit_test is False


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("where", ["under_a_file", "is_a_file"])
def test_unwritable_out_exits_2(version, where, tmp_path, capsys):
    """Tests run as root, so chmod cannot make a folder unwritable; a path through a regular file can."""
    train = load_version(version)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a regular file")
    out = blocker / "out" if where == "under_a_file" else blocker
    assert run_main(train, quick_args(out, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write to output folder {out}")
    assert "Choose another with --out" in err and "Traceback" not in err
    assert blocker.read_text() == "a regular file"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("version", VERSIONS)
def test_cuda_requested_without_gpu_exits_2(version, tmp_path, capsys):
    train = load_version(version)
    assert run_main(train, ["--device", "cuda", "--out", str(tmp_path / "out")]) == 2
    assert "no CUDA GPU is available (try --device cpu)" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# A diverging run: exit 1, status "diverged" with the diagnosis, history kept
# ---------------------------------------------------------------------------
DIAGNOSIS = re.compile(r"at step (?P<step>\d+) \(epoch (?P<epoch>\d+)\): loss (?P<loss>\S+) "
                       r"(?P<verdict>is not finite|is above --diverged-loss \S+); "
                       r"learning rate \S+; gradient norm of the previous step \S+\. "
                       r"Usual causes: learning rate too high")


@pytest.mark.parametrize("version", VERSIONS)
def test_huge_learning_rate_diverges_in_quick_mode(version, fmnist_data, tmp_path, capsys):
    """Adam with lr 1e6 moves every weight by ~1e6 in one step: the loss explodes to ~1e29
    on the next step without turning NaN (measured on the real and the generated data),
    so only the --diverged-loss stop catches it."""
    train = load_version(version)
    out = tmp_path / "out"
    assert run_main(train, quick_args(out, fmnist_data[0], "--lr", "1e6") + FAST[version]) == 1
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "diverged"
    match = DIAGNOSIS.search(results["error"])
    assert match, results["error"]
    assert int(match["step"]) >= 1  # the loss at init is finite; the updates blew it up
    assert match["verdict"] == "is above --diverged-loss 25" and float(match["loss"]) > 1e6
    assert results["config"]["lr"] == 1e6 and results["best_epoch"] == 0
    assert (out / "history.jsonl").exists()  # kept (quick mode has one epoch, so nothing in it yet)
    assert not (out / "training_curves.png").exists()  # no curve from zero finished epochs
    err = capsys.readouterr().err
    assert "Training diverged at step" in err and "Kept:" in err and "Traceback" not in err


def model_that_turns_nan_at_training_step(train, nan_step):
    """MyNN whose training forward passes return NaN from the `nan_step`-th on: a run that
    diverges after some finished epochs. (A huge --lr cannot stage this: its first step
    already makes epoch 1's validation loss NaN, which is divergence too.)"""
    class MyNNTurningNaN(train.MyNN):
        def forward(self, x):
            logits = super().forward(x)
            if self.training and torch.is_grad_enabled():
                self.training_steps = getattr(self, "training_steps", 0) + 1
                if self.training_steps >= nan_step:
                    return logits * float("nan")
            return logits
    return MyNNTurningNaN


@pytest.mark.parametrize("version", VERSIONS)
def test_divergence_after_some_epochs_keeps_history_and_checkpoint(version, generated_data, tmp_path, capsys,
                                                                   monkeypatch):
    """One batch per epoch (the small generated set at batch size 1024), NaN from the third
    training step on: epochs 1 and 2 finish, epoch 3 diverges on its first step (global step 2,
    counted from 0); everything written until then must stay."""
    train = load_version(version)
    monkeypatch.setattr(train, "MyNN", model_that_turns_nan_at_training_step(train, nan_step=3))
    out = tmp_path / "out"
    argv = ["--device", "cpu", "--out", str(out), "--data-dir", str(generated_data), "--val-size", "256",
            "--batch-size", "1024", "--epochs", "6", *FAST[version]]
    assert run_main(train, argv) == 1
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "diverged"
    match = DIAGNOSIS.search(results["error"])
    assert match, results["error"]
    failed_epoch = int(match["epoch"])
    assert (match["loss"], int(match["step"]), failed_epoch, match["verdict"]) == ("nan", 2, 3, "is not finite")
    history = read_jsonl(out / "history.jsonl")
    assert [h["epoch"] for h in history] == [1, 2]
    assert 1 <= results["best_epoch"] < failed_epoch
    model, checkpoint = load_checkpoint_into(train, out / train.MODEL_FILE)
    assert checkpoint["epoch"] == results["best_epoch"]
    assert (out / "training_curves.png").is_file()  # drawn from the epochs that finished
    assert results["checks"]["loss_at_init"]["passed"] is True  # the verdicts before training are kept too
    err = capsys.readouterr().err
    assert f"epochs done: {failed_epoch - 1}" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def packed_data(tmp_path_factory):
    """The generated set as Debian ships the real one: four .gz files side by side."""
    import gzip

    from fmnist_helpers import write_generated_fashion_mnist

    raw = write_generated_fashion_mnist(tmp_path_factory.mktemp("plain")) / "FashionMNIST" / "raw"
    packed = tmp_path_factory.mktemp("packed")
    for path in raw.iterdir():
        (packed / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
    return packed


def corrupt_copy(packed, tmp_path, how):
    folder = tmp_path / f"corrupt-{how}"
    folder.mkdir()
    for path in packed.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    bad = folder / "train-images-idx3-ubyte.gz"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if how == "truncated" else b"<html>404 Not Found</html>" * 40)
    return bad


def test_intact_gz_files_unpack_into_the_cache(packed_data, no_data_anywhere):
    """The control for the test below: the same files, uncut, are found and unpacked."""
    import shared.data

    root = shared.data.fashion_mnist_root(packed_data)
    assert sorted(p.name for p in (root / "FashionMNIST" / "raw").iterdir()) == sorted(shared.data.FASHION_MNIST_FILES)


FASHION_VERSIONS = sorted(str(p.relative_to(p.parents[1])) for p in (REPO_ROOT / "fashionmnist").glob("v*")
                          if (p / "train.py").is_file())


@pytest.mark.parametrize("how", ["truncated", "not gzip"])
@pytest.mark.parametrize("version", FASHION_VERSIONS)
def test_a_corrupt_gz_file_exits_2_naming_it(version, how, packed_data, no_data_anywhere, tmp_path, capsys):
    """A cut download or an HTML error page saved as .gz: every version says which file is broken and
    how to get a good one (exit 2, no traceback), and leaves no half-unpacked file in the cache."""
    bad = corrupt_copy(packed_data, tmp_path, how)
    train = load_version(version)
    assert run_main(train, ["--quick", "--device", "cpu", "--out", str(tmp_path / "out"),
                            "--data-dir", str(bad.parent)]) == 2
    err = capsys.readouterr().err
    assert f"{bad} is corrupt or truncated" in err and "--reinstall dataset-fashion-mnist" in err
    assert "Traceback" not in err
    assert not [p for p in no_data_anywhere.rglob("*") if p.is_file()]  # no .partial, no truncated idx file
