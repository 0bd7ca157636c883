"""One change at a time: the rows of v15's speed table, each measured with train.py itself.

Every row adds one change to the row above it, starting from v12-step4's loop (train.py with
every v15 speed flag off and v12's batch size, learning rate, schedule and epochs):

    python speed_table.py                      # seconds per epoch of every row, on this device
    python speed_table.py --full --seeds 0 1 2 # full runs: time to the target, test accuracy (GPU work)
    python speed_table.py --markdown outputs/speed_table/speed_table.json   # the table from a record
    python speed_table.py --rows 0 1 2 3 --out A; python speed_table.py --rows 4 5 6 --out B
    python speed_table.py --markdown A/speed_table.json B/speed_table.json      # one table from both

Seconds per epoch: train.py runs each row for --timing-epochs epochs on --train-fraction of the
training split; the median of the epochs after the first (warm-up, compilation), scaled to the
full split, is the row's figure (train.py's `seconds_per_epoch`; the first epoch's excess is
`compile_s`). --full: one complete run per row and seed; the table then also holds the training
time, the time to --target (validation accuracy) and the test accuracy, mean and spread over seeds.
Timings are only comparable within one record: same device, same load. The JSON record is
written to --out; README.md and FAZIT.md quote it.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

VERSION_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(VERSION_DIR))

import train  # noqa: E402

# v12-step4's loop: v15's train.py with every speed change off and v12's recipe.
V12_LOOP = ["--no-uint8-data", "--no-device-augment", "--no-sync-free", "--no-bf16", "--no-compile",
            "--batch-size", "128", "--lr", "3e-4", "--lr-schedule", "cosine", "--epochs", "40"]
# (name, flags added to the row above). The last main row is train.py's defaults (plus --compile).
ROWS = [
    ("v12's loop (float data, CPU-drawn augmentation, 2 syncs per step, fp32, batch 128, 40 epochs)", []),
    ("+ uint8 data on the device, augmentation drawn on the device", ["--uint8-data", "--device-augment"]),
    ("+ no host syncs in the loop (losses read once per epoch)", ["--sync-free"]),
    ("  (the same without channels_last: what v12's layout is worth)", ["--no-channels-last"]),
    ("+ bf16 autocast", ["--channels-last", "--bf16"]),
    ("  (the same with the stem's stride 2: --cpu-fast's model, ~4x fewer multiply-adds)", ["--stem-stride", "2"]),
    ("+ batch 512, lr x4 (1.2e-3), one-cycle warm-up", ["--batch-size", "512", "--lr", "1.2e-3",
                                                       "--lr-schedule", "onecycle"]),
    ("+ fewer, better epochs: 16 at peak lr 4e-3 (train.py's defaults)", ["--epochs", "16", "--lr", "4e-3"]),
    ("+ torch.compile", ["--compile"]),
    ("  (the same with CUDA graphs: torch.compile's mode reduce-overhead; on a CPU it equals the row above)",
     ["--compile-mode", "reduce-overhead"]),
]
QUIET = ["--no-human-baseline", "--no-input-independent-baseline", "--no-overfit-test",
         "--no-batch-independence-test", "--no-profile"]


def row_flags(index: int) -> list[str]:
    """The flags of row `index`: v12's loop and every change down to this row (a side row, marked by
    its leading blanks, is not inherited by the rows below it)."""
    flags = list(V12_LOOP)
    for i, (name, added) in enumerate(ROWS[:index + 1]):
        if i == index or not name.startswith("  "):
            flags += added
    return flags


def run_row(flags: list[str], out: Path, quiet: bool = True) -> dict:
    """train.main with these flags into `out`; its results.json as a dict."""
    argv = [*flags, "--out", str(out), "--overwrite"]
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        try:
            return train.main(argv)
        except SystemExit as err:  # a diverged or interrupted row: its results.json says which
            results = json.loads((out / "results.json").read_text())
            results.setdefault("exit_code", err.code)
            return results


def summarise(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values} if values else {}


def measure(args) -> dict:
    record = {"command": " ".join(["python speed_table.py", *args.argv]),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "full": args.full,
              "train_fraction": None if args.full else args.train_fraction, "rows": []}
    for index, (name, _) in enumerate(ROWS):
        if args.rows and index not in args.rows:
            continue
        flags = row_flags(index) + list(args.extra)
        row = {"row": index, "name": name, "flags": flags, "runs": []}
        seeds = args.seeds if args.full else args.seeds[:1]
        for seed in seeds:
            run_flags = flags + ["--seed", str(seed)] + (
                [] if args.full else [*QUIET, "--epochs", str(args.timing_epochs),
                                      "--train-fraction", str(args.train_fraction)])
            results = run_row(run_flags, args.out / f"row{index}-seed{seed}")
            scale = 1.0 if args.full else 1.0 / args.train_fraction
            row["runs"].append({
                "seed": seed, "status": results.get("status"), "device": results.get("device"),
                "seconds_per_epoch": results.get("seconds_per_epoch", float("nan")) * scale,
                "compile_s": results.get("compile_s"), "train_time_s": results.get("train_time_s"),
                "time_to_target_s": results.get("time_to_target_s"), "test_accuracy": results.get("test_accuracy"),
                "best_val_accuracy": results.get("best_val_accuracy"), "epochs": results["config"]["epochs"],
                "bf16": results["config"]["bf16"]})
        record["device"] = row["runs"][0]["device"]
        row["seconds_per_epoch"] = statistics.median(r["seconds_per_epoch"] for r in row["runs"])
        if args.full:
            row["train_time_s"] = summarise([r["train_time_s"] for r in row["runs"] if r["train_time_s"]])
            row["time_to_target_s"] = summarise([r["time_to_target_s"] for r in row["runs"]
                                                 if r["time_to_target_s"] is not None])
            row["test_accuracy"] = summarise([r["test_accuracy"] for r in row["runs"] if r["test_accuracy"]])
        record["rows"].append(row)
        print(f"row {index}: {row['seconds_per_epoch']:8.2f} s/epoch  {name}", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "speed_table.json").write_text(json.dumps(record, indent=2) + "\n")  # after every row
    return record


def markdown(record: dict) -> str:
    """The table README.md and FAZIT.md quote, from a record of this script (speed-ups against its
    first row: v12's loop when row 0 was measured)."""
    base = record["rows"][0]["seconds_per_epoch"]
    lines = [f"{record['device']}, torch {record['torch']}, {record['cpu_threads']} CPU threads, {record['date'][:10]}"
             + ("" if record["full"] else f"; seconds per epoch from {record['train_fraction']:.0%} of the split, "
                                          "scaled to all 55,000 images"),
             "", "| row | change | s/epoch | speed-up vs row 0 | epochs | s/epoch x epochs | time to target "
                 "| test accuracy |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in record["rows"]:
        def fmt(stat, scale=1.0, unit=""):
            if not stat:
                return "not measured"
            return f"{stat['mean'] * scale:.2f}{unit} ± {stat['std'] * scale:.2f} (n={len(stat['values'])})"
        epochs = train.parse_args(row["flags"]).epochs if "flags" in row else None  # the row's own, not the timing's
        lines.append(f"| {row['row']} | {row['name'].strip()} | {row['seconds_per_epoch']:.2f} | "
                     f"{base / row['seconds_per_epoch']:.2f}x | {epochs or '-'} | "
                     f"{row['seconds_per_epoch'] * epochs if epochs else float('nan'):.0f} s | "
                     f"{fmt(row.get('time_to_target_s'), 1, ' s')} | {fmt(row.get('test_accuracy'), 100, '%')} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="complete runs per row and seed (time to target, accuracy)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds; without --full only the first")
    p.add_argument("--rows", type=int, nargs="+", default=None, help="only these rows (default: all)")
    p.add_argument("--train-fraction", type=float, default=0.05, help="share of the split timed (without --full)")
    p.add_argument("--timing-epochs", type=int, default=3, help="epochs timed per row (without --full); >= 2")
    p.add_argument("--out", type=Path, default=VERSION_DIR / "outputs" / "speed_table")
    p.add_argument("--markdown", type=Path, nargs="+", default=None,
                   help="print the table of these records (rows in order, one device) and exit")
    p.add_argument("extra", nargs="*", help="flags for train.py after --, e.g. -- --device cpu --quick")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if not 0 < args.train_fraction <= 1 or args.timing_epochs < 2:
        p.error("--train-fraction must be in (0, 1], --timing-epochs >= 2")
    if args.rows and not set(args.rows) <= set(range(len(ROWS))):
        p.error(f"--rows must be in 0 ... {len(ROWS) - 1}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.markdown:
        records = [json.loads(path.read_text()) for path in args.markdown]
        record = {**records[0], "rows": [row for r in records for row in r["rows"]]}
        if len({r["device"] for r in records}) > 1:
            raise SystemExit("error: records from different devices cannot share one table")
    else:
        record = measure(args)
    print(markdown(record))
    return record


if __name__ == "__main__":
    main()
