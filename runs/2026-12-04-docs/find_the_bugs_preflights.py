"""exercises/find-the-bugs: `python train.py --preflight --quick` for each bug alone (planted into
solution/train.py with the edits of tests/find_the_bugs_helpers.py), for the solution and for the
exercise as handed out. Each run in a temporary copy of the exercise folder; its results.json and
console output are copied here as <name>.results.json and <name>.console.txt.

    nice -n 10 python runs/2026-12-04-docs/find_the_bugs_preflights.py   # from the repository root
"""
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from find_the_bugs_helpers import BUGS, EXERCISE, SOLUTION, plant  # noqa: E402

OUT = HERE / "find-the-bugs-preflight-quick"


def slug(name: str) -> str:
    return name.replace("()", "").replace(".", "-").replace(" ", "-")


def variants():
    yield "solution", SOLUTION.read_text()
    for name in BUGS:
        yield slug(name), plant(SOLUTION.read_text(), [name])
    yield "exercise-as-is", (EXERCISE / "train.py").read_text()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, source in variants():
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "exercises" / "find-the-bugs"  # a temporary repository, shared/ linked
            (Path(tmp) / "shared").symlink_to(ROOT / "shared")
            shutil.copytree(EXERCISE, folder, ignore=shutil.ignore_patterns("outputs", "__pycache__", "solution"))
            (folder / "train.py").write_text(source)
            proc = subprocess.run([sys.executable, "train.py", "--preflight", "--quick", "--out", str(folder / "run")],
                                  cwd=folder, capture_output=True, text=True)
            (OUT / f"{name}.console.txt").write_text(proc.stdout + proc.stderr)
            shutil.copy(folder / "run" / "results.json", OUT / f"{name}.results.json")
            print(f"{name}: exit code {proc.returncode}", flush=True)


if __name__ == "__main__":
    main()
