"""imagenette/v8: seed 002's decision (ResNet18, v7's picked recipe) and the ensemble.

- One quick two-member ensemble end to end, once per module, with both augmentation levers on
  (erasing, TrivialAugment) so their code runs: each member a v7 run in members/member-K/ with its
  own seed and its saved outputs (validation and test, plain and mirrored, the data's fingerprint);
  the ensemble table, the choice, calibration and the classes fixed/broken recomputed from those
  files; the test labels read once, after the choice, by evaluate_on_test; plots and REPORT.md.
- Ctrl-C in the second member: exit 130, the first kept; --resume trains the second only, and it
  comes out bit for bit as in the module's run. A run that has read the test set is not resumed.
- The checks fail on their bugs: one member copied K times (--add-members of one folder twice:
  members_differ_trained fails, the gain is 0 and warned about); saved outputs of another subset
  (refused, exit 2); mutations of train.py on a temp copy: the test labels used to choose the
  ensemble (test_read_after_choice), a member seed that ignores the member (members_differ_init in
  --preflight). The unedited code passes (the module run, and a --members 0 re-ensembling of its
  members that reproduces its table).
- The augmentations batched on tensors; ensemble.py's lever table from records; the flags.

Budget (2 cores, one torch thread): 32 px images and the standard stem (--maxpool: a quarter of
the positions), the overfit and batch-independence checks off (v7's tests cover them); the runs
that only re-ensemble saved members use --members 0, which trains nothing and skips v7's checks.
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
from fmnist_helpers import VersionContext, assert_png_has_content, read_jsonl
from imagenette_helpers import imagenette_folder, isolated_cache, quick_args  # noqa: F401  (fixtures)

V8 = "imagenette/v8"
FAST = ["--image-size", "32", "--maxpool", "--no-overfit-test", "--no-batch-independence-test"]
LEVERS = ["--erase-probability", "0.5", "--trivial-augment"]
V7_CHECKS = {"first_batch", "activations_at_init", "loss_at_init", "gradient_flow", "initialization",
             "lr_schedule", "step_gradient", "train_eval_modes", "normalised_batch", "normalisation_from_train",
             "train_batches_augmented", "eval_deterministic_unaugmented", "class_balance"}
V8_CHECKS = {"members_differ_init", "tta_flip", "test_read_after_choice", "predictions_fingerprint",
             "members_differ_trained", "ensemble_gain"}


def run_main(train, argv):
    """train.main, quietly; a SystemExit becomes (code, results.json of --out)."""
    with contextlib.redirect_stdout(io.StringIO()) as stdout, contextlib.redirect_stderr(io.StringIO()) as stderr:
        try:
            results = train.main(argv)
            code = results["exit_code"]
        except SystemExit as stop:
            out = argv[argv.index("--out") + 1]
            results, code = json.loads((REPO_ROOT / out / "results.json").read_text()), stop.code
    return results, code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def quick(imagenette_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("v8") / "run"
    with VersionContext(V8) as train:
        results, code, stdout, _ = run_main(train, quick_args(imagenette_folder, out, *FAST, *LEVERS))
        assert code == 0, stdout[-3000:]
        cfg = train.parse_args(quick_args(imagenette_folder, out, *FAST))
        data = train.load_data(cfg, torch.device("cpu"))
        labels = {"val": data.val_loader.labels, "test": data.test_loader.labels._labels}  # the test: unsealed
        classes = data.classes
    return {"results": results, "stdout": stdout, "out": out, "data_dir": imagenette_folder, "labels": labels,
            "classes": classes}


def saved(quick, k):
    folder = quick["out"] / "members" / f"member-{k}"
    return json.loads((folder / "results.json").read_text()), torch.load(folder / "predictions.pt", weights_only=True)


def accuracy(probabilities, labels):
    return (probabilities.argmax(1) == labels).double().mean().item()


def view(outputs, tta):
    return (outputs["plain"] + outputs["flipped"]) / 2 if tta else outputs["plain"]


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def member_folders(quick, *ks):
    return [str(quick["out"] / "members" / f"member-{k}") for k in ks]


# ---------------------------------------------------------------------------
# The quick ensemble
# ---------------------------------------------------------------------------
def test_members_are_v7_runs_with_their_own_seeds_and_saved_outputs(quick):
    results, labels = quick["results"], quick["labels"]
    assert results["version"] == V8 and results["status"] == "completed" and results["exit_code"] == 0
    assert results["architecture"] == "resnet18" and results["num_parameters"] == 11_181_642
    assert [(m["name"], m["seed"], m["folder"]) for m in results["members"]] == [
        ("member-0", 42, "members/member-0"), ("member-1", 1042, "members/member-1")]
    assert [(h["member"], h["epoch"]) for h in read_jsonl(quick["out"] / "history.jsonl")] == [(0, 0), (0, 1), (1, 0),
                                                                                               (1, 1)]
    fingerprint = None
    for k in (0, 1):
        record, outputs = saved(quick, k)
        assert record["status"] == "completed" and record["seed"] == 42 + 1000 * k and record["member"] == k
        assert "test_accuracy" not in record  # a member never scores the test set
        assert record["config"]["erase_probability"] == 0.5 and record["config"]["trivial_augment"] is True
        assert (40, 80) == (len(labels["val"]), len(labels["test"]))
        for split, n in (("val", 40), ("test", 80)):
            for which in ("plain", "flipped"):
                assert outputs[split][which].shape == (n, 10)
                assert torch.allclose(outputs[split][which].sum(1), torch.ones(n), atol=1e-5)
        assert torch.equal(outputs["val_labels"], labels["val"])
        # the saved outputs are the best epoch's: their accuracy is the one the member's history recorded
        assert accuracy(outputs["val"]["plain"], labels["val"]) == pytest.approx(record["best_val_accuracy"])
        assert outputs["fingerprint"]["subset_fingerprint"] == results["data"]["subset_fingerprint"]
        fingerprint = fingerprint or outputs["fingerprint"]
        assert outputs["fingerprint"] == fingerprint and set(fingerprint) == {
            "subset_fingerprint", "val_fraction", "val_images", "test_images", "val_labels"}
    assert not torch.equal(saved(quick, 0)[1]["test"]["plain"], saved(quick, 1)[1]["test"]["plain"])


def test_the_ensemble_table_and_the_choice_come_from_the_saved_outputs(quick):
    results, labels = quick["results"], quick["labels"]["val"]
    outputs = [saved(quick, k)[1]["val"] for k in (0, 1)]
    rows = results["ensemble"]["table"]
    assert [(r["size"], r["tta"]) for r in rows] == [(1, False), (1, True), (2, False), (2, True)]
    assert results["ensemble"]["skipped_sizes"] == [3, 5]
    for r in rows:
        views = [view(o, r["tta"]) for o in outputs[:r["size"]]]
        assert r["val_accuracy"] == pytest.approx(accuracy(torch.stack(views).mean(0), labels))
        assert r["members_mean"] == pytest.approx(statistics.fmean(accuracy(v, labels) for v in views))
        assert r["gain"] == pytest.approx(r["val_accuracy"] - r["members_mean"])
        expected = (views[0].argmax(1) != views[1].argmax(1)).double().mean().item() if r["size"] == 2 else 0.0
        assert r["disagreement"] == pytest.approx(expected)
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["size"], not r["tta"]))
    assert (results["choice"]["size"], results["choice"]["tta"]) == (best["size"], best["tta"])
    assert results["best_val_accuracy"] == best["val_accuracy"]


def test_the_test_labels_are_read_once_after_the_choice(quick):
    results, labels = quick["results"], quick["labels"]["test"]
    assert [e["event"] for e in results["events"]] == ["members_trained", "choice_made", "test_read"]
    assert results["events"][1]["on"] == "validation" and results["test_read"] is True
    assert results["events"][2]["reader"].startswith("evaluate_on_test()")
    check = results["checks"]["test_read_after_choice"]
    assert check["passed"] and check["details"]["events"] == ["members_trained", "choice_made", "test_read"]
    choice = results["choice"]
    outputs = [saved(quick, k)[1]["test"] for k in range(choice["size"])]
    ensemble = torch.stack([view(o, choice["tta"]) for o in outputs]).mean(0)
    assert results["test_accuracy"] == pytest.approx(accuracy(ensemble, labels))
    best = saved(quick, choice["best_member"])[1]["test"]["plain"]
    assert results["best_member_test_accuracy"] == pytest.approx(accuracy(best, labels))
    assert results["test_metrics"]["num_samples"] == 80 and "read once, after the choice" in quick["stdout"]


def test_calibration_and_the_classes_fixed_and_broken(quick):
    results, labels = quick["results"], quick["labels"]
    debug_tools = load_version(V8, "debug_tools")
    choice = results["choice"]
    for split, key in (("val", "validation"), ("test", "test")):
        outputs = [saved(quick, k)[1][split] for k in (0, 1)]
        ensemble = torch.stack([view(o, choice["tta"]) for o in outputs[:choice["size"]]]).mean(0)
        best = outputs[choice["best_member"]]["plain"]
        for who, probabilities in (("best_member", best), ("ensemble", ensemble)):
            confidence, predicted = probabilities.max(1)
            expected = debug_tools.calibration(confidence, predicted == labels[split], 15)
            recorded = results["calibration"][key][who]
            assert recorded["ece"] == pytest.approx(expected["ece"]) and recorded["count"] == expected["count"]
        changes = results["per_class"][key]
        ensemble_right, best_right = ensemble.argmax(1) == labels[split], best.argmax(1) == labels[split]
        assert changes["images_fixed"] == int((ensemble_right & ~best_right).sum())
        assert changes["images_broken"] == int((~ensemble_right & best_right).sum())
        assert [r["class"] for r in changes["classes"]] == quick["classes"]
        for c, r in enumerate(changes["classes"]):
            mask = labels[split] == c
            assert r["ensemble"] == pytest.approx(ensemble_right[mask].double().mean().item())
            assert (r["class"] in changes["fixed_classes"]) == (r["ensemble"] > r["best_member"])
            assert (r["class"] in changes["broken_classes"]) == (r["ensemble"] < r["best_member"])
    for name in ("ensemble.png", "per_class_validation.png", "per_class_test.png"):
        assert_png_has_content(quick["out"] / name)
    assert_png_has_content(quick["out"] / "calibration.png", min_size=(300, 1000))
    report = (quick["out"] / "REPORT.md").read_text()
    assert "**(chosen)**" in report and "members_trained (" in report and "## Classes fixed and broken (test)" in report
    assert "![calibration.png](calibration.png)" in report and "nan" not in report


def test_every_check_has_its_verdict(quick):
    checks = quick["results"]["checks"]
    assert set(checks) == V7_CHECKS | V8_CHECKS
    assert all(c["passed"] for name, c in checks.items() if name != "ensemble_gain"), \
        [name for name, c in checks.items() if not c["passed"]]
    assert checks["tta_flip"]["details"]["members_checked"] == 2
    assert checks["tta_flip"]["details"]["max_recorded_difference"] <= 1e-4
    pair = checks["members_differ_trained"]["details"]["pairs"][0]
    assert not pair["same_weights"] and pair["max_probability_difference"] > 1e-3
    row = next(r for r in quick["results"]["ensemble"]["table"] if (r["size"], r["tta"]) == (2, False))
    gain = checks["ensemble_gain"]
    assert gain["value"] == pytest.approx(row["gain"]) and gain["passed"] == (row["gain"] > 0)
    assert (gain["expected"] == "") == gain["passed"]  # a gain <= 0 is a warning, marked as such
    member = saved(quick, 1)[0]
    assert member["checks"]["activations_after_training"]["passed"]


# ---------------------------------------------------------------------------
# Ctrl-C and --resume
# ---------------------------------------------------------------------------
def test_ctrl_c_in_a_member_then_resume(quick, tmp_path, monkeypatch):
    """Member 0 finished (the module run's, copied), Ctrl-C in member 1's first epoch: exit 130, both
    records say interrupted, member 0 untouched. The same command with --resume trains member 1 only,
    and its saved outputs are bit for bit the module run's (same seed, same machine). --no-test."""
    out = tmp_path / "run"
    shutil.copytree(quick["out"] / "members" / "member-0", out / "members" / "member-0")
    argv = quick_args(quick["data_dir"], out, *FAST, *LEVERS, "--no-test", "--resume")
    train = load_version(V8)
    real_epoch = train.train_one_epoch

    def interrupted_epoch(model, loader, *args, **kwargs):
        if getattr(loader, "generator", None) is not None and loader.generator.initial_seed() == 1042:
            raise KeyboardInterrupt
        return real_epoch(model, loader, *args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", interrupted_epoch)
    kept = {p.name: digest(p) for p in (out / "members" / "member-0").iterdir()}
    results, code, _, stderr = run_main(train, argv)
    assert code == 130 and results["status"] == "interrupted" and results["members_finished"] == 1
    assert "Traceback" not in stderr and results["events"] == []
    member = json.loads((out / "members" / "member-1" / "results.json").read_text())
    assert member["status"] == "interrupted" and (out / "members" / "member-1" / "history.jsonl").is_file()
    monkeypatch.setattr(train, "train_one_epoch", real_epoch)
    resumed, code, stdout, _ = run_main(train, argv)
    assert code == 0 and resumed["status"] == "completed", stdout[-2000:]
    assert [m["kept"] for m in resumed["members"]] == [True, False] and "member 0: finished already" in stdout
    assert {p.name: digest(p) for p in (out / "members" / "member-0").iterdir()} == kept
    again = torch.load(out / "members" / "member-1" / "predictions.pt", weights_only=True)
    assert torch.equal(again["test"]["flipped"], saved(quick, 1)[1]["test"]["flipped"])
    assert resumed["ensemble"]["table"] == quick["results"]["ensemble"]["table"]
    assert resumed["test_read"] is False if "test_read" in resumed else True
    assert [e["event"] for e in resumed["events"]] == ["members_trained", "choice_made"]


def test_a_run_that_has_read_the_test_set_is_not_resumed(quick, capsys):
    train = load_version(V8)
    before = digest(quick["out"] / "results.json")
    with pytest.raises(SystemExit) as stop:
        train.main(quick_args(quick["data_dir"], quick["out"], *FAST, *LEVERS, "--resume"))
    assert stop.value.code == 2 and "has read the test set already" in capsys.readouterr().err
    assert digest(quick["out"] / "results.json") == before  # its record is left as it was


# ---------------------------------------------------------------------------
# Saved members ensembled again, and the checks on their bugs
# ---------------------------------------------------------------------------
def ensemble_saved(train, quick, out, *folders, extra=()):
    return run_main(train, quick_args(quick["data_dir"], out, *FAST, "--members", "0", "--add-members", *folders,
                                      *extra))


def test_saved_members_ensembled_again_give_the_same_table(quick, tmp_path):
    """Control for the planted bugs below: the module run's two members, brought in with --members 0,
    give the same ensemble table and choice, and every check passes; nothing is trained."""
    train = load_version(V8)
    results, code, stdout, _ = ensemble_saved(train, quick, tmp_path / "mix", *member_folders(quick, 0, 1))
    assert code == 0, stdout[-2000:]
    assert results["ensemble"]["table"] == quick["results"]["ensemble"]["table"]
    assert results["choice"]["size"] == quick["results"]["choice"]["size"]
    assert results["test_accuracy"] == quick["results"]["test_accuracy"]
    assert set(results["checks"]) == V8_CHECKS - {"members_differ_init"}
    assert all(c["passed"] for name, c in results["checks"].items() if name != "ensemble_gain")
    assert not (tmp_path / "mix" / "members").exists() and "=== Member" not in stdout


def test_member_k_is_the_single_member_run_of_its_seed(quick, tmp_path):
    """FAZIT.md's side-by-side plan: member 1 of the module's run (--seed 42, member seed 1042) is bit for
    bit the one member of `--seed 1042 --members 1 --no-test` with the same other flags: train_member
    re-seeds every generator with the member's seed before the model and builds the member's own loader;
    what differs before it (the run-level checks on --seed's model and first batch) runs on copies of
    the model inside rng_untouched, and --no-test only leaves the test labels sealed. The pool of the
    module's member 0 and that run's member, assembled with --members 0, gives the module's table,
    choice and test accuracy."""
    train = load_version(V8)
    debug_tools = load_version(V8, "debug_tools")
    seed = quick["results"]["members"][1]["seed"]
    assert seed == 42 + 1000 * 1
    single = tmp_path / "single"
    results, code, stdout, _ = run_main(train, quick_args(quick["data_dir"], single, *FAST, *LEVERS,
                                                          "--seed", str(seed), "--members", "1", "--no-test"))
    assert code == 0 and results["status"] == "completed", stdout[-2000:]
    assert "test_read" not in results and [e["event"] for e in results["events"]] == ["members_trained",
                                                                                        "choice_made"]
    ours, theirs = single / "members" / "member-0", quick["out"] / "members" / "member-1"
    (record, outputs), (expected, expected_outputs) = [
        (json.loads((f / "results.json").read_text()), torch.load(f / "predictions.pt", weights_only=True))
        for f in (ours, theirs)]
    assert (record["seed"], record["member"], expected["seed"], expected["member"]) == (seed, 0, seed, 1)

    def weights(folder):
        return debug_tools.state_digest(torch.load(folder / "best_model.pth", weights_only=True)["model_state"])
    assert weights(ours) == weights(theirs)
    assert record["best_val_accuracy"] == expected["best_val_accuracy"]
    assert record["best_epoch"] == expected["best_epoch"]
    for split in ("val", "test"):
        for which in ("plain", "flipped"):
            assert torch.equal(outputs[split][which], expected_outputs[split][which]), (split, which)
    assert outputs["fingerprint"] == expected_outputs["fingerprint"]
    timeless = [{k: v for k, v in h.items() if "second" not in k} for h in read_jsonl(ours / "history.jsonl")]
    assert timeless == [{k: v for k, v in h.items() if "second" not in k} for h in read_jsonl(theirs / "history.jsonl")]

    mixed, code, stdout, _ = ensemble_saved(train, quick, tmp_path / "mix", member_folders(quick, 0)[0], str(ours),
                                            extra=LEVERS)
    assert code == 0 and mixed["status"] == "completed", stdout[-2000:]
    assert mixed["ensemble"]["table"] == quick["results"]["ensemble"]["table"]
    assert (mixed["choice"]["size"], mixed["choice"]["tta"], mixed["choice"]["val_accuracy"]) == (
        quick["results"]["choice"]["size"], quick["results"]["choice"]["tta"], quick["results"]["choice"]["val_accuracy"])
    assert mixed["choice"]["best_member"] == quick["results"]["choice"]["best_member"]
    assert mixed["test_accuracy"] == quick["results"]["test_accuracy"]
    assert mixed["best_member_test_accuracy"] == quick["results"]["best_member_test_accuracy"]
    assert mixed["checks"]["members_differ_trained"]["passed"] and mixed["checks"]["test_read_after_choice"]["passed"]


def test_one_member_copied_k_times_fails_and_gains_nothing(quick, tmp_path):
    """An ensemble of one member twice: members_differ_trained fails (identical weights, no
    disagreement), the gain is exactly 0 and warned about, the run still finishes."""
    train = load_version(V8)
    results, code, stdout, _ = ensemble_saved(train, quick, tmp_path / "copies", *member_folders(quick, 0, 0))
    assert code == 0 and results["status"] == "completed", stdout[-2000:]
    failed = {name for name, c in results["checks"].items() if not c["passed"]}
    assert failed == {"members_differ_trained", "ensemble_gain"}
    differ = results["checks"]["members_differ_trained"]
    assert differ["value"] == 1 and differ["details"]["pairs"][0]["same_weights"] is True
    assert differ["details"]["pairs"][0]["disagreement"] == 0 and "member_seed(seed, k)" in differ["hint"]
    gain = results["checks"]["ensemble_gain"]
    assert gain["value"] == 0 and gain["expected"].startswith("a warning") and "disagreement near 0" in gain["hint"]
    assert "FAILED: members_differ_trained" in stdout and "failed as expected (*): ensemble_gain" in stdout


def test_outputs_saved_for_another_subset_are_refused(quick, tmp_path):
    """Member 1's predictions.pt as if saved by a run on another subset (another fingerprint): the run
    refuses it (exit 2, predictions_fingerprint names the member and the key) and never reads the
    test labels. Control: the same copy with its fingerprint untouched is accepted (the test above)."""
    other = tmp_path / "other-member"
    shutil.copytree(quick["out"] / "members" / "member-1", other)
    outputs = torch.load(other / "predictions.pt", weights_only=True)
    outputs["fingerprint"]["subset_fingerprint"] = "0123456789abcdef"
    torch.save(outputs, other / "predictions.pt")
    train = load_version(V8)
    results, code, _, stderr = ensemble_saved(train, quick, tmp_path / "mix", member_folders(quick, 0)[0], str(other))
    assert code == 2 and results["status"] == "refused" and "cannot be averaged" in stderr
    check = results["checks"]["predictions_fingerprint"]
    assert not check["passed"] and check["details"]["mismatched"] == {str(other): ["subset_fingerprint"]}
    assert results["events"] == [] and "test_read" not in results and "ensemble" not in results


def copy_with_edit(tmp_path, old, new):
    """A learner's copy of v8 (next to a link to shared/) with one edit to train.py."""
    folder = tmp_path / V8
    shutil.copytree(REPO_ROOT / V8, folder, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    (tmp_path / "shared").symlink_to(REPO_ROOT / "shared")
    source = (folder / "train.py").read_text()
    assert source.count(old) == 1, f"the edit does not apply: {old!r} occurs {source.count(old)} times"
    (folder / "train.py").write_text(source.replace(old, new))
    _forget_version_modules()
    return folder


def test_test_data_used_to_choose_the_ensemble_fails(quick, tmp_path):
    """The planted bug: the ensemble table (the choice's input) computed on the test outputs and the
    test labels. The sealed labels record the read, before the choice: test_read_after_choice fails
    and names the reader; the honest code (the control above) passes."""
    folder = copy_with_edit(tmp_path, 'table = ensemble_table(run, members, "val", data.val_loader.labels)',
                            'table = ensemble_table(run, members, "test", data.test_loader.labels)')
    train = load_version(folder)
    results, code, stdout, _ = ensemble_saved(train, quick, folder / "outputs" / "run", *member_folders(quick, 0, 1))
    check = results["checks"]["test_read_after_choice"]
    assert not check["passed"] and "read before the choice was made (by ensemble_table()" in check["criterion"]
    assert "read 2 times" in check["criterion"] and "FAILED: test_read_after_choice" in stdout
    assert [e["event"] for e in results["events"]] == ["members_trained", "test_read", "choice_made", "test_read"]


def test_preflight_catches_a_member_seed_that_ignores_the_member(quick, tmp_path):
    folder = copy_with_edit(tmp_path, "    return seed + stride * member\n", "    return seed\n")
    train = load_version(folder)
    results, code, stdout, _ = run_main(train, quick_args(quick["data_dir"], folder / "outputs" / "run", *FAST,
                                                          "--preflight"))
    failed = {name for name, c in results["checks"].items() if not c["passed"]}
    assert code == 1 and failed == {"members_differ_init"}, (failed, stdout[-2000:])
    assert "member_seed(seed, k) must depend on k" in results["checks"]["members_differ_init"]["hint"]


# ---------------------------------------------------------------------------
# The checks on constructed inputs
# ---------------------------------------------------------------------------
def test_the_tta_view_must_be_a_single_left_right_flip():
    debug_tools = load_version(V8, "debug_tools")
    images = torch.rand(4, 3, 16, 16)
    assert debug_tools.verify_tta_flip(lambda x: x.flip(3), images).passed
    for bad, words in ((lambda x: x.flip(3).flip(3), "flipped twice"), (lambda x: x.flip(2), "up-down"),
                       (lambda x: x.transpose(2, 3), "not torch.flip")):
        check = debug_tools.verify_tta_flip(bad, images)
        assert not check.passed and words in check.criterion, check.criterion


def test_the_order_check_on_planted_records():
    verify = load_version(V8, "debug_tools").verify_test_read_after_choice

    def events(*names):
        return [{"event": name, "reader": "x()"} for name in names]

    assert verify(events("members_trained", "choice_made", "test_read")).passed
    assert verify([]).passed  # --preflight: nothing has happened
    for planted, words in ((events("members_trained", "test_read", "choice_made"), "read before the choice"),
                           (events("members_trained", "test_read"), "read before the choice"),
                           (events("members_trained", "choice_made", "test_read", "test_read"), "read 2 times"),
                           (events("choice_made", "members_trained"), "before the members were trained")):
        check = verify(planted)
        assert not check.passed and words in check.criterion, check.criterion


def test_sealed_labels_record_every_read_but_not_len():
    train = load_version(V8)
    reads = []
    sealed = train.SealedLabels(torch.arange(5), on_read=lambda reader: reads.append(reader))
    assert len(sealed) == 5 and reads == []
    assert torch.equal(sealed.cpu(), torch.arange(5)) and sealed[1] == 1 and list(sealed) == [0, 1, 2, 3, 4]
    assert len(reads) == 3 and reads[0].startswith("test_sealed_labels_record_every_read_but_not_len() via .cpu")


# ---------------------------------------------------------------------------
# The augmentations, batched on tensors
# ---------------------------------------------------------------------------
def test_random_erasing_sets_rectangles_to_zero():
    train = load_version(V8)
    images = torch.randn(200, 3, 32, 32) + 5  # no pixel is 0 before
    erased = train.random_erasing(images, 0.5, torch.Generator().manual_seed(0))
    zero = (erased == 0).all(1)  # (N, H, W): erased positions, in every channel at once
    share = zero.flatten(1).any(1).double().mean().item()
    assert 0.4 < share < 0.6  # about half of the images
    areas = zero.flatten(1).double().mean(1)[zero.flatten(1).any(1)]
    assert 0.015 <= areas.min() and areas.max() <= 0.34  # 2-33% of the image
    assert torch.equal(erased[~zero.unsqueeze(1).expand_as(erased)], images[~zero.unsqueeze(1).expand_as(images)])
    assert torch.equal(train.random_erasing(images, 0.0, torch.Generator().manual_seed(0)), images)


def test_trivial_augment_is_the_loaders_own_and_draws_per_group():
    train = load_version(V8)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    state = torch.get_rng_state()
    a = train.trivial_augment(images, 1, torch.Generator().manual_seed(3))
    b = train.trivial_augment(images, 1, torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)  # the global generator untouched
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == images.shape
    assert not torch.equal(a, train.trivial_augment(images, 1, torch.Generator().manual_seed(4)))
    changed = [not torch.equal(a[i], images[i]) for i in range(16)]
    assert sum(changed) >= 8  # most of TrivialAugmentWide's ops change an image (identity is one of 14)


# ---------------------------------------------------------------------------
# ensemble.py and the flags
# ---------------------------------------------------------------------------
def test_ensemble_py_tables_the_levers_from_the_records(quick, tmp_path, capsys):
    other = tmp_path / "seed1"
    shutil.copytree(quick["out"], other, ignore=shutil.ignore_patterns("members"))
    record = json.loads((other / "results.json").read_text())
    record["seed"] = 1
    for r in record["ensemble"]["table"]:
        r.update(val_accuracy=r["val_accuracy"] + 0.01, members_mean=r["members_mean"] + 0.01)
    record["test_accuracy"] += 0.02
    (other / "results.json").write_text(json.dumps(record))
    lever = tmp_path / "erasing"
    shutil.copytree(quick["out"], lever, ignore=shutil.ignore_patterns("members"))
    record = json.loads((lever / "results.json").read_text())
    for r in record["ensemble"]["table"]:
        r["members_mean"] += 0.005
    (lever / "results.json").write_text(json.dumps(record))
    ensemble = load_version(V8, "ensemble")
    result = ensemble.main([str(quick["out"]), str(other), "--lever", "erasing", str(lever),
                            "--out", str(tmp_path / "levers")])
    rows = quick["results"]["ensemble"]["table"]
    gain = result["levers"]["ensemble of 2 (no TTA) vs its members' mean"]
    assert gain["n"] == 2 and gain["mean"] == pytest.approx(rows[2]["gain"]) and gain["std"] == pytest.approx(0)
    paired = result["levers"]["erasing (members' mean, lever - base, paired by seed)"]
    assert paired["n"] == 1 and paired["mean"] == pytest.approx(0.005)  # paired with the run of seed 42
    assert result["test"]["mean"] == pytest.approx(quick["results"]["test_accuracy"] + 0.01)
    table = (tmp_path / "levers" / "levers.md").read_text()
    assert table in capsys.readouterr().out and "goal 87.0%" in table and "goal 85.5%" in table
    with pytest.raises(SystemExit) as stop:
        ensemble.main([str(quick["out"]), str(quick["out"])])
    assert stop.value.code == 2 and "named twice" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--members", "0"], "0 only with --add-members"), (["--sizes", "0"], "--sizes >= 1"),
    (["--erase-probability", "1.5"], "--erase-probability"), (["--members", "two"], "invalid int value"),
    (["--ensemble"], "unrecognized arguments: --ensemble"),
])
def test_bad_flags_exit_2(argv, message, capsys):
    train = load_version(V8)
    with pytest.raises(SystemExit) as stop:
        train.parse_args(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_defaults_are_v7s_picked_recipe_and_the_member_seeds():
    train = load_version(V8)
    cfg = train.parse_args([])
    assert (cfg.arch, cfg.maxpool, cfg.crop_scale_min, cfg.epochs) == ("resnet18", False, 0.2, 100)
    assert (cfg.members, cfg.sizes, cfg.tta, cfg.test) == (5, [1, 2, 3, 5], True, True)
    assert (cfg.erase_probability, cfg.trivial_augment) == (0.0, False)  # levers off until measured
    assert train.parse_args(["--quick"]).members == 2
    assert train.member_seed(42, 0) == 42
    seeds = [{train.member_seed(seed, k) for k in range(5)} for seed in (0, 1, 2)]
    assert all(len(s) == 5 for s in seeds) and not (seeds[0] & seeds[1] or seeds[1] & seeds[2])


def test_the_readme_quotes_v7s_records_and_no_v8_number():
    """The decision's table is runs/.../table_final.md, row for row; the numbers quoted from v7's
    FAZIT are in it; v8's own README and FAZIT say "not measured yet" and quote no v8 accuracy."""
    readme = (REPO_ROOT / V8 / "README.md").read_text()
    record = (REPO_ROOT / "runs" / "2026-11-24-h100-imagenette" / "v7" / "table_final.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith(("| seed recipe,", "| picked,"))]
    assert len(rows) == 6 and all(row in record.splitlines() for row in rows)
    v7_fazit = (REPO_ROOT / "imagenette" / "v7" / "FAZIT.md").read_text()
    fazit = (REPO_ROOT / V8 / "FAZIT.md").read_text()
    for quoted in ("76.84% ± 1.11%", "84.70% ± 0.24%", "3,119"):
        assert quoted in v7_fazit and quoted in readme + fazit, quoted
    assert "1.07 / 1.82 / 2.63 s per epoch" in v7_fazit and "1.07 s per epoch" in readme and "1.07 s per epoch" in fazit
    assert "not measured yet" in readme.lower() and "not measured yet" in fazit


# ---------------------------------------------------------------------------
# Seed 002's third option, "v6a + best ResNet": a v6a run imported by import_member.py
# ---------------------------------------------------------------------------
V6A = "imagenette/v6/v6a"
V6A_FAST = ["--image-size", "32", "--no-overfit-test", "--no-batch-independence-test"]  # v8's quick images


def importer(folder=V8):
    """import_member.py of a v8 folder, imported afresh (conftest forgets train.py, not this module)."""
    import sys

    sys.modules.pop("import_member", None)
    return load_version(folder, "import_member")


def run_import(module, run, out, *extra):
    """import_member.main, quietly: (the member's results.json or None, exit code, stderr)."""
    argv = [str(run), "--out", str(out), "--quick", "--image-size", "32", "--device", "cpu", "--data-dir", *extra]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as stderr:
        try:
            return module.main(argv), 0, stderr.getvalue()
        except SystemExit as stop:
            return None, stop.code, stderr.getvalue()


@pytest.fixture(scope="module")
def v6a_run(quick, tmp_path_factory):
    """A quick v6a run (v6a's own main, on v8's quick images at 32 px), then its best checkpoint made
    image-dependent with v6a's own code. One quick epoch leaves BatchNorm's running variance near its
    initial 1 while the activations are far smaller, so in eval mode the signal dies out by the last
    stage and every image gets the same outputs (per-image spread ~1e-9): such outputs cannot tell the
    right evaluation transform from a wrong one. So the running statistics are set from training batches
    (v6a's model in train mode, cumulative average), the checkpoint is saved in v6a's format with
    shared.runs.save_checkpoint, and results.json gets v6a's own evaluate() of it on its own loaders, as
    v6a's train() records its best epoch."""
    out = tmp_path_factory.mktemp("v6a") / "run"
    with VersionContext(V6A) as v6a:
        results, code, stdout, _ = run_main(v6a, quick_args(quick["data_dir"], out, *V6A_FAST))
        assert code == 0 and results["version"] == V6A, stdout[-2000:]
        cfg = v6a.parse_args(quick_args(quick["data_dir"], out, *V6A_FAST))
        data = v6a.load_data(cfg, torch.device("cpu"))
        checkpoint = torch.load(out / "best_model.pth", weights_only=True)
        model = v6a.DeeperCNN(dropout=cfg.dropout, final_weight_std=cfg.final_weight_std,
                              final_bias_std=cfg.final_bias_std)
        model.load_state_dict(checkpoint["model_state"])
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
        model.train()
        with torch.no_grad():
            for start in range(0, len(data.train_loader.images), 32):
                model(data.val_loader.transform(data.train_loader.images[start:start + 32], None))
        checkpoint["model_state"] = model.state_dict()
        v6a.save_checkpoint(checkpoint, out / "best_model.pth")
        (val_loss, val_acc), (test_loss, test_acc) = (v6a.evaluate(model, loader, torch.device("cpu"))
                                                      for loader in (data.val_loader, data.test_loader))
    results.update(val_loss=val_loss, best_val_accuracy=val_acc, val_accuracy=val_acc, test_loss=test_loss,
                   test_accuracy=test_acc)
    (out / "results.json").write_text(json.dumps(results))
    return out, results


@pytest.fixture(scope="module")
def imported(quick, v6a_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("v6a-member") / "member"
    results, code, stderr = run_import(importer(), v6a_run[0], out, str(quick["data_dir"]))
    assert code == 0, stderr
    return out, results


def nll(probabilities, labels):
    return -probabilities[torch.arange(len(labels)), labels].log().mean().item()


def test_an_imported_v6a_member_is_v6as_own_evaluation_in_v8s_format(quick, v6a_run, imported):
    """predictions.pt of the imported v6a run: v8's keys, shapes and fingerprint (a v8 member's), and
    outputs that are v6a's own evaluation of its checkpoint: their accuracy and cross-entropy are what
    v6a's evaluate() reported on validation and on test, image for image the outputs of v6a's model on
    v6a's loader, and the flipped half its outputs on the mirror images."""
    (folder, results), (_, record), labels = imported, v6a_run, quick["labels"]
    ours = saved(quick, 0)[1]
    outputs = torch.load(folder / "predictions.pt", weights_only=True)
    assert set(outputs) == set(ours) and outputs["fingerprint"] == ours["fingerprint"]
    assert torch.equal(outputs["val_labels"], ours["val_labels"]) and outputs["version"] == V6A
    for split in ("val", "test"):
        for which in ("plain", "flipped"):
            assert outputs[split][which].shape == ours[split][which].shape
    assert outputs["val"]["plain"].std(0).max() > 1e-3  # outputs that depend on the image (see v6a_run)
    assert accuracy(outputs["val"]["plain"], labels["val"]) == record["best_val_accuracy"]
    assert accuracy(outputs["test"]["plain"], labels["test"]) == record["test_accuracy"]
    assert nll(outputs["val"]["plain"], labels["val"]) == pytest.approx(record["val_loss"], abs=1e-5)
    assert nll(outputs["test"]["plain"], labels["test"]) == pytest.approx(record["test_loss"], abs=1e-5)
    with VersionContext(V6A) as v6a:
        cfg = v6a.parse_args(quick_args(quick["data_dir"], folder, *V6A_FAST))
        data = v6a.load_data(cfg, torch.device("cpu"))
        model = v6a.DeeperCNN(dropout=cfg.dropout).eval()
        model.load_state_dict(torch.load(v6a_run[0] / "best_model.pth", weights_only=True)["model_state"])
        with torch.no_grad():
            images = next(iter(data.val_loader))[0]
            assert torch.allclose(outputs["val"]["plain"], model(images).softmax(1), atol=1e-6)
            assert torch.allclose(outputs["val"]["flipped"], model(images.flip(3)).softmax(1), atol=1e-6)
    assert results["reproduces_source"]["passed"] and results["checks"]["tta_flip"]["passed"]
    assert results["config"]["arch"] == "deepercnn" and results["source"] == str(v6a_run[0])
    assert digest(folder / "best_model.pth") == digest(v6a_run[0] / "best_model.pth")


def test_v6a_plus_a_resnet_member_ensembled_by_train_py(quick, imported, tmp_path):
    """`--members 0 --add-members V6A-MEMBER RESNET-MEMBER`: both in the table, every check passes (the
    tta_flip recheck covers the ResNet, the importer checked v6a's), the ensemble of 2 is their mean."""
    train = load_version(V8)
    folder = str(imported[0])
    results, code, stdout, _ = ensemble_saved(train, quick, tmp_path / "mix", folder, member_folders(quick, 0)[0])
    assert code == 0, stdout[-2000:]
    assert [(m["name"], m["architecture"]) for m in results["members"]] == [
        (folder, "deepercnn"), (member_folders(quick, 0)[0], "resnet18")]
    assert all(c["passed"] for name, c in results["checks"].items() if name != "ensemble_gain")
    assert results["checks"]["tta_flip"]["details"]["members_checked"] == 1
    both = [torch.load(f"{f}/predictions.pt", weights_only=True)["val"]["plain"]
            for f in (folder, member_folders(quick, 0)[0])]
    row = next(r for r in results["ensemble"]["table"] if r["size"] == 2 and not r["tta"])
    assert row["val_accuracy"] == accuracy((both[0] + both[1]) / 2, quick["labels"]["val"])


@pytest.mark.parametrize("edit, refused_for", [
    ({"subset_seed": 1, "subset_fingerprint": "0123456789abcdef"}, "subset_fingerprint"),
    ({"train_fraction": 0.5}, "train_fraction 0.5 (v8: 0.4)"),
    ({"image_size": 64}, "image_size 64 (v8: 32)"),
    (None, "holds no best_model.pth"),
])
def test_a_v6a_run_of_other_images_or_without_its_checkpoint_is_refused(quick, v6a_run, tmp_path, edit, refused_for):
    """The planted runs: v6a's record says another subset seed, fraction or image size (its data as
    results.json recorded it), or the checkpoint is missing: exit 2, one line, nothing written."""
    run = tmp_path / "run"
    run.mkdir()
    record = json.loads((v6a_run[0] / "results.json").read_text())
    if edit:
        record["data"].update(edit)
        shutil.copy2(v6a_run[0] / "best_model.pth", run / "best_model.pth")
    (run / "results.json").write_text(json.dumps(record))
    _, code, stderr = run_import(importer(), run, tmp_path / "member", str(quick["data_dir"]))
    assert code == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1 and refused_for in stderr
    assert not (tmp_path / "member").exists()


def test_an_importer_that_writes_a_wrong_fingerprint_is_refused_by_train_py(quick, v6a_run, tmp_path):
    """The mutation: import_member.py computes the right outputs but saves v6a's recorded `data` as the
    fingerprint (no digest of the validation labels). train.py refuses the member (exit 2,
    predictions_fingerprint names it); the unedited importer's member is accepted (the test above)."""
    folder = tmp_path / V8
    shutil.copytree(REPO_ROOT / V8, folder, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    (tmp_path / "shared").symlink_to(REPO_ROOT / "shared")
    (tmp_path / "imagenette" / "v6").symlink_to(REPO_ROOT / "imagenette" / "v6")
    source = (folder / "import_member.py").read_text()
    old = '"fingerprint": fingerprint, "member": None'
    assert source.count(old) == 1
    (folder / "import_member.py").write_text(source.replace(old, '"fingerprint": record["data"], "member": None'))
    member = tmp_path / "member"
    _, code, stderr = run_import(importer(folder), v6a_run[0], member, str(quick["data_dir"]))
    assert code == 0, stderr
    train = load_version(V8)
    results, code, _, stderr = ensemble_saved(train, quick, tmp_path / "mix", str(member), member_folders(quick, 0)[0])
    assert code == 2 and results["status"] == "refused" and "cannot be averaged" in stderr
    check = results["checks"]["predictions_fingerprint"]
    assert not check["passed"] and list(check["details"]["mismatched"]) == [str(member)]
    assert "val_labels" in check["details"]["mismatched"][str(member)]
