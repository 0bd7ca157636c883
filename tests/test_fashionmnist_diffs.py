"""fashionmnist/v1 ... v4 teach one idea each: `diff -ru vN-1 vN` must show that idea and
nothing else. Each version holds the same six files; the files that differ from the
predecessor are exactly the declared ones; and the code no version is meant to change
(the training step, the check verdicts, the run records) stays identical, down to the
source text of each function, across all four versions and the versions they share it with."""
from __future__ import annotations

import ast
import json
import re

import pytest

from conftest import REPO_ROOT
from fmnist_v1_v4_helpers import V1, V2, V3, V4, VERSION_FILES

V9 = "fashionmnist/v9-step1"
V5, V6, V7, V8 = "fashionmnist/v5", "fashionmnist/v6", "fashionmnist/v7", "fashionmnist/v8"
PREDECESSOR = {V2: V1, V3: V2, V4: V3, V5: V4, V6: V5, V7: V6, V8: V7}
# The files each version changes on purpose: its lesson (README.md, FAZIT.md) and the code of its idea.
CHANGED = {
    V2: {"README.md", "FAZIT.md", "train.py", "debug_tools.py", "visualization.py"},  # splits, best epoch, curves
    V3: {"README.md", "FAZIT.md", "train.py", "debug_tools.py"},  # normalisation and augmentation, their checks
    V4: {"README.md", "FAZIT.md", "train.py", "debug_tools.py", "visualization.py"},  # the model, activation plot
    V5: {"README.md", "FAZIT.md", "train.py", "debug_tools.py", "visualization.py"},  # schedule, LR finder, plots
    V6: {"README.md", "FAZIT.md", "train.py", "debug_tools.py", "visualization.py"},  # ResNet, soft targets, checks
    V7: {"README.md", "FAZIT.md", "train.py", "metrics.py", "visualization.py"},  # the explaining evaluation
    V8: {"README.md", "FAZIT.md", "train.py", "metrics.py", "visualization.py"},  # run records (+ compare_runs.py)
}
# Defined once in v1 and never changed by v2 ... v4: the training code every check drives
# (schedules arrive in v5), and the run's plumbing.
SAME_IN_EVERY_VERSION = {
    "train.py": ["TrainingDiverged", "loss_fn", "make_optimizer", "training_step", "train_one_epoch", "set_seed",
                 "pick_device", "RunError", "to_tensor", "load_raw_data", "HelpFormatter", "prepare_out_dir",
                 "device_name", "Run", "start_run", "record_checks", "finish_preflight"],
    "debug_tools.py": ["CheckResult", "_fmt", "print_check_summary", "rng_untouched", "inspect_batch"],
    "visualization.py": ["read_history", "plot_batch"],
    "metrics.py": ["evaluate"],
}
# Copied verbatim from v9-step1, so that all versions print and record verdicts the same way.
FROM_V9 = ["CheckResult", "_fmt", "print_check_summary", "rng_untouched"]


def files_of(version: str) -> set[str]:
    folder = REPO_ROOT / version
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and "outputs" not in p.parts and "__pycache__" not in p.parts}


def definitions(version: str, file: str) -> dict[str, str]:
    """Top-level functions and classes of a file, by name, as source text."""
    source = (REPO_ROOT / version / file).read_text()
    return {node.name: ast.get_source_segment(source, node) for node in ast.parse(source).body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


@pytest.mark.parametrize("version", [V1, V2, V3, V4, V5, V6, V7])
def test_every_version_holds_the_six_files(version):
    assert files_of(version) == set(VERSION_FILES)


@pytest.mark.parametrize("version", [V2, V3, V4, V5, V6, V7, V8])
def test_only_the_declared_files_differ_from_the_predecessor(version):
    previous = PREDECESSOR[version]
    differing = {name for name in VERSION_FILES
                 if (REPO_ROOT / version / name).read_bytes() != (REPO_ROOT / previous / name).read_bytes()}
    assert differing == CHANGED[version], (
        f"{version} differs from {previous} in {sorted(differing)}, declared: {sorted(CHANGED[version])}")


@pytest.mark.parametrize("file", sorted(SAME_IN_EVERY_VERSION))
def test_shared_code_is_identical_in_every_version(file):
    sources = {version: definitions(version, file) for version in (V1, V2, V3, V4)}
    for name in SAME_IN_EVERY_VERSION[file]:
        assert name in sources[V1], f"{name} missing from {V1}/{file}"
        for version in (V2, V3, V4):
            assert sources[version].get(name) == sources[V1][name], f"{version}/{file}: {name} differs from v1's"


def test_check_verdicts_are_v9s_verbatim():
    v9 = definitions(V9, "debug_tools.py")
    v1 = definitions(V1, "debug_tools.py")
    for name in FROM_V9:
        assert v1[name] == v9[name], f"{name} differs from {V9}'s: change it in every version or in none"


@pytest.mark.parametrize("version", [V2, V3, V4, V5, V6])
def test_a_version_only_adds_checks(version):
    """Every check function of the predecessor is still there, unchanged: a version adds its
    debug tools, it does not rewrite the earlier ones."""
    previous = definitions(PREDECESSOR[version], "debug_tools.py")
    current = definitions(version, "debug_tools.py")
    assert set(previous) < set(current)
    assert all(current[name] == source for name, source in previous.items())



# v7 and v8 do not change training: the same seed must give v6's model. Every function that
# trains (or decides what training sees) is v6's, to the character; v7 adds evaluation, v8 records.
TRAINING_CODE_FROM_V6 = ["set_seed", "TensorLoader", "to_tensor", "normalisation_stats", "random_crop", "random_flip",
                         "Transform", "load_raw_data", "split_indices", "load_data", "BasicBlock", "ResNet",
                         "loss_fn", "make_optimizer", "training_step", "smoothed_targets", "MixedBatch", "mix_batch",
                         "train_one_epoch", "checks_before_training"]


@pytest.mark.parametrize("version", [V7, V8])
def test_training_code_is_v6s(version):
    v6 = definitions(V6, "train.py")
    current = definitions(version, "train.py")
    for name in TRAINING_CODE_FROM_V6:
        assert name in v6, f"{name} missing from {V6}/train.py"
        assert current.get(name) == v6[name], f"{version}/train.py: {name} differs from v6's"
    config = [line for line in (REPO_ROOT / V6 / "train.py").read_text().splitlines()
              if re.match(r"[A-Z_]+ = ", line)]
    assert len(config) > 30
    assert all(line in (REPO_ROOT / version / "train.py").read_text().splitlines() for line in config), \
        "a v6 constant changed: the defaults of training must stay v6's"


def test_v8_adds_compare_runs_and_nothing_else():
    assert files_of(V8) == set(VERSION_FILES) | {"compare_runs.py"}


@pytest.mark.parametrize("version", [V7, V8])
def test_v7_and_v8_keep_every_check(version):
    """They add no check: debug_tools.py is v6's, byte for byte."""
    assert (REPO_ROOT / version / "debug_tools.py").read_bytes() == (REPO_ROOT / V6 / "debug_tools.py").read_bytes()


# v11-step3 (recipe step 3, overfit) against v10-step2: the ResNet, Adam 3e-4 without regularisation,
# the schedule check and plot (v5's, verbatim), the capacity check; complexify.py is new; metrics.py
# is not part of the lesson and stays v10's byte for byte.
V10, V11 = "fashionmnist/v10-step2", "fashionmnist/v11-step3"
V11_CHANGED = {"README.md", "FAZIT.md", "train.py", "debug_tools.py", "visualization.py"}
V11_ADDED = {"complexify.py"}
# train.py: MyNN gives way to BasicBlock and ResNet; the phases that wire in the new checks, flags and
# model change; everything else (data, loss, optimizer, step, epoch, plumbing) is v10's to the character.
# print_summary: step 3's capacity check cannot pass after --quick's few steps, and the summary says so.
V11_WIRING = {"parse_args", "start_run", "checks_before_training", "analyse", "main", "print_summary"}
V11_NEW_DEFINITIONS = {"train.py": {"BasicBlock", "ResNet"}, "debug_tools.py": {"_thin", "verify_lr_schedule",
                                                                                "verify_capacity"},
                       "visualization.py": {"plot_lr_schedule"}}
# Copied verbatim from the version that introduced them, so that one fix reaches every copy.
V11_FROM_V6 = {"debug_tools.py": ["_thin", "verify_lr_schedule"], "visualization.py": ["plot_lr_schedule"],
               "train.py": ["BasicBlock"]}


def test_v11_changes_only_the_declared_files():
    assert files_of(V11) == files_of(V10) | V11_ADDED, sorted(files_of(V11) ^ (files_of(V10) | V11_ADDED))
    differing = {name for name in files_of(V10)
                 if (REPO_ROOT / V11 / name).read_bytes() != (REPO_ROOT / V10 / name).read_bytes()}
    assert differing == V11_CHANGED, f"{V11} differs from {V10} in {sorted(differing)}, declared: {sorted(V11_CHANGED)}"


@pytest.mark.parametrize("file", sorted(V11_NEW_DEFINITIONS))
def test_v11_keeps_v10s_code_and_adds_its_idea(file):
    previous, current = definitions(V10, file), definitions(V11, file)
    removed = {"MyNN"} if file == "train.py" else set()
    assert set(current) == (set(previous) - removed) | V11_NEW_DEFINITIONS[file]
    changed = {name for name in set(previous) & set(current) if previous[name] != current[name]}
    assert changed == (V11_WIRING if file == "train.py" else set()), f"{file}: {sorted(changed)} changed"


@pytest.mark.parametrize("file", sorted(V11_FROM_V6))
def test_v11_copies_v6s_schedule_check_verbatim(file):
    v6, v11 = definitions(V6, file), definitions(V11, file)
    for name in V11_FROM_V6[file]:
        assert v11[name] == v6[name], f"{V11}/{file}: {name} differs from {V6}'s"


# v12-step4 (recipe step 4, regularize) against v11-step3: augmentation on the loader's batches, AdamW's
# weight decay, label smoothing, dropout, early stopping, --train-fraction and bf16 autocast in train.py;
# the augmentation check, the smoothing floor, the filter statistics and the learning-curve verdict in
# debug_tools.py (v11's capacity check is gone: its job is done); their plots. regularize.py and
# learning_curve.py are new; complexify.py was v11's lesson and is not copied; metrics.py is v11's.
V12 = "fashionmnist/v12-step4"
V12_CHANGED = {"README.md", "FAZIT.md", "train.py", "debug_tools.py", "visualization.py"}
V12_ADDED, V12_DROPPED = {"regularize.py", "learning_curve.py"}, {"complexify.py"}
V12_NEW_DEFINITIONS = {
    "train.py": {"random_crop", "random_flip", "random_erasing", "Augmentation", "mixed_precision",
                 "unaugmented_images"},
    "debug_tools.py": {"smoothing_floor", "_IndexImages", "_own_copy", "verify_augmentation", "filter_statistics",
                       "learning_curve_verdict"},
    "visualization.py": {"plot_augmented_batch", "plot_first_layer_filters", "plot_learning_curve"},
}
V12_REMOVED_DEFINITIONS = {"train.py": set(), "debug_tools.py": {"verify_capacity"}, "visualization.py": set()}
# What the lesson changes in v11's code, each for its idea; everything else is v11's to the character.
V12_CHANGED_DEFINITIONS = {
    "train.py": {
        "TensorLoader",  # the training loader's `augment`
        "split_indices",  # --train-fraction
        "ResNet",  # dropout before the classifier
        "loss_fn", "training_step", "train_one_epoch",  # label smoothing, bf16 autocast, the run's step
        "parse_args", "start_run", "load_data", "checks_before_training", "train", "analyse", "main",  # wiring
    },
    "debug_tools.py": {"verify_step_gradient",  # forward_context: the step's precision
                       "overfit_one_batch"},  # prints the smoothing floor's threshold (0.55), not 17 digits
    "visualization.py": set(),
}


def test_v12_changes_only_the_declared_code_files():
    assert files_of(V12) == (files_of(V11) - V12_DROPPED) | V12_ADDED, sorted(
        files_of(V12) ^ ((files_of(V11) - V12_DROPPED) | V12_ADDED))
    code = {name for name in files_of(V11) - V12_DROPPED if name.endswith(".py")}
    differing = {name for name in code
                 if (REPO_ROOT / V12 / name).read_bytes() != (REPO_ROOT / V11 / name).read_bytes()}
    assert differing == {name for name in V12_CHANGED if name.endswith(".py")}, sorted(differing)
    assert (REPO_ROOT / V12 / "metrics.py").read_bytes() == (REPO_ROOT / V11 / "metrics.py").read_bytes()


def test_v12_rewrites_its_lesson_texts():
    """README.md and FAZIT.md are v12's own: a FAZIT copied from v11 reports v11's numbers."""
    same = [name for name in sorted(V12_CHANGED) if name.endswith(".md")
            and (REPO_ROOT / V12 / name).read_bytes() == (REPO_ROOT / V11 / name).read_bytes()]
    assert same == [], f"{V12}: {same} still v11's, byte for byte"


@pytest.mark.parametrize("file", sorted(V12_NEW_DEFINITIONS))
def test_v12_keeps_v11s_code_and_adds_its_idea(file):
    previous, current = definitions(V11, file), definitions(V12, file)
    assert set(current) == (set(previous) - V12_REMOVED_DEFINITIONS[file]) | V12_NEW_DEFINITIONS[file]
    changed = {name for name in set(previous) & set(current) if previous[name] != current[name]}
    assert changed == V12_CHANGED_DEFINITIONS[file], f"{file}: {sorted(changed)} changed"


def test_v12_copies_v6s_batch_augmentation():
    """random_flip is v6's verbatim; random_crop is v6's but for the final .contiguous(): v12's loader
    makes every batch channels_last after the augmentation, so the copy v6 made is dropped."""
    v6, v12 = definitions(V6, "train.py"), definitions(V12, "train.py")
    assert v12["random_flip"] == v6["random_flip"]
    assert v12["random_crop"] != v6["random_crop"]
    assert v12["random_crop"] == v6["random_crop"].replace(".permute(0, 3, 1, 2).contiguous()", ".permute(0, 3, 1, 2)")


# v13-step5 (recipe step 5, tune) against v12-step4: --no-test in train.py (the test set's guard, the
# watched test files, check_test_set) and the wiring it needs; the test-set check, the file watcher and
# the edge verdict in debug_tools.py; the search plot and REPORT.md's row for an unread test set.
# search.py is new; regularize.py and learning_curve.py were v12's lesson and are not copied, and with
# the learning curve go its verdict and plot; metrics.py is v12's.
V13 = "fashionmnist/v13-step5"
V13_CHANGED = {"README.md", "FAZIT.md", "train.py", "debug_tools.py", "visualization.py"}
V13_ADDED, V13_DROPPED = {"search.py"}, {"regularize.py", "learning_curve.py"}
V13_NEW_DEFINITIONS = {
    "train.py": {"TestSetRead", "TestSetGuard", "check_test_set"},
    "debug_tools.py": {"_record_open", "watch_file_reads", "verify_test_set_untouched", "_position", "edge_verdict"},
    "visualization.py": {"plot_search"},
}
V13_REMOVED_DEFINITIONS = {"train.py": set(), "debug_tools.py": {"learning_curve_verdict"},
                           "visualization.py": {"plot_learning_curve"}}
# What the lesson changes in v12's code, each for --no-test; everything else is v12's to the character.
V13_CHANGED_DEFINITIONS = {
    "train.py": {
        "load_raw_data",  # read_test: the test files stay closed
        "split_data", "report_on_data", "unaugmented_images",  # a guard or nothing where the test split was
        "checks_before_training",  # no human baseline of test images, the augmentation check on validation only
        "analyse", "print_summary",  # no test evaluation, gap or test plots in --no-test
        "parse_args", "start_run", "load_data", "main",  # wiring: --test/--no-test, the version, the watcher
    },
    "debug_tools.py": set(),
    "visualization.py": {"write_report"},  # "test set: not read" instead of nan rows
}


def test_v13_changes_only_the_declared_code_files():
    assert files_of(V13) == (files_of(V12) - V13_DROPPED) | V13_ADDED, sorted(
        files_of(V13) ^ ((files_of(V12) - V13_DROPPED) | V13_ADDED))
    code = {name for name in files_of(V12) - V13_DROPPED if name.endswith(".py")}
    differing = {name for name in code
                 if (REPO_ROOT / V13 / name).read_bytes() != (REPO_ROOT / V12 / name).read_bytes()}
    assert differing == {name for name in V13_CHANGED if name.endswith(".py")}, sorted(differing)
    assert (REPO_ROOT / V13 / "metrics.py").read_bytes() == (REPO_ROOT / V12 / "metrics.py").read_bytes()


def test_v13_rewrites_its_lesson_texts():
    """README.md and FAZIT.md are v13's own: a FAZIT copied from v12 reports v12's numbers."""
    same = [name for name in sorted(V13_CHANGED) if name.endswith(".md")
            and (REPO_ROOT / V13 / name).read_bytes() == (REPO_ROOT / V12 / name).read_bytes()]
    assert same == [], f"{V13}: {same} still v12's, byte for byte"


@pytest.mark.parametrize("file", sorted(V13_NEW_DEFINITIONS))
def test_v13_keeps_v12s_code_and_adds_its_idea(file):
    previous, current = definitions(V12, file), definitions(V13, file)
    assert set(current) == (set(previous) - V13_REMOVED_DEFINITIONS[file]) | V13_NEW_DEFINITIONS[file]
    changed = {name for name in set(previous) & set(current) if previous[name] != current[name]}
    assert changed == V13_CHANGED_DEFINITIONS[file], f"{file}: {sorted(changed)} changed"


def test_v13s_defaults_are_v12s_but_for_the_searchs_choice():
    """Every constant of v12's config block keeps its value but the checkpoint's name and the five the
    search tuned, which are the chosen arm's flags in the confirmation's record (a default typed in by
    hand, or left at v12's, fails); v13 adds READ_TEST_SET and TEST_FILES."""
    def constants(version):
        return {match.group(1): match.group(2).strip() for line in (REPO_ROOT / version / "train.py").read_text()
                .splitlines() if (match := re.match(r"([A-Z_0-9]+) = ([^#]*)", line))}

    v12, v13 = constants(V12), constants(V13)
    assert len(v12) > 30 and set(v13) - set(v12) == {"READ_TEST_SET", "TEST_FILES"}
    record = json.loads((REPO_ROOT / "runs/2026-12-07-h100-fashionmnist-v13-widened/records/confirm.json").read_text())
    chosen = next(row for row in record["rows"] if row["arm"] == record["chosen"])
    flags = dict(zip(chosen["flags"][::2], chosen["flags"][1::2]))
    names = {"--lr": "LEARNING_RATE", "--weight-decay": "WEIGHT_DECAY", "--erase-probability": "ERASE_PROBABILITY",
             "--label-smoothing": "LABEL_SMOOTHING", "--channels": "CHANNELS"}
    assert set(flags) == set(names)
    differing = {name: value for name, value in v12.items() if v13[name] != value}
    assert set(differing) == {"MODEL_FILE", *names.values()}, sorted(differing)
    for flag, name in names.items():
        assert float(v13[name]) == float(flags[flag]), (name, v13[name], flags[flag])
    # search.py's baseline arm spells v12's values out (train.py's defaults are no longer v12's).
    tree = ast.parse((REPO_ROOT / V13 / "search.py").read_text())
    baseline = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                    and getattr(node.targets[0], "id", None) == "V12_DEFAULTS")
    baseline = dict(zip(baseline[::2], baseline[1::2]))
    assert set(baseline) == set(names)
    for flag, name in names.items():
        assert float(baseline[flag]) == float(v12[name]), (flag, baseline[flag], v12[name])


def test_v13_copies_v12s_welch_interval():
    v12, v13 = definitions(V12, "regularize.py"), definitions(V13, "search.py")
    for name in ("_betacf", "t_cdf", "t_quantile", "welch_interval", "_mean_std"):
        assert v13[name] == v12[name], f"{V13}/search.py: {name} differs from {V12}/regularize.py's"


# v14-step6 (recipe step 6, squeeze out the juice) against v13-step5: the ensemble in train.py (members
# trained one after another, each a v13 run with its own seed; the table on validation; the choice; the
# test set read once, after it), its checks in debug_tools.py (v7's calibration copied), its plots and
# REPORT.md section in visualization.py. ensemble.py is new; search.py was v13's lesson and is not
# copied; metrics.py is v13's.
V14 = "fashionmnist/v14-step6"
V14_CHANGED = {"README.md", "FAZIT.md", "train.py", "debug_tools.py", "visualization.py"}
V14_ADDED, V14_DROPPED = {"ensemble.py"}, {"search.py"}
V14_NEW_DEFINITIONS = {
    "train.py": {"member_seed", "no_test", "member_config", "flip_view", "member_probabilities", "member_view",
                 "ensemble_probabilities", "probability_metrics", "record_event", "refuse_a_second_test_read",
                 "finished_member", "train_member", "load_member", "train_members", "initial_members",
                 "check_the_recipe", "ensemble_table", "member_model", "check_the_ensemble", "choose",
                 "evaluate_on_test", "check_the_order", "finish", "finish_one_member"},
    "debug_tools.py": {"calibration", "pairwise_disagreement", "state_digest", "verify_members_differ",
                       "verify_tta_flip", "verify_test_read_after_choice", "ensemble_gain"},
    "visualization.py": {"ensemble_lines", "plot_ensemble", "plot_calibration"},
}
# What the lesson changes in v13's code; everything else (the members' train(), analyse(), checks) is v13's.
V14_CHANGED_DEFINITIONS = {
    "train.py": {
        "parse_args",  # --members, --only-member, --sizes, --member-seed-stride, --calibration-bins, --resume
        "start_run",  # the version, the events record, the members' seeds, no second test read on --resume
        "print_summary", "main",  # the ensemble's phases and summary
    },
    "debug_tools.py": set(),
    "visualization.py": {"write_report"},  # the chosen ensemble, the members, the ensemble section
}


def test_v14_changes_only_the_declared_code_files():
    assert files_of(V14) == (files_of(V13) - V14_DROPPED) | V14_ADDED, sorted(
        files_of(V14) ^ ((files_of(V13) - V14_DROPPED) | V14_ADDED))
    code = {name for name in files_of(V13) - V14_DROPPED if name.endswith(".py")}
    differing = {name for name in code
                 if (REPO_ROOT / V14 / name).read_bytes() != (REPO_ROOT / V13 / name).read_bytes()}
    assert differing == {name for name in V14_CHANGED if name.endswith(".py")}, sorted(differing)
    assert (REPO_ROOT / V14 / "metrics.py").read_bytes() == (REPO_ROOT / V13 / "metrics.py").read_bytes()


def test_v14_rewrites_its_lesson_texts():
    """README.md and FAZIT.md are v14's own: a FAZIT copied from v13 plans v13's runs."""
    same = [name for name in sorted(V14_CHANGED) if name.endswith(".md")
            and (REPO_ROOT / V14 / name).read_bytes() == (REPO_ROOT / V13 / name).read_bytes()]
    assert same == [], f"{V14}: {same} still v13's, byte for byte"


@pytest.mark.parametrize("file", sorted(V14_NEW_DEFINITIONS))
def test_v14_keeps_v13s_code_and_adds_its_idea(file):
    previous, current = definitions(V13, file), definitions(V14, file)
    assert set(current) == set(previous) | V14_NEW_DEFINITIONS[file]
    changed = {name for name in set(previous) & set(current) if previous[name] != current[name]}
    assert changed == V14_CHANGED_DEFINITIONS[file], f"{file}: {sorted(changed)} changed"


def test_v14_keeps_v13s_defaults_and_adds_the_ensembles():
    """Every constant of v13's config block keeps its value (the members are v13's tuned recipe), but for
    the checkpoint's name; v14 adds the ensemble's constants and its two probability files."""
    def constants(version):
        return {match.group(1): match.group(2).strip() for line in (REPO_ROOT / version / "train.py").read_text()
                .splitlines() if (match := re.match(r"([A-Z_0-9]+) = ([^#]*)", line))}

    v13, v14 = constants(V13), constants(V14)
    assert set(v14) - set(v13) == {"MEMBERS", "ENSEMBLE_SIZES", "MEMBER_SEED_STRIDE", "CALIBRATION_BINS",
                                   "QUICK_MEMBERS", "PROBABILITIES_FILE", "TEST_PROBABILITIES_FILE",
                                   "MEMBER_SETTINGS"}
    assert {name: value for name, value in v13.items() if v14[name] != value} == {"MODEL_FILE": '"best_model_v13.pth"'}


def test_v14_copies_v7s_calibration():
    assert definitions(V14, "debug_tools.py")["calibration"] == definitions(V7, "metrics.py")["calibration"]
