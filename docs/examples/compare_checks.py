"""Compare the check verdicts of two runs, e.g. the same preflight on the CPU and on the GPU.

    cd fashionmnist/v10-step2
    python train.py --preflight --quick --device cpu  --out outputs/preflight-cpu
    python train.py --preflight --quick --device cuda --out outputs/preflight-cuda
    python ../../docs/examples/compare_checks.py outputs/preflight-cpu/results.json outputs/preflight-cuda/results.json

What to expect: the same verdict for every check; values that agree to a few digits
where nothing is random (loss at init: same weights, same images), and within the
noise where training is involved (the baselines and overfitting take hundreds of
steps whose floating-point sums round differently on another device). A verdict
that differs is the finding: a check that passes on the CPU and fails on the GPU
points at the device path (mixed precision, a non-deterministic kernel, a tensor
left on the wrong device, memory layout), not at the model.

Exit code 1 when a verdict differs or a check ran in only one of the two runs.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def load(path: Path) -> dict:
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"error: cannot read {path}: {err}") from None
    if "checks" not in results:
        raise SystemExit(f"error: {path} has no 'checks': is it a results.json of a run?")
    return results


def relative_difference(a, b) -> float | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return None
    if math.isnan(a) and math.isnan(b):
        return 0.0
    scale = max(abs(a), abs(b))
    return 0.0 if scale == 0 else abs(a - b) / scale


def compare(a: dict, b: dict, only_common: bool = False) -> list[dict]:
    names = [n for n in a["checks"] if n in b["checks"]] if only_common else \
        list(dict.fromkeys([*a["checks"], *b["checks"]]))
    rows = []
    for name in names:
        ca, cb = a["checks"].get(name), b["checks"].get(name)
        rows.append({
            "check": name,
            "passed_a": None if ca is None else ca["passed"],
            "passed_b": None if cb is None else cb["passed"],
            "value_a": None if ca is None else ca["value"],
            "value_b": None if cb is None else cb["value"],
            "relative_difference": None if ca is None or cb is None else relative_difference(ca["value"],
                                                                                               cb["value"]),
            "same_verdict": ca is not None and cb is not None and ca["passed"] == cb["passed"],
        })
    return rows


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "PASS" if value else "FAIL"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path, help="results.json of the first run")
    p.add_argument("b", type=Path, help="results.json of the second run")
    p.add_argument("--only-common", action="store_true",
                   help="compare only the checks both runs have (a preflight against a full run)")
    args = p.parse_args(argv)
    a, b = load(args.a), load(args.b)
    for label, results, path in (("A", a, args.a), ("B", b, args.b)):
        print(f"{label}: {path}\n   {results.get('device', '?')}, torch {results.get('torch_version', '?')}, "
              f"seed {results.get('seed', '?')}, {results.get('command', '?')}")
    rows = compare(a, b, args.only_common)
    print(f"\n{'check':<36}{'A':>5} {'B':>5} {'value A':>13} {'value B':>13} {'rel. diff':>10}")
    for row in rows:
        diff = row["relative_difference"]
        print(f"{row['check']:<36}{_fmt(row['passed_a']):>5} {_fmt(row['passed_b']):>5} {_fmt(row['value_a']):>13} "
              f"{_fmt(row['value_b']):>13} {'-' if diff is None else f'{diff:.2g}':>10}"
              + ("" if row["same_verdict"] else "   <- differs"))
    differing = [row["check"] for row in rows if not row["same_verdict"]]
    print("\n" + (f"verdicts differ: {', '.join(differing)}" if differing else
                  f"same verdict for all {len(rows)} checks"))
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
