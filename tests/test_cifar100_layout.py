"""Each cifar100 version differs from its predecessor only where its one idea lives."""
from __future__ import annotations

import subprocess

import pytest

from conftest import REPO_ROOT

TRACK = REPO_ROOT / "cifar100"
# (predecessor, version, files changed on purpose, files added, files removed)
STEPS = [
    ("v1-baseline", "v2-diagnostics", {"main.py", "scripts/train_utils.py", "README.md"},
     {"DIAGNOSTICS.md", "scripts/analyze_diagnostics.py", "scripts/check_transforms.py",
      "scripts/bash/analyze_training.sh", "scripts/bash/check_transforms.sh"}, set()),
    ("v2-diagnostics", "v3-ddp", {"main.py", "scripts/train_utils.py", "README.md"},
     {"scripts/benchmark_throughput.py", "scripts/bash/train_ddp.sh"}, {"DIAGNOSTICS.md"}),
]


def tracked_files(version: str) -> dict[str, bytes]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", f"cifar100/{version}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()
    prefix = f"cifar100/{version}/"
    return {name[len(prefix):]: (REPO_ROOT / name).read_bytes() for name in listed if (REPO_ROOT / name).is_file()}


@pytest.mark.parametrize("before, after, changed, added, removed", STEPS, ids=[s[1] for s in STEPS])
def test_diff_holds_only_the_new_idea(before, after, changed, added, removed):
    old, new = tracked_files(before), tracked_files(after)
    assert set(new) - set(old) == added
    assert set(old) - set(new) == removed
    assert {name for name in set(old) & set(new) if old[name] != new[name]} == changed
