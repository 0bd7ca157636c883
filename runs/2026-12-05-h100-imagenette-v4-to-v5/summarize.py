"""Table of the v4 -> v5 ablation (issue 25) from the records: python summarize.py > summary.txt

Per arm over seeds 0-2: best validation accuracy (what v5's code selects on), validation at the
last epoch, test accuracy of the weights v5's code keeps (the best validation epoch's), and the
difference to the "v4" arm with its 95% Welch interval (imagenette/v6/compare_ab.py). "v5" is the
2026-11-24 record of v5 itself (runs/2026-11-24-h100-imagenette/v5, the same 40% subset and
split, run alone or beside v1-v4); every other arm ran here.
"""
import importlib.util
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
spec = importlib.util.spec_from_file_location("compare_ab", REPO / "imagenette" / "v6" / "compare_ab.py")
compare_ab = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_ab)

ARMS = ["v4", "v4+DeeperCNN", "v4+batch32", "v4+MixUp", "v4+100epochs-ES", "v5-DeeperCNN", "v5"]


def folders(arm):
    if arm == "v5":
        return [REPO / "runs" / "2026-11-24-h100-imagenette" / "v5" / f"seed{s}" for s in range(3)]
    return [HERE / "records" / f"{arm}-s{s}" for s in range(3)]


def numbers(folder):
    history = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines() if line.strip()]
    history = [h for h in history if h.get("epoch", 0) >= 1]
    results_file = folder / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else None
    return {"best_val": max(h["val_accuracy"] for h in history), "last_val": history[-1]["val_accuracy"],
            "epochs": len(history), "test": results["test_accuracy"] if results else None,
            "complete": results is not None, "device": results.get("device") if results else None,
            "torch": results.get("torch_version") if results else None}


def fmt(values):
    values = [v * 100 for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def main():
    table = {arm: [numbers(f) for f in folders(arm)] for arm in ARMS}
    base = table["v4"]
    print("| arm | epochs run | best val % | last-epoch val % | test % | best val - v4 (95% CI) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for arm, runs in table.items():
        epochs = "/".join(str(r["epochs"]) for r in runs) + ("" if all(r["complete"] for r in runs) else " (cut)")
        if arm == "v4":
            diff = "(baseline)"
        else:
            c = compare_ab.compare_values([r["best_val"] * 100 for r in runs], [r["best_val"] * 100 for r in base])
            diff = f"{c['difference']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]"
        print(f"| {arm} | {epochs} | {fmt([r['best_val'] for r in runs])} | {fmt([r['last_val'] for r in runs])} | "
              f"{fmt([r['test'] for r in runs])} | {diff} |")
    for a, b in (("v5", "v5-DeeperCNN"), ("v5-DeeperCNN", "v4")):
        for key, name in (("best_val", "best val"), ("test", "test")):
            c = compare_ab.compare_values([r[key] * 100 for r in table[a]], [r[key] * 100 for r in table[b]])
            print(f"\n{a} - {b}, {name}: {c['difference']:+.2f} points, 95% CI [{c['low']:+.2f}, {c['high']:+.2f}] "
                  f"({c['verdict']})", end="")
    print()
    devices = sorted({(r["device"], r["torch"]) for runs in table.values() for r in runs if r["device"]})
    print(f"\nseeds 0-2 per arm; devices and torch versions in the records: {devices}")


if __name__ == "__main__":
    main()
