"""Compare the two sides of an A/B experiment over seeds: is the difference larger than the noise?

    python compare_ab.py RUNS_A RUNS_B [--out compare_ab.png]

RUNS_A and RUNS_B are folders that hold one run per seed (any `*/results.json` below
them, with its `history.jsonl` beside it), e.g. the `--out` folders of
`python v6a/train.py --seed N --out runs/v6a/seedN`, or a version's `outputs/` (every run in
it, counted once although outputs/latest names the newest again). For every metric the script
prints each side's mean ± std over seeds, the difference A − B with a 95%
confidence interval, and a verdict:

* the interval is a **Welch t-interval over seeds** (each seed is one measurement; the
  sides may have different spreads and sizes), not a bootstrap: with five seeds per
  side a bootstrap interval is too narrow;
* "difference" when the interval excludes 0, "no difference larger than the
  seed-to-seed noise" when it contains 0;
* with fewer than two runs on a side there is no spread to compare with, and the
  script refuses to conclude instead of giving a verdict.

It also draws the two sides' mean validation-accuracy and training-loss curves with a
band of ± one standard deviation over seeds (compare_ab.png).

Why this matters here: 3,925 test images give a standard error of about 0.6 points at
83% accuracy, and seeds move a run by a point or more, so one run per side (the seed's
"+0.81%") cannot tell a real difference from noise.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

# (key in the table, how to read it from a run's results and history, what it is)
METRICS = [
    ("test_accuracy", lambda r, h: 100 * r["test_accuracy"], "test accuracy (%), best epoch by validation"),
    ("best_val_accuracy", lambda r, h: 100 * r["best_val_accuracy"], "best validation accuracy (%)"),
    ("init_loss", lambda r, h: r["init"]["init_loss"], "loss at init (epoch 0; ln 10 = 2.303)"),
    ("train_loss_epoch_1", lambda r, h: _epoch(h, 1, "train_loss"), "training loss, epoch 1"),
    ("train_loss_epoch_5", lambda r, h: _epoch(h, 5, "train_loss"), "training loss, epoch 5"),
    ("val_accuracy_epoch_10", lambda r, h: 100 * _epoch(h, 10, "val_accuracy"), "validation accuracy (%), epoch 10"),
    ("grad_norm_epoch_1", lambda r, h: _epoch(h, 1, "grad_norm"), "gradient norm, epoch 1 (mean per step)"),
    ("classifier_grad_norm_epoch_1", lambda r, h: _epoch(h, 1, "grad_norm_per_group")["classifier"],
     "final layer's gradient norm, epoch 1"),
    ("epoch_to_target", lambda r, h: r["epoch_to_target"], "first epoch at the target validation accuracy"),
    ("best_epoch", lambda r, h: r["best_epoch"], "best epoch (by validation accuracy)"),
]
CONFIDENCE = 0.95


def _epoch(history: list[dict], epoch: int, key: str):
    for record in history:
        if record["epoch"] == epoch:
            return record[key]
    return None


def load_runs(folder: Path) -> list[tuple[dict, list[dict]]]:
    """(results, history) of every completed run below `folder`, in path order."""
    runs = []
    # resolve(): a run folder, outputs/ or outputs/latest; outputs/latest is the newest run again, counted once
    for results_path in sorted({p.resolve() for p in Path(folder).rglob("results.json")}):
        results = json.loads(results_path.read_text())
        if results.get("status") != "completed":
            continue
        history_path = results_path.with_name("history.jsonl")
        history = [json.loads(line) for line in history_path.read_text().splitlines() if line.strip()] \
            if history_path.is_file() else []
        runs.append((results, history))
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


def _incomplete_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function (df may be fractional, as Welch's is)."""
    tail = 0.5 * _incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of t_cdf by bisection: the standard library has no t distribution."""
    low, high = -1e3, 1e3
    for _ in range(200):
        middle = (low + high) / 2
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def compare_values(a: list[float], b: list[float], confidence: float = CONFIDENCE) -> dict:
    """Mean, std and n per side, the difference of means (a - b), its Welch t-interval and a verdict."""
    result = {"n_a": len(a), "n_b": len(b),
              "mean_a": statistics.fmean(a) if a else None, "mean_b": statistics.fmean(b) if b else None,
              "std_a": statistics.stdev(a) if len(a) > 1 else None,
              "std_b": statistics.stdev(b) if len(b) > 1 else None}
    if len(a) < 2 or len(b) < 2:
        result.update(difference=(result["mean_a"] - result["mean_b"]) if a and b else None, low=None, high=None,
                      verdict="cannot conclude",
                      reason=f"need at least 2 runs per side to know the seed-to-seed noise (have {len(a)} and "
                             f"{len(b)})")
        return result
    difference = result["mean_a"] - result["mean_b"]
    var_a, var_b = result["std_a"] ** 2 / len(a), result["std_b"] ** 2 / len(b)
    standard_error = math.sqrt(var_a + var_b)
    if standard_error == 0:  # no spread at all: any difference is exact
        low = high = difference
        df = float("inf")
    else:
        df = (var_a + var_b) ** 2 / (var_a ** 2 / (len(a) - 1) + var_b ** 2 / (len(b) - 1))
        half = t_quantile(1 - (1 - confidence) / 2, df) * standard_error
        low, high = difference - half, difference + half
    differs = low > 0 or high < 0
    result.update(difference=difference, standard_error=standard_error, df=df, low=low, high=high,
                  verdict="difference" if differs else "no difference",
                  reason=(f"the {confidence:.0%} interval of the difference excludes 0" if differs else
                          f"the {confidence:.0%} interval of the difference contains 0: not larger than the "
                          "seed-to-seed noise"))
    return result


def compare_runs(runs_a: list, runs_b: list, confidence: float = CONFIDENCE) -> dict:
    """compare_values for every metric both sides have (a run without it is left out of that metric)."""
    table = {}
    for key, read, label in METRICS:
        values = []
        for runs in (runs_a, runs_b):
            side = []
            for results, history in runs:
                try:
                    value = read(results, history)
                except (KeyError, TypeError):
                    value = None
                if value is not None:
                    side.append(float(value))
            values.append(side)
        if values[0] or values[1]:
            table[key] = {"label": label, **compare_values(values[0], values[1], confidence)}
    return table


def _fmt(mean, std) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def print_table(table: dict, name_a: str, name_b: str) -> None:
    print(f"{'metric':<44}{name_a + ' (n)':>22}{name_b + ' (n)':>22}   {name_a} - {name_b} [95% CI]   verdict")
    for key, row in table.items():
        interval = (f"{row['difference']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]" if row["low"] is not None
                    else (f"{row['difference']:+.3f}" if row["difference"] is not None else "-"))
        side_a = f"{_fmt(row['mean_a'], row['std_a'])} ({row['n_a']})"
        side_b = f"{_fmt(row['mean_b'], row['std_b'])} ({row['n_b']})"
        print(f"{row['label']:<44}{side_a:>22}{side_b:>22}   {interval:<28}{row['verdict']}")


def plot_curves(runs_a: list, runs_b: list, name_a: str, name_b: str, out_path: Path) -> None:
    """Mean validation accuracy and training loss per epoch, with a band of ± one std over seeds
    (up to the last epoch every run of a side reached)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    for runs, name in ((runs_a, name_a), (runs_b, name_b)):
        histories = [h for _, h in runs if h]
        if not histories:
            continue
        length = min(len(h) for h in histories)
        epochs = [histories[0][i]["epoch"] for i in range(length)]
        for ax, key, scale in ((ax_acc, "val_accuracy", 100), (ax_loss, "train_loss", 1)):
            columns = [[scale * h[i][key] for h in histories] for i in range(length)]
            means = [statistics.fmean(c) for c in columns]
            stds = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in columns]
            ax.plot(epochs, means, label=f"{name} (mean of {len(histories)})")
            ax.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            alpha=0.25)
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation accuracy, mean ± std over seeds")
    ax_loss.set(xlabel="epoch", ylabel="training loss (MixUp, smoothing)", title="Training loss, mean ± std",
                yscale="log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_a", type=Path, help="folder with side A's runs (*/results.json)")
    parser.add_argument("runs_b", type=Path, help="folder with side B's runs")
    parser.add_argument("--name-a", default=None, help="side A's name (default: its folder's name)")
    parser.add_argument("--name-b", default=None, help="side B's name")
    parser.add_argument("--out", type=Path, default=Path("compare_ab.png"), help="the curves' picture")
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON")
    args = parser.parse_args(argv)
    name_a, name_b = args.name_a or args.runs_a.name, args.name_b or args.runs_b.name
    runs_a, runs_b = load_runs(args.runs_a), load_runs(args.runs_b)
    if not runs_a or not runs_b:
        print(f"error: no completed runs (results.json) below {args.runs_a if not runs_a else args.runs_b}",
              file=sys.stderr)
        return 2
    table = compare_runs(runs_a, runs_b)
    print(f"{name_a}: {len(runs_a)} runs, {name_b}: {len(runs_b)} runs; intervals: Welch t over seeds, "
          f"{CONFIDENCE:.0%}\n")
    print_table(table, name_a, name_b)
    for name, runs in ((name_a, runs_a), (name_b, runs_b)):
        reached = [r["epoch_to_target"] for r, _ in runs if r.get("epoch_to_target") is not None]
        target = runs[0][0].get("target_val_accuracy")
        if target is not None:
            print(f"{name}: {len(reached)} of {len(runs)} runs reached {target:.0%} validation accuracy"
                  + (f" (epochs {sorted(reached)})" if reached else ""))
    headline = table["test_accuracy"]
    print(f"\nVerdict on test accuracy: {headline['verdict']} ({headline['reason']}).")
    plot_curves(runs_a, runs_b, name_a, name_b, args.out)
    print(f"Curves: {args.out}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
