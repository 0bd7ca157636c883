"""fashionmnist/v13-step5 (recipe step 5, tune).

- The quick two-trial search end to end, once per module (the module's fixture): one record per
  trial with its configuration, validation score and seconds; every trial a --no-test train.py
  run (test_read false, no test number, its own test_set_untouched passing); search.md,
  search.json, search.png and the edge verdict; a second call skips both trials (resume), a
  folder of another search seed is refused, Ctrl-C leaves complete records only.
- Trial k's configuration is a pure function of (search seed, k), inside the space, log-uniform
  where the space says log.
- The test set stays out of the search, both ways: the check passes on the real search, and
  fails on a planted search that reads the test files to score its trials; a train.py that reads
  the test files in --no-test (a mutation on a temp copy) fails its own check; a train.py whose
  analysis evaluates the test loader in --no-test is stopped by the guard (exit 1, clear
  message, recorded); a normal run's test_read is true (the watcher sees real reads).
- edge_verdict both ways (log space for log-sampled ranges), the Welch interval, --confirm with
  train.main replaced (arms, choice on validation, test read for the chosen arm only), the flags.
- v12's checks, each called on the pieces v13's train.py hands it: passes as they are, fails with
  its bug planted (tests/fmnist_v13_v15_helpers.py; the mutation tests stop at v12).

Budget: the search fixture trains two quick trials with the input-independent baseline off
(its ~30 s is v10's and v12's to test); the mutation runs are --preflight with the plots off.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import sys

import pytest

from conftest import REPO_ROOT, _forget_version_modules, load_version
from fmnist_helpers import (  # noqa: F401  (fixtures)
    VersionContext,
    assert_check_dict,
    assert_png_has_content,
    fmnist_data,
    quick_args,
)
from fmnist_v13_v15_helpers import INHERITED, judge, own_fixture

V13 = "fashionmnist/v13-step5"
TRAIN_FLAGS = "--no-input-independent-baseline"
SPACE_NAMES = ["lr", "weight_decay", "erase_probability", "label_smoothing", "channels"]


@contextlib.contextmanager
def script(folder=V13, name="search"):
    """search.py (and with it the version's train.py), imported fresh and forgotten after: conftest's list
    of version module names does not know it."""
    saved = list(sys.path)
    sys.modules.pop(name, None)
    try:
        yield load_version(folder, name)
    finally:
        sys.modules.pop(name, None)
        _forget_version_modules()
        sys.path[:] = saved


def search_argv(out, data_dir, *extra):
    return ["--quick", "--device", "cpu", "--out", str(out), "--data-dir", str(data_dir),
            f"--train-flags={TRAIN_FLAGS}", *extra]


@pytest.fixture(scope="module")
def search_run(fmnist_data, tmp_path_factory):
    data_dir = fmnist_data[0]
    out = tmp_path_factory.mktemp("v13_search") / "search"
    stdout = io.StringIO()
    with script() as search, contextlib.redirect_stdout(stdout), pytest.MonkeyPatch.context() as patch:
        # train.py's own plots are v12's (tested there) and cost half of a quick run: off in the trials;
        # REPORT.md still lists what was written, and search.png is drawn.
        import debug_tools

        for module in (search.train, debug_tools):
            for name in [n for n in vars(module) if n.startswith("plot_")]:
                patch.setattr(module, name, lambda *args, **kwargs: None)
        summary = search.main(search_argv(out, data_dir))
    return {"summary": summary, "stdout": stdout.getvalue(), "out": out, "data_dir": data_dir}


def trial_results(out, trial):
    return json.loads((out / "runs" / f"trial-{trial:04d}" / "results.json").read_text())


# ---------------------------------------------------------------------------
# The quick search
# ---------------------------------------------------------------------------
def test_one_record_per_trial_with_config_score_and_seconds(search_run):
    out, summary = search_run["out"], search_run["summary"]
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["trial-0000.json", "trial-0001.json"]
    with script() as search:
        for trial in (0, 1):
            record = json.loads((out / "trials" / f"trial-{trial:04d}.json").read_text())
            results = trial_results(out, trial)
            assert record["config"] == search.sample_config(0, trial) and record["search_seed"] == 0
            assert record["status"] == "completed" and record["val_accuracy"] == results["best_val_accuracy"]
            assert 0 < record["seconds"] and record["train_time_s"] == results["train_time_s"] < record["seconds"]
            assert record["epochs"] == 1 and record["quick"] is True and record["space"] == search.SPACE
            # the trial's hyperparameters reached train.py's config
            assert {name: results["config"][name] for name in SPACE_NAMES} == record["config"]
            assert results["config"]["seed"] == search.TRIAL_SEED
            assert_check_dict(record["test_set_untouched"], "test_set_untouched")
            assert record["test_set_untouched"]["passed"] and record["run_test_set_untouched"] is True
    assert summary["exit_code"] == 0 and summary["test_set_untouched"]
    assert [t["trial"] for t in summary["trials"]] == sorted((0, 1), key=lambda k: -trial_results(
        out, k)["best_val_accuracy"])


def test_summary_judges_edges_against_the_records_own_space(tmp_path, capsys):
    """After SPACE was widened (channels up to 64), the first search's records (channels 24-48, best at 48)
    must still say "edge" in their summary: the verdict that made us widen it. Judged against today's SPACE
    they would say "inside" and hide why the range changed. Records of two spaces in one folder: exit 2."""
    import shutil

    from conftest import REPO_ROOT
    records = REPO_ROOT / "runs" / "2026-12-06-h100-fashionmnist-v13-search" / "records" / "trials"
    shutil.copytree(records, tmp_path / "trials")
    with script() as search:
        old_space = json.loads((records / "trial-0020.json").read_text())["space"]
        assert old_space["channels"]["values"] == [24, 32, 48] and old_space != search.SPACE
        summary = search.main(["--summarise", "--out", str(tmp_path)])
        assert summary["space"] == old_space and summary["best"]["config"]["channels"] == 48
        assert summary["edge"]["on_edge"] and summary["edge"]["parameters"]["channels"]["edge"] == "high"
        assert not search.edge_verdict(summary["best"]["config"], search.SPACE)["on_edge"]  # today's SPACE: inside
        widened = json.loads((records / "trial-0000.json").read_text())
        widened["trial"], widened["space"] = 1, search.SPACE
        (tmp_path / "trials" / "trial-0001.json").write_text(json.dumps(widened))
        with pytest.raises(SystemExit) as stop:
            search.main(["--summarise", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "different search spaces" in capsys.readouterr().err


def test_every_trial_is_a_no_test_run(search_run):
    for trial in (0, 1):
        results = trial_results(search_run["out"], trial)
        assert results["config"]["test"] is False and results["test_read"] is False
        assert results["test_files_opened"] == []
        assert not [key for key in results if key.startswith("test_") and key not in ("test_read",
                                                                                      "test_files_opened")]
        assert results["checks"]["test_set_untouched"]["passed"] and "train_test_gap" not in results["checks"]
        assert results["data_report"]["test_size"] == 0 and results["baselines"] == {}
        report = (search_run["out"] / "runs" / f"trial-{trial:04d}" / "REPORT.md").read_text()
        assert "| test set | not read (--no-test; test_read: false) |" in report and "nan" not in report


def test_table_plot_and_verdict(search_run):
    out, summary = search_run["out"], search_run["summary"]
    table = (out / "search.md").read_text()
    assert table in search_run["stdout"]
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| rank | trial | lr | weight_decay | erase_probability | label_smoothing | channels |")
    best = summary["best"]
    assert lines[2].startswith(f"| 1 | {best['trial']} | {best['config']['lr']:g} |")
    assert f"| {100 * best['val_accuracy']:.2f} |" in lines[2] and lines[2].endswith("| yes |")
    with script() as search:
        assert summary["edge"] == search.edge_verdict(best["config"], search.SPACE)
    assert f"Verdict: {summary['edge']['verdict']}." in table
    assert "Budget spent: 2 trials of 1 epochs" in table and "Test set: untouched in every trial." in table
    on_disk = json.loads((out / "search.json").read_text())
    assert on_disk["best"] == json.loads(json.dumps(best)) and on_disk["budget"]["trials"] == 2
    assert_png_has_content(out / "search.png", min_size=(300, 600))


def test_a_second_call_resumes_and_a_foreign_folder_is_refused(search_run, monkeypatch, capsys):
    """Both records exist: nothing is trained, the table is the same; --summarise reads the same folder.
    A search seed whose trial 0 differs from the record in the folder stops with exit 2."""
    out = search_run["out"]
    with script() as search:
        monkeypatch.setattr(search.train, "main", lambda argv: pytest.fail(f"trained again: {argv}"))
        again = search.main(search_argv(out, search_run["data_dir"]))
        assert capsys.readouterr().out.count("done already") == 2
        summarised = search.main(["--summarise", "--out", str(out)])
        assert again["trials"] == summarised["trials"] == search_run["summary"]["trials"]
        with pytest.raises(SystemExit) as stop:
            search.main(search_argv(out, search_run["data_dir"], "--search-seed", "1"))
        assert stop.value.code == 2 and "holds another search" in capsys.readouterr().err


def test_ctrl_c_keeps_only_complete_records(search_run, tmp_path, capsys):
    """Trial 0 finishes (train.main faked with the module's real trial), trial 1 is interrupted:
    one record, none for the interrupted trial, exit 130, and the same command resumes at trial 1."""
    done = trial_results(search_run["out"], 0)
    calls = []

    def fake_main(argv):
        calls.append(argv)
        if len(calls) == 2:
            raise SystemExit(130)  # what train.py's stop_cleanly turns Ctrl-C into
        return done

    with script() as search:
        search.train.main = fake_main
        with pytest.raises(SystemExit) as stop:
            search.main(search_argv(tmp_path, search_run["data_dir"]))
        assert stop.value.code == 130 and [p.name for p in (tmp_path / "trials").iterdir()] == ["trial-0000.json"]
        assert "1 trial records" in capsys.readouterr().err
        calls.clear()
        with contextlib.redirect_stdout(io.StringIO()):
            search.main(search_argv(tmp_path, search_run["data_dir"]))
        assert len(calls) == 1 and "--lr" in calls[0]  # only trial 1
        assert calls[0][calls[0].index("--lr") + 1] == str(search.sample_config(0, 1)["lr"])


def test_a_diverged_trial_is_a_record_too(search_run, tmp_path):
    """Too high a learning rate is a result of the search: train.py exits 1 with results.json saying
    diverged; the trial gets a record without a score, ranks last, and the plot marks it."""
    done = trial_results(search_run["out"], 0)

    def fake_main(argv):
        if argv[argv.index("--out") + 1].endswith("trial-0001"):
            folder = tmp_path / "runs" / "trial-0001"
            folder.mkdir(parents=True)
            (folder / "results.json").write_text(json.dumps({**done, "status": "diverged", "error": "loss 1e29"}))
            raise SystemExit(1)
        return done

    with script() as search:
        search.train.main = fake_main
        with contextlib.redirect_stdout(io.StringIO()):
            summary = search.main(search_argv(tmp_path, search_run["data_dir"]))
    diverged = summary["trials"][-1]
    assert diverged["trial"] == 1 and diverged["status"] == "diverged" and diverged["val_accuracy"] is None
    assert diverged["error"] == "loss 1e29" and summary["best"]["trial"] == 0 and summary["exit_code"] == 0
    assert "| 2 | 1 |" in (tmp_path / "search.md").read_text() and "| diverged |" in (tmp_path / "search.md").read_text()
    assert_png_has_content(tmp_path / "search.png")


# ---------------------------------------------------------------------------
# Trial k's configuration
# ---------------------------------------------------------------------------
def test_a_trials_configuration_is_a_pure_function_of_seed_and_index():
    with script() as search:
        forward = [search.sample_config(0, k) for k in range(8)]
        backward = [search.sample_config(0, k) for k in reversed(range(8))][::-1]
        assert forward == backward  # no state carried from one trial to the next: shards sample the same
        assert search.sample_config(1, 3) != search.sample_config(0, 3) != search.sample_config(0, 4)
        for config in [search.sample_config(s, k) for s in range(3) for k in range(40)]:
            assert list(config) == list(search.SPACE)
            for name, dimension in search.SPACE.items():
                if dimension["kind"] == "choice":
                    assert config[name] in dimension["values"]
                else:
                    assert dimension["low"] <= config[name] <= dimension["high"]
        # log-uniform: half the learning rates below the geometric middle 1e-3 (uniform would put 9% there)
        below = sum(search.sample_config(0, k)["lr"] < 1e-3 for k in range(400)) / 400
        assert 0.4 < below < 0.6, below
        assert search.config_flags({"lr": 0.003, "weight_decay": 0.05}) == ["--lr", "0.003", "--weight-decay", "0.05"]


@pytest.mark.parametrize("text, trials", [("0-3", [0, 1, 2, 3]), ("5", [5]), ("0-1,8,10-11", [0, 1, 8, 10, 11]),
                                          ("2-2", [2])])
def test_trial_ranges_for_shards(text, trials):
    with script() as search:
        assert search.parse_trials(text) == trials
        assert search.parse_args(["--trials", text]).trials == trials
        assert search.parse_args([]).trials == list(range(search.TRIALS))
        assert search.parse_args(["--quick"]).trials == [0, 1]


# ---------------------------------------------------------------------------
# The test set stays out of the search
# ---------------------------------------------------------------------------
def test_a_planted_search_that_reads_the_test_set_fails_the_check(search_run, tmp_path, capsys):
    """A search that scores its trials with a look at the test set (here: it loads the test tensors
    through the version's own loader) is caught by the search's watcher, the record says so, the
    table says its scores are not to be trusted, and the search exits 1. train.main is faked with
    the module's real trial, so only the planted scoring differs from the real search."""
    done = trial_results(search_run["out"], 0)
    with script() as search:
        search.train.main = lambda argv: done
        real_score = search.score

        def peeking_score(results):
            search.train.load_raw_data(search_run["data_dir"])  # read_test defaults to True
            return real_score(results)

        search.score = peeking_score
        with contextlib.redirect_stdout(io.StringIO()) as stdout:
            summary = search.main(search_argv(tmp_path, search_run["data_dir"], "--trials", "0"))
    record = summary["trials"][0]
    check = record["test_set_untouched"]
    assert not check["passed"] and check["value"] == 2
    assert sorted(p.rsplit("/", 1)[1] for p in check["details"]["test_file_reads"]) == [
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    assert summary["test_set_untouched"] is False and summary["exit_code"] == 1
    assert "| **NO** |" in stdout.getvalue() and "read by trials [0]" in stdout.getvalue()


def test_the_watcher_sees_a_normal_runs_test_reads(search_run):
    """The control: train.py's loader opens the test files when it reads them (a watcher that never
    sees a read would pass every search)."""
    with script() as search:
        with search.watch_file_reads(search.train.TEST_FILES) as reads:
            search.train.load_raw_data(search_run["data_dir"], read_test=False)
        assert reads == []
        with search.watch_file_reads(search.train.TEST_FILES) as reads:
            raw = search.train.load_raw_data(search_run["data_dir"])
        assert len(reads) == 2 and len(raw[3]) == 10_000


def test_the_guard_raises_and_records_every_use():
    train = load_version(V13)
    guard = train.TestSetGuard("test set")
    for use in (len, iter, lambda g: g[0], lambda g: g.images, lambda g: train.TensorLoader(g, 8).__len__()):
        with pytest.raises(train.TestSetRead, match=r"the test set was used .* in a --no-test run"):
            use(guard)
    assert guard.touches == ["test set: len()", "test set: iterated", "test set: indexed", "test set: .images",
                             "test set: len()"]
    import debug_tools

    check = debug_tools.verify_test_set_untouched([], guard.touches, {"best_val_accuracy": 0.9, "test_read": False})
    assert not check.passed and check.value == 5 and "touched the test set's guard" in check.criterion
    clean = debug_tools.verify_test_set_untouched([], [], {"best_val_accuracy": 0.9, "test_read": False,
                                                           "test_files_opened": []})
    assert clean.passed and clean.value == 0
    numbers = debug_tools.verify_test_set_untouched([], [], {"test_accuracy": 0.9})
    assert not numbers.passed and "recorded test numbers: test_accuracy" in numbers.criterion


def copy_with_edit(tmp_path, old=None, new=None):
    """A learner's copy of v13 (next to a link to shared/) with one edit to train.py."""
    folder = tmp_path / V13
    shutil.copytree(REPO_ROOT / V13, folder, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    (tmp_path / "shared").symlink_to(REPO_ROOT / "shared")
    if old is not None:
        source = (folder / "train.py").read_text()
        assert source.count(old) == 1, f"the edit does not apply: {old!r} occurs {source.count(old)} times"
        (folder / "train.py").write_text(source.replace(old, new))
    return folder


def no_test_run(folder, data_dir, monkeypatch, *extra):
    """train.py --quick --no-test of a copy, the long checks and the plots off (side outputs no verdict reads)."""
    train = load_version(folder)
    import debug_tools

    for module in (train, debug_tools):
        for name in [n for n in vars(module) if n.startswith("plot_")]:
            monkeypatch.setattr(module, name, lambda *args, **kwargs: None)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            results = train.main([*quick_args(folder / "outputs" / "run", data_dir), "--no-test",
                                  "--no-input-independent-baseline", "--no-overfit-test",
                                  "--no-batch-independence-test", *extra])
        except SystemExit as stop:
            results = json.loads((folder / "outputs" / "run" / "results.json").read_text())
            results["raised"] = stop.code
    return results, stdout.getvalue(), stderr.getvalue()


READS_THE_TEST_FILES = ("raw = load_raw_data(cfg.data_dir, read_test=cfg.test)", "raw = load_raw_data(cfg.data_dir)")


def test_preflight_passes_on_the_copy_and_fails_when_train_py_reads_the_test_files(tmp_path, fmnist_data,
                                                                                    monkeypatch):
    clean, stdout, _ = no_test_run(copy_with_edit(tmp_path / "clean"), fmnist_data[0], monkeypatch, "--preflight")
    assert clean["exit_code"] == 0 and clean["all_checks_passed"] and clean["test_read"] is False, stdout[-2000:]
    assert clean["checks"]["test_set_untouched"]["passed"]
    _forget_version_modules()
    planted, stdout, _ = no_test_run(copy_with_edit(tmp_path / "planted", *READS_THE_TEST_FILES), fmnist_data[0],
                                     monkeypatch, "--preflight")
    failed = {name for name, c in planted["checks"].items() if not c["passed"]}
    assert planted["exit_code"] == 1 and failed == {"test_set_untouched"}, stdout[-2000:]
    assert planted["test_read"] is True and len(planted["test_files_opened"]) == 2
    assert "load_raw_data(read_test=False)" in planted["checks"]["test_set_untouched"]["hint"]
    assert "FAILED: test_set_untouched" in stdout


def test_an_analysis_that_evaluates_the_test_loader_is_stopped_by_the_guard(tmp_path, fmnist_data, monkeypatch):
    """The analysis's `if cfg.test:` deleted: in a --no-test run the test loader is the guard; the run
    stops with one clear message and exit 1, and results.json records it."""
    folder = copy_with_edit(tmp_path, "    if cfg.test:\n        test_metrics = compute_detailed_metrics(",
                            "    if True:\n        test_metrics = compute_detailed_metrics(")
    results, _, stderr = no_test_run(folder, fmnist_data[0], monkeypatch)
    assert results["raised"] == 1 and results["status"] == "failed" and results["test_read"] is True
    assert "error: the test set was used (len()) in a --no-test run" in stderr and "Traceback" not in stderr
    assert "if cfg.test:" in results["error"] and "test_accuracy" not in results


# ---------------------------------------------------------------------------
# v12's checks on v13's own pieces (tests/test_fashionmnist_mutations.py plants them in v10-v12 only)
# ---------------------------------------------------------------------------
own = own_fixture(V13)


@pytest.mark.parametrize("check", list(INHERITED))
def test_inherited_check_passes_on_v13s_pieces_and_fails_on_its_bug(check, own):
    """Each check gets what v13's checks_before_training (or analyse) gives it, once as it is and
    once with the check's bug planted (tests/fmnist_v13_v15_helpers.py)."""
    judge(check, own)


# ---------------------------------------------------------------------------
# edge_verdict
# ---------------------------------------------------------------------------
INSIDE = {"lr": 2e-4, "weight_decay": 0.01, "erase_probability": 0.25, "label_smoothing": 0.1, "channels": 32}


def test_edge_verdict_inside_every_range():
    with script() as search:
        # 2e-4 is 1% of the lr range on a linear scale, 15% in log space: inside, because lr is log-sampled
        verdict = search.edge_verdict(INSIDE, search.SPACE)
        assert not verdict["on_edge"] and verdict["verdict"] == "the best lies inside every searched range"
        assert verdict["parameters"]["lr"]["position"] == pytest.approx(math.log(2) / math.log(100))
        assert all(p["edge"] is None for p in verdict["parameters"].values())


@pytest.mark.parametrize("name, value, side", [("lr", 9.5e-3, "high"), ("lr", 1.5e-4, "low"),
                                               ("weight_decay", 1.2e-3, "low"), ("erase_probability", 0.48, "high"),
                                               ("label_smoothing", 0.01, "low"), ("channels", 64, "high"),
                                               ("channels", 24, "low")])
def test_edge_verdict_on_the_edge(name, value, side):
    with script() as search:
        verdict = search.edge_verdict({**INSIDE, name: value}, search.SPACE)
        assert verdict["on_edge"] and verdict["parameters"][name]["edge"] == side
        assert [n for n, p in verdict["parameters"].items() if p["edge"]] == [name]
        assert verdict["verdict"] == (f"the best lies on the edge of the searched range of {name} ({side} end: "
                                      f"{value:g}): widen it and search again")
    # a uniform range is judged linearly: 0.04 of 0..0.5 lies in its outer 10% (below 0.05), 0.06 does not
    assert search.edge_verdict({**INSIDE, "erase_probability": 0.04}, search.SPACE)["on_edge"] is True
    assert search.edge_verdict({**INSIDE, "erase_probability": 0.06}, search.SPACE)["on_edge"] is False


# ---------------------------------------------------------------------------
# --confirm and the Welch interval
# ---------------------------------------------------------------------------
def test_t_quantiles_and_the_welch_interval():
    with script() as search:
        assert search.t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-4)
        assert search.t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
        difference, low, high = search.welch_interval([0.93, 0.94, 0.95], [0.90, 0.91, 0.92])
        half = 2.7764 * math.sqrt(2e-4 / 3)
        assert difference == pytest.approx(0.03) and (low, high) == pytest.approx((0.03 - half, 0.03 + half), abs=1e-5)
        assert search.welch_interval([0.9, 0.9], [0.8, 0.8]) == pytest.approx((0.1, 0.1, 0.1))


def test_confirm_runs_the_best_and_the_defaults_and_reads_test_for_the_chosen_only(search_run, tmp_path):
    """train.main replaced by a recorder that scores each arm by a known number: the K best trials and
    v12's defaults over the seeds, every run --no-test with flags train.py accepts, the best mean chosen,
    the interval against the defaults, the test set read for the chosen arm's seeds only."""
    out = tmp_path / "search"
    shutil.copytree(search_run["out"] / "trials", out / "trials")
    best = search_run["summary"]["best"]
    calls, tested = [], []
    with script() as search:
        def fake_main(argv):
            cfg = search.train.parse_args(argv)  # exit 2 on a flag train.py does not know
            calls.append(cfg)
            val = 0.90 if cfg.lr == 3e-4 else 0.93  # v12's learning rate: the baseline arm
            return {"status": "completed", "seed": cfg.seed, "best_val_accuracy": val + 0.001 * cfg.seed,
                    "device": "cpu", "config": vars(cfg)}

        search.train.main = fake_main
        search.test_accuracy_of = lambda folder, flags, data_dir, device: tested.append((folder, flags)) or 0.9
        with contextlib.redirect_stdout(io.StringIO()) as stdout:
            result = search.main(["--confirm", "1", "--seeds", "0", "1", "--out", str(out), "--device", "cpu"])
    assert len(calls) == 4 and all(not cfg.test and not cfg.quick and cfg.epochs == 40 for cfg in calls)
    # The baseline is v12's defaults, spelled out: train.py's own defaults are the search's choice now.
    baseline = [cfg for cfg in calls if "v12-defaults" in str(cfg.out)]
    assert len(baseline) == 2 and all((cfg.lr, cfg.weight_decay, cfg.erase_probability, cfg.label_smoothing,
                                       cfg.channels) == (3e-4, 0.05, 0.5, 0.1, 32) for cfg in baseline)
    arm = f"trial-{best['trial']:04d}"
    assert [row["arm"] for row in result["rows"]] == ["v12-defaults", arm] and result["chosen"] == arm
    row = result["rows"][1]
    assert row["difference"] == pytest.approx(0.03) and row["resolved"] and row["test"] == [0.9, 0.9]
    assert [folder.parent.name for folder, _ in tested] == [arm, arm]
    assert "test" not in result["rows"][0]
    table = (out / "confirm.md").read_text()
    assert table in stdout.getvalue() and "| not read |" in table and f"| {arm} **(chosen)** |" in table
    # both sides spread by 0.1 points over 2 seeds: Welch's df = 2, half-width 4.303 x sqrt(2 x 2.5e-7)
    assert row["low"] == pytest.approx(0.03 - 4.3027 * math.sqrt(5e-7), abs=1e-5)
    assert "+3.00 [+2.70, +3.30]" in table


def test_test_accuracy_of_a_confirm_run_reads_the_test_set(search_run):
    """The one place the search reads test data: a real checkpoint of the module's search, evaluated."""
    with script() as search:
        folder = search_run["out"] / "runs" / "trial-0000"
        flags = search.config_flags(search.sample_config(0, 0))
        with search.watch_file_reads(search.train.TEST_FILES) as reads:
            accuracy = search.test_accuracy_of(folder, flags, search_run["data_dir"], search.train.pick_device("cpu"))
        assert 0.0 <= accuracy <= 1.0 and accuracy * 512 == round(accuracy * 512) and len(reads) == 2


# ---------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--trials", "3-1"], "trial indices like 0-7"), (["--trials", "a"], "trial indices like 0-7"),
    (["--summarise"], "need --out"), (["--confirm", "2"], "need --out"),
    (["--confirm", "2", "--seeds", "0", "--out", "x"], "at least 2 --seeds"), (["--epochs", "0"], "--epochs must be"),
    (["--search-seed", "one"], "invalid int value"), (["--grid"], "unrecognized arguments: --grid"),
])
def test_search_bad_flags_exit_2(argv, message, capsys):
    with script() as search, pytest.raises(SystemExit) as stop:
        search.parse_args(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_train_py_test_flag(capsys):
    train = load_version(V13)
    assert train.parse_args([]).test is True and train.READ_TEST_SET is True
    assert train.parse_args(["--no-test"]).test is False
    with pytest.raises(SystemExit) as stop:
        train.parse_args(["--test", "0"])
    assert stop.value.code == 2 and "unrecognized arguments: 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--help"])
    assert "--test, --no-test" in capsys.readouterr().out
