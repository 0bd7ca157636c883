"""Imagenette v8: the levers over several ensemble runs, mean ± std, from their records only.

One run (train.py) measures its ensemble table on validation once. Whether a lever helps is a
question for several independent runs (the track's rule: mean and spread over seeds). This script
trains nothing and reads no test label; it reads finished runs' results.json:

    python ensemble.py outputs/ens-seed0 outputs/ens-seed1 outputs/ens-seed2
    python ensemble.py BASE0 BASE1 BASE2 --lever erasing ERASE0 ERASE1 ERASE2 \\
        --lever "200 epochs" LONG0 LONG1 LONG2 --out outputs/levers

Per base run, on validation (its ensemble table):
- ensemble of K: the ensemble of the first K members (no TTA) minus those members' mean accuracy;
- flip TTA, single members: the members' mean accuracy with TTA minus without;
- flip TTA, on the largest ensemble: with minus without.
Per --lever NAME RUN ... (runs of the base recipe with one flag changed: --erase-probability,
--trivial-augment, --epochs), paired with the base run of the same --seed: the mean validation
accuracy of the lever run's first k members minus the base run's first k (k: the smaller run's
member count; the same --seed gives the same member seeds, so member pairs share their seed).
Then the test accuracy of each base run's chosen ensemble and of its best member alone, each read
once after its run's choice, mean ± std, against the goals (ensemble >= 87.0%, best single model
>= 85.5%). Writes levers.md and levers.json into --out when given.
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

GOAL_ENSEMBLE = 0.870  # issue 24: the final ensemble's test accuracy, mean over 3 independent ensembles
GOAL_SINGLE = 0.855  # and the best single model's, mean of 3 seeds


def read_run(path) -> dict:
    """A finished v8 run's results.json (exit 2 with a message for anything else)."""
    try:
        folder = resolve_run_dir(path)
        results = json.loads((folder / "results.json").read_text())
    except (RunFolderError, OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"error: {path}: no readable run ({err})") from None
    if results.get("status") != "completed" or "ensemble" not in results:
        raise SystemExit(f"error: {folder}: not a finished v8 ensemble run (status {results.get('status')!r})")
    return {**results, "folder": str(folder)}


def row(results: dict, size: int, tta: bool) -> dict | None:
    return next((r for r in results["ensemble"]["table"] if r["size"] == size and r["tta"] == tta), None)


def largest(results: dict) -> int:
    return max(r["size"] for r in results["ensemble"]["table"])


def mean_std(values: list[float]) -> dict:
    return {"values": values, "n": len(values), "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None}


def levers(runs: list[dict], lever_runs: dict[str, list[dict]]) -> dict:
    """Each lever's gain per run (fractions, not points) and its mean ± std over the runs."""
    table = {}
    sizes = sorted({r["size"] for run in runs for r in run["ensemble"]["table"] if r["size"] > 1})
    for size in sizes:
        table[f"ensemble of {size} (no TTA) vs its members' mean"] = mean_std(
            [row(run, size, False)["gain"] for run in runs if row(run, size, False)])
    with_tta = [run for run in runs if row(run, largest(run), True)]
    table["flip TTA, single members (members' mean)"] = mean_std(
        [row(run, largest(run), True)["members_mean"] - row(run, largest(run), False)["members_mean"]
         for run in with_tta])
    table["flip TTA, largest ensemble"] = mean_std(
        [row(run, largest(run), True)["val_accuracy"] - row(run, largest(run), False)["val_accuracy"]
         for run in with_tta if largest(run) > 1])
    by_seed = {run["seed"]: run for run in runs}
    unpaired = []
    for name, others in lever_runs.items():
        pairs = [(by_seed[o["seed"]], o) for o in others if o["seed"] in by_seed]
        unpaired += [o["folder"] for o in others if o["seed"] not in by_seed]
        # the first k members of both runs, k the smaller run's size: the same --seed gives the same member
        # seeds, so each lever member is compared with the base member of its own seed
        table[f"{name} (members' mean, lever - base, paired by seed)"] = mean_std(
            [row(o, k, False)["members_mean"] - row(b, k, False)["members_mean"]
             for b, o in pairs for k in [min(largest(o), largest(b))]])
    tested = [run for run in runs if "test_accuracy" in run]
    every = runs + [o for others in lever_runs.values() for o in others]
    return {"levers": table, "unpaired_lever_runs": unpaired,
            "test": mean_std([run["test_accuracy"] for run in tested]),
            "best_member_test": mean_std([run["best_member_test_accuracy"] for run in tested]),
            "choices": [{"seed": run["seed"], **run["choice"]} for run in runs],
            "goals": {"ensemble": GOAL_ENSEMBLE, "single": GOAL_SINGLE},
            "runs": [run["folder"] for run in runs],
            "lever_runs": {name: [o["folder"] for o in others] for name, others in lever_runs.items()},
            "subset_fingerprints": sorted({run["data"]["subset_fingerprint"] for run in every}),
            "devices": sorted({run["device"] for run in every}),
            "epochs": sorted({run["config"]["epochs"] for run in every})}


def points(summary: dict) -> str:
    """mean ± std in percentage points (one value: no spread to show)."""
    if summary["mean"] is None:
        return "-"
    text = f"{100 * summary['mean']:+.2f}"
    return text + (f" ± {100 * summary['std']:.2f}" if summary["std"] is not None else " (one run)")


def against(summary: dict, goal: float, what: str) -> str:
    spread = f" ± {100 * summary['std']:.2f}" if summary["std"] is not None else " (one run)"
    verdict = "reached" if summary["mean"] >= goal else f"missed by {100 * (goal - summary['mean']):.2f} points"
    return f"{what}: {100 * summary['mean']:.2f}%{spread} over {summary['n']} runs; goal {100 * goal:.1f}%: {verdict}."


def markdown(result: dict) -> str:
    lines = ["| lever (validation) | runs | gain, points (mean ± std) |", "| --- | --- | --- |"]
    for name, summary in result["levers"].items():
        lines.append(f"| {name} | {summary['n']} | {points(summary)} |")
    lines += ["", "Choices (on validation): " + "; ".join(
        f"seed {c['seed']}: {c['size']} members, TTA {'on' if c['tta'] else 'off'}" for c in result["choices"])]
    if result["test"]["n"]:
        lines.append(against(result["test"], result["goals"]["ensemble"],
                             "Test accuracy of the chosen ensembles, each read once after its choice"))
        lines.append(against(result["best_member_test"], result["goals"]["single"], "Best member alone, test"))
    if result["unpaired_lever_runs"]:
        lines.append(f"Not paired (no base run of their seed): {', '.join(result['unpaired_lever_runs'])}.")
    lines.append(f"Subset fingerprints: {', '.join(result['subset_fingerprints'])}; devices: "
                 f"{', '.join(result['devices'])}; epochs: {result['epochs']}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="finished base ensemble runs (folders, results.json, or outputs/)")
    p.add_argument("--lever", nargs="+", action="append", default=[], metavar="NAME RUN",
                   help="a lever's name and its runs (the base recipe with one flag changed); repeatable")
    p.add_argument("--out", type=Path, default=None, help="write levers.md and levers.json here")
    args = p.parse_args(argv)
    if any(len(group) < 2 for group in args.lever):
        p.error("--lever needs a name and at least one run")
    runs = [read_run(path) for path in args.runs]
    lever_runs = {group[0]: [read_run(path) for path in group[1:]] for group in args.lever}
    folders = [run["folder"] for run in runs] + [o["folder"] for others in lever_runs.values() for o in others]
    if len(set(folders)) < len(folders):
        p.error("a run is named twice: the same run twice is not two measurements")
    if len({run["data"]["subset_fingerprint"] for run in runs}) > 1:
        p.error("the base runs trained on different subsets (data.subset_fingerprint): not one experiment")
    result = levers(runs, lever_runs)
    table = markdown(result)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_text(args.out / "levers.md", table)
        write_json(args.out / "levers.json", result)
    return result


if __name__ == "__main__":
    main()
