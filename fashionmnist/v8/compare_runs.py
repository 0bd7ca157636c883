"""Put several runs side by side: one row per group of runs, mean +- std over their seeds.

    python compare_runs.py outputs/*/results.json
    python compare_runs.py outputs/latest ../v6/outputs/2026-12-04_14-03-11-full
    python compare_runs.py ../v6/runs/*/results.json ../v8/runs/*/results.json

Each argument is a results.json, a run folder, outputs/latest, or a version's outputs/
(its newest run).

Runs are grouped by version and by every setting that differs between the files, except
the ones that are meant to differ between repetitions (seed, output folder, data folder,
device). A difference between two groups is only worth a claim when it is larger than the
spread within them: one run per side shows nothing. std is the sample standard deviation
(n - 1); with one run it is not defined and shown as "-". Runs that did not complete
(status other than "completed") are listed below the table and left out of it.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # for shared/ (run folders)

from shared.runs import RunFolderError, resolve_run_dir  # noqa: E402

REPETITION_KEYS = {"seed", "out", "data_dir", "device"}  # differ between repetitions of the same experiment
# (results.json key, column title, scale, decimals, unit)
COLUMNS = [("test_accuracy", "test acc", 100, 2, "%"), ("best_val_accuracy", "best val acc", 100, 2, "%"),
           ("test_loss", "test loss", 1, 4, ""), ("ece", "ECE", 1, 4, ""),
           ("best_epoch", "best epoch", 1, 1, ""), ("wall_time_s", "wall time", 1, 0, "s")]


def mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def value_of(results: dict, key: str):
    if key == "ece":
        return results.get("evaluation", {}).get("calibration", {}).get("ece")
    return results.get(key)


def load(paths: list[Path]) -> tuple[list[dict], list[str]]:
    runs, skipped, seen = [], [], set()
    for path in paths:
        try:
            path = resolve_run_dir(path) / "results.json"  # a run folder, outputs/latest, or the file itself
            if path in seen:  # outputs/* names the newest run twice: as itself and as latest
                continue
            seen.add(path)
            results = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError, RunFolderError) as err:
            raise SystemExit(f"error: cannot read {path}: {err}") from None
        if results.get("status") != "completed":
            skipped.append(f"{path}: status {results.get('status')!r}")
            continue
        results["_path"] = str(path)
        runs.append(results)
    return runs, skipped


def group_runs(runs: list[dict]) -> dict[str, list[dict]]:
    """Version plus the settings that differ between the runs (not the repetition keys). Only
    settings every run has are compared: one that a version lacks is that version's difference."""
    keys = sorted(set.intersection(*(set(r.get("config", {})) for r in runs)) - REPETITION_KEYS)
    differing = [k for k in keys if len({json.dumps(r.get("config", {}).get(k)) for r in runs}) > 1]
    groups: dict[str, list[dict]] = {}
    for r in runs:
        label = " ".join([r.get("version", "?")] + [f"{k}={r['config'].get(k)}" for k in differing])
        groups.setdefault(label, []).append(r)
    return groups


def table(groups: dict[str, list[dict]]) -> str:
    header = ["run group", "seeds"] + [column[1] for column in COLUMNS]
    rows = []
    for label, members in groups.items():
        row = [label, ",".join(str(m.get("seed")) for m in members)]
        for key, _, scale, decimals, unit in COLUMNS:
            values = [value_of(m, key) for m in members]
            values = [v * scale for v in values if v is not None]
            if not values:
                row.append("-")
                continue
            mean, std = mean_std(values)
            row.append(f"{mean:.{decimals}f}{unit} ± " + ("-" if std is None else f"{std:.{decimals}f}{unit}"))
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path, help="results.json files of several runs")
    args = p.parse_args(argv)
    runs, skipped = load(args.results)
    if not runs:
        print("error: none of the files is a completed run", file=sys.stderr)
        raise SystemExit(2)
    text = table(group_runs(runs))
    if skipped:
        text += "\n\nnot completed, left out:\n" + "\n".join(f"  {s}" for s in skipped)
    print(text)
    return text


if __name__ == "__main__":
    main()
