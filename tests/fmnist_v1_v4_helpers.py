"""Helpers shared by the tests of fashionmnist/v1 ... v4.

Each version's module (test_fashionmnist_v1.py ...) runs its version once in quick
mode on the real Fashion-MNIST (or the generated stand-in where it is not
installed) and checks every output; these helpers hold what the four have in
common: the in-process run, reading its records back, the planted-bug models and
mutated copies, and the bad-input cases.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, load_version
from fmnist_helpers import VersionContext, quick_args, read_jsonl, write_generated_fashion_mnist

V1, V2, V3, V4 = "fashionmnist/v1", "fashionmnist/v2", "fashionmnist/v3", "fashionmnist/v4"
VERSION_FILES = ["FAZIT.md", "README.md", "debug_tools.py", "metrics.py", "train.py", "visualization.py"]

# results.json: v1 reports the last epoch; from v2 on the best epoch by validation and the test set once
V1_RESULT_KEYS = {"version", "status", "command", "date", "config", "seed", "device", "torch_version", "checks",
                  "checks_time_s", "all_checks_passed", "num_parameters", "exit_code", "epochs_done",
                  "train_time_s", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "outputs",
                  "wall_time_s"}
V2_RESULT_KEYS = (V1_RESULT_KEYS - {"train_loss", "train_accuracy"}) | {
    "stopped_early", "best_epoch", "best_val_accuracy", "test_accuracy_std_error", "test_size"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A generated stand-in of 160 training and 64 test images: for runs of several epochs
    that only test what happens around training (NaN, Ctrl-C, early stopping), in a second."""
    return write_generated_fashion_mnist(tmp_path_factory.mktemp("tiny_fmnist"), n_train=160, n_test=64)


def quick_run(version: str, data_dir, out, *extra) -> tuple[dict, str]:
    """main() in-process in quick mode on the CPU; returns (results, stdout)."""
    stdout = io.StringIO()
    with VersionContext(version) as train, contextlib.redirect_stdout(stdout):
        results = train.main(quick_args(out, data_dir, *extra))
    return results, stdout.getvalue()


def run_main(train, argv) -> int:
    """main() that is expected to end with SystemExit; returns its exit code."""
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(io.StringIO()):
        train.main(argv)
    return exit_info.value.code


def numbers_of(out: Path, results: dict) -> tuple:
    """Everything a run measured, without the timings: for determinism tests."""
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in read_jsonl(out / "history.jsonl")]
    checks = {name: (c["passed"], c["value"], json.dumps(c["details"], sort_keys=True))
              for name, c in results["checks"].items()}
    return history, checks, results["test_accuracy"], results["test_loss"]


def assert_same_weights(first: Path, second: Path) -> None:
    a = torch.load(first, weights_only=True)["model_state"]
    b = torch.load(second, weights_only=True)["model_state"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "same seed, different weights"


def assert_results_header(results: dict, version: str, out: Path, data_dir: Path) -> None:
    """The part of results.json every version writes the same way."""
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results)), "results.json differs from what main() returned"
    assert on_disk["version"] == version
    assert on_disk["status"] == "completed" and on_disk["exit_code"] == 0
    assert on_disk["device"] == "cpu" and on_disk["torch_version"] == torch.__version__
    assert on_disk["seed"] == 42 == on_disk["config"]["seed"]
    assert on_disk["config"]["quick"] is True and on_disk["config"]["epochs"] == 1
    assert on_disk["config"]["out"] == str(out) and on_disk["config"]["data_dir"] == str(data_dir)
    assert on_disk["command"].startswith("python train.py --quick --device cpu")
    assert 0 < on_disk["checks_time_s"] < on_disk["wall_time_s"]
    assert 0 < on_disk["train_time_s"] < on_disk["wall_time_s"]
    assert on_disk["epochs_done"] == 1
    assert on_disk["all_checks_passed"] is True and all(c["passed"] for c in on_disk["checks"].values())
    assert sorted(on_disk["outputs"]) == sorted(p.name for p in out.iterdir() if p.is_file())
    assert math.isfinite(on_disk["test_loss"]) and 0 < on_disk["test_loss"] < 10
    assert not list(out.glob("*.tmp")), "a half-written results file was left behind"


def config_for(train, data_dir, out, *extra):
    return train.parse_args(quick_args(out, data_dir, *extra))


def load_quick_data(train, data_dir, out, *extra):
    """The version's own Data for a quick run, on the CPU."""
    return train.load_data(config_for(train, data_dir, out, *extra), torch.device("cpu"))


# ---------------------------------------------------------------------------
# Planted bugs: models that fail at a given training step, and mutated copies
# ---------------------------------------------------------------------------
def model_failing_at_step(model_class, failing_step: int, failure: str):
    """`model_class` whose training forward passes (grad enabled, train mode) return NaN
    (failure="nan") or raise KeyboardInterrupt (failure="interrupt", a Ctrl-C) from the
    `failing_step`-th on. Checks run without grad or on copies, so they do not count."""
    class FailingModel(model_class):
        def forward(self, x):
            logits = super().forward(x)
            if self.training and torch.is_grad_enabled():
                self.training_steps = getattr(self, "training_steps", 0) + 1
                if self.training_steps >= failing_step:
                    if failure == "interrupt":
                        raise KeyboardInterrupt
                    return logits * float("nan")
            return logits
    return FailingModel


def mutated_copy(version: str, tmp_path: Path, file: str, old: str, new: str) -> Path:
    """A copy of the version folder in which `old` is replaced by `new` in `file`, exactly once:
    the one-line edit a learner might make. Returns the copy's folder (load it with load_version)."""
    target = tmp_path / Path(version).name
    shutil.copytree(REPO_ROOT / version, target, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    text = (target / file).read_text()
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {file}"
    (target / file).write_text(text.replace(old, new))
    return target


def preflight(folder, data_dir, out) -> dict:
    """`python train.py --preflight --quick` of a version folder (or a mutated copy), in-process."""
    train = load_version(folder)
    with contextlib.redirect_stdout(io.StringIO()):
        return train.main(["--preflight", *quick_args(out, data_dir)])


def failed_checks(results: dict) -> list[str]:
    return [name for name, check in results["checks"].items() if not check["passed"]]


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------
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


def assert_missing_data_exits_2(version: str, tmp_path: Path, capsys) -> None:
    train = load_version(version)
    assert run_main(train, ["--quick", "--device", "cpu", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Fashion-MNIST was not found. Looked in:")
    assert "apt-get install dataset-fashion-mnist" in err and "--data-dir" in err
    assert "Traceback" not in err
    results = json.loads((tmp_path / "out" / "results.json").read_text())  # the run folder says why it stopped
    assert results["status"] == "failed" and results["exit_code"] == 2


def assert_bad_flag_exits_2(version: str, argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    train = load_version(version)
    assert run_main(train, [*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "usage:" in err, err
    assert not (tmp_path / "out").exists()  # rejected before anything is written


def assert_help_lists_every_flag(version: str, flags: list[str], capsys) -> None:
    """--help shows every flag, each with its default (ArgumentDefaultsHelpFormatter) and the
    module docstring as written (RawDescriptionHelpFormatter)."""
    train = load_version(version)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    options = [line.split()[0] for line in help_text.split("options:")[1].splitlines()
               if line.startswith("  -")]
    assert sorted(options) == sorted(["-h,", *flags])
    assert help_text.count("(default:") == len(flags)
    assert train.__doc__.strip().splitlines()[0] in help_text
    assert "    python train.py --quick" in help_text  # the docstring's layout is kept


def assert_nan_keeps_records(train, model_name: str, argv: list[str], checkpoint_epoch_key: str) -> dict:
    """A run whose loss turns NaN at its third training step (one step per epoch): epochs 1 and 2
    finish, epoch 3 stops with exit code 1; history, results and checkpoint stay."""
    setattr(train, model_name, model_failing_at_step(getattr(train, model_name), 3, "nan"))
    out = Path(argv[argv.index("--out") + 1])
    assert run_main(train, argv) == 1
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "diverged" and results["exit_code"] == 1
    assert "at step 0 of epoch 3" in results["error"] and "is not finite" in results["error"]
    assert [h["epoch"] for h in read_jsonl(out / "history.jsonl")] == [1, 2]
    checkpoint = torch.load(out / train.MODEL_FILE, weights_only=True)
    assert checkpoint["epoch"] in (1, 2) and checkpoint_epoch_key in checkpoint
    assert all(torch.isfinite(v).all() for v in checkpoint["model_state"].values() if v.is_floating_point())
    assert (out / "training_curves.png").is_file()
    return results


def assert_ctrl_c_keeps_records(train, model_name: str, argv: list[str]) -> dict:
    """Ctrl-C in the second epoch: exit code 130, status interrupted, epoch 1 kept."""
    setattr(train, model_name, model_failing_at_step(getattr(train, model_name), 2, "interrupt"))
    out = Path(argv[argv.index("--out") + 1])
    assert run_main(train, argv) == 130
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted" and results["exit_code"] == 130
    assert results["epochs_done"] == 1
    assert [h["epoch"] for h in read_jsonl(out / "history.jsonl")] == [1]
    assert torch.load(out / train.MODEL_FILE, weights_only=True)["epoch"] == 1
    return results


def assert_checks_do_not_perturb(train, monkeypatch, call, model, loader) -> None:
    """Checks observe, they do not perturb: after `call()` (the version's checks before training)
    the global RNG, the training loader's generator (shuffle, augmentation) and the model's
    weights and buffers (BatchNorm statistics) are where they were. Control: with
    rng_untouched made a no-op, the same checks do move the loader's generator, so this test
    would see a check that forgot it."""
    cpu_state, generator_state = torch.get_rng_state(), loader.generator.get_state()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    call()
    assert torch.equal(torch.get_rng_state(), cpu_state)
    assert torch.equal(loader.generator.get_state(), generator_state)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())

    monkeypatch.setattr(train, "rng_untouched", lambda *args: contextlib.nullcontext())
    call()
    assert not torch.equal(loader.generator.get_state(), generator_state)
