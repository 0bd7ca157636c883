"""exercises/find-the-bugs: every planted bug is one the repository's checks name.

The exercise is fashionmnist/v10-step2 with eight bugs planted in train.py
(tests/find_the_bugs_helpers.py lists them as textual edits of solution/train.py).
For each bug alone, planted in a temporary copy of the solution, `--preflight
--quick` must exit 1 with the check that exists for it among the failures and its
hint; the unedited solution must pass every check; the exercise's own train.py,
run as a learner runs it (a fresh interpreter in the exercise folder), must fail.
An exercise whose bugs the checks cannot see would teach the wrong lesson.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, load_version
from find_the_bugs_helpers import BUGS, EXERCISE, SOLUTION, plant
from fmnist_helpers import V10, fmnist_data, quick_args  # noqa: F401  (fixture)

SHARED_FILES = ("debug_tools.py", "metrics.py", "visualization.py")


def exercise_copy(tmp_path, source: str):
    """The exercise folder in a temporary repository (shared/ linked), with `source` as train.py."""
    folder = tmp_path / "exercises" / "find-the-bugs"
    shutil.copytree(EXERCISE, folder, ignore=shutil.ignore_patterns("outputs", "__pycache__", "solution"))
    (tmp_path / "shared").symlink_to(REPO_ROOT / "shared")
    (folder / "train.py").write_text(source)
    return folder


def preflight(folder, data_dir, *extra):
    train = load_version(folder)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        results = train.main(["--preflight", *quick_args(folder / "outputs", data_dir), "--no-human-baseline",
                              *extra])
    return results, stdout.getvalue()


def failed_checks(results) -> dict:
    return {name: c for name, c in results["checks"].items() if not c["passed"]}


# ---------------------------------------------------------------------------
# The files
# ---------------------------------------------------------------------------
def test_the_exercise_is_the_solution_with_every_bug_planted():
    """The answer key is complete: planting every listed bug into the solution gives the exercise's
    train.py byte for byte, so no bug is unlisted and no listed bug is missing."""
    exercise = (EXERCISE / "train.py").read_text()
    assert plant(SOLUTION.read_text(), BUGS) == exercise
    assert len(BUGS) == 8


def test_the_exercise_is_a_copy_of_v10():
    """debug_tools.py, metrics.py and visualization.py are v10-step2's; solution/train.py is
    v10-step2's train.py with only its name changed."""
    v10 = REPO_ROOT / V10
    for name in SHARED_FILES:
        assert (EXERCISE / name).read_text() == (v10 / name).read_text(), f"{name} differs from {V10}"
    solution, original = SOLUTION.read_text(), (v10 / "train.py").read_text()
    body = solution[solution.index("from __future__"):]
    expected = original[original.index("from __future__"):]
    expected = expected.replace('"version": "fashionmnist/v10-step2"', '"version": "exercises/find-the-bugs"')
    expected = expected.replace('print(f"Fashion-MNIST v10-step2 | device', 'print(f"Find the bugs | device')
    assert body == expected, f"solution/train.py drifted from {V10}/train.py"


def test_the_solution_readme_explains_every_bug():
    readme = (EXERCISE / "solution" / "README.md").read_text()
    for name, bug in BUGS.items():
        assert bug.check in readme, f"solution/README.md does not name {bug.check} (for: {name})"
    assert readme.count("\n### ") == len(BUGS), "one ### section per bug"


# ---------------------------------------------------------------------------
# The checks see every bug
# ---------------------------------------------------------------------------
def test_the_solution_passes_every_check(tmp_path, fmnist_data):
    results, stdout = preflight(exercise_copy(tmp_path, SOLUTION.read_text()), fmnist_data[0])
    assert results["exit_code"] == 0 and results["all_checks_passed"], stdout[-3000:]
    assert results["version"] == "exercises/find-the-bugs"
    assert "9/9 passed" in stdout


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")
@pytest.mark.parametrize("name", list(BUGS))
def test_each_bug_alone_fails_preflight_with_its_check(name, tmp_path, fmnist_data):
    """One bug at a time in the solution; the input-independent baseline (the slowest check, and
    not the one named for any of these bugs) is skipped to keep the suite fast."""
    bug = BUGS[name]
    folder = exercise_copy(tmp_path, plant(SOLUTION.read_text(), [name]))
    results, stdout = preflight(folder, fmnist_data[0], "--no-input-independent-baseline")
    failed = failed_checks(results)
    assert results["exit_code"] == 1 and results["status"] == "preflight", stdout[-3000:]
    assert bug.check in failed, f"{name}: {bug.check} passed; failed were {sorted(failed)}"
    assert bug.hint in failed[bug.check]["hint"], failed[bug.check]["hint"]
    if fmnist_data[1]:  # the exact set is measured on the real data
        assert set(failed) == bug.failures, f"{name}: {sorted(failed)}"
    assert f"FAILED: {', '.join(failed)}" in stdout
    if name == "dead conv blocks":  # the check names the dead layers
        assert {"conv1.0.weight", "conv2.0.weight"} <= set(failed["gradient_flow"]["details"]["without_gradient"])
        assert not any(n.startswith("classifier") for n in failed["gradient_flow"]["details"]["without_gradient"])


def test_the_exercise_fails_preflight_as_a_learner_runs_it(tmp_path, fmnist_data):
    """`cd exercises/find-the-bugs && python train.py --preflight --quick` in a fresh interpreter:
    shared/ is found from the exercise's depth, the checks run, and the exit code is 1."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "DATA_OFFLINE": "1"}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "train.py", "--preflight", "--quick", "--device", "cpu",
                           "--data-dir", str(fmnist_data[0]), "--out", str(out), "--no-human-baseline"],
                          cwd=EXERCISE, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    failed = set(failed_checks(results))
    assert results["status"] == "preflight" and results["exit_code"] == 1
    # with all eight bugs in, these fail at once (others appear as the first ones are fixed)
    assert {"input_before_net", "gradient_flow", "step_gradient", "overfit_one_batch",
            "batch_independence"} <= failed, sorted(failed)
    assert "Traceback" not in proc.stderr
