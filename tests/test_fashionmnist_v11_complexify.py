"""fashionmnist/v11-step3/complexify.py in quick mode: the five rows of the ladder from MyNN to
the ResNet, their parameter counts, the records (complexify.jsonl, complexify.md, results.json),
--only, a row's numbers that do not depend on the rows before it, and Ctrl-C keeping the rows done."""
from __future__ import annotations

import ast
import contextlib
import io
import json
import math
import sys

import pytest

from conftest import REPO_ROOT, _forget_version_modules, load_version
from fmnist_helpers import NUM_PARAMETERS, V10, fmnist_data, read_jsonl  # noqa: F401  (fixture)

V11 = "fashionmnist/v11-step3"
NAMES = ["mynn", "mynn-no-dropout", "plain", "plain-bn", "resnet"]

# The ResNet's layout in numbers: stem 1->32, then per stage two blocks of two 3x3 convs.
CONV_SHAPES = [(1, 32)] + [(32, 32)] * 4 + [(32, 64)] + [(64, 64)] * 3 + [(64, 128)] + [(128, 128)] * 3
CONV_WEIGHTS = sum(9 * cin * cout for cin, cout in CONV_SHAPES)  # 684,000
CONV_CHANNELS = sum(cout for _, cout in CONV_SHAPES)  # 928: one bias, or a BatchNorm's two parameters, each
FC = 128 * 10 + 10
SHORTCUTS = (32 * 64 + 2 * 64) + (64 * 128 + 2 * 128)  # the two 1x1 Conv-BN shortcuts where the stage changes
PARAMETERS = {
    "mynn": NUM_PARAMETERS,  # 429,450
    "mynn-no-dropout": NUM_PARAMETERS,  # dropout has no parameters
    "plain": CONV_WEIGHTS + CONV_CHANNELS + FC,  # 684,490: convolutions with biases
    "plain-bn": CONV_WEIGHTS + 2 * CONV_CHANNELS + FC,  # 685,418: no biases, BatchNorm's scale and shift
    "resnet": CONV_WEIGHTS + 2 * CONV_CHANNELS + FC + SHORTCUTS,  # 696,042
}


@contextlib.contextmanager
def complexify_module():
    """The version's complexify.py (and with it its train.py), imported fresh and forgotten after:
    conftest's list of version module names does not know 'complexify'."""
    saved = list(sys.path)
    sys.modules.pop("complexify", None)
    try:
        yield load_version(V11, "complexify")
    finally:
        sys.modules.pop("complexify", None)
        _forget_version_modules()
        sys.path[:] = saved


def run_complexify(out, data_dir, *extra, module=None):
    args = ["--quick", "--device", "cpu", "--out", str(out), "--data-dir", str(data_dir), *extra]
    stdout = io.StringIO()
    with contextlib.ExitStack() as stack:
        cx = module or stack.enter_context(complexify_module())
        stack.enter_context(contextlib.redirect_stdout(stdout))
        results = cx.main(args)
    return results, stdout.getvalue()


@pytest.fixture(scope="module")
def run(fmnist_data, tmp_path_factory):
    data_dir, _ = fmnist_data
    out = tmp_path_factory.mktemp("v11_complexify") / "out"
    results, stdout = run_complexify(out, data_dir)
    return {"results": results, "stdout": stdout, "out": out, "data_dir": data_dir}


def test_the_parameter_counts_add_up():
    # The counts above are derived by hand; the literals pin them, so a changed layout shows here.
    assert [PARAMETERS[n] for n in NAMES] == [429_450, 429_450, 684_490, 685_418, 696_042]


def test_five_rows_with_the_right_models_and_parameter_counts(run):
    rows = run["results"]["rows"]
    assert [row["name"] for row in rows] == NAMES
    assert {row["name"]: row["parameters"] for row in rows} == PARAMETERS
    assert [row["model"] for row in rows] == ["MyNN", "MyNN", "PlainNet", "PlainNet", "ResNet"]
    with complexify_module() as cx:  # the last row is the version's own model, not a copy
        assert cx.ROWS["resnet"][1]().__class__ is cx.train.ResNet
        assert cx.train.count_parameters(cx.train.ResNet()) == PARAMETERS["resnet"]


def test_rows_hold_finite_losses_and_accuracies(run):
    results = run["results"]
    assert results["status"] == "completed" and results["exit_code"] == 0
    assert results["epochs"] == 1 and results["train_size"] == 512 and results["val_size"] == 256
    for row in results["rows"]:
        assert row["status"] == "completed", row
        assert len(row["epochs"]) == 1
        for key in ("train_loss", "train_loss_eval", "val_loss"):
            assert math.isfinite(row[key]) and 0 < row[key] < 5, (row["name"], key, row[key])
        for key in ("train_accuracy", "val_accuracy"):
            assert 0.0 <= row[key] <= 1.0, (row["name"], key, row[key])
        assert row["train_seconds"] > 0
        # "final training loss" is the last epoch's mean, the number history.jsonl calls train_loss
        assert row["train_loss"] == row["epochs"][-1]["train_loss"]
    # One epoch of 4 steps: the MyNN rows have moved off chance (loss ln 10 = 2.303 at init).
    assert min(row["train_loss"] for row in results["rows"][:2]) < 2.28


def test_the_table_file_is_the_printed_table(run):
    table = (run["out"] / "complexify.md").read_text()
    assert table in run["stdout"]
    lines = table.splitlines()
    assert lines[0].startswith("Fashion-MNIST v11-step3, complexify") and "seed 42" in lines[0]
    body = [line for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert len(body) == 5
    for line, row in zip(body, run["results"]["rows"]):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[1].startswith(f"`{row['name']}`")
        assert cells[2:6] == [f"{row['parameters']:,}", f"{row['train_loss']:.4f}", f"{row['train_accuracy']:.2%}",
                              f"{row['val_accuracy']:.2%}"]


def test_jsonl_and_results_json_hold_the_rows(run):
    out, results = run["out"], run["results"]
    assert read_jsonl(out / "complexify.jsonl") == json.loads(json.dumps(results["rows"]))
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    for key in ("command", "device", "torch_version", "date", "seed", "epochs", "rows"):
        assert key in on_disk
    assert on_disk["command"].startswith("python complexify.py --quick") and on_disk["device"] == "cpu"


def test_only_runs_a_subset_and_a_row_does_not_depend_on_the_rows_before_it(run, tmp_path):
    results, stdout = run_complexify(tmp_path / "only", run["data_dir"], "--only", "mynn-no-dropout")
    assert [row["name"] for row in results["rows"]] == ["mynn-no-dropout"]
    assert len(read_jsonl(tmp_path / "only" / "complexify.jsonl")) == 1
    assert "`mynn`" not in stdout and "`resnet`" not in stdout
    # The seed is set again before every row: alone, the row gives bit for bit what it gave after
    # row 1; with another seed the numbers differ (so the equality is not a constant).
    keys = ("train_loss", "train_loss_eval", "train_accuracy", "val_accuracy")
    alone, full = results["rows"][0], run["results"]["rows"][1]
    assert [alone[k] for k in keys] == [full[k] for k in keys]
    reseeded, _ = run_complexify(tmp_path / "seed1", run["data_dir"], "--only", "mynn-no-dropout", "--seed", "1")
    assert reseeded["rows"][0]["train_loss"] != full["train_loss"]


def test_ctrl_c_keeps_the_rows_done(run, tmp_path, monkeypatch, capsys):
    # --only in reverse: the rows still run in the ladder's order, mynn first.
    out = tmp_path / "interrupted"
    with complexify_module() as cx:
        real_epoch, calls = cx.train.train_one_epoch, []

        def interrupted_in_the_second_row(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real_epoch(*args, **kwargs)

        monkeypatch.setattr(cx.train, "train_one_epoch", interrupted_in_the_second_row)
        with pytest.raises(SystemExit) as stop:
            run_complexify(out, run["data_dir"], "--only", "mynn-no-dropout", "mynn", module=cx)
    assert stop.value.code == 130
    assert "Interrupted in row 'mynn-no-dropout'" in capsys.readouterr().err
    assert [row["name"] for row in read_jsonl(out / "complexify.jsonl")] == ["mynn"]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted" and results["exit_code"] == 130
    assert [row["name"] for row in results["rows"]] == ["mynn"]
    assert "`mynn`" in (out / "complexify.md").read_text() and "`mynn-no-dropout`" not in (
        out / "complexify.md").read_text()


@pytest.mark.parametrize("argv", [["--bogus"], ["--only", "vgg"], ["--epochs", "0"], ["--epochs", "two"]])
def test_bad_flags_are_rejected(argv, capsys):
    with complexify_module() as cx, pytest.raises(SystemExit) as stop:
        cx.main(argv)
    assert stop.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_an_out_folder_with_results_is_refused(run, capsys):
    before = (run["out"] / "results.json").read_text()
    with complexify_module() as cx, pytest.raises(SystemExit) as stop:
        cx.main(["--quick", "--device", "cpu", "--out", str(run["out"])])
    assert stop.value.code == 2 and "already holds" in capsys.readouterr().err
    assert (run["out"] / "results.json").read_text() == before


def test_mynn_is_v10_step2s_class_unchanged():
    def class_source(path, name="MyNN"):
        text = path.read_text()
        node = next(n for n in ast.parse(text).body if isinstance(n, ast.ClassDef) and n.name == name)
        return ast.get_source_segment(text, node)

    assert class_source(REPO_ROOT / V11 / "complexify.py") == class_source(REPO_ROOT / V10 / "train.py")
