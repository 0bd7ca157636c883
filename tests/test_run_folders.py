"""One run, one folder (issue 20), in every version of fashionmnist, imagenette and the exercise.

- shared/runs.py: dated folders that sort by time and show the mode, a suffix on a clash,
  outputs/latest, --out exactly, refusal to reuse a folder with results, atomic writes;
- every version: a run without --out gets a new folder under the version's outputs/ and
  outputs/latest; --out with results is refused (exit 2, nothing touched) unless --overwrite;
  a nonexistent --data-dir exits 2 before anything is created; Ctrl-C anywhere exits 130
  with results.json saying "interrupted";
- fashionmnist/v10-step2 end to end: two --quick runs and a --preflight give three complete,
  separate folders; real SIGINTs (during the checks, during training) from another process.
(cifar100's versions are tested in tests/test_cifar100_*.py.)
"""
from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import REPO_ROOT, load_version
from fmnist_helpers import fmnist_data, generated_data  # noqa: F401  (fixtures)
from imagenette_helpers import imagenette_folder  # noqa: F401  (fixture; its cache goes to a temp folder)
from shared import runs

FASHIONMNIST = ["fashionmnist/v1", "fashionmnist/v2", "fashionmnist/v3", "fashionmnist/v4", "fashionmnist/v5",
                "fashionmnist/v6", "fashionmnist/v7", "fashionmnist/v8", "fashionmnist/v9-step1",
                "fashionmnist/v10-step2", "fashionmnist/v11-step3", "fashionmnist/v12-step4", "fashionmnist/v13-step5",
                "fashionmnist/v14-step6", "fashionmnist/v15-speed", "exercises/find-the-bugs"]
IMAGENETTE = ["imagenette/v1", "imagenette/v2", "imagenette/v3", "imagenette/v4", "imagenette/v5",
              "imagenette/v6/v6a", "imagenette/v6/v6b", "imagenette/v7/v7a", "imagenette/v7/v7b", "imagenette/v7/v7c",
              "imagenette/v8"]
VERSIONS = FASHIONMNIST + IMAGENETTE
V10 = "fashionmnist/v10-step2"
# v10 and the exercise: the checks that cost seconds, off where a test is about something else
FAST = ["--no-human-baseline", "--no-input-independent-baseline", "--no-overfit-test", "--no-batch-independence-test"]


def test_every_version_folder_is_covered():
    found = sorted(str(p.parent.relative_to(REPO_ROOT)) for track in ("fashionmnist", "imagenette")
                   for p in (REPO_ROOT / track).rglob("train.py"))
    assert found == sorted(v for v in VERSIONS if not v.startswith("exercises"))


# ---------------------------------------------------------------------------
# shared/runs.py
# ---------------------------------------------------------------------------
def test_dated_folders_sort_by_time_show_the_mode_and_never_clash(tmp_path):
    outputs = tmp_path / "outputs"
    t = datetime(2026, 12, 4, 14, 3, 11)
    first = runs.make_run_dir(outputs, "quick", now=t)
    second = runs.make_run_dir(outputs, "quick", now=t)  # the same second: a suffix, not the same folder
    third = runs.make_run_dir(outputs, "preflight", now=datetime(2026, 12, 4, 14, 3, 12))
    assert [first.name, second.name, third.name] == [
        "2026-12-04_14-03-11-quick", "2026-12-04_14-03-11-quick-2", "2026-12-04_14-03-12-preflight"]
    assert sorted(p.name for p in outputs.iterdir() if p.name != "latest") == [first.name, second.name, third.name]
    assert (outputs / "latest").resolve() == third
    assert runs.resolve_run_dir(outputs) == third and runs.resolve_run_dir(outputs / "latest") == third
    assert runs.run_mode() == "full" and runs.run_mode(True, True) == "quick-preflight"


def test_latest_as_a_text_file_where_there_are_no_symlinks(tmp_path, monkeypatch):
    def no_symlinks(*args, **kwargs):
        raise OSError("symlinks not allowed")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    folder = runs.make_run_dir(tmp_path / "outputs", "full")
    latest = tmp_path / "outputs" / "latest"
    assert latest.is_file() and not latest.is_symlink() and latest.read_text().strip() == folder.name
    assert runs.resolve_run_dir(latest) == folder and runs.resolve_run_dir(tmp_path / "outputs") == folder


def test_out_is_exactly_that_folder_and_a_folder_with_results_is_refused(tmp_path):
    out = tmp_path / "my-run"
    assert runs.make_run_dir(tmp_path / "outputs", "quick", out) == out.resolve()
    assert not (tmp_path / "outputs").exists()  # --out is not under outputs/: latest is left alone
    (out / "results.json").write_text("{}")
    with pytest.raises(runs.RunFolderError, match="already holds a run's results.*--overwrite"):
        runs.make_run_dir(tmp_path / "outputs", "quick", out)
    with pytest.raises(runs.RunFolderError, match="--resume"):
        runs.make_run_dir(tmp_path / "outputs", "quick", out, resume=False)
    assert runs.make_run_dir(tmp_path / "outputs", "quick", out, overwrite=True) == out.resolve()
    assert runs.make_run_dir(tmp_path / "outputs", "quick", out, resume=True) == out.resolve()
    assert (out / "results.json").read_text() == "{}"  # checking the folder wrote nothing into it


def test_resume_without_out_takes_the_newest_run(tmp_path):
    older = runs.make_run_dir(tmp_path / "outputs", "full", now=datetime(2026, 1, 1))
    newer = runs.make_run_dir(tmp_path / "outputs", "full", now=datetime(2026, 1, 2))
    assert runs.make_run_dir(tmp_path / "outputs", "full", resume=True) == newer != older
    with pytest.raises(runs.RunFolderError, match="no run folder"):
        runs.make_run_dir(tmp_path / "elsewhere", "full", resume=True)


def test_writes_are_atomic_and_temporaries_are_not_listed(tmp_path):
    runs.write_json(tmp_path / "results.json", {"a": 1})
    assert json.loads((tmp_path / "results.json").read_text()) == {"a": 1}
    (tmp_path / ".plot.123.tmp.png").write_bytes(b"half a png")  # what a write cut short leaves
    assert runs.complete_files(tmp_path) == ["results.json"]
    runs.remove_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]

    class Exploding:
        def savefig(self, path, **kwargs):
            Path(path).write_bytes(b"half")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runs.save_figure(Exploding(), tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()  # whole or absent


class _RunningRun:
    """What stop_cleanly needs of a run: its folder, its results and its own way of saving them."""

    def __init__(self, out: Path):
        self.out, self.results = out, {"status": "running"}

    def save(self, **updates):
        self.results.update(updates)
        runs.write_json(self.out / "results.json", self.results)


def test_stop_cleanly_marks_the_run_interrupted(tmp_path, capsys):
    (tmp_path / "history.jsonl").write_text('{"epoch": 1}\n')
    with pytest.raises(SystemExit) as stop:
        with runs.stop_cleanly(_RunningRun(tmp_path)):
            raise KeyboardInterrupt
    assert stop.value.code == 130
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "interrupted" and results["exit_code"] == 130
    assert results["complete_files"] == ["history.jsonl", "results.json"]
    err = capsys.readouterr().err
    assert "Interrupted (Ctrl-C)" in err and err.rstrip().endswith(f"Run folder: {tmp_path}")


def test_stop_cleanly_treats_sigterm_as_ctrl_c_and_restores_the_handler(tmp_path, capsys):
    # The bug: `kill`, `timeout` or a preemption (SIGTERM) ended Python at once, with no results.json
    # saying so and nothing saved by the phase that was running. Now it arrives as Terminated, a
    # KeyboardInterrupt, wherever the run is, and the handler before the run comes back after it.
    seen = []
    before = signal.signal(signal.SIGTERM, lambda *_: seen.append("outside"))
    try:
        with pytest.raises(SystemExit) as stop:
            with runs.stop_cleanly(_RunningRun(tmp_path)):
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(5)  # the handler raises before this ends
                except KeyboardInterrupt as err:  # what the training loops catch to keep their history
                    assert isinstance(err, runs.Terminated)
                    raise
        assert stop.value.code == 130
        assert json.loads((tmp_path / "results.json").read_text())["status"] == "interrupted"
        assert "Interrupted (SIGTERM)" in capsys.readouterr().err
        os.kill(os.getpid(), signal.SIGTERM)  # after the run: the handler from before it again
        time.sleep(0.2)
        assert seen == ["outside"]
    finally:
        signal.signal(signal.SIGTERM, before)


def test_existing_dir_refuses_a_missing_folder(tmp_path):
    assert runs.existing_dir(str(tmp_path)) == tmp_path
    with pytest.raises(Exception, match="no such folder: /nonexistent/fmnist"):
        runs.existing_dir("/nonexistent/fmnist")


# ---------------------------------------------------------------------------
# Every version
# ---------------------------------------------------------------------------
def _data_args(version: str, fmnist_dir: Path, imagenette_dir: Path) -> list[str]:
    data = imagenette_dir if version.startswith("imagenette") else fmnist_dir
    extra = FAST if version in (V10, "fashionmnist/v11-step3", "fashionmnist/v12-step4", "fashionmnist/v13-step5",
                                "fashionmnist/v14-step6", "fashionmnist/v15-speed", "exercises/find-the-bugs") else []
    if version == "fashionmnist/v15-speed":  # its profiler trains a copy at two batch sizes: seconds
        extra = [*extra, "--no-profile"]
    if version.startswith(("imagenette/v6", "imagenette/v7", "imagenette/v8")):  # optional checks cost seconds
        extra = ["--no-overfit-test", "--no-batch-independence-test"]
    if version.startswith(("imagenette/v7", "imagenette/v8")):  # ResNet50 at 64 px costs a CPU half a minute; the folders do not care
        extra += ["--image-size", "32"]
    return ["--quick", "--preflight", "--device", "cpu", "--data-dir", str(data), *extra]


def _exit_code(train, argv) -> int:
    with pytest.raises(SystemExit) as stop:
        train.main(argv)
    return stop.value.code


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data_dirs(fmnist_data, imagenette_folder):  # noqa: F811
    return fmnist_data[0], imagenette_folder


@pytest.mark.parametrize("version", VERSIONS)
def test_each_run_gets_its_own_folder_and_nothing_is_overwritten(version, data_dirs, tmp_path, monkeypatch, capsys):
    train = load_version(version)
    outputs = tmp_path / "outputs"
    monkeypatch.setattr(train, "OUT_DIR", outputs)  # the version's outputs/, in a temp folder
    args = _data_args(version, *data_dirs)

    # A missing --data-dir: exit 2 before anything exists (no run folder, no data folder).
    missing = ["--quick", "--preflight", "--device", "cpu", "--data-dir", str(tmp_path / "no" / "such")]
    assert _exit_code(train, missing) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "no").exists() and not outputs.exists()

    # A run without --out: a new dated folder, named by its mode, and outputs/latest on it. (The
    # exercise's planted bug, the scheduler stepped before the optimizer, makes PyTorch warn: it must.)
    with (pytest.warns(UserWarning, match=r"lr_scheduler\.step\(\)` before `optimizer\.step\(\)")
          if version == "exercises/find-the-bugs" else contextlib.nullcontext()):
        results = train.main(args)
    first = runs.resolve_run_dir(outputs / "latest")
    assert first.parent == outputs and first.name.endswith("-quick-preflight")
    assert json.loads((first / "results.json").read_text())["status"] == results["status"] == "preflight"
    assert capsys.readouterr().out.rstrip().endswith(f"Run folder: {first}")
    before = _snapshot(first)

    # --out on that folder is refused, exit 2, nothing touched; --overwrite may.
    assert _exit_code(train, [*args, "--out", str(first)]) == 2
    assert "already holds a run's results" in capsys.readouterr().err
    assert _snapshot(first) == before

    # Ctrl-C anywhere (here: the moment the data copy is named, before any check): exit 130.
    real_print = builtins.print

    def interrupting_print(*values, **kwargs):
        if values and str(values[0]).startswith("data: "):
            raise KeyboardInterrupt
        real_print(*values, **kwargs)

    monkeypatch.setattr(builtins, "print", interrupting_print)
    assert _exit_code(train, args) == 130
    monkeypatch.setattr(builtins, "print", real_print)
    second = runs.resolve_run_dir(outputs / "latest")
    assert second != first and second.parent == outputs
    interrupted = json.loads((second / "results.json").read_text())
    assert interrupted["status"] == "interrupted" and interrupted["exit_code"] == 130
    assert "results.json" in interrupted["complete_files"]
    assert "Traceback" not in capsys.readouterr().err
    assert _snapshot(first) == before  # the earlier run is untouched


# ---------------------------------------------------------------------------
# fashionmnist/v10-step2 end to end, as a user meets it
# ---------------------------------------------------------------------------
def test_v10_two_quick_runs_and_a_preflight_keep_three_complete_folders(fmnist_data, tmp_path,  # noqa: F811
                                                                        monkeypatch):
    train = load_version(V10)
    outputs = tmp_path / "outputs"
    monkeypatch.setattr(train, "OUT_DIR", outputs)
    data = ["--device", "cpu", "--data-dir", str(fmnist_data[0])]
    folders = []
    for argv in (["--quick", *data, *FAST], ["--quick", *data, *FAST, "--seed", "1"], ["--preflight", "--quick", *data]):
        results = train.main(argv)
        folders.append(runs.resolve_run_dir(outputs / "latest"))
        assert results["command"] == "python train.py " + " ".join(argv)
    assert len(set(folders)) == 3 and [f.name.split("-", 5)[-1] for f in folders] == [
        "quick", "quick", "quick-preflight"]
    for folder in folders[:2]:  # the two quick runs: complete, and each REPORT.md names its own command
        results = json.loads((folder / "results.json").read_text())
        assert results["status"] == "completed" and results["exit_code"] == 0
        assert set(results["outputs"]) == {p.name for p in folder.iterdir()}
        assert f"command: {results['command']}" in (folder / "REPORT.md").read_text().replace("`", "")
        assert (folder / "best_model_v10.pth").is_file() and (folder / "history.jsonl").stat().st_size > 0
    seeds = [json.loads((f / "results.json").read_text())["seed"] for f in folders]
    assert seeds == [42, 1, 42]
    preflight = json.loads((folders[2] / "results.json").read_text())
    assert preflight["status"] == "preflight" and not (folders[2] / "REPORT.md").exists()
    assert not (folders[2] / "history.jsonl").exists()


def _start(version_copy: Path, argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MPLBACKEND": "Agg", "DATA_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    # SIGINT back to its default: a shell's background job (`pytest &`) starts with it ignored, and a
    # Python started with SIGINT ignored never raises KeyboardInterrupt: the test would see exit 0.
    return subprocess.Popen([sys.executable, "-u", "train.py", *argv], cwd=version_copy, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _interrupt_when(proc: subprocess.Popen, marker: str, timeout: float = 120,
                    sig: int = signal.SIGINT) -> tuple[str, str]:
    """Send `sig` once stdout shows `marker`; return (stdout, stderr) after the process ended."""
    seen, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            time.sleep(0.3)  # well inside the phase
            proc.send_signal(sig)
            break
        assert time.monotonic() < deadline, "".join(seen)
    out, err = proc.communicate(timeout=timeout)
    return "".join(seen) + out, err


@pytest.mark.parametrize("phase, marker, sig", [("checks", "--- Checks before training ---", signal.SIGINT),
                                                ("training", "--- Training ---", signal.SIGINT),
                                                ("training", "--- Training ---", signal.SIGTERM)])
def test_v10_sigint_from_outside_exits_130_and_keeps_earlier_runs(phase, marker, sig, fmnist_data,  # noqa: F811
                                                                  tmp_path):
    copy = tmp_path / "fashionmnist" / "v10-step2"
    shutil.copytree(REPO_ROOT / V10, copy, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    data = ["--device", "cpu", "--data-dir", str(fmnist_data[0])]
    earlier = _start(copy, ["--quick", "--preflight", *data, *FAST])
    assert earlier.wait(timeout=300) == 0, earlier.stderr.read()
    earlier_folder = runs.resolve_run_dir(copy / "outputs")
    before = _snapshot(earlier_folder)

    # In training: more epochs, so the signal lands inside the loop, not after it.
    argv = ["--quick", *data, "--no-human-baseline"] + (["--epochs", "50"] if phase == "training" else [])
    if phase == "training":
        argv += ["--no-input-independent-baseline", "--no-overfit-test", "--no-batch-independence-test"]
    proc = _start(copy, argv)
    out, err = _interrupt_when(proc, marker, sig=sig)
    assert proc.returncode == 130, out + err  # SIGTERM too: handled as Ctrl-C (shared/runs.py), not a kill
    assert "Traceback" not in err and "Interrupted" in err
    folder = runs.resolve_run_dir(copy / "outputs")
    assert folder != earlier_folder and err.rstrip().endswith(f"Run folder: {folder}")
    results = json.loads((folder / "results.json").read_text())
    assert results["status"] == "interrupted" and results["exit_code"] == 130
    assert set(results["complete_files"]) == {p.name for p in folder.iterdir()} | {"results.json"}
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no half-written file left
    if phase == "training":
        assert "history.jsonl" in results["complete_files"]
    assert _snapshot(earlier_folder) == before


# ---------------------------------------------------------------------------
# Tools that read runs take a run folder, outputs/ and outputs/latest
# ---------------------------------------------------------------------------
def _fake_runs(outputs: Path, accuracies: list[float]) -> list[Path]:
    folders = []
    for seed, accuracy in enumerate(accuracies):
        folder = runs.make_run_dir(outputs, "full", now=datetime(2026, 12, 4, 12, 0, seed))
        runs.write_json(folder / "results.json", {
            "version": "fashionmnist/v8", "status": "completed", "seed": seed, "test_accuracy": accuracy,
            "config": {"seed": seed, "lr": 0.001, "out": None}})
        (folder / "history.jsonl").write_text(json.dumps({"epoch": 1, "val_accuracy": accuracy}) + "\n")
        folders.append(folder)
    return folders


def test_compare_runs_reads_run_folders_and_latest_once(tmp_path):
    compare_runs = load_version("fashionmnist/v8", "compare_runs")
    outputs = tmp_path / "outputs"
    folders = _fake_runs(outputs, [0.90, 0.92])
    loaded, skipped = compare_runs.load([*outputs.iterdir()])  # both runs and latest: the newest only once
    assert sorted(r["test_accuracy"] for r in loaded) == [0.90, 0.92] and skipped == []
    loaded, _ = compare_runs.load([outputs / "latest", folders[0] / "results.json"])
    assert sorted(r["test_accuracy"] for r in loaded) == [0.90, 0.92]
    loaded, _ = compare_runs.load([outputs])  # a version's outputs/: its newest run
    assert [r["test_accuracy"] for r in loaded] == [0.92]


def test_compare_ab_counts_the_latest_run_once(tmp_path):
    compare_ab = load_version("imagenette/v6", "compare_ab")
    outputs = tmp_path / "outputs"
    _fake_runs(outputs, [0.80, 0.82, 0.84])
    assert sorted(r["test_accuracy"] for r, _ in compare_ab.load_runs(outputs)) == [0.80, 0.82, 0.84]
    assert [r["test_accuracy"] for r, _ in compare_ab.load_runs(outputs / "latest")] == [0.84]
