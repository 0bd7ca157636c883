"""One line per run folder under OUT: the failed checks and the battery's numbers."""
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = []
for r in sorted(out.glob("*/results.json")):
    res = json.loads(r.read_text())
    c = res["checks"]
    fails = [k for k, v in c.items() if not v["passed"]]
    b = c.get("input_independent_baseline", {}).get("details", {})
    flow = c.get("gradient_flow", {}).get("details", {})
    rows.append(f"{r.parent.name:14s} exit {res['exit_code']} failed={fails} baseline real={b.get('real_input')} "
                f"zero={b.get('zero_input')} overfit={c.get('overfit_one_batch', {}).get('value')} "
                f"steps={c.get('overfit_one_batch', {}).get('details', {}).get('steps_needed')} "
                f"step_grad={c.get('step_gradient', {}).get('value')} checks_s={res.get('checks_time_s'):.1f} "
                f"zero_scales={len(flow.get('zero_initialised_scales', []))} "
                f"waiting={len(flow.get('waiting_behind_zero_scales', []))} "
                f"device={res['device']} torch={res['torch_version']}")
(out / "summary.txt").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
