"""fashionmnist/v14-step6 (recipe step 6, squeeze out the juice: ensembles, flip TTA).

- One quick two-member ensemble end to end, once per module (the module's fixture): each member a
  v13 run in members/member-K/ with its own seed, checkpoint and validation outputs (plain and
  flipped); the ensemble table recomputed from those files; the choice is the table's best by the
  declared rule; the test set read once, after the choice (events, the watched files, the test
  outputs recomputed); calibration of the best member and the ensemble from the recorded outputs;
  plots and REPORT.md; every check's verdict.
- Ctrl-C in the second member: exit 130, the first member kept; --resume trains only the second,
  and both members come out bit for bit as in the module's run. A run that has read the test set
  is not resumed.
- The checks both ways: identical members (a member's files copied over another's, resumed with
  --no-test: members_differ fails, the gain is 0 and warned about, no crash); the recorded TTA
  outputs replaced by the plain ones; mutations of train.py on a temp copy, each caught by its
  check in --preflight (a member seed that ignores the member, a TTA view flipped twice, the test
  files opened with the training data, and the same in --no-test, which fails test_set_untouched
  too); the order check on planted event records; v12's checks on v14's own pieces, each with its
  bug planted (tests/fmnist_v13_v15_helpers.py).
- ensemble.py's lever table from the records; the flags.

Budget: the quick runs are --quick with the checks that cost seconds off (v10-v13 test those) and
with train.py's own plots off except step 6's; the mutation runs are --preflight.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import statistics

import pytest
import torch

from conftest import REPO_ROOT, _forget_version_modules, load_version
from fmnist_helpers import (  # noqa: F401  (fixtures)
    VersionContext,
    assert_check_dict,
    assert_png_has_content,
    fmnist_data,
    quick_args,
    read_jsonl,
)
from fmnist_v13_v15_helpers import INHERITED, judge, own_fixture

V14 = "fashionmnist/v14-step6"
# the checks that cost seconds off, and half of the quick training subset: 2 batches per member
FAST = ["--no-input-independent-baseline", "--no-overfit-test", "--no-batch-independence-test",
        "--train-fraction", "0.5"]
STEP6_PLOTS = {"plot_ensemble", "plot_calibration"}
PRE_TRAINING = {"input_before_net", "augmentation", "loss_at_init", "optimizer_config", "lr_schedule",
                "gradient_flow", "step_gradient", "train_eval_modes"}
STEP6_CHECKS = {"members_differ_init", "tta_flip", "test_read_after_choice", "members_differ_trained",
                "ensemble_gain"}


def plots_off(train, monkeypatch):
    """train.py's plots (v12's and v13's, tested there) off; step 6's plots stay on."""
    import debug_tools

    for module in (train, debug_tools):
        for name in [n for n in vars(module) if n.startswith("plot_") and n not in STEP6_PLOTS]:
            monkeypatch.setattr(module, name, lambda *args, **kwargs: None)


def run_main(train, argv):
    """train.main, quietly; a SystemExit becomes (code, results.json)."""
    with contextlib.redirect_stdout(io.StringIO()) as stdout, contextlib.redirect_stderr(io.StringIO()) as stderr:
        try:
            results = train.main(argv)
            code = results["exit_code"]  # --preflight returns its verdict (python train.py exits with it)
        except SystemExit as stop:
            out = argv[argv.index("--out") + 1]
            results, code = json.loads((REPO_ROOT / out / "results.json").read_text()), stop.code
    return results, code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def quick(fmnist_data, tmp_path_factory):
    data_dir = fmnist_data[0]
    out = tmp_path_factory.mktemp("v14") / "run"
    with VersionContext(V14) as train, pytest.MonkeyPatch.context() as patch:
        plots_off(train, patch)
        results, code, stdout, _ = run_main(train, quick_args(out, data_dir, *FAST))
        assert code == 0, stdout[-3000:]
        labels = torch.load(out / "members" / "member-0" / train.PROBABILITIES_FILE, weights_only=True)["labels"]
        constants = {name: getattr(train, name) for name in ("MODEL_FILE", "PROBABILITIES_FILE",
                                                             "TEST_PROBABILITIES_FILE", "SEED")}
    return {"results": results, "stdout": stdout, "out": out, "data_dir": data_dir, "labels": labels, **constants}


def member_files(quick, k):
    folder = quick["out"] / "members" / f"member-{k}"
    return (json.loads((folder / "results.json").read_text()),
            torch.load(folder / quick["PROBABILITIES_FILE"], weights_only=True))


def accuracy(probabilities, labels):
    return (probabilities.argmax(1) == labels).double().mean().item()


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------
# The quick ensemble
# ---------------------------------------------------------------------------
def test_two_members_each_a_v13_run_with_its_own_seed(quick):
    results = quick["results"]
    assert results["version"] == V14 and results["status"] == "completed" and results["exit_code"] == 0
    assert [m["seed"] for m in results["members"]] == [42, 1042] and [m["member"] for m in results["members"]] == [0, 1]
    history = read_jsonl(quick["out"] / "history.jsonl")
    assert [(h["member"], h["epoch"]) for h in history] == [(0, 1), (1, 1)]
    for k in (0, 1):
        record, probabilities = member_files(quick, k)
        assert record["status"] == "completed" and record["seed"] == results["members"][k]["seed"]
        assert record["config"]["test"] is False and record["config"]["epochs"] == 1
        assert "test_accuracy" not in record and "test_metrics" not in record  # a member never reads the test set
        assert (quick["out"] / "members" / f"member-{k}" / quick["MODEL_FILE"]).is_file()
        assert record["best_val_accuracy"] == results["members"][k]["best_val_accuracy"]
        for view in ("plain", "flipped"):
            assert probabilities[view].shape == (256, 10)
            assert torch.allclose(probabilities[view].sum(1), torch.ones(256), atol=1e-5)
        assert torch.equal(probabilities["labels"], quick["labels"])  # one split for all members
        # the plain outputs are the best epoch's: their accuracy is the one its history recorded
        assert accuracy(probabilities["plain"], quick["labels"]) == pytest.approx(record["best_val_accuracy"])
        assert read_jsonl(quick["out"] / "members" / f"member-{k}" / "history.jsonl")[0]["val_accuracy"] == \
            history[k]["val_accuracy"]
    assert not torch.equal(member_files(quick, 0)[1]["plain"], member_files(quick, 1)[1]["plain"])


def test_the_ensemble_table_is_recomputed_from_the_members_outputs(quick):
    results, labels = quick["results"], quick["labels"]
    members = [member_files(quick, k)[1] for k in (0, 1)]
    rows = results["ensemble"]["table"]
    assert [(r["size"], r["tta"]) for r in rows] == [(1, False), (1, True), (2, False), (2, True)]
    assert results["ensemble"]["skipped_sizes"] == [3, 5]
    for r in rows:
        views = [(m["plain"] + m["flipped"]) / 2 if r["tta"] else m["plain"] for m in members[:r["size"]]]
        assert r["val_accuracy"] == pytest.approx(accuracy(torch.stack(views).mean(0), labels))
        alone = [accuracy(v, labels) for v in views]
        assert r["members_mean"] == pytest.approx(statistics.fmean(alone))
        assert r["gain"] == pytest.approx(r["val_accuracy"] - statistics.fmean(alone))
        expected = (views[0].argmax(1) != views[1].argmax(1)).double().mean().item() if r["size"] == 2 else 0.0
        assert r["disagreement"] == pytest.approx(expected)
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["size"], not r["tta"]))
    assert (results["choice"]["size"], results["choice"]["tta"]) == (best["size"], best["tta"])
    assert results["best_val_accuracy"] == best["val_accuracy"]
    table = [line for line in quick["stdout"].splitlines() if line.startswith("   2  flip")]
    assert table and f"{100 * rows[3]['val_accuracy']:.2f}%" in table[0]


def test_the_test_set_is_read_once_after_the_choice(quick):
    results, out = quick["results"], quick["out"]
    assert [e["event"] for e in results["events"]] == ["members_trained", "choice_made", "test_read"]
    assert results["events"][1]["on"] == "validation" and results["test_read"] is True
    assert results["before_choice"] == {"test_files_opened": [], "test_probability_files": []}
    assert sorted(p.rsplit("/", 1)[1] for p in results["test_files_opened"]) == [
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]  # opened once each, after the choice
    check = results["checks"]["test_read_after_choice"]
    assert_check_dict(check, "test_read_after_choice")
    assert check["passed"] and check["details"]["events"] == ["members_trained", "choice_made", "test_read"]
    saved = torch.load(out / quick["TEST_PROBABILITIES_FILE"], weights_only=True)
    choice = results["choice"]
    assert set(saved) == {"labels"} | {f"member-{k}" for k in set(range(choice["size"])) | {choice["best_member"]}}
    views = [(saved[f"member-{k}"]["plain"] + saved[f"member-{k}"]["flipped"]) / 2 if choice["tta"]
             else saved[f"member-{k}"]["plain"] for k in range(choice["size"])]
    assert len(saved["labels"]) == 512 and results["test_metrics"]["num_samples"] == 512
    assert results["test_accuracy"] == pytest.approx(accuracy(torch.stack(views).mean(0), saved["labels"]))
    assert results["best_member_test_accuracy"] == pytest.approx(
        accuracy(saved[f"member-{choice['best_member']}"]["plain"], saved["labels"]))
    assert results["baselines"]["human_accuracy"] == 0.835  # the human baseline's test images: after the choice
    assert "read once, after the choice" in quick["stdout"]


def test_calibration_of_the_best_member_and_the_ensemble(quick):
    results, labels = quick["results"], quick["labels"]
    members = [member_files(quick, k)[1] for k in (0, 1)]
    choice = results["choice"]
    best = max(results["members"], key=lambda m: (m["best_val_accuracy"], -m["member"]))["member"]
    assert choice["best_member"] == best
    debug_tools = load_version(V14, "debug_tools")
    ensemble = torch.stack([(m["plain"] + m["flipped"]) / 2 if choice["tta"] else m["plain"]
                            for m in members[:choice["size"]]]).mean(0)
    for who, probabilities in (("best_member", members[best]["plain"]), ("ensemble", ensemble)):
        confidence, predicted = probabilities.max(1)
        expected = debug_tools.calibration(confidence, predicted == labels, 15)
        recorded = results["calibration"]["validation"][who]
        assert recorded["ece"] == pytest.approx(expected["ece"]) and recorded["count"] == expected["count"]
        assert sum(recorded["count"]) == 256 and 0 < recorded["ece"] < 1
    assert set(results["calibration"]["test"]) == {"best_member", "ensemble"}
    assert sum(results["calibration"]["test"]["ensemble"]["count"]) == 512
    assert_png_has_content(quick["out"] / "calibration.png", min_size=(300, 1000))
    assert_png_has_content(quick["out"] / "ensemble.png")
    report = (quick["out"] / "REPORT.md").read_text()
    assert "## Ensembles on validation (the first K members)" in report and "**(chosen)**" in report
    assert "Events: members_trained (" in report and "![calibration.png](calibration.png)" in report
    assert "| best member alone, test |" in report and "nan" not in report
    test = results["test_metrics"]
    assert test["accuracy"] <= test["top3_accuracy"] <= test["top5_accuracy"] <= 1


def test_every_check_has_its_verdict(quick):
    checks = quick["results"]["checks"]
    assert set(checks) == PRE_TRAINING | STEP6_CHECKS | {"train_test_gap"}  # v13's gap: of the best member
    best = quick["results"]["choice"]["best_member"]
    assert checks["train_test_gap"]["details"]["test_accuracy"] == pytest.approx(
        quick["results"]["best_member_test_accuracy"])
    assert checks["train_test_gap"]["details"]["train_accuracy"] == member_files(quick, best)[0]["train_metrics"][
        "accuracy"]
    for name, check in checks.items():
        assert_check_dict(check, name)
    assert all(checks[name]["passed"] for name in set(checks) - {"ensemble_gain"})
    assert checks["tta_flip"]["details"]["members_checked"] == 2 and checks["tta_flip"]["details"][
        "max_recorded_difference"] <= 1e-4
    pairs = checks["members_differ_trained"]["details"]["pairs"]
    assert len(pairs) == 1 and not pairs[0]["same_weights"] and pairs[0]["max_probability_difference"] > 1e-3
    gain = checks["ensemble_gain"]
    row = next(r for r in quick["results"]["ensemble"]["table"] if (r["size"], r["tta"]) == (2, False))
    assert gain["value"] == pytest.approx(row["gain"]) and gain["passed"] == (row["gain"] > 0)
    assert (gain["expected"] == "") == gain["passed"]  # a gain <= 0 is a warning, marked as such


# ---------------------------------------------------------------------------
# Ctrl-C, --resume
# ---------------------------------------------------------------------------
def test_ctrl_c_in_a_member_then_resume(quick, tmp_path, monkeypatch):
    """Member 0 finished (the module run's, copied), Ctrl-C in member 1's first epoch: exit 130, both
    records say interrupted, member 0 untouched. The same command with --resume trains member 1 only,
    and it comes out bit for bit as in the module's uninterrupted run (same seed, same machine).
    --no-test: the test set is the module run's to read."""
    out = tmp_path / "run"
    shutil.copytree(quick["out"] / "members" / "member-0", out / "members" / "member-0")
    argv = quick_args(out, quick["data_dir"], *FAST, "--no-test", "--resume")
    train = load_version(V14)
    plots_off(train, monkeypatch)
    real_epoch = train.train_one_epoch

    def interrupted_epoch(model, loader, *args, **kwargs):
        if getattr(loader, "generator", None) is not None and loader.generator.initial_seed() == 1042:
            raise KeyboardInterrupt  # member 1's own loader (seed 1042): Ctrl-C in its first epoch
        return real_epoch(model, loader, *args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", interrupted_epoch)
    first = out / "members" / "member-0"
    kept = {p.name: digest(p) for p in first.iterdir()}
    results, code, _, stderr = run_main(train, argv)
    assert code == 130 and results["status"] == "interrupted" and results["members_finished"] == 1
    assert "Traceback" not in stderr and results["events"] == []
    assert json.loads((out / "members" / "member-1" / "results.json").read_text())["status"] == "interrupted"
    assert {p.name: digest(p) for p in first.iterdir()} == kept
    monkeypatch.setattr(train, "train_one_epoch", real_epoch)
    resumed, code, stdout, _ = run_main(train, argv)
    assert code == 0 and resumed["status"] == "completed", stdout[-2000:]
    assert [m["kept"] for m in resumed["members"]] == [True, False] and "member 0: finished already" in stdout
    assert {p.name: digest(p) for p in first.iterdir()} == kept
    assert torch.equal(torch.load(out / "members" / "member-1" / quick["PROBABILITIES_FILE"], weights_only=True)[
        "flipped"], member_files(quick, 1)[1]["flipped"])
    assert resumed["ensemble"]["table"] == quick["results"]["ensemble"]["table"]
    assert resumed["choice"] == quick["results"]["choice"] and resumed["test_read"] is False


def test_a_run_that_has_read_the_test_set_is_not_resumed(quick, capsys):
    train = load_version(V14)
    with pytest.raises(SystemExit) as stop:
        train.main(quick_args(quick["out"], quick["data_dir"], *FAST, "--resume"))
    assert stop.value.code == 2 and "has read the test set already" in capsys.readouterr().err


def test_resume_refuses_members_of_other_settings(quick, capsys):
    train = load_version(V14)
    folder = quick["out"] / "members" / "member-1"
    cfg = train.parse_args(quick_args(quick["out"], quick["data_dir"], *FAST, "--resume"))
    assert train.finished_member(folder, train.member_config(cfg, 1)) is True
    with pytest.raises(SystemExit) as stop:
        train.finished_member(folder, train.member_config(train.parse_args([*quick_args(
            quick["out"], quick["data_dir"], *FAST), "--lr", "0.001"]), 1))
    assert stop.value.code == 2 and "was trained with other settings (lr)" in capsys.readouterr().err


def test_only_member_trains_one_member_that_a_resumed_ensemble_keeps(quick, tmp_path, monkeypatch):
    """--only-member 1 (members side by side, one process each): run A trains member 1 alone, into
    A/members/member-1 only, and stops ("member trained"), the test set unread. Its folder moved into
    B/members/, `--resume --out B` keeps it and trains member 0. The module run has the same flags
    (--quick is 2 members, same seed): member 1 alone is bit for bit its member 1, and B is the module run."""
    train = load_version(V14)
    plots_off(train, monkeypatch)
    state_digest = load_version(V14, "debug_tools").state_digest

    def weights(folder):
        return state_digest(torch.load(folder / quick["MODEL_FILE"], weights_only=True)["model_state"])

    a, b = tmp_path / "A", tmp_path / "B"
    results, code, stdout, _ = run_main(train, quick_args(a, quick["data_dir"], *FAST, "--members", "2",
                                                          "--only-member", "1"))
    assert code == 0 and results["status"] == "member trained" and results["only_member"] == 1, stdout[-2000:]
    assert [p.name for p in (a / "members").iterdir()] == ["member-1"]  # no member-0
    assert [e["event"] for e in results["events"]] == ["members_trained"] and not results.get("test_read")
    assert not (a / quick["TEST_PROBABILITIES_FILE"]).exists() and "member 1 trained" in stdout
    alone = a / "members" / "member-1"
    record = json.loads((alone / "results.json").read_text())
    assert record["status"] == "completed" and record["member"] == 1 and record["seed"] == 1042
    assert record["best_val_accuracy"] == results["best_val_accuracy"]
    # the same member as in the module's two-member run (same flags, same seed, same machine)
    assert record["best_val_accuracy"] == quick["results"]["members"][1]["best_val_accuracy"]
    assert weights(alone) == weights(quick["out"] / "members" / "member-1")
    assert torch.equal(torch.load(alone / quick["PROBABILITIES_FILE"], weights_only=True)["flipped"],
                       member_files(quick, 1)[1]["flipped"])

    (b / "members").mkdir(parents=True)
    shutil.move(alone, b / "members" / "member-1")
    kept = {p.name: digest(p) for p in (b / "members" / "member-1").iterdir()}
    resumed, code, stdout, _ = run_main(train, quick_args(b, quick["data_dir"], *FAST, "--members", "2", "--resume"))
    assert code == 0 and resumed["status"] == "completed", stdout[-2000:]
    assert [(m["member"], m["kept"]) for m in resumed["members"]] == [(0, False), (1, True)]
    assert "member 1: finished already" in stdout and "member 0: finished already" not in stdout
    assert resumed["members"][1]["best_val_accuracy"] == results["best_val_accuracy"]
    assert {p.name: digest(p) for p in (b / "members" / "member-1").iterdir()} == kept
    assert json.loads((b / "members" / "member-0" / "results.json").read_text())["status"] == "completed"
    assert weights(b / "members" / "member-0") == weights(quick["out"] / "members" / "member-0")
    assert resumed["ensemble"]["table"] == quick["results"]["ensemble"]["table"]
    assert resumed["choice"] == quick["results"]["choice"]
    assert resumed["test_read"] is True and resumed["test_accuracy"] == quick["results"]["test_accuracy"]


# ---------------------------------------------------------------------------
# The checks fail on their bugs
# ---------------------------------------------------------------------------
def test_identical_members_fail_and_the_gain_is_a_warning_not_a_crash(quick, tmp_path, monkeypatch):
    """One model copied K times: member 0's weights and outputs copied over member 1's (a resume that
    mixed up folders), the run resumed with --no-test. members_differ fails, the gain is exactly 0
    and warned about, the run still finishes (exit 0) and never reads the test set."""
    out = tmp_path / "run"
    shutil.copytree(quick["out"] / "members", out / "members")
    (out / "results.json").write_text(json.dumps({"status": "interrupted", "test_read": False}))
    for name in (quick["MODEL_FILE"], quick["PROBABILITIES_FILE"]):
        shutil.copy(out / "members" / "member-0" / name, out / "members" / "member-1" / name)
    train = load_version(V14)
    plots_off(train, monkeypatch)
    results, code, stdout, _ = run_main(train, quick_args(out, quick["data_dir"], *FAST, "--resume", "--no-test"))
    assert code == 0 and results["status"] == "completed", stdout[-2000:]
    checks = results["checks"]
    failed = {name for name, c in checks.items() if not c["passed"]}
    assert failed == {"members_differ_trained", "ensemble_gain"}, failed
    differ = checks["members_differ_trained"]
    assert differ["value"] == 1 and differ["details"]["pairs"][0]["same_weights"] is True
    assert differ["details"]["pairs"][0]["disagreement"] == 0 and "member_seed(seed, k)" in differ["hint"]
    gain = checks["ensemble_gain"]
    assert gain["value"] == 0 and gain["expected"].startswith("a warning") and "disagreement near 0" in gain["hint"]
    assert "FAILED: members_differ_trained" in stdout and "failed as expected (*): ensemble_gain" in stdout
    assert results["test_read"] is False and checks["test_set_untouched"]["passed"]
    assert not (out / quick["TEST_PROBABILITIES_FILE"]).exists() and "test_accuracy" not in results


def test_the_summary_names_the_members_failed_checks(quick, tmp_path, monkeypatch):
    """Each member prints its own checks (v13's) after its training; the run's table holds only the
    run's. A member's FAIL must reach the summary, or the console shows FAIL and then "17/17 passed".
    The module run's members, resumed with --no-test: first with every member check passed (the
    control), then with planted failures: member 0's training_loss_decreases (expected after a few
    --quick steps, and said so) and member 1's batch_independence_after_training (a real bug: no excuse)."""
    for k in (0, 1):  # the module run's own records: the summary's list is the members' failed verdicts
        record = member_files(quick, k)[0]
        assert quick["results"]["members"][k]["failed_checks"] == [
            name for name, c in record["checks"].items() if not c["passed"]]
    train = load_version(V14)
    plots_off(train, monkeypatch)

    def resumed(name, planted):
        out = tmp_path / name
        shutil.copytree(quick["out"] / "members", out / "members")
        (out / "results.json").write_text(json.dumps({"status": "interrupted", "test_read": False}))
        for k in (0, 1):
            path = out / "members" / f"member-{k}" / "results.json"
            record = json.loads(path.read_text())
            template = record["checks"]["training_loss_decreases"]
            record["checks"] = {check: {**template, "name": check, "passed": check not in planted.get(k, ())}
                                for check in ("training_loss_decreases", "batch_independence_after_training")}
            path.write_text(json.dumps(record))
        results, code, stdout, _ = run_main(train, quick_args(out, quick["data_dir"], *FAST, "--resume", "--no-test"))
        assert code == 0 and [m["kept"] for m in results["members"]] == [True, True], stdout[-2000:]
        return results, stdout, (out / "REPORT.md").read_text()

    results, stdout, report = resumed("control", {})
    assert [m["failed_checks"] for m in results["members"]] == [[], []]
    assert "members' own checks (members/member-K/results.json): all passed in 2 members" in stdout
    assert "(--quick:" not in stdout and "FAILED its own checks" not in report

    results, stdout, report = resumed("planted", {0: {"training_loss_decreases"},
                                                  1: {"batch_independence_after_training"}})
    assert [m["failed_checks"] for m in results["members"]] == [["training_loss_decreases"],
                                                                ["batch_independence_after_training"]]
    assert ("members' own checks (members/member-K/results.json): FAILED in member 1/2 (seed 42): "
            "training_loss_decreases; member 2/2 (seed 1042): batch_independence_after_training") in stdout
    quick_note = next(line for line in stdout.splitlines() if line.startswith("(--quick:"))
    assert "training_loss_decreases" in quick_note and "batch_independence" not in quick_note
    assert ("**member 0 (seed 42) FAILED its own checks: training_loss_decreases**; **member 1 (seed 1042) "
            "FAILED its own checks: batch_independence_after_training**") in report


def test_recorded_tta_outputs_that_are_not_the_mirror_images_fail(quick):
    train = load_version(V14)
    import debug_tools

    state = torch.load(quick["out"] / "members" / "member-0" / quick["MODEL_FILE"], weights_only=True)
    model = train.ResNet()
    model.load_state_dict(state["model_state"])
    probabilities = member_files(quick, 0)[1]
    raw = train.load_raw_data(quick["data_dir"], read_test=False)
    cfg = train.parse_args(["--quick", "--no-test"])
    probe = train.split_data(*raw, cfg, torch.device("cpu"))[1].images[:16]

    def outputs(k, images):
        return train.member_probabilities(model, images, "cpu")["plain"]

    good = debug_tools.verify_tta_flip(train.flip_view, probe, [(probe, probabilities["flipped"][:16])], outputs)
    assert good.passed and good.details["max_recorded_difference"] <= 1e-4
    bad = debug_tools.verify_tta_flip(train.flip_view, probe, [(probe, probabilities["plain"][:16])], outputs)
    assert not bad.passed and "recorded flipped probabilities differ" in bad.criterion


def test_the_tta_view_must_be_a_single_left_right_flip():
    debug_tools = load_version(V14, "debug_tools")
    images = torch.rand(4, 1, 28, 28)
    assert debug_tools.verify_tta_flip(lambda x: x.flip(3), images).passed
    for view, words in ((lambda x: x.flip(3).flip(3), "flipped twice"), (lambda x: x, "flipped twice"),
                        (lambda x: x.flip(2), "up-down"), (lambda x: x.transpose(2, 3), "not torch.flip")):
        check = debug_tools.verify_tta_flip(view, images)
        assert not check.passed and words in check.criterion, check.criterion
    symmetric = torch.cat([images[..., :14], images[..., :14].flip(3)], dim=3)
    assert not debug_tools.verify_tta_flip(lambda x: x.flip(3), symmetric).passed


def test_the_order_check_on_planted_records():
    debug_tools = load_version(V14, "debug_tools")
    verify = debug_tools.verify_test_read_after_choice

    def events(*names):
        return [{"event": name} for name in names]

    assert verify(events("members_trained", "choice_made", "test_read"), [], []).passed
    assert verify([], [], []).passed  # --preflight: nothing has happened, nothing was read
    for planted, reads, records, words in (
            (events("members_trained", "test_read", "choice_made"), [], [], "read before the choice"),
            (events("members_trained", "test_read"), [], [], "read before the choice"),
            (events("members_trained", "choice_made", "test_read", "test_read"), [], [], "read 2 times"),
            (events("choice_made", "members_trained"), [], [], "before the members were trained"),
            (events("members_trained", "choice_made", "test_read"), ["/d/t10k-images-idx3-ubyte"], [],
             "test files opened before the choice"),
            (events("members_trained", "choice_made"), [], ["test_probabilities.pt"],
             "test probabilities existed before the choice")):
        check = verify(planted, reads, records)
        assert not check.passed and words in check.criterion, check.criterion


def test_members_differ_and_the_gain_on_constructed_members():
    debug_tools = load_version(V14, "debug_tools")
    a = torch.softmax(torch.randn(50, 10), 1)
    b = torch.softmax(torch.randn(50, 10), 1)
    assert debug_tools.verify_members_differ([a, b], ["x", "y"], stage="trained").passed
    same = debug_tools.verify_members_differ([a, b, a.clone()], ["x", "y", "z"], stage="trained")
    assert not same.passed and same.value == 1 and "members 0 and 2 (identical outputs)" in same.criterion
    assert not debug_tools.verify_members_differ([a, b], ["x", "x"], stage="init").passed
    assert debug_tools.pairwise_disagreement([a, a]) == 0 and debug_tools.pairwise_disagreement([a, b]) > 0.5
    assert debug_tools.ensemble_gain(0.91, [0.90, 0.89], 0.05).passed
    worse = debug_tools.ensemble_gain(0.89, [0.90, 0.90], 0.0)
    assert not worse.passed and worse.value == pytest.approx(-0.01) and worse.expected


def copy_with_edit(tmp_path, old, new):
    """A learner's copy of v14 (next to a link to shared/) with one edit to train.py."""
    folder = tmp_path / V14
    shutil.copytree(REPO_ROOT / V14, folder, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    (tmp_path / "shared").symlink_to(REPO_ROOT / "shared")
    source = (folder / "train.py").read_text()
    assert source.count(old) == 1, f"the edit does not apply: {old!r} occurs {source.count(old)} times"
    (folder / "train.py").write_text(source.replace(old, new))
    return folder


MUTATIONS = {
    # every member gets --seed: K copies of one model
    "member seed ignores the member": ("    return seed + stride * member\n", "    return seed\n",
                                       "members_differ_init", "member_seed(seed, k) must depend on k"),
    # "TTA" that flips back: the model sees the original twice
    "TTA view flipped twice": ("    return images.flip(3)\n", "    return images.flip(3).flip(3)\n",
                               "tta_flip", "images.flip(3)"),
    # the test files opened with the training data, long before any choice
    "test files read at load": ("raw = load_raw_data(cfg.data_dir, read_test=cfg.test)",
                                "raw = load_raw_data(cfg.data_dir)", "test_read_after_choice", "read_test=False"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_preflight_catches_the_planted_bug(mutation, quick, tmp_path, monkeypatch):
    """The unedited code passes every check (the module's run); each edit fails exactly its check."""
    old, new, check, hint = MUTATIONS[mutation]
    folder = copy_with_edit(tmp_path, old, new)
    _forget_version_modules()
    train = load_version(folder)
    plots_off(train, monkeypatch)
    out = folder / "outputs" / "run"
    results, code, stdout, _ = run_main(train, quick_args(out, quick["data_dir"], *FAST, "--preflight"))
    failed = {name for name, c in results["checks"].items() if not c["passed"]}
    assert code == 1 and failed == {check}, (failed, stdout[-2000:])
    assert hint in results["checks"][check]["hint"] and f"FAILED: {check}" in stdout


def test_a_no_test_preflight_that_reads_the_test_files_fails_test_set_untouched(tmp_path, fmnist_data, monkeypatch):
    """v13's test_set_untouched, in v14's --no-test mode: the edit of "test files read at load" fails
    it next to the order check. The unedited --no-test run passes it (the identical-members test)."""
    old, new, _, _ = MUTATIONS["test files read at load"]
    folder = copy_with_edit(tmp_path, old, new)
    _forget_version_modules()
    train = load_version(folder)
    plots_off(train, monkeypatch)
    out = folder / "outputs" / "run"
    results, code, stdout, _ = run_main(train, quick_args(out, fmnist_data[0], *FAST, "--preflight", "--no-test"))
    failed = {name for name, c in results["checks"].items() if not c["passed"]}
    assert code == 1 and failed == {"test_read_after_choice", "test_set_untouched"}, (failed, stdout[-2000:])
    untouched = results["checks"]["test_set_untouched"]
    assert untouched["details"]["test_file_reads"] and "load_raw_data(read_test=False)" in untouched["hint"]
    assert results["test_read"] is True and "FAILED: test_read_after_choice, test_set_untouched" in stdout


# v13's checks (v12's and step 5's) run once per ensemble, in check_the_recipe, on v13's code; v14's
# module run has the slow ones off: here each meets its bug on v14's own pieces.
own = own_fixture(V14)


@pytest.mark.parametrize("check", list(INHERITED))
def test_inherited_check_passes_on_v14s_pieces_and_fails_on_its_bug(check, own):
    judge(check, own)


# ---------------------------------------------------------------------------
# ensemble.py and the flags
# ---------------------------------------------------------------------------
def test_ensemble_py_tables_the_levers_from_the_records(quick, tmp_path, capsys):
    other = tmp_path / "seed1"
    shutil.copytree(quick["out"], other)
    record = json.loads((other / "results.json").read_text())
    record["seed"] = 1
    for r in record["ensemble"]["table"]:  # a second run, one point better everywhere
        r.update(val_accuracy=r["val_accuracy"] + 0.01, members_mean=r["members_mean"] + 0.01)
    record["test_accuracy"] += 0.02
    (other / "results.json").write_text(json.dumps(record))
    long = tmp_path / "long"
    shutil.copytree(quick["out"], long)
    record = json.loads((long / "results.json").read_text())
    record["config"]["epochs"] = 2
    for r in record["ensemble"]["table"]:
        r["members_mean"] += 0.005
    (long / "results.json").write_text(json.dumps(record))
    ensemble = load_version(V14, "ensemble")
    result = ensemble.main([str(quick["out"]), str(other), "--long", str(long), "--out", str(tmp_path / "levers")])
    rows = quick["results"]["ensemble"]["table"]
    gain = result["levers"]["ensemble of 2 (no TTA) vs its members' mean"]
    assert gain["n"] == 2 and gain["mean"] == pytest.approx(rows[2]["gain"]) and gain["std"] == pytest.approx(0)
    tta = result["levers"]["flip TTA, single members (members' mean)"]
    assert tta["mean"] == pytest.approx(rows[3]["members_mean"] - rows[2]["members_mean"])
    longer = result["levers"]["leave it training (members' mean, long - short)"]
    assert longer["n"] == 1 and longer["mean"] == pytest.approx(0.005)  # paired with the run of the same seed
    test = result["test"]
    assert test["mean"] == pytest.approx(quick["results"]["test_accuracy"] + 0.01)
    assert test["std"] == pytest.approx(0.02 / 2 ** 0.5)
    table = (tmp_path / "levers" / "levers.md").read_text()
    assert table in capsys.readouterr().out and "goal 96.3%: missed by" in table and "epochs: [1, 2]" in table
    with pytest.raises(SystemExit) as stop:
        ensemble.main([str(quick["out"]), str(quick["out"])])
    assert stop.value.code == 2 and "named twice" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--members", "0"], "--members, --sizes"), (["--sizes", "0"], "--members, --sizes"),
    (["--members", "two"], "invalid int value"), (["--ensemble"], "unrecognized arguments: --ensemble"),
    (["--members", "2", "--only-member", "2"], "--only-member must be in 0..1 (--members 2)"),
    (["--members", "2", "--only-member", "-1"], "--only-member must be in 0..1 (--members 2)"),
    (["--only-member", "5"], "--only-member must be in 0..4 (--members 5)"),
    # --quick makes the ensemble 2 members: member 2 is not one of them (checked after --quick's cap)
    (["--quick", "--only-member", "2"], "--only-member must be in 0..1 (--members 2)"),
])
def test_bad_flags_exit_2(argv, message, capsys):
    train = load_version(V14)
    with pytest.raises(SystemExit) as stop:
        train.parse_args(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_flags_and_member_seeds(capsys):
    train = load_version(V14)
    cfg = train.parse_args([])
    assert (cfg.members, cfg.sizes, cfg.member_seed_stride) == (5, [1, 2, 3, 5], 1000)
    assert train.parse_args(["--quick"]).members == 2 and train.parse_args(["--quick", "--members", "1"]).members == 1
    assert train.member_seed(42, 0) == 42  # member 0 is v13's run of --seed
    seeds = [{train.member_seed(seed, k) for k in range(5)} for seed in (0, 1, 2)]
    assert all(len(s) == 5 for s in seeds) and not (seeds[0] & seeds[1] or seeds[1] & seeds[2] or seeds[0] & seeds[2])
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("--members", "--sizes", "--resume", "--member-seed-stride",
                                         "--calibration-bins"))
