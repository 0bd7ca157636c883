"""cifar100 v1-v3: every run writes into a folder of its own (shared/runs.py, as main.py uses it).

Without --out a run goes to a new dated folder under its version's outputs/, and outputs/latest
names the newest; --out is exactly that folder and is refused when it holds a run's results,
unless --overwrite; a mistyped --data-dir creates nothing; Ctrl-C before training still leaves a
results.json that says so; the analyzer reads a run folder, outputs/ and outputs/latest.

The runs without --out write into a temporary folder: the tests point main.OUTPUTS (and the
analyzer's DEFAULT_RUN) at it, so no test leaves a run in the repository.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT, load_version
from test_cifar100_data import make_image_folder

VERSIONS = ["v1-baseline", "v2-diagnostics", "v3-ddp"]
QUICK = ["--quick", "--device", "cpu", "--width", "8"]
RUN_NAME = re.compile(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-quick(-\d+)?")  # outputs/<date>_<time>-<mode>[-N]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("cifar_run_folders"))


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    """No torchrun variables (v3 would wait for other ranks) and no DIAGNOSTICS_DIR."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "DIAGNOSTICS_DIR"):
        monkeypatch.delenv(name, raising=False)


def version_main(version, mp, outputs):
    main = load_version(f"cifar100/{version}", "main")
    mp.setattr(main, "OUTPUTS", outputs)
    return main


@pytest.fixture(scope="module")
def two_runs(images, tmp_path_factory):
    """Per version: two quick runs without --out, one after the other, in a fresh outputs/."""
    runs = {}
    for version in VERSIONS:
        outputs = tmp_path_factory.mktemp(f"{version}_outputs") / "outputs"
        with pytest.MonkeyPatch.context() as mp:
            for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "DIAGNOSTICS_DIR"):
                mp.delenv(name, raising=False)
            main = version_main(version, mp, outputs)
            runs[version] = outputs, [main.main([*QUICK, "--data-dir", str(images)]) for _ in range(2)]
    return runs


@pytest.mark.parametrize("version", VERSIONS)
def test_two_runs_without_out_get_two_folders_and_latest_names_the_second(two_runs, version):
    outputs, (first, second) = two_runs[version]
    folders = sorted(p for p in outputs.iterdir() if p.name != "latest")
    assert len(folders) == 2 and all(RUN_NAME.fullmatch(p.name) for p in folders), folders
    a, b = (Path(r["history_file"]).parent for r in (first, second))
    assert a != b and {a, b} == set(folders)
    assert (outputs / "latest").is_symlink() and (outputs / "latest").resolve() == b.resolve()
    for folder, results in ((a, first), (b, second)):
        on_disk = json.loads((folder / "results.json").read_text())
        assert on_disk["status"] == "completed" and on_disk["test_accuracy"] == results["test_accuracy"]
        assert len((folder / "history.jsonl").read_text().splitlines()) == 2
        assert (folder / "best_model.pth").is_file() and (folder / "curves.png").is_file()
        assert not [p.name for p in folder.rglob(".*")]  # no temporary of an atomic write is left
    assert first["config"]["out"] is None


def test_run_prints_its_folder_last(images, tmp_path, capsys):
    with pytest.MonkeyPatch.context() as mp:
        main = version_main("v1-baseline", mp, tmp_path / "outputs")
        assert main.cli([*QUICK, "--data-dir", str(images)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"Run folder: {(tmp_path / 'outputs' / 'latest').resolve()}"


@pytest.mark.parametrize("version", VERSIONS)
def test_out_holding_results_is_refused_unless_overwrite(two_runs, version, images, tmp_path, capsys):
    outputs, _ = two_runs[version]
    reused = tmp_path / "reused"
    shutil.copytree((outputs / "latest").resolve(), reused)
    before = {p: p.read_bytes() for p in reused.rglob("*") if p.is_file()}
    with pytest.MonkeyPatch.context() as mp:
        main = version_main(version, mp, tmp_path / "outputs")
        assert main.cli([*QUICK, "--data-dir", str(images), "--out", str(reused)]) == 2
        err = capsys.readouterr().err
        assert "already holds a run's results" in err and "--overwrite" in err
        assert {p: p.read_bytes() for p in reused.rglob("*") if p.is_file()} == before  # not one byte changed
        assert not (tmp_path / "outputs").exists()
        results = main.main([*QUICK, "--data-dir", str(images), "--out", str(reused), "--overwrite", "--seed", "1"])
    assert results["status"] == "completed" and results["config"]["overwrite"] is True
    assert json.loads((reused / "results.json").read_text())["seed"] == 1
    assert [json.loads(line)["epoch"] for line in (reused / "history.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("version", VERSIONS)
def test_missing_data_dir_exits_2_and_creates_nothing(version, tmp_path, capsys):
    with pytest.MonkeyPatch.context() as mp:
        main = version_main(version, mp, tmp_path / "outputs")
        for out in ([], ["--out", str(tmp_path / "o")]):
            assert main.cli([*QUICK, "--data-dir", str(tmp_path / "typo"), *out]) == 2
            assert "no such folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no outputs/, no o/, no typo/


@pytest.mark.parametrize("version", VERSIONS)
def test_ctrl_c_before_training_exits_130_with_results_json(version, images, tmp_path, capsys):
    """Ctrl-C anywhere, here while the data loads: not only the training loop says 'interrupted'."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        main = version_main(version, mp, tmp_path / "outputs")
        mp.setattr(main, "load_cifar100", interrupted)
        assert main.cli([*QUICK, "--data-dir", str(images)]) == 130
    err = capsys.readouterr().err
    folder = (tmp_path / "outputs" / "latest").resolve()
    assert "Interrupted (Ctrl-C)" in err and f"Run folder: {folder}" in err
    results = json.loads((folder / "results.json").read_text())
    assert results["status"] == "interrupted" and results["exit_code"] == 130
    assert results["complete_files"] == ["results.json"] and results["version"] == version


def test_resume_without_out_goes_on_with_latest(two_runs, images, tmp_path, capsys):
    outputs, _ = two_runs["v2-diagnostics"]
    names = sorted(p.name for p in outputs.iterdir())
    latest = (outputs / "latest").resolve()
    with pytest.MonkeyPatch.context() as mp:
        main = version_main("v2-diagnostics", mp, outputs)
        # a finished run resumed with its own flags has nothing left to do: no new folder
        results = main.main([*QUICK, "--data-dir", str(images), "--resume"])
        assert results["resumed_after_epoch"] == 2 and results["history_file"] == str(latest / "history.jsonl")
        assert sorted(p.name for p in outputs.iterdir()) == names
        mp.setattr(main, "OUTPUTS", tmp_path / "outputs")  # no run yet: nothing to resume
        assert main.cli([*QUICK, "--data-dir", str(images), "--resume"]) == 2
    assert "there is none yet" in capsys.readouterr().err and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("version", ["v1-baseline", "v2-diagnostics"])
def test_analyzer_reads_a_run_folder_outputs_and_latest(two_runs, version, capsys):
    """v2's analyzer on v2's run folder (diagnostics/) and on v1's (history.jsonl), however it is named."""
    outputs, _ = two_runs[version]
    newest = (outputs / "latest").resolve()
    records = newest / ("history.jsonl" if version == "v1-baseline" else "diagnostics/train_diagnostics.jsonl")
    with pytest.MonkeyPatch.context() as mp:
        analyzer = load_version("cifar100/v2-diagnostics", "scripts.analyze_diagnostics")
        mp.setattr(analyzer, "DEFAULT_RUN", outputs)
        mp.setattr(analyzer, "plot_curves", lambda *args, **kwargs: None)  # tested elsewhere; ~1 s per call here
        for argv in ([str(newest)], [str(outputs / "latest")], [str(outputs)], [str(newest / "results.json")],
                     ["--file", str(outputs / "latest")], []):
            code = analyzer.main(argv)
            out = capsys.readouterr().out
            assert code in (0, 1) and out.startswith(f"Diagnostics of {records}: 2 epoch(s)"), (argv, out)
            assert f"note: configuration from {newest / 'results.json'}" in out  # the run's own results.json
        mp.setattr(analyzer, "DEFAULT_RUN", outputs.parent / "nothing")
        assert analyzer.main([]) == 2
        assert "no run yet" in capsys.readouterr().err


def test_analyze_training_sh_takes_a_run_folder_and_latest(two_runs):
    outputs, _ = two_runs["v2-diagnostics"]
    script = REPO_ROOT / "cifar100" / "v2-diagnostics" / "scripts" / "bash" / "analyze_training.sh"
    env = {k: v for k, v in os.environ.items() if k != "DIAGNOSTICS_DIR"}
    done = subprocess.run(["bash", str(script), str(outputs / "latest")], env={**env, "MPLBACKEND": "Agg"},
                          capture_output=True, text=True, timeout=120)
    newest = (outputs / "latest").resolve()
    assert done.returncode in (0, 1), done.stderr
    assert done.stdout.startswith(f"Diagnostics of {newest / 'diagnostics' / 'train_diagnostics.jsonl'}"), done.stdout
