"""Fashion-MNIST v13-step5: random search over the hyperparameters that matter (the recipe, step 5).

Random search, not grid search (Bergstra and Bengio 2012): when only a few of the knobs matter
much, a grid of 3 values per knob tries each important knob at only 3 values however many
trials it runs, while N random trials try it at N different values. Every trial is train.py
itself (its checks, loop and records) with --no-test: it trains on the training split, is
scored on validation (its best epoch's accuracy), and never opens the test files; the search
watches that too (the check test_set_untouched, in every trial's record).

Trial k's configuration is a pure function of (--search-seed, k): an interrupted, resumed or
sharded search samples the same configurations. Each finished trial writes one record,
trials/trial-KKKK.json, atomically (a temporary file, then a rename); a trial whose record
exists is skipped, so Ctrl-C loses at most the trial that was running. Processes that share
one GPU run disjoint trial indices into the same folder:

    python search.py --trials 0-5 --out DIR & python search.py --trials 6-11 --out DIR & ...
    python search.py --summarise --out DIR        # table, search.png, edge verdict from the records
    python search.py                              # trials 0-23 into a new dated folder
    python search.py --quick                      # two trials of train.py --quick: code paths in seconds
    python search.py --confirm 3 --seeds 0 1 2 --out DIR   # the best 3 and v12's defaults over seeds

--confirm K re-runs the K best configurations and v12's defaults (V12_DEFAULTS) as full
train.py runs over --seeds, still --no-test, at train.py's epochs: mean +- std of the best
validation accuracy and the 95% Welch interval of the difference to the defaults. One lucky
seed is not a better configuration. The configuration with the best mean validation accuracy
is chosen, and only its checkpoints are then evaluated on the test set, once.

Outputs (a new dated folder under outputs/search/, or exactly --out): trials/ (one record per
trial), runs/trial-KKKK/ (train.py's run folders), search.md (the table and the verdict),
search.json, search.png; with --confirm: confirm/ARM/seedS/, confirm.md, confirm.json.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

VERSION_DIR = Path(__file__).resolve().parent
REPO_ROOT = VERSION_DIR.parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # for shared/ (run folders)

import shared.data  # noqa: E402  (its one-time unpacking of the files is plumbing, not a read)
from shared.runs import write_json, write_text  # noqa: E402

import train  # noqa: E402  this version's train.py: every trial is one of its runs
from debug_tools import edge_verdict, verify_test_set_untouched, watch_file_reads  # noqa: E402
from visualization import plot_search  # noqa: E402

# The search space: the few knobs v12's records say matter, each over a range wide enough that the
# best should land inside it. name -> how trial k samples it; every name is a train.py flag.
SPACE = {
    # v12 underfits at Adam 3e-4 (train 95.8% in eval mode, stem filters barely moved), v6 reaches
    # 94.9% with the same ResNet at a OneCycle peak of 3e-3: the range spans both, log-uniform,
    # because a learning rate matters by its factor, not by its difference.
    "lr": {"kind": "log", "low": 1e-4, "high": 1e-2},
    # AdamW shrinks every weight by lr x weight decay per step: log-uniform around v12's 5e-2.
    "weight_decay": {"kind": "log", "low": 1e-3, "high": 1e-1},
    # The augmentation's strength: random erasing is the strongest of v12's three (crop and flip stay
    # v12's); 0 switches it off, 0.5 is v12's.
    "erase_probability": {"kind": "uniform", "low": 0.0, "high": 0.5},
    # Label smoothing from off to twice v12's 0.1.
    "label_smoothing": {"kind": "uniform", "low": 0.0, "high": 0.2},
    # Width of the first stage (x2, x4 later): 24 has 0.56x v12's multiply-adds, 48 2.25x, 64 4x.
    # An underfitting model may want more. The first search offered 24, 32 and 48, and its best trial
    # sat at 48, the edge (FAZIT.md, runs/2026-12-06-h100-fashionmnist-v13-search): widened to 64. Not
    # to 96: with v9's init (last layer std 0.01 over 4 x 96 features) its logits start too large for
    # loss_at_init (FAZIT.md).
    "channels": {"kind": "choice", "values": [24, 32, 48, 64]},
}
# Epochs are the budget, not a knob: with augmentation a longer run nearly always wins, so a search
# over epochs spends its trials learning that. Every trial trains this many (cosine over the whole
# run, so a short run decays as fully as a long one); --confirm trains at train.py's 40.
SEARCH_EPOCHS = 20
TRIALS = 24  # the budget: 24 trials x 20 epochs, the epochs of 12 full v12 runs (README.md, "The plan")
SEARCH_SEED = 0  # trial k's configuration depends on (this, k) only
TRIAL_SEED = train.SEED  # every trial the same seed: the same validation split, init and batch order
OUT_DIR = VERSION_DIR / "outputs" / "search"
CONFIDENCE = 0.95
DEFAULTS_ARM = "v12-defaults"  # --confirm's baseline: v12's defaults, spelled out as flags
# train.py's defaults are the search's choice since it ran (FAZIT.md); "(no flags)" would now confirm
# the chosen configuration against itself.
V12_DEFAULTS = ["--lr", "0.0003", "--weight-decay", "0.05", "--erase-probability", "0.5",
                "--label-smoothing", "0.1", "--channels", "32"]


def sample_config(search_seed: int, trial: int) -> dict:
    """Trial `trial`'s hyperparameters, from a generator seeded by (search_seed, trial) alone:
    the same on every machine, in every process, whatever other trials ran before. Values are
    rounded to 3 significant digits, so the flags and the table read like numbers a person chose."""
    rng = np.random.default_rng([search_seed, trial])
    config = {}
    for name, dimension in SPACE.items():  # a fixed order: the same draws for the same name
        if dimension["kind"] == "log":
            value = math.exp(rng.uniform(math.log(dimension["low"]), math.log(dimension["high"])))
        elif dimension["kind"] == "uniform":
            value = rng.uniform(dimension["low"], dimension["high"])
        else:
            value = dimension["values"][int(rng.integers(len(dimension["values"])))]
        config[name] = value if dimension["kind"] == "choice" else float(f"{value:.3g}")
    return config


def config_flags(config: dict) -> list[str]:
    """A configuration as train.py flags: lr -> --lr 0.00123."""
    return [token for name, value in config.items() for token in (f"--{name.replace('_', '-')}", str(value))]


def parse_trials(text: str) -> list[int]:
    """"0-7", "3", "0-3,8,10-11" -> sorted trial indices."""
    trials = set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise argparse.ArgumentTypeError(f"{text!r}: trial indices like 0-7, 3 or 0-3,8")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        trials.update(range(first, last + 1))
    return sorted(trials)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=parse_trials, default=None,
                   help=f"trial indices to run, e.g. 0-7 (default: 0-{TRIALS - 1}; --quick: 0-1)")
    p.add_argument("--search-seed", type=int, default=SEARCH_SEED, help="trial k's configuration: f(this, k)")
    p.add_argument("--out", type=Path, default=None, help="exactly this folder (default: a new dated one)")
    p.add_argument("--summarise", action="store_true", help="train nothing: table and plot from the records in --out")
    p.add_argument("--confirm", type=int, default=0, metavar="K",
                   help="re-run the K best trials of --out and v12's defaults over --seeds (full runs)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="--confirm's seeds")
    p.add_argument("--quick", action="store_true", help="train.py --quick for every run: code paths only")
    p.add_argument("--data-dir", type=Path, default=None, help="folder with the Fashion-MNIST files")
    p.add_argument("--device", default="auto", help="train.py's --device")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs per run (default: {SEARCH_EPOCHS} per trial, train.py's for --confirm)")
    p.add_argument("--train-seed", type=int, default=TRIAL_SEED, help="train.py's --seed for every trial")
    p.add_argument("--train-flags", default="", help="more train.py flags for every run, in one string "
                   "(e.g. \"--no-input-independent-baseline\")")
    args = p.parse_args(argv)
    if (args.summarise or args.confirm) and args.out is None:
        p.error("--summarise and --confirm need --out, the folder that holds the search's records")
    if args.confirm < 0 or (args.confirm and len(args.seeds) < 2):
        p.error("--confirm K needs K >= 1 and at least 2 --seeds (a spread to compare with)")
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be >= 1")
    if args.trials is None:
        args.trials = [0, 1] if args.quick else list(range(TRIALS))
    return args


def common_flags(args) -> list[str]:
    flags = ["--overwrite", "--device", args.device, "--no-human-baseline", "--no-test"]
    flags += ["--quick"] if args.quick else []
    flags += ["--data-dir", str(args.data_dir)] if args.data_dir else []
    return flags + shlex.split(args.train_flags)


# ---------------------------------------------------------------------------
# The trials
# ---------------------------------------------------------------------------
def trial_path(out: Path, trial: int) -> Path:
    return out / "trials" / f"trial-{trial:04d}.json"


def read_trial(out: Path, trial: int, args) -> dict | None:
    """The record of a finished trial, or None. A record sampled from another search seed or space
    is refused: resuming into it would mix two searches in one table."""
    path = trial_path(out, trial)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if record["config"] != sample_config(args.search_seed, trial) or record["space"] != SPACE:
        print(f"error: {path} holds another search (its search seed {record['search_seed']} or space differs "
              f"from this one's); use another --out", file=sys.stderr)
        raise SystemExit(2)
    return record


def score(results: dict) -> float | None:
    """A trial's score: the best validation accuracy of its run (the epoch train.py keeps). Nothing else:
    a score that looked at the test set would make the search tune on it."""
    return results["best_val_accuracy"] if results.get("status") == "completed" else None


def run_trial(trial: int, args, out: Path) -> dict:
    """One trial: train.main with the trial's flags into out/runs/trial-KKKK, watched for any
    open() of a test file from start to record; its record written atomically (kept if done)."""
    record = read_trial(out, trial, args)
    if record is not None:
        print(f"trial {trial}: done already ({trial_path(out, trial)})")
        return record
    config = sample_config(args.search_seed, trial)
    folder = out / "runs" / f"trial-{trial:04d}"
    flags = [*config_flags(config), "--epochs", str(args.epochs or SEARCH_EPOCHS), "--seed", str(args.train_seed),
             "--out", str(folder), *common_flags(args)]
    print(f"\n##### trial {trial}: python train.py {' '.join(flags)}")
    started = time.perf_counter()
    with watch_file_reads(train.TEST_FILES, ignore_callers=[shared.data.__file__]) as test_file_reads:
        try:
            results = train.main(flags)
        except SystemExit as stop:
            if stop.code != 1:  # 130: Ctrl-C, 2: bad flags or data: stop the search, write no record
                raise
            # 1: diverged (too high a learning rate is a result too) or failed (the test-set guard)
            results = json.loads((folder / "results.json").read_text())
        val_accuracy = score(results)
    checked = verify_test_set_untouched(test_file_reads, [], results)
    print(checked.report())
    # The run's own verdict: False when it read the test set (its check failed, or its guard stopped it),
    # None when it stopped before judging (diverged).
    run_check = results.get("checks", {}).get("test_set_untouched")
    run_untouched = (False if results.get("test_read") or (run_check and not run_check["passed"])
                     else True if run_check else None)
    record = {"trial": trial, "search_seed": args.search_seed, "config": config, "space": SPACE, "flags": flags,
              "status": results.get("status"), "val_accuracy": val_accuracy, "best_epoch": results.get("best_epoch"),
              "epochs": results["config"]["epochs"], "seconds": time.perf_counter() - started,
              "train_time_s": results.get("train_time_s"), "device": results.get("device"),
              "torch_version": results.get("torch_version"), "quick": args.quick,
              "all_checks_passed": results.get("all_checks_passed"), "error": results.get("error"),
              "test_set_untouched": checked.to_dict(),
              "run_test_set_untouched": run_untouched,
              "run_dir": str(folder.relative_to(out)),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    trial_path(out, trial).parent.mkdir(parents=True, exist_ok=True)
    write_json(trial_path(out, trial), record)
    return record


def read_trials(out: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((out / "trials").glob("trial-*.json"))]


def summarise(trials: list[dict]) -> dict:
    """Trials sorted by validation accuracy (failed ones last), the best, the edge verdict, the budget
    spent, and whether every trial left the test set alone. The edges are those of the space the trials
    were sampled from (in every record), not of SPACE as it stands now: after a range is widened, an old
    search's summary still says where its own best lay."""
    spaces = [t["space"] for t in trials]
    if any(space != spaces[0] for space in spaces):
        print("error: these trial records come from different search spaces (SPACE was edited between them): "
              "give each search its own --out and summarise each apart", file=sys.stderr)
        raise SystemExit(2)
    space = spaces[0] if spaces else SPACE
    ranked = sorted(trials, key=lambda t: (t["val_accuracy"] is None, -(t["val_accuracy"] or 0), t["trial"]))
    best = ranked[0] if ranked and ranked[0]["val_accuracy"] is not None else None
    verdict = edge_verdict(best["config"], space) if best else {"on_edge": False, "verdict": "no trial finished",
                                                                "parameters": {}}
    untouched = [t["test_set_untouched"]["passed"] and t.get("run_test_set_untouched") is not False for t in trials]
    return {"trials": ranked, "best": best, "edge": verdict, "space": space,
            "budget": {"trials": len(trials), "seconds": sum(t["seconds"] for t in trials),
                       "train_seconds": sum(t["train_time_s"] or 0 for t in trials),
                       "devices": sorted({t["device"] for t in trials if t["device"]}),
                       "epochs": sorted({t["epochs"] for t in trials})},
            "test_set_untouched": all(untouched), "test_set_read_by": [t["trial"] for t, ok in zip(trials, untouched)
                                                                        if not ok]}


def markdown(summary: dict) -> str:
    names = list(summary["space"])
    lines = ["| rank | trial | " + " | ".join(names) + " | best val % | best epoch | seconds | test set untouched |",
             "| --- | --- | " + " | ".join("---" for _ in names) + " | --- | --- | --- | --- |"]
    for rank, t in enumerate(summary["trials"], 1):
        val = f"{100 * t['val_accuracy']:.2f}" if t["val_accuracy"] is not None else t["status"]
        untouched = "yes" if t["test_set_untouched"]["passed"] and t.get("run_test_set_untouched") is not False \
            else "**NO**"
        lines.append(f"| {rank} | {t['trial']} | " + " | ".join(f"{t['config'][n]:g}" for n in names)
                     + f" | {val} | {t['best_epoch']} | {t['seconds']:.0f} | {untouched} |")
    budget = summary["budget"]
    lines += ["", f"Verdict: {summary['edge']['verdict']}.",
              f"Budget spent: {budget['trials']} trials of {'/'.join(map(str, budget['epochs']))} epochs, "
              f"{budget['seconds']:.0f} s in all ({budget['train_seconds']:.0f} s training), on "
              f"{', '.join(budget['devices']) or '-'}.",
              "Test set: " + ("untouched in every trial." if summary["test_set_untouched"] else
                              f"**read by trials {summary['test_set_read_by']}: their scores are not to be "
                              "trusted.**")]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# --confirm: the best configurations against v12's defaults over seeds. Welch's interval is
# regularize.py's (v12), copied: the same statistics for every comparison of this track.
# ---------------------------------------------------------------------------
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


def confirm_arms(summary: dict, k: int) -> dict:
    """{arm: the train.py flags of its configuration}: v12's defaults, then the K best trials."""
    arms = {DEFAULTS_ARM: list(V12_DEFAULTS)}
    for t in [t for t in summary["trials"] if t["val_accuracy"] is not None][:k]:
        arms[f"trial-{t['trial']:04d}"] = config_flags(t["config"])
    return arms


def run_confirm(arm: str, flags: list[str], seed: int, args, out: Path) -> dict:
    folder = out / "confirm" / arm / f"seed{seed}"
    if (folder / "results.json").exists() and json.loads((folder / "results.json").read_text()).get(
            "status") == "completed":
        print(f"{arm} seed {seed}: done already ({folder})")
        return json.loads((folder / "results.json").read_text())
    argv = [*flags, "--seed", str(seed), "--out", str(folder), *common_flags(args)]
    argv += ["--epochs", str(args.epochs)] if args.epochs else []
    print(f"\n##### confirm {arm} (seed {seed}): python train.py {' '.join(argv)}")
    try:
        return train.main(argv)
    except SystemExit as stop:
        if stop.code != 1:
            raise
        return json.loads((folder / "results.json").read_text())  # diverged: no score, kept in the table


def test_accuracy_of(folder: Path, config_argv: list[str], data_dir, device) -> float:
    """The test accuracy of one confirm run's best checkpoint, read once, after the choice was made:
    the version's own model, splits and evaluate(); the only place the search reads the test set."""
    results = json.loads((folder / "results.json").read_text())
    cfg = train.parse_args([*config_argv, "--seed", str(results["seed"]),
                            *(["--quick"] if results["config"]["quick"] else [])])
    raw = train.load_raw_data(data_dir)
    _, _, test_set = train.split_data(*raw, cfg, device)
    model = train.ResNet(channels=cfg.channels, dropout=cfg.dropout).to(device)
    checkpoint = train.torch.load(folder / train.MODEL_FILE, map_location=device, weights_only=True)
    model.load_state_dict(checkpoint["model_state"])
    return train.evaluate(model, train.TensorLoader(test_set, 1024), device)[1]


def summarise_confirm(runs: dict, arms: dict) -> dict:
    """Per arm: seeds, best validation mean +- std, the Welch interval of the difference to the defaults;
    the arm chosen by mean validation accuracy."""
    rows = []
    baseline = [score(r) for r in runs.get(DEFAULTS_ARM, []) if score(r) is not None]
    for arm in arms:
        val = [score(r) for r in runs.get(arm, []) if score(r) is not None]
        row = {"arm": arm, "flags": arms[arm], "seeds": [r["seed"] for r in runs.get(arm, []) if score(r) is not None],
               "best_val": val, "diverged": sum(score(r) is None for r in runs.get(arm, [])),
               "devices": sorted({r["device"] for r in runs.get(arm, [])})}
        if arm != DEFAULTS_ARM and len(val) > 1 and len(baseline) > 1:
            difference, low, high = welch_interval(val, baseline)
            row.update(difference=difference, low=low, high=high, resolved=low > 0 or high < 0)
        rows.append(row)
    complete = [row for row in rows if row["best_val"] and row["diverged"] == 0]
    chosen = max(complete, key=lambda row: statistics.fmean(row["best_val"]))["arm"] if complete else None
    return {"rows": rows, "chosen": chosen, "confidence": CONFIDENCE}


def _mean_std(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{scale * values[0]:.2f}"
    return f"{scale * statistics.fmean(values):.2f} ± {scale * statistics.stdev(values):.2f}"


def confirm_markdown(summary: dict) -> str:
    lines = ["| arm | flags | seeds | best val % | val - v12's defaults (95% CI) | test % |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in summary["rows"]:
        interval = (f"{100 * row['difference']:+.2f} [{100 * row['low']:+.2f}, {100 * row['high']:+.2f}]"
                    + ("" if row["resolved"] else " (within the noise)")) if "difference" in row else (
            "(baseline)" if row["arm"] == DEFAULTS_ARM else "needs 2+ seeds per side")
        test = _mean_std(row["test"]) if "test" in row else "not read"
        chosen = " **(chosen)**" if row["arm"] == summary["chosen"] else ""
        diverged = f" ({row['diverged']} diverged)" if row["diverged"] else ""
        lines.append(f"| {row['arm']}{chosen} | `{' '.join(row['flags']) or '(defaults)'}` | "
                     f"{len(row['seeds'])}{diverged} | {_mean_std(row['best_val'])} | {interval} | {test} |")
    lines += ["", f"Mean ± sample std over seeds; intervals: Welch t over seeds, {summary['confidence']:.0%}. "
              "Chosen by mean validation accuracy; the test set was read for the chosen arm only, after the choice."]
    return "\n".join(lines) + "\n"


def confirm(args, out: Path) -> dict:
    summary = summarise(read_trials(out))
    arms = confirm_arms(summary, args.confirm)
    runs = {}
    for seed in args.seeds:  # every arm of one seed before the next: an interrupted run has whole rows
        for arm, flags in arms.items():
            runs.setdefault(arm, []).append(run_confirm(arm, flags, seed, args, out))
    result = summarise_confirm(runs, arms)
    if result["chosen"] is not None:
        row = next(row for row in result["rows"] if row["arm"] == result["chosen"])
        device = train.pick_device(args.device)
        row["test"] = [test_accuracy_of(out / "confirm" / row["arm"] / f"seed{seed}", row["flags"], args.data_dir,
                                        device) for seed in row["seeds"]]
    table = confirm_markdown(result)
    print("\n" + table)
    write_text(out / "confirm.md", table)
    write_json(out / "confirm.json", result)
    result["exit_code"] = 0
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = args.out or OUT_DIR / f"{datetime.now(timezone.utc):%Y-%m-%d_%H%M%S}{'-quick' if args.quick else ''}"
    out.mkdir(parents=True, exist_ok=True)
    if args.confirm:
        return confirm(args, out)
    if not args.summarise:
        for trial in args.trials:
            try:
                run_trial(trial, args, out)
            except SystemExit as stop:
                if stop.code == 130:
                    print(f"\nInterrupted: {len(read_trials(out))} trial records in {out / 'trials'} are complete; "
                          "run the same command again to go on.", file=sys.stderr)
                raise
    summary = summarise(read_trials(out))
    table = markdown(summary)
    print("\n" + table)
    write_text(out / "search.md", table)
    write_json(out / "search.json", summary)
    if summary["trials"]:
        plot_search(summary["trials"], summary["space"], summary["edge"], out / "search.png")
    print(f"Table: {out / 'search.md'}, plot: {out / 'search.png'}")
    summary["exit_code"] = 0 if summary["test_set_untouched"] else 1
    return summary


if __name__ == "__main__":
    sys.exit(main()["exit_code"])
