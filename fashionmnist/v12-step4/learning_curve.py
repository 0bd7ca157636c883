"""Fashion-MNIST v12-step4: the learning curve. Would more data still help?

"Get more data" is the recipe's first regulariser, and the cheapest way to know whether it
would pay is to train on less: the same recipe (train.py, every default) on 10%, 25%, 50% and
100% of the training split, validation accuracy each (the validation images stay the same
for every share, and the smaller shares are nested inside the larger ones). If the curve is
still rising at the full split, more data would still help (and augmentation, which fakes
more data, is worth trying hard); if it has flattened, the next gain is in the model or the
regularisation, not the data.

The verdict is read from the last doubling of the data: the gain from 50% to 100% of the
split. At least 0.3 points of validation accuracy per doubling: "more data would still
help"; below it: "has flattened". One seed per share by default: a gain of a few tenths
is within one seed's noise, so read the verdict with the curve (--seeds 0 1 2 for spread).

    python learning_curve.py                      # 4 runs on the real Fashion-MNIST (the 100% run is the longest)
    python learning_curve.py --quick              # every code path in seconds
    python learning_curve.py --fractions 0.05 0.1 0.2 0.4 0.8 1.0 --seeds 0 1

Outputs (a new dated folder under outputs/learning_curve/, or exactly --out): one train.py run
folder per share and seed, learning_curve.png, learning_curve.json (the points and the verdict).
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

VERSION_DIR = Path(__file__).resolve().parent
REPO_ROOT = VERSION_DIR.parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # for shared/ (run folders)

from shared.runs import write_json  # noqa: E402

import train  # noqa: E402  this version's train.py: every point is one of its runs
from debug_tools import learning_curve_verdict  # noqa: E402
from visualization import plot_learning_curve  # noqa: E402

FRACTIONS = [0.1, 0.25, 0.5, 1.0]
MIN_GAIN_PER_DOUBLING = 0.003  # 0.3 points of validation accuracy: below it, the curve has flattened
OUT_DIR = VERSION_DIR / "outputs" / "learning_curve"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fractions", nargs="+", type=float, default=FRACTIONS, help="shares of the training split; one per call is fine (parallel "
                   "jobs): the curve is drawn from every run in --out")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="one run per share and seed")
    p.add_argument("--out", type=Path, default=None, help="exactly this folder (default: a new dated one)")
    p.add_argument("--summarise", action="store_true", help="train nothing: the curve from the runs in --out")
    p.add_argument("--quick", action="store_true", help="train.py --quick for every run: code paths only")
    p.add_argument("--data-dir", type=Path, default=None, help="folder with the Fashion-MNIST files")
    p.add_argument("--device", default="auto", help="train.py's --device")
    p.add_argument("--epochs", type=int, default=None, help="train.py's --epochs (default: train.py's)")
    p.add_argument("--train-flags", default="", help="more train.py flags for every run, in one string "
                   "(e.g. \"--no-input-independent-baseline\")")
    p.add_argument("--min-gain", type=float, default=MIN_GAIN_PER_DOUBLING,
                   help="validation accuracy per doubling of the data below which the curve has flattened")
    args = p.parse_args(argv)
    if any(not 0 < f <= 1 for f in args.fractions) or len(set(args.fractions)) < len(args.fractions):
        p.error("--fractions: different shares in (0, 1]")
    if args.summarise and args.out is None:
        p.error("--summarise needs --out, the folder that holds the runs")
    return args


def run_point(fraction: float, seed: int, args, out: Path) -> None:
    folder = out / f"fraction{fraction:g}" / f"seed{seed}"
    if (folder / "results.json").exists() and json.loads((folder / "results.json").read_text()).get(
            "status") == "completed":
        print(f"{fraction:.0%} of the split, seed {seed}: done already ({folder})")
        return
    flags = ["--train-fraction", f"{fraction:g}", "--seed", str(seed), "--out", str(folder), "--overwrite",
             "--device", args.device, "--no-human-baseline"]
    flags += ["--quick"] if args.quick else []
    flags += ["--data-dir", str(args.data_dir)] if args.data_dir else []
    flags += ["--epochs", str(args.epochs)] if args.epochs else []
    flags += shlex.split(args.train_flags)
    print(f"\n##### {fraction:.0%} of the training split (seed {seed}): python train.py {' '.join(flags)}")
    train.main(flags)


def read_points(out: Path) -> list[dict]:
    """One point per share: the mean over its completed seeds."""
    by_fraction = {}
    for path in sorted(out.glob("fraction*/seed*/results.json")):
        results = json.loads(path.read_text())
        if results.get("status") == "completed":
            by_fraction.setdefault(results["config"]["train_fraction"], []).append(results)
    points = []
    for fraction, runs in sorted(by_fraction.items()):
        last_epochs = [json.loads(Path(path).read_text().splitlines()[-1]) for path in
                       (out / f"fraction{fraction:g}" / f"seed{r['seed']}" / "history.jsonl" for r in runs)]
        points.append({"fraction": fraction, "images": runs[0]["data_report"]["train_size"],
                       "seeds": [r["seed"] for r in runs],
                       "val_accuracy": statistics.fmean(r["best_val_accuracy"] for r in runs),
                       "val_accuracies": [r["best_val_accuracy"] for r in runs],
                       "train_accuracy": statistics.fmean(h["train_accuracy"] for h in last_epochs),
                       "train_s": statistics.fmean(r["train_time_s"] for r in runs)})
    return points


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = args.out or OUT_DIR / f"{datetime.now(timezone.utc):%Y-%m-%d_%H%M%S}{'-quick' if args.quick else ''}"
    out.mkdir(parents=True, exist_ok=True)
    if not args.summarise:
        for seed in args.seeds:
            for fraction in sorted(args.fractions):
                run_point(fraction, seed, args, out)
    points = read_points(out)
    verdict = learning_curve_verdict(points, args.min_gain) if len(points) > 1 else {
        "verdict": "one point is no curve", "gain_per_doubling": float("nan")}
    print("\nshare   images   seeds   best val % (mean ± std)   train % (last epoch, augmented)   train s")
    for p in points:  # one seed: no spread to show; the std of several says which digits to trust
        spread = (f" ± {100 * statistics.stdev(p['val_accuracies']):.2f}" if len(p["val_accuracies"]) > 1
                  else "")
        print(f"{p['fraction']:>5.0%} {p['images']:>8}   {len(p['seeds']):>5}   "
              f"{100 * p['val_accuracy']:>9.2f}{spread:<16}{100 * p['train_accuracy']:>9.2f}{'':>24}"
              f"{p['train_s']:>7.0f}")
    print(f"\nVerdict: {verdict['verdict']} ({100 * verdict['gain_per_doubling']:+.2f} points of validation accuracy "
          f"per doubling of the data at the end of the curve; threshold {100 * args.min_gain:.1f})")
    plot_learning_curve(points, verdict, out / "learning_curve.png")
    summary = {"points": points, "verdict": verdict, "command": " ".join(["python learning_curve.py",
                                                                          *(sys.argv[1:] if argv is None else argv)])}
    write_json(out / "learning_curve.json", summary)
    print(f"Curve: {out / 'learning_curve.png'}, numbers: {out / 'learning_curve.json'}")
    return summary


if __name__ == "__main__":
    main()
