"""imagenette/v6/compare_ab.py on hand-made results: the verdicts, the refusal, the interval."""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest

from conftest import load_version
from fmnist_helpers import assert_png_has_content


@pytest.fixture
def compare_ab():
    return load_version("imagenette/v6", "compare_ab")


def write_runs(folder: Path, test_accuracies: list[float], init_loss: float = 2.31) -> Path:
    """One run per value: results.json (completed) and a three-epoch history.jsonl."""
    for seed, accuracy in enumerate(test_accuracies):
        run = folder / f"seed{seed}"
        run.mkdir(parents=True)
        results = {"status": "completed", "test_accuracy": accuracy, "best_val_accuracy": accuracy + 0.01,
                   "init": {"init_loss": init_loss + 0.001 * seed}, "epoch_to_target": None, "best_epoch": 3,
                   "target_val_accuracy": 0.8}
        (run / "results.json").write_text(json.dumps(results))
        history = [{"epoch": e, "train_loss": 2.3 - 0.3 * e, "val_accuracy": 0.1 + 0.2 * e + 0.001 * seed,
                    "grad_norm": 1.0 + seed * 0.01, "grad_norm_per_group": {"classifier": 0.5}} for e in range(4)]
        (run / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    return folder


def run_cli(compare_ab, *argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = compare_ab.main([str(a) for a in argv])
    return code, out.getvalue()


def test_identical_sides_give_no_difference(compare_ab, tmp_path):
    values = [0.80, 0.81, 0.79, 0.82, 0.80]
    a, b = write_runs(tmp_path / "a", values), write_runs(tmp_path / "b", values)
    code, printed = run_cli(compare_ab, a, b, "--out", tmp_path / "c.png", "--json", tmp_path / "t.json")
    table = json.loads((tmp_path / "t.json").read_text())
    assert code == 0 and table["test_accuracy"]["verdict"] == "no difference"
    assert table["test_accuracy"]["difference"] == pytest.approx(0.0)
    assert table["test_accuracy"]["low"] < 0 < table["test_accuracy"]["high"]
    assert "Verdict on test accuracy: no difference" in printed
    assert_png_has_content(tmp_path / "c.png")


def test_a_large_shift_gives_a_difference(compare_ab, tmp_path):
    a = write_runs(tmp_path / "a", [0.85, 0.86, 0.84, 0.85, 0.86])
    b = write_runs(tmp_path / "b", [0.80, 0.81, 0.79, 0.80, 0.81])
    code, printed = run_cli(compare_ab, a, b, "--out", tmp_path / "c.png", "--json", tmp_path / "t.json")
    row = json.loads((tmp_path / "t.json").read_text())["test_accuracy"]
    assert code == 0 and row["verdict"] == "difference" and row["low"] > 0
    assert row["difference"] == pytest.approx(5.0, abs=1e-9)  # in points
    assert "Verdict on test accuracy: difference" in printed


def test_a_shift_inside_the_noise_is_no_difference(compare_ab):
    """The control of the test above: the same mean shift with seed noise ten times larger."""
    a = [85.0, 95.0, 75.0, 85.0, 90.0]
    b = [80.0, 90.0, 70.0, 80.0, 85.0]
    assert compare_ab.compare_values(a, b)["verdict"] == "no difference"


def test_one_run_per_side_refuses_to_conclude(compare_ab, tmp_path):
    a, b = write_runs(tmp_path / "a", [0.829]), write_runs(tmp_path / "b", [0.8209])
    code, printed = run_cli(compare_ab, a, b, "--out", tmp_path / "c.png", "--json", tmp_path / "t.json")
    row = json.loads((tmp_path / "t.json").read_text())["test_accuracy"]
    assert code == 0 and row["verdict"] == "cannot conclude" and row["low"] is None
    assert "need at least 2 runs per side" in row["reason"]
    assert "difference" not in printed.split("Verdict on test accuracy:")[1].split("(")[0]


def test_the_interval_is_welch_with_the_t_quantile(compare_ab):
    assert compare_ab.t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
    assert compare_ab.t_quantile(0.975, 1e6) == pytest.approx(1.95996, abs=1e-4)
    row = compare_ab.compare_values([1.0, 2.0, 3.0], [0.0, 0.0, 3.0])
    var_a, var_b = 1.0 / 3, 3.0 / 3
    df = (var_a + var_b) ** 2 / (var_a ** 2 / 2 + var_b ** 2 / 2)
    half = compare_ab.t_quantile(0.975, df) * math.sqrt(var_a + var_b)
    assert row["df"] == pytest.approx(df) and row["high"] - row["difference"] == pytest.approx(half)


def test_no_runs_is_an_error(compare_ab, tmp_path):
    (tmp_path / "empty").mkdir()
    b = write_runs(tmp_path / "b", [0.8, 0.81])
    with contextlib.redirect_stderr(io.StringIO()) as err:
        code = compare_ab.main([str(tmp_path / "empty"), str(b), "--out", str(tmp_path / "c.png")])
    assert code == 2 and "no completed runs" in err.getvalue()


def test_on_the_recorded_h100_runs(compare_ab, tmp_path):
    """The numbers imagenette/v6/FAZIT.md quotes come out of the committed records."""
    runs = Path(__file__).resolve().parents[1] / "runs" / "2026-11-24-h100-imagenette" / "v6"
    code, printed = run_cli(compare_ab, runs / "v6a", runs / "v6b", "--out", tmp_path / "c.png",
                            "--json", tmp_path / "t.json")
    table = json.loads((tmp_path / "t.json").read_text())
    assert code == 0 and table["test_accuracy"]["n_a"] == 5 == table["test_accuracy"]["n_b"]
    assert table["test_accuracy"]["verdict"] == "no difference"
    assert table["init_loss"]["verdict"] == "difference" and table["init_loss"]["mean_b"] > 2.7
