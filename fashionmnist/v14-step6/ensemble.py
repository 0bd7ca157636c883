"""Fashion-MNIST v14-step6: the levers of step 6 over several ensemble runs, mean ± std.

One ensemble run (train.py) measures its levers on validation once; whether a lever helps is a
question for several independent runs (the track's rule: an A/B over seeds, as mean and spread).
This script reads the records of finished runs, trains nothing and reads no test file:

    python ensemble.py outputs/RUN_SEED0 outputs/RUN_SEED1 outputs/RUN_SEED2
    python ensemble.py RUN0 RUN1 RUN2 --long LONG0 LONG1 LONG2 --out outputs/levers

Per run, on validation (each run's results.json, ensemble table):
- ensemble of K: the ensemble of the first K members (no TTA) minus those members' mean accuracy;
- flip TTA, single members: the members' mean accuracy with TTA minus without;
- flip TTA, on the largest ensemble: with minus without;
- leave it training (--long: runs of the same recipe with more --epochs, paired with the run of the same
  --seed): the long run's members' mean minus the short run's.
Then the test accuracy each run's chosen ensemble got, read once after its choice, mean ± std over
the runs, against the track's goal. Writes levers.md and levers.json into --out when given.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

VERSION_DIR = Path(__file__).resolve().parent
REPO_ROOT = VERSION_DIR.parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # for shared/ (run folders)

from shared.runs import RunFolderError, resolve_run_dir, write_json, write_text  # noqa: E402

GOAL = 0.963  # the track's goal for v14: the final ensemble's test accuracy, mean over 3 independent ensembles


def read_run(path) -> dict:
    """A finished ensemble run's results.json (exit 2 with a message for anything else)."""
    try:
        folder = resolve_run_dir(path)
        results = json.loads((folder / "results.json").read_text())
    except (RunFolderError, OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"error: {path}: no readable run ({err})") from None
    if results.get("status") != "completed" or "ensemble" not in results:
        raise SystemExit(f"error: {folder}: not a finished v14 ensemble run (status {results.get('status')!r})")
    return {**results, "folder": str(folder)}


def row(results: dict, size: int, tta: bool) -> dict | None:
    return next((r for r in results["ensemble"]["table"] if r["size"] == size and r["tta"] == tta), None)


def all_members(results: dict) -> float:
    """The mean validation accuracy of all of a run's members, each alone (no TTA)."""
    return row(results, max(r["size"] for r in results["ensemble"]["table"]), False)["members_mean"]


def mean_std(values: list[float]) -> dict:
    return {"values": values, "n": len(values), "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None}


def levers(runs: list[dict], long_runs: list[dict]) -> dict:
    """Each lever's gain per run (percentage points as fractions) and its mean ± std over the runs."""
    table = {}
    sizes = sorted({r["size"] for run in runs for r in run["ensemble"]["table"] if r["size"] > 1})
    for size in sizes:
        table[f"ensemble of {size} (no TTA) vs its members' mean"] = mean_std(
            [row(run, size, False)["gain"] for run in runs if row(run, size, False)])
    largest = [max(r["size"] for r in run["ensemble"]["table"]) for run in runs]
    table["flip TTA, single members (members' mean)"] = mean_std(
        [row(run, k, True)["members_mean"] - row(run, k, False)["members_mean"] for run, k in zip(runs, largest)])
    table["flip TTA, largest ensemble"] = mean_std(
        [row(run, k, True)["val_accuracy"] - row(run, k, False)["val_accuracy"] for run, k in zip(runs, largest)
         if k > 1])
    by_seed = {run["seed"]: run for run in runs}
    pairs = [(by_seed[long["seed"]], long) for long in long_runs if long["seed"] in by_seed]
    if long_runs:
        table["leave it training (members' mean, long - short)"] = mean_std(
            [all_members(long) - all_members(short) for short, long in pairs])
    tested = [run for run in runs if "test_accuracy" in run]
    unpaired = [long["folder"] for long in long_runs if long["seed"] not in by_seed]
    return {"levers": table, "unpaired_long_runs": unpaired,
            "test": mean_std([run["test_accuracy"] for run in tested]),
            "best_member_test": mean_std([run["best_member_test_accuracy"] for run in tested]),
            "choices": [{"seed": run["seed"], **run["choice"]} for run in runs], "goal": GOAL,
            "runs": [run["folder"] for run in runs], "long_runs": [run["folder"] for run in long_runs],
            "devices": sorted({run["device"] for run in runs + long_runs}),
            "epochs": sorted({run["config"]["epochs"] for run in runs + long_runs})}


def points(summary: dict) -> str:
    """mean ± std in percentage points (one value: no spread to show)."""
    if summary["mean"] is None:
        return "-"
    text = f"{100 * summary['mean']:+.2f}"
    return text + (f" ± {100 * summary['std']:.2f}" if summary["std"] is not None else " (one run)")


def markdown(result: dict) -> str:
    lines = ["| lever (validation) | runs | gain, points (mean ± std) |", "| --- | --- | --- |"]
    for name, summary in result["levers"].items():
        lines.append(f"| {name} | {summary['n']} | {points(summary)} |")
    test, best = result["test"], result["best_member_test"]
    lines += ["", "Choices (on validation): " + "; ".join(
        f"seed {c['seed']}: {c['size']} members, TTA {'on' if c['tta'] else 'off'}" for c in result["choices"])]
    if test["n"]:
        spread = f" ± {100 * test['std']:.2f}" if test["std"] is not None else " (one run)"
        lines.append(f"Test accuracy of the chosen ensembles, each read once after its choice: "
                     f"{100 * test['mean']:.2f}%{spread} over {test['n']} runs (best member alone: "
                     f"{100 * best['mean']:.2f}%); goal {100 * result['goal']:.1f}%: "
                     + ("reached." if test["mean"] >= result["goal"] else
                        f"missed by {100 * (result['goal'] - test['mean']):.2f} points."))
    lines.append(f"Devices: {', '.join(result['devices'])}; epochs: {result['epochs']}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="finished ensemble runs (folders, results.json, or outputs/)")
    p.add_argument("--long", nargs="*", default=[], help="runs of the same recipe trained longer (--epochs)")
    p.add_argument("--out", type=Path, default=None, help="write levers.md and levers.json here")
    args = p.parse_args(argv)
    runs, long_runs = [read_run(path) for path in args.runs], [read_run(path) for path in args.long]
    folders = [run["folder"] for run in runs + long_runs]
    if len(set(folders)) < len(folders):
        p.error("a run is named twice: the same run twice is not two measurements")
    result = levers(runs, long_runs)
    table = markdown(result)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_text(args.out / "levers.md", table)
        write_json(args.out / "levers.json", result)
    return result


if __name__ == "__main__":
    main()
