"""Fashion-MNIST v12-step4: add the regularisers one at a time, keep what validation says (the recipe, step 4).

Every arm is train.py itself (its checks, loop and records) with flags, trained for train.py's
epochs over several seeds. In the recipe's order of value, each arm adds one regulariser to
its parent; dropout and early stopping both branch from the full augmentation + weight decay
+ label smoothing recipe, so that dropping one does not confound the other:

    v11             step 3's recipe at step 4's epochs: no augmentation, no weight decay, no smoothing
    +crop-flip      more data through augmentation: random crop (padding 2), horizontal flip
    +erasing        + random erasing (p = 0.5)
    +weight-decay   + AdamW's weight decay 5e-2
    +smoothing      + label smoothing 0.1            = train.py's defaults
    +dropout        + dropout 0.2 before the classifier     (parent: +smoothing)
    +early-stop     + early stopping, patience 5            (parent: +smoothing)

Each arm is judged on validation (the best epoch's accuracy, the one train.py keeps), against
its parent: the mean difference over seeds with a 95% Welch t-interval. An arm is kept when
its mean is higher; the interval says whether 3 seeds can tell. The test set is reported
but never used to decide.

    python regularize.py                          # every arm, seeds 0 1 2, on the real Fashion-MNIST
    python regularize.py --quick                  # every code path in seconds (tiny data, 1 epoch)
    python regularize.py --arms +dropout --seeds 0 --out DIR   # one arm, one seed: pieces run in parallel this way
    python regularize.py --summarise --out DIR    # the table from the runs already in DIR

Outputs (a new dated folder under outputs/regularize/, or exactly --out): ARM/seedS/ (train.py's
own run folders: results.json, history.jsonl, plots), regularize.md (the table FAZIT.md quotes)
and regularize.json.
"""
from __future__ import annotations

import argparse
import json
import shlex
import math
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

VERSION_DIR = Path(__file__).resolve().parent
REPO_ROOT = VERSION_DIR.parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # for shared/ (run folders)

from shared.runs import write_json, write_text  # noqa: E402

import train  # noqa: E402  this version's train.py: every arm is one of its runs

OFF = ["--crop-padding", "0", "--flip-probability", "0", "--erase-probability", "0", "--weight-decay", "0",
       "--label-smoothing", "0"]
# arm: (parent, the flags on top of train.py's defaults, what the arm adds)
ARMS = {
    "v11": (None, OFF, "step 3's recipe: no regularisation"),
    "+crop-flip": ("v11", OFF[4:], "random crop and horizontal flip"),
    "+erasing": ("+crop-flip", OFF[6:], "random erasing"),
    "+weight-decay": ("+erasing", OFF[8:], "AdamW weight decay"),
    "+smoothing": ("+weight-decay", [], "label smoothing (train.py's defaults)"),
    "+dropout": ("+smoothing", ["--dropout", "0.2"], "dropout 0.2 before the classifier"),
    "+early-stop": ("+smoothing", ["--patience", "5"], "early stopping, patience 5"),
}
CONFIDENCE = 0.95
OUT_DIR = VERSION_DIR / "outputs" / "regularize"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="which arms to train")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one run per arm and seed")
    p.add_argument("--out", type=Path, default=None, help="exactly this folder (default: a new dated one)")
    p.add_argument("--summarise", action="store_true", help="train nothing: the table from the runs in --out")
    p.add_argument("--quick", action="store_true", help="train.py --quick for every run: code paths only")
    p.add_argument("--data-dir", type=Path, default=None, help="folder with the Fashion-MNIST files")
    p.add_argument("--device", default="auto", help="train.py's --device")
    p.add_argument("--epochs", type=int, default=None, help="train.py's --epochs (default: train.py's)")
    p.add_argument("--train-flags", default="", help="more train.py flags for every run, in one string "
                   "(e.g. \"--no-input-independent-baseline\")")
    args = p.parse_args(argv)
    if args.summarise and args.out is None:
        p.error("--summarise needs --out, the folder that holds the runs")
    return args


def run_arm(arm: str, seed: int, args, out: Path) -> dict:
    """One arm and seed: train.main with the arm's flags into out/ARM/seedS (kept if complete)."""
    folder = out / arm / f"seed{seed}"
    if (folder / "results.json").exists() and json.loads((folder / "results.json").read_text()).get(
            "status") == "completed":
        print(f"{arm} seed {seed}: done already ({folder})")
        return json.loads((folder / "results.json").read_text())
    flags = [*ARMS[arm][1], "--seed", str(seed), "--out", str(folder), "--overwrite", "--device", args.device,
             "--no-human-baseline"]
    flags += ["--quick"] if args.quick else []
    flags += ["--data-dir", str(args.data_dir)] if args.data_dir else []
    flags += ["--epochs", str(args.epochs)] if args.epochs else []
    flags += shlex.split(args.train_flags)
    print(f"\n##### {arm} (seed {seed}): python train.py {' '.join(flags)}")
    return train.main(flags)


def read_runs(out: Path) -> dict:
    """{arm: [results of its completed runs]} from out/ARM/seed*/results.json."""
    runs = {}
    for arm in ARMS:
        for path in sorted((out / arm).glob("seed*/results.json")):
            results = json.loads(path.read_text())
            if results.get("status") == "completed":
                runs.setdefault(arm, []).append(results)
    return runs


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function (df may be fractional, as Welch's is)."""
    x = df / (df + t * t)
    if x >= 1.0:
        return 0.5
    front = math.exp(math.lgamma(df / 2 + 0.5) - math.lgamma(df / 2) - math.lgamma(0.5)
                     + df / 2 * math.log(x) + 0.5 * math.log(1 - x))
    if x < (df / 2 + 1) / (df / 2 + 2.5):
        beta = front * _betacf(df / 2, 0.5, x) / (df / 2)
    else:
        beta = 1.0 - front * _betacf(0.5, df / 2, 1 - x) / 0.5
    return 1.0 - 0.5 * beta if t >= 0 else 0.5 * beta


def t_quantile(p: float, df: float) -> float:
    """Inverse of t_cdf by bisection: the standard library has no t distribution."""
    low, high = -1e3, 1e3
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2


def welch_interval(a: list[float], b: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its Welch t-interval: each seed is one measurement, the two sides
    may differ in spread. Needs at least 2 runs per side."""
    difference = statistics.fmean(a) - statistics.fmean(b)
    var_a, var_b = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    standard_error = math.sqrt(var_a + var_b)
    if standard_error == 0:
        return difference, difference, difference
    df = (var_a + var_b) ** 2 / (var_a ** 2 / (len(a) - 1) + var_b ** 2 / (len(b) - 1))
    half = t_quantile(0.5 + confidence / 2, df) * standard_error
    return difference, difference - half, difference + half


def _mean_std(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{scale * values[0]:.2f}"
    return f"{scale * statistics.fmean(values):.2f} ± {scale * statistics.stdev(values):.2f}"


def summarise(runs: dict) -> dict:
    """Per arm: seeds, best validation, test, train-test gap, epochs and seconds; the difference
    to the parent on validation with its interval, and the verdict kept / dropped."""
    rows = []
    for arm, (parent, flags, adds) in ARMS.items():
        if arm not in runs:
            continue
        own = runs[arm]
        val = [r["best_val_accuracy"] for r in own]
        row = {"arm": arm, "parent": parent, "adds": adds, "flags": flags, "seeds": [r["seed"] for r in own],
               "best_val": val, "test": [r["test_accuracy"] for r in own],
               "gap": [r["checks"]["train_test_gap"]["value"] for r in own],
               "epochs": [r["epochs_run"] for r in own],
               "train_s": [r["train_time_s"] for r in own], "device": sorted({r["device"] for r in own}),
               "torch": sorted({r["torch_version"] for r in own})}
        if parent in runs and len(own) > 1 and len(runs[parent]) > 1:
            difference, low, high = welch_interval(val, [r["best_val_accuracy"] for r in runs[parent]])
            row.update(difference=difference, low=low, high=high, kept=difference > 0,
                       resolved=low > 0 or high < 0)
        rows.append(row)
    return {"rows": rows, "confidence": CONFIDENCE}


def markdown(summary: dict) -> str:
    lines = ["| arm | adds | seeds | best val % | test % | train - test gap (points) | epochs | train s | "
             "val - parent (95% CI) | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in summary["rows"]:
        if "difference" in row:
            interval = (f"{100 * row['difference']:+.2f} [{100 * row['low']:+.2f}, {100 * row['high']:+.2f}] "
                        f"vs {row['parent']}")
            verdict = ("kept" if row["kept"] else "dropped") + ("" if row["resolved"] else " (within the noise)")
        else:
            interval, verdict = ("(baseline)", "") if row["parent"] is None else ("-", "needs 2+ seeds per side")
        lines.append(f"| {row['arm']} | {row['adds']} | {len(row['seeds'])} | {_mean_std(row['best_val'])} | "
                     f"{_mean_std(row['test'])} | {_mean_std(row['gap'])} | "
                     f"{'/'.join(str(e) for e in row['epochs'])} | {_mean_std(row['train_s'], 1)} | {interval} | "
                     f"{verdict} |")
    devices = sorted({d for row in summary["rows"] for d in row["device"]})
    versions = sorted({v for row in summary["rows"] for v in row["torch"]})
    lines += ["", f"Mean ± sample std over seeds; intervals: Welch t over seeds, {summary['confidence']:.0%}. "
              f"Devices: {', '.join(devices)}; torch {', '.join(versions)}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = args.out or OUT_DIR / f"{datetime.now(timezone.utc):%Y-%m-%d_%H%M%S}{'-quick' if args.quick else ''}"
    out.mkdir(parents=True, exist_ok=True)
    if not args.summarise:
        for seed in args.seeds:  # every arm of one seed before the next seed: an interrupted run has whole rows
            for arm in args.arms:
                run_arm(arm, seed, args, out)
    summary = summarise(read_runs(out))
    table = markdown(summary)
    print("\n" + table)
    write_text(out / "regularize.md", table)
    write_json(out / "regularize.json", summary)
    print(f"Table: {out / 'regularize.md'}")
    return summary


if __name__ == "__main__":
    main()
