"""runs/carry.sh and runs/fm-data.sh: the data for the GPU machine, in parts that travel one per call.

Each call copies the tree and the carried paths afresh; /tmp stays on a warm machine. The tests play
the calls in temporary folders: what one call carried is removed before the next, as on the device."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT

CARRY = REPO_ROOT / "runs" / "carry.sh"
FM_DATA = REPO_ROOT / "runs" / "fm-data.sh"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def bash(*args, cwd, env):
    return subprocess.run(["bash", *map(str, args)], cwd=cwd, env={**os.environ, **env}, capture_output=True,
                          text=True)


def test_carry_splits_stashes_and_joins_byte_identical_and_refuses_a_missing_part(tmp_path):
    source = tmp_path / "source"
    (source / "train" / "n01").mkdir(parents=True)
    (source / "val").mkdir()
    (source / "train" / "n01" / "a.bin").write_bytes(os.urandom(70_000))
    (source / "val" / "b.bin").write_bytes(os.urandom(40_000))
    here, device = tmp_path / "here", tmp_path / "device"
    here.mkdir()
    env = {"CARRY_PART_BYTES": "30000", "CARRY_STORE": str(tmp_path / "store")}
    split = bash(CARRY, "split", source, "demo", cwd=here, env=env)
    parts = sorted((here / ".gpu").glob("carry-demo-*"))
    assert split.returncode == 0 and len(parts) >= 3, split.stderr  # 110 kB of files and tar headers
    for k, part in enumerate(parts):  # one call per part; the last one joins
        shutil.rmtree(device / ".gpu", ignore_errors=True)
        shutil.copytree(part, device / ".gpu" / part.name)
        if k == len(parts) - 1:
            missing = bash(CARRY, "join", "demo", device / "out", cwd=device, env={**env, "CARRY_STORE": str(
                tmp_path / "store-missing")})  # a store that saw only this last part
            assert missing.returncode == 2 and "missing or damaged" in missing.stderr
            assert not (device / "out").exists()
        result = bash(CARRY, "join" if k == len(parts) - 1 else "stash", "demo", device / "out", cwd=device, env=env)
        assert result.returncode == 0, result.stderr
    for name in ("train/n01/a.bin", "val/b.bin"):
        assert (device / "out" / name).read_bytes() == (source / name).read_bytes()


@pytest.mark.skipif(not (FASHION / "t10k-labels-idx1-ubyte.gz").exists(), reason="needs the Debian package")
def test_fm_data_two_halves_unpack_to_the_packages_files_and_nothing_carried_is_an_error(tmp_path):
    here = tmp_path / "here"
    shutil.copytree(REPO_ROOT / "runs", here / "runs", ignore=lambda folder, names: [n for n in names if n not in (
        "carry.sh", "fm-data.sh")] if Path(folder) == REPO_ROOT / "runs" else names)
    (here / ".gpu" / "fm-xz").mkdir(parents=True)  # what split makes with xz -9e (a minute), made fast
    for path in FASHION.glob("*.gz"):
        subprocess.run(f"zcat {path} | xz -0 -T2 > .gpu/fm-xz/{path.name[:-3]}.xz", shell=True, cwd=here, check=True)
    env = {"FM_PARTS": str(tmp_path / "fm-parts")}
    assert bash("runs/fm-data.sh", "split", cwd=here, env=env).returncode == 0
    assert sorted(p.name for p in (here / ".gpu").iterdir()) == ["fm-carry-1", "fm-carry-2", "fm-xz"]
    device = tmp_path / "device"
    shutil.copytree(here / "runs", device / "runs")
    nothing = bash("-c", "source runs/fm-data.sh", cwd=device, env=env)
    assert nothing.returncode != 0 and "no Fashion-MNIST" in nothing.stderr
    shutil.copytree(here / ".gpu" / "fm-carry-1", device / ".gpu" / "fm-carry-1")
    assert bash("runs/fm-data.sh", "stash", cwd=device, env=env).returncode == 0
    shutil.rmtree(device / ".gpu")  # call 2: only its own half travels
    shutil.copytree(here / ".gpu" / "fm-carry-2", device / ".gpu" / "fm-carry-2")
    alone = bash("-c", "source runs/fm-data.sh", cwd=device, env={"FM_PARTS": str(tmp_path / "empty")})
    assert alone.returncode != 0 and "no Fashion-MNIST" in alone.stderr  # half of the data is not the data
    shutil.rmtree(device / ".gpu" / "fm-xz", ignore_errors=True)
    joined = bash("-c", "source runs/fm-data.sh", cwd=device, env=env)
    assert joined.returncode == 0, joined.stderr
    import gzip
    for path in FASHION.glob("*.gz"):
        assert gzip.decompress((device / ".gpu" / "fashion-mnist" / path.name).read_bytes()) == \
            gzip.decompress(path.read_bytes())


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def test_device_tree_hides_the_records_keeps_the_named_scripts_and_restores_the_index(tmp_path):
    """runs/device-tree.sh on a scratch repository: while hidden, only the named scripts of runs/ are
    tracked (what a GPU call sends) and the records stay on disk; restore gives a clean status again."""
    repo = tmp_path / "repo"
    (repo / "runs" / "2026-01-01-x" / "records").mkdir(parents=True)
    (repo / "runs" / "2026-01-01-x" / "records" / "history.jsonl").write_text('{"epoch": 1}\n' * 1000)
    (repo / "runs" / "2026-01-01-x" / "run.sh").write_text("echo run\n")
    (repo / "runs" / "mps.sh").write_text("true\n")
    (repo / "train.py").write_text("print(1)\n")
    shutil.copy(REPO_ROOT / "runs" / "device-tree.sh", repo / "runs" / "device-tree.sh")
    git("init", "-q", cwd=repo)
    git("add", "-A", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "records", cwd=repo)
    tracked = set(git("ls-files", cwd=repo).split())
    keep = ["runs/2026-01-01-x/run.sh", "runs/mps.sh"]
    hidden = bash("runs/device-tree.sh", "hide", *keep, cwd=repo, env={})
    assert hidden.returncode == 0, hidden.stderr
    assert set(git("ls-files", cwd=repo).split()) == {"train.py", *keep}
    assert not [line for line in git("status", "--porcelain", cwd=repo).splitlines() if line.startswith("??")]
    assert (repo / "runs" / "2026-01-01-x" / "records" / "history.jsonl").exists()  # on disk, untouched
    again = bash("runs/device-tree.sh", "hide", *keep, cwd=repo, env={})
    assert again.returncode == 1 and "already hidden" in again.stderr
    restored = bash("runs/device-tree.sh", "restore", cwd=repo, env={})
    assert restored.returncode == 0, restored.stderr
    assert set(git("ls-files", cwd=repo).split()) == tracked
    assert git("status", "--porcelain", "--untracked-files=all", cwd=repo) == ""
    assert "runs" not in (repo / ".git" / "info" / "exclude").read_text()  # the exclude lines gone too
    (repo / "runs" / "mps.sh").write_text("false\n")
    git("add", "runs/mps.sh", cwd=repo)  # a staged change under runs/ would be lost by restore: refused
    refused = bash("runs/device-tree.sh", "hide", "runs/mps.sh", cwd=repo, env={})
    assert refused.returncode == 1 and "staged changes" in refused.stderr
    assert set(git("ls-files", cwd=repo).split()) == tracked
