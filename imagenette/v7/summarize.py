"""The comparison table of FAZIT.md, from the runs' own results.json files.

    python summarize.py "ResNet18=v7a/outputs/seed*" "ResNet34=v7b/outputs/seed*" ...

Each argument is NAME=GLOB: the run folders (each with results.json) that form one row.
Per row: runs, test accuracy mean +- std (sample std over the runs: seeds), validation
accuracy at the best epoch, the best epoch, the train - validation gap at it (training
accuracy is on MixUp batches), parameters, and the training seconds (the sum of the epochs
in history.jsonl, so a resumed run counts all of them) and training images per second as
the runs measured them: only comparable between runs that had the GPU alone.
Runs that did not complete are listed and left out.
"""
from __future__ import annotations

import argparse
import glob
import json
import statistics
import sys
from pathlib import Path


def mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.{digits}f} (1 run)"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def summarize(groups: dict[str, list[Path]]) -> tuple[str, list[str]]:
    """A markdown table, one row per group, and the runs left out (not completed)."""
    lines = ["| | runs | test accuracy (%) | validation (%) | best epoch | train - val gap (points) | "
             "parameters | training time (s) | img/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    skipped = []
    for name, folders in groups.items():
        runs = []
        for folder in folders:
            results = json.loads((folder / "results.json").read_text())
            if results.get("status") != "completed":
                skipped.append(f"{folder} ({results.get('status')})")
                continue
            history = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
            epochs = [h for h in history if h["epoch"] > 0]  # epoch 0 is the state at init
            results["history_seconds"] = sum(h["seconds"] for h in epochs)
            results["history_images_per_second"] = statistics.fmean(h["images_per_second"] for h in epochs)
            runs.append(results)
        if not runs:
            lines.append(f"| {name} | 0 | - | - | - | - | - | - | - |")
            continue
        params = sorted({r["num_parameters"] for r in runs})
        lines.append(
            f"| {name} | {len(runs)} | {mean_std([r['test_accuracy'] for r in runs], 100)} | "
            f"{mean_std([r['val_accuracy'] for r in runs], 100)} | "
            f"{mean_std([r['best_epoch'] for r in runs], digits=0)} | "
            f"{mean_std([r['train_val_gap'] for r in runs], 100, 1)} | "
            f"{', '.join(f'{p:,}' for p in params)} | {mean_std([r['history_seconds'] for r in runs], digits=0)} | "
            f"{mean_std([r['history_images_per_second'] for r in runs], digits=0)} |")
    return "\n".join(lines), skipped


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("groups", nargs="+", help="NAME=GLOB of run folders with results.json")
    args = p.parse_args(argv)
    groups = {}
    for spec in args.groups:
        name, sep, pattern = spec.partition("=")
        # resolve(): outputs/* matches the newest run twice (as itself and as outputs/latest); count it once
        folders = sorted({Path(f).resolve() for f in glob.glob(pattern) if (Path(f) / "results.json").is_file()})
        if not sep or not folders:
            p.error(f"{spec!r}: expected NAME=GLOB matching folders with results.json")
        groups[name] = folders
    table, skipped = summarize(groups)
    print(table)
    for run in skipped:
        print(f"left out, not completed: {run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
