"""docs/: every example runs (small sizes) and shows what the guide says it shows; every command
in the guide's code blocks uses a script and flags that exist; every Markdown link resolves.
"""
from __future__ import annotations

import contextlib
import gzip
import importlib.util
import io
import json
import math
import re
import shlex
import statistics
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import REPO_ROOT, load_version
from fmnist_helpers import assert_png_has_content, fmnist_data  # noqa: F401  (fixture)

DOCS = REPO_ROOT / "docs"
EXERCISE = REPO_ROOT / "exercises" / "find-the-bugs"


def load_script(path: Path):
    """Import a docs script by path under a name of its own (no clash with version modules)."""
    name = "docs_" + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_quietly(function, *args):
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        result = function(*args)
    return result, stdout.getvalue()


# ---------------------------------------------------------------------------
# docs/examples
# ---------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_detect_anomaly_names_the_op_and_line_that_made_the_nan():
    module = load_script(DOCS / "examples" / "detect_anomaly.py")
    results, stdout = run_quietly(module.main, ["--steps", "2", "--repeats", "1", "--batch-sizes", "4"])
    plain = results["without"]
    # without the tool: the NaN is in the weights, the loss stays finite, the logits are constant
    assert plain["all_losses_finite"]
    assert {"hidden.weight", "features.0.weight"} <= set(plain["parameters_with_nan"])
    assert "head.weight" not in plain["parameters_with_nan"]  # after the where(): untouched
    assert plain["logits_same_for_every_image"]
    # with the tool: the op and the forward line
    found = results["with"]
    assert found["op"] == "SqrtBackward0" and "returned nan values" in found["error"]
    assert "detect_anomaly.py" in found["forward_frame"] and "in forward" in found["forward_frame"]
    assert found["forward_code"].startswith("return torch.where(h > 0, torch.sqrt(h)")
    # the fix: finite inside anomaly mode (which would raise otherwise), and it learns
    assert all(math.isfinite(v) for v in results["fixed_losses"])
    assert results["fixed_losses"][-1] < results["fixed_losses"][0]
    timing = results["timing"][0]
    assert timing["batch_size"] == 4 and timing["ms_per_step_off"] > 0 and timing["ms_per_step_on"] > 0
    assert "slowdown" in stdout and "SqrtBackward0" in stdout


def documented_silent_bug_runs() -> list[tuple[list[str], list[str]]]:
    """(arguments, printed lines) of every silent_bug.py command in docs/debugging.md that is followed
    directly by a `text` block: the lines that command printed, quoted verbatim."""
    pairs = re.findall(r"```bash\npython docs/examples/silent_bug\.py ([^\n#]*?)\s*\n```\s*```text\n(.*?)```",
                       (DOCS / "debugging.md").read_text(), flags=re.S)
    return [(shlex.split(args), block.strip().splitlines()) for args, block in pairs]


def is_quick(module, args: list[str]) -> bool:
    """Small enough for the tests to rerun (a few seconds); the full runs take minutes."""
    parsed = module.parse_args(args)
    return parsed.steps * len(parsed.seeds) <= 100


@pytest.fixture(scope="module")
def silent_bug_quick(tmp_path_factory, fmnist_data):
    """The quick run docs/debugging.md quotes, run once here: (its arguments, quoted lines,
    results, stdout, output folder)."""
    module = load_script(DOCS / "examples" / "silent_bug.py")
    quick = [(args, lines) for args, lines in documented_silent_bug_runs() if is_quick(module, args)]
    assert len(quick) == 1, f"docs/debugging.md should quote one quick silent_bug.py run, found {len(quick)}"
    args, lines = quick[0]
    out = tmp_path_factory.mktemp("silent_bug")
    results, stdout = run_quietly(module.main, [*args, "--data-dir", str(fmnist_data[0]), "--out", str(out)])
    return args, lines, results, stdout, out


def test_silent_bug_trains_and_gradient_flow_names_the_dead_blocks(silent_bug_quick):
    _, _, results, stdout, out = silent_bug_quick
    for seed in results["per_seed"]:
        buggy, fixed = seed["runs"]["buggy: head(x1)"], seed["runs"]["fixed: head(x1_up)"]
        # the check: the buggy forward leaves four blocks without gradient, the fixed one none
        assert not buggy["gradient_flow_passed"] and buggy["dead_blocks"] == ["down1", "down2", "up1", "up2"]
        assert buggy["dead_parameters"] / buggy["parameters"] > 0.5
        assert fixed["gradient_flow_passed"] and fixed["without_gradient"] == []
        # and yet the buggy model trains: its loss falls and it beats chance clearly
        assert sum(buggy["losses"][-10:]) / 10 < buggy["losses"][0] - 0.3
        assert buggy["curve"][-1]["val_accuracy"] > 0.3
    assert "dead blocks: down1, down2, up1, up2" in stdout
    assert_png_has_content(out / "silent_bug.png")
    saved = json.loads((out / "silent_bug.json").read_text())
    assert saved["steps"] == results["steps"] and saved["seeds"] == results["seeds"]
    assert len(saved["seeds"]) >= 2 and saved["summary"]["gap_points"]["std"] is not None
    assert "(mean ± std)" in stdout


def test_silent_bug_is_bit_for_bit_deterministic(silent_bug_quick, tmp_path, fmnist_data):
    """The first seed again, alone, after the other seed ran in the same process: every loss and
    accuracy the same, bit for bit; and the other seed differs, so the comparison can fail."""
    args, _, results, _, _ = silent_bug_quick
    module = load_script(DOCS / "examples" / "silent_bug.py")
    first, other = results["per_seed"][0], results["per_seed"][1]
    saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:  # argparse keeps the last --seeds
        again, _ = run_quietly(module.main, [*args, "--seeds", str(first["seed"]), "--data-dir", str(fmnist_data[0]),
                                             "--out", str(tmp_path)])
        # main() leaves the process as it found it, for whatever runs next in it
        assert torch.get_num_threads() == saved[0] and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(saved[1])
    assert again["seeds"] == [first["seed"]]
    for label, run in first["runs"].items():
        assert again["per_seed"][0]["runs"][label]["losses"] == run["losses"], label
        assert again["per_seed"][0]["runs"][label]["curve"] == run["curve"], label
        assert other["runs"][label]["losses"] != run["losses"], label  # the control


def reconstructed_seed(line: str) -> tuple[int, dict]:
    """A quoted seed line back into the script's record, from which its own functions redraw it."""
    match = re.fullmatch(r"seed (\d+): validation accuracy buggy ([\d.]+)%, fixed ([\d.]+)%, the fix is worth "
                         r"[+-][\d.]+ points; training loss buggy ([\d.]+), fixed ([\d.]+)", line)
    assert match, f"not a seed line of silent_bug.py: {line!r}"
    seed, buggy, fixed, buggy_loss, fixed_loss = match.groups()

    def run(accuracy, loss):  # accuracies are k / 10,000 exactly (2,000 or 500 validation images)
        return {"curve": [{"step": 1, "val_accuracy": round(float(accuracy) * 100) / 10_000}],
                "losses": [float(loss)] * 20}

    return int(seed), {"buggy: head(x1)": run(buggy, buggy_loss), "fixed: head(x1_up)": run(fixed, fixed_loss)}


def test_the_guide_quotes_silent_bug_as_printed():
    """Every silent_bug.py output the guide quotes is the script's own lines: each seed line redrawn
    from its numbers by the script's seed_line(), the mean ± std line by its summarize() and
    summary_line(), so a retyped or recomputed number fails. The full runs take minutes; their
    numbers are held here for consistency, the quick run's are rerun below."""
    module = load_script(DOCS / "examples" / "silent_bug.py")
    runs = documented_silent_bug_runs()
    assert any(not is_quick(module, args) and len(module.parse_args(args).seeds) >= 3 for args, _ in runs), \
        "docs/debugging.md should quote a full run over three or more seeds"
    for args, lines in runs:
        parsed = module.parse_args(args)
        assert re.fullmatch(rf"CPU: .+, \w+ kernels, {parsed.threads} threads?, torch \S+", lines[0]), lines[0]
        seeds = [reconstructed_seed(line) for line in lines[1:] if line.startswith("seed ")]
        assert [seed for seed, _ in seeds] == parsed.seeds, args
        for line, (seed, record) in zip([x for x in lines if x.startswith("seed ")], seeds):
            assert module.seed_line(seed, record) == line
        summaries = [x for x in lines if x.startswith("seeds ")]
        assert len(summaries) == 1 and len(lines) == 2 + len(seeds), lines
        summary = module.summarize([{"runs": record} for _, record in seeds])
        assert module.summary_line(parsed.seeds, summary) == summaries[0]


def test_the_quick_silent_bug_run_reproduces_the_guide(silent_bug_quick, fmnist_data):
    """The quick run the guide quotes, rerun: every quoted line printed again, digit for digit. The
    numbers are bit for bit the same only on the same CPU, kernels, thread count and torch version
    (the first quoted line); elsewhere this says so and skips rather than fail on rounding."""
    args, lines, _, stdout, _ = silent_bug_quick
    if not fmnist_data[1]:
        pytest.skip("the guide's numbers are on the real Fashion-MNIST, which is not installed here")
    printed = stdout.splitlines()
    machine = next(line for line in printed if line.startswith("CPU: "))
    if machine != lines[0]:
        pytest.skip(f"the guide's numbers were measured on '{lines[0]}'; this machine is '{machine}'")
    missing = [line for line in lines if line not in printed]
    assert not missing, f"python docs/examples/silent_bug.py {' '.join(args)} no longer prints {missing}"


def test_the_silent_bug_is_the_only_difference():
    """The buggy and the fixed model are the same network with the same weights; only the
    tensor fed to the head differs, so the check's verdict is about that line alone."""
    module = load_script(DOCS / "examples" / "silent_bug.py")
    torch.manual_seed(0)
    buggy = module.UNetClassifier(buggy=True)
    torch.manual_seed(0)
    fixed = module.UNetClassifier(buggy=False)
    assert all(torch.equal(a, b) for a, b in zip(buggy.state_dict().values(), fixed.state_dict().values()))
    x = torch.rand(2, 1, 28, 28)
    assert not torch.allclose(buggy.eval()(x), fixed.eval()(x))


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")
def test_one_sample_one_batch_passes_on_v10_and_fails_on_the_exercise(fmnist_data):
    module = load_script(DOCS / "examples" / "one_sample_one_batch.py")
    good, _ = run_quietly(module.main, ["--data-dir", str(fmnist_data[0]), "--sizes", "1", "8"])
    assert good["all_passed"] and set(good["sizes"]) == {1, 8}
    assert all(r["accuracy"] == 1.0 and r["loss"] <= 0.05 for r in good["sizes"].values())
    bad, stdout = run_quietly(module.main, ["--data-dir", str(fmnist_data[0]), "--sizes", "1", "--steps", "60",
                                            "--code", "exercises/find-the-bugs"])
    assert not bad["all_passed"]
    assert "The loss does not move" in bad["sizes"][1]["hint"]
    assert "exercises/find-the-bugs (lr 0.1" in stdout


def test_compare_checks_on_the_recorded_cpu_and_gpu_runs(tmp_path):
    module = load_script(DOCS / "examples" / "compare_checks.py")
    cpu = REPO_ROOT / "runs" / "2026-11-24-cpu" / "fashionmnist-v10-step2-preflight.results.json"
    gpu = REPO_ROOT / "runs" / "2026-11-24-h100" / "fashionmnist-v10-step2-seed42-alone.results.json"
    code, stdout = run_quietly(module.main, ["--only-common", str(cpu), str(gpu)])
    assert code == 0 and "same verdict for all 8 checks" in stdout
    # without --only-common the checks after training exist in one run only
    code, stdout = run_quietly(module.main, [str(cpu), str(gpu)])
    assert code == 1 and "train_test_gap" in stdout.split("verdicts differ:")[1]
    # a flipped verdict is found
    flipped = json.loads(cpu.read_text())
    flipped["checks"]["gradient_flow"]["passed"] = False
    (tmp_path / "flipped.json").write_text(json.dumps(flipped))
    code, stdout = run_quietly(module.main, ["--only-common", str(tmp_path / "flipped.json"), str(gpu)])
    assert code == 1 and "verdicts differ: gradient_flow" in stdout


# ---------------------------------------------------------------------------
# docs/advanced
# ---------------------------------------------------------------------------
def test_dataloader_example(tmp_path, fmnist_data):
    module = load_script(DOCS / "advanced" / "dataloader.py")
    frequent, rare, val = (200, 20, 20) if fmnist_data[1] else (40, 4, 5)  # the generated stand-in is small
    results, stdout = run_quietly(module.main, [
        "--data-dir", str(fmnist_data[0]), "--frequent", str(frequent), "--rare", str(rare), "--val-per-class",
        str(val), "--epochs", "1", "--out", str(tmp_path)])
    labels = results["labels"]
    assert labels["names_agree"] and labels["files"] == 40
    assert labels["naive_label"] == "dress"  # the naive rule picks one class silently
    assert "coat_dress_00042.png" in labels["error"] and "matches 2 classes (dress, coat)" in labels["error"]
    imbalance = results["imbalance"]
    assert imbalance["shuffle (as is)"]["counts"] == [frequent] * 5 + [rare] * 5
    assert imbalance["downsampled"]["counts"] == [rare] * 10
    sampled = imbalance["WeightedRandomSampler"]["counts"]
    assert sum(sampled) == 5 * (frequent + rare) and max(sampled) / min(sampled) < 2.5  # 10 without the sampler
    crop = results["resize_vs_crop"]
    assert crop["crop_object_share"] < 0.5
    assert crop["correlation"]["resize"] > 0.95 > crop["correlation"]["center_crop"]
    assert all(results["augmentation"]["checks"].values()), results["augmentation"]["checks"]
    assert_png_has_content(tmp_path / "dataloader.png")
    assert "AmbiguousLabelError" in stdout


def test_filename_labels_strict_rule():
    module = load_script(DOCS / "advanced" / "dataloader.py")
    assert module.label_strict(Path("tshirt_00003.png")) == module.KEYWORDS.index("tshirt")
    assert module.label_strict(Path("shirt_00004.png")) == module.KEYWORDS.index("shirt")
    assert module.label_naive("tshirt_00003.png") == module.KEYWORDS.index("tshirt")
    for bad, words in (("photo_00001.png", "matches no class"), ("bag-sandal.png", "matches 2 classes")):
        with pytest.raises(module.AmbiguousLabelError, match=words):
            module.label_strict(Path(bad))


def test_optimizer_example_keeps_the_best_epoch(fmnist_data):
    module = load_script(DOCS / "advanced" / "optimizer.py")
    results, stdout = run_quietly(module.main, [
        "--data-dir", str(fmnist_data[0]), "--train-size", "1500", "--val-size", "300", "--test-size", "300",
        "--epochs", "3", "--batch-size", "32"])
    accuracies = [r["val_accuracy"] for r in results["history"]]
    assert len(accuracies) == 3 and results["best_val_accuracy"] == max(accuracies)
    assert results["best_epoch"] == accuracies.index(max(accuracies)) + 1
    # the model that comes back holds the best epoch's weights
    assert results["restored_val_accuracy"] == results["best_val_accuracy"]
    assert results["test_accuracy"] > 0.5
    gap = results["loss_gap"]
    # both causes of "validation below training loss": the epoch average, and dropout
    assert gap["epoch_mean_train_loss"] > gap["val_loss"]
    assert gap["epoch_mean_train_loss"] > gap["train_loss_dropout_on"] >= gap["train_loss_dropout_off"]
    if fmnist_data[1]:  # measured on the real data: dropout alone adds 0.16 here
        assert gap["train_loss_dropout_on"] - gap["train_loss_dropout_off"] > 0.05
    assert "Best epoch by validation accuracy" in stdout


def test_fit_stops_early_and_restores_the_best_weights():
    """A model that cannot improve (learning rate 0) stops after `patience` epochs, and a model
    whose validation accuracy falls gets the weights of its best epoch back."""
    module = load_script(DOCS / "advanced" / "optimizer.py")
    torch.manual_seed(0)
    images, labels = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=32)
    model = module.small_cnn(0.0)
    result = module.fit(model, loader, loader, torch.optim.SGD(model.parameters(), lr=0.0), epochs=10, patience=2)
    assert result["best_epoch"] == 1 and result["stopped_after"] == 3

    class Scripted(nn.Module):
        """Validation accuracy 0.5, 1.0, 0.0 over three epochs: its weight counts the epochs."""

        def __init__(self):
            super().__init__()
            self.epoch = nn.Parameter(torch.zeros(()), requires_grad=False)

        def forward(self, x):
            right = {1: 0.5, 2: 1.0}.get(int(self.epoch.item()), 0.0)
            logits = torch.zeros(len(x), 10)
            hit = torch.arange(len(x)) < int(right * len(x))
            logits[hit, 0], logits[~hit, 1] = 1.0, 1.0
            return logits + 0 * x.sum()

    scripted = Scripted()
    zeros = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(8, 1), torch.zeros(8).long()),
                                        batch_size=8)
    original = module.train_one_epoch
    module.train_one_epoch = lambda model, loader, optimizer: (model.epoch.add_(1), 0.0)[1]
    try:
        result = module.fit(scripted, zeros, zeros, torch.optim.SGD([scripted.epoch], lr=0.0), epochs=3,
                            patience=5)
    finally:
        module.train_one_epoch = original
    assert [r["val_accuracy"] for r in result["history"]] == [0.5, 1.0, 0.0]
    assert result["best_epoch"] == 2 and scripted.epoch.item() == 2  # the weights of epoch 2 are back


# ---------------------------------------------------------------------------
# Commands in the Markdown use scripts and flags that exist
# ---------------------------------------------------------------------------
COMMAND_FILES = [DOCS / "debugging.md", DOCS / "solutions.md", EXERCISE / "README.md"]


def documented_commands(path: Path):
    """(working directory, script, arguments) of every `python SCRIPT.py ...` line in the file's
    fenced bash blocks. A block starts in the repository root, or in the file's own folder when
    that holds a train.py (a version's or the exercise's README); `cd DIR` moves it (DIR taken
    from the repository root where it does not exist from there); backslash continuations are
    joined; comments are dropped."""
    commands = []
    start = path.parent if (path.parent / "train.py").is_file() else REPO_ROOT
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        cwd = start
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["cd"]:
                cwd = (cwd / words[1]).resolve() if (cwd / words[1]).is_dir() else (REPO_ROOT / words[1]).resolve()
            elif words[:1] == ["python"] and len(words) > 1 and words[1].endswith(".py"):
                commands.append((cwd, (cwd / words[1]).resolve(), words[2:]))
    return commands


def parse_or_help(script: Path, args: list[str]):
    """Parse `args` with the script's own parser; SystemExit means a flag or value was refused."""
    if script.name == "train.py":
        return load_version(script.parent).parse_args(args)
    module = load_script(script)
    if hasattr(module, "parse_args"):
        return module.parse_args(args)
    with contextlib.redirect_stdout(io.StringIO()) as help_text, contextlib.suppress(SystemExit):
        module.main(["--help"])
    flags = [a for a in args if a.startswith("--")]
    missing = [f for f in flags if f not in help_text.getvalue()]
    assert not missing, f"{script}: no such flags {missing}"
    return None


def test_documented_commands_use_existing_scripts_and_flags():
    checked = 0
    for path in COMMAND_FILES:
        for cwd, script, args in documented_commands(path):
            assert script.is_file(), f"{path.name}: {script} does not exist (run from {cwd})"
            try:
                parse_or_help(script, args)
            except SystemExit as err:
                raise AssertionError(f"{path.name}: `python {script.name} {' '.join(args)}` is refused") from err
            checked += 1
    assert checked >= 15, checked


def test_the_command_check_can_fail():
    v10 = REPO_ROOT / "fashionmnist" / "v10-step2" / "train.py"
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
        parse_or_help(v10, ["--preflight", "--no-such-flag"])
    with pytest.raises(AssertionError, match="no such flags"):
        parse_or_help(DOCS / "examples" / "compare_checks.py", ["--no-such-flag"])


# ---------------------------------------------------------------------------
# Links
# ---------------------------------------------------------------------------
def markdown_files() -> list[Path]:
    return [REPO_ROOT / "README.md", *sorted(DOCS.rglob("*.md")), *sorted((REPO_ROOT / "exercises").rglob("*.md"))]


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {github_anchor(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def broken_links(path: Path) -> tuple[list[str], int]:
    """Relative links of `path` whose file or heading does not exist, and how many were checked."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    broken, checked = [], 0
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        checked += 1
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target} (no {resolved})")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
    return broken, checked


def test_markdown_links_resolve():
    total = 0
    for path in markdown_files():
        broken, checked = broken_links(path)
        assert not broken, f"{path.relative_to(REPO_ROOT)}: {broken}"
        total += checked
    assert total >= 60, total


def test_the_link_check_can_fail(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n[ok](page.md) [ok](#title) [file](missing.md) [anchor](page.md#nowhere) "
                    "[web](https://example.org) `[code](not-checked.md)`\n")
    broken, checked = broken_links(page)
    assert checked == 4
    assert [b.split(" ")[0] for b in broken] == ["missing.md", "page.md#nowhere"]


def test_the_readme_links_docs_and_the_exercise():
    readme = (REPO_ROOT / "README.md").read_text()
    for target in ("docs/debugging.md", "docs/questions.md", "docs/solutions.md", "exercises/find-the-bugs"):
        assert f"]({target}" in readme, target


# ---------------------------------------------------------------------------
# Numbers quoted from the committed records (issue 25): each expected phrase is built from the
# records under runs/, so a doc whose number drifts from its record fails here.
# ---------------------------------------------------------------------------
RUNS = REPO_ROOT / "runs"


def flat(path: Path) -> str:
    """A Markdown file's text with every run of whitespace (line breaks included) made one space."""
    return " ".join(path.read_text().split())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_cifar100_v1_weight_update_norm_is_the_real_runs():
    history = read_jsonl(RUNS / "2026-11-24-h100-cifar100" / "v1_e30" / "history.jsonl")
    at_01 = [r["weight_update_norm"] for r in history if r["learning_rate"] == 0.1]
    after = [r for r in history if r["learning_rate"] < 0.1]
    assert len({f"{v:.3f}" for v in at_01[1:]}) == 1  # "0.043 in every later epoch"
    cut = after[0]["epoch"]
    assert {f"{r['weight_update_norm']:.4f}" for r in after} == {f"{after[0]['weight_update_norm']:.4f}"}
    expected = (f"it reads {at_01[0]:.3f} in epoch 1 and {at_01[1]:.3f} in every later epoch while the learning "
                f"rate is 0.1 (median {sorted(at_01)[len(at_01) // 2]:.4f}), which looks like learning")
    text = flat(REPO_ROOT / "cifar100" / "v1-baseline" / "README.md")
    assert expected in text
    assert (f"to {after[0]['weight_update_norm']:.4f}, with the learning rate's one cut (epoch {cut}, to "
            f"{after[0]['learning_rate']:.2f})") in text


def imagenette_val_curves(version: str) -> list[list[float]]:
    """Validation accuracy (percent) per epoch of seeds 0, 1, 2."""
    return [[100 * r["val_accuracy"] for r in read_jsonl(RUNS / "2026-11-24-h100-imagenette" / version / f"seed{s}" /
                                                          "history.jsonl")] for s in range(3)]


def test_imagenette_v3_and_v4_validation_swings_are_the_records():
    v3, v4 = imagenette_val_curves("v3"), imagenette_val_curves("v4")
    jumps = []
    for curve in v3:  # (size of the largest jump, the epoch it lands in)
        size, epoch = max((abs(curve[i] - curve[i - 1]), i + 1) for i in range(1, len(curve)))
        jumps.append((size, epoch))
    assert all(size > 10 for size, _ in jumps)  # "by more than 10 points ... in every seed"
    span = lambda curve: max(curve[-5:]) - min(curve[-5:])  # noqa: E731
    fazit3 = flat(REPO_ROOT / "imagenette" / "v3" / "FAZIT.md")
    assert (f"at most {jumps[0][0]:.1f} (seed 0, epoch {jumps[0][1]}), {jumps[1][0]:.1f} (seed 1, epoch "
            f"{jumps[1][1]}) and {jumps[2][0]:.1f} (seed 2, epoch {jumps[2][1]})") in fazit3
    v3_spans = f"{span(v3[0]):.1f}, {span(v3[1]):.1f} and {span(v3[2]):.1f}"
    last_five = ", ".join(f"{a:.1f}" for a in v3[2][-5:])
    assert f"the last five epochs span {v3_spans} points (seed 2: {last_five})" in fazit3
    fazit4 = flat(REPO_ROOT / "imagenette" / "v4" / "FAZIT.md")
    assert (f"the last five epochs spans {span(v4[0]):.1f}, {span(v4[1]):.1f} and {span(v4[2]):.1f} points "
            f"(seeds 0, 1, 2; v3's spanned {v3_spans})") in fazit4


def test_fashionmnist_v8_cost_of_the_records_is_the_runs_alone():
    v8 = json.loads((RUNS / "2026-11-24-h100" / "fashionmnist-v8-seed0-alone.results.json").read_text())
    v6 = json.loads((RUNS / "2026-11-24-h100" / "fashionmnist-v6-seed0-alone.results.json").read_text())
    assert v8["seed"] == v6["seed"] == 0 and v8["device"] == v6["device"]
    shared = [json.loads((RUNS / "2026-11-24-h100" / f"fashionmnist-{v}-seed{s}.results.json").read_text())
              for s in range(3) for v in ("v7", "v8")]
    behind = [b["train_time_s"] - a["train_time_s"] for a, b in zip(shared[::2], shared[1::2])]
    text = flat(REPO_ROOT / "fashionmnist" / "v8" / "FAZIT.md")
    extra = v8["train_time_s"] - v6["train_time_s"]
    assert (f"v8 trained for {v8['train_time_s']:.1f} s against v6's {v6['train_time_s']:.1f} s: "
            f"+{extra:.1f} s, +{100 * extra / v6['train_time_s']:.1f}% (wall time {v8['wall_time_s']:.1f} s against "
            f"{v6['wall_time_s']:.1f} s, +{100 * (v8['wall_time_s'] / v6['wall_time_s'] - 1):.1f}%") in text
    assert f"only +{behind[0]:.1f}, +{behind[1]:.1f} and +{behind[2]:.1f} s of training time behind v7" in text
    assert f"about {100 * extra / v6['train_time_s']:.0f}% of the training time" in text


def test_preflight_times_are_the_records():
    quick = RUNS / "2026-12-04-quickstart"
    wall = re.search(r"^pre: real\s+(\d+)m([\d.]+)s", (quick / "cpu2-wall-times.txt").read_text(), flags=re.M)
    command_s = f"{60 * int(wall[1]) + float(wall[2]):.0f} s"
    inside = json.loads((quick / "cpu2-fashionmnist-v10-step2-preflight.results.json").read_text())
    assert inside["command"] == "python train.py --preflight" and inside["device"] == "cpu"
    old = json.loads((RUNS / "2026-11-24-cpu" / "fashionmnist-v10-step2-preflight.results.json").read_text())
    assert (f"--preflight` on 2 CPU cores: {command_s} as a command, {inside['wall_time_s']:.1f} s inside the run "
            f"([../runs/2026-12-04-quickstart](../runs/2026-12-04-quickstart)") in flat(REPO_ROOT / "fashionmnist" /
                                                                                      "README.md")
    fazit = flat(REPO_ROOT / "fashionmnist" / "v10-step2" / "FAZIT.md")
    assert (f"took {old['wall_time_s']:.1f} s inside `main()` on 2026-11-24, of which the checks "
            f"{old['checks_time_s']:.1f} s (the input-independent baseline "
            f"{old['checks']['input_independent_baseline']['seconds']:.1f} s)") in fazit
    assert f"it took {command_s}, {inside['wall_time_s']:.1f} s of them inside `main()`" in fazit
    assert f"({command_s} on 2 CPU cores)" in flat(REPO_ROOT / "fashionmnist" / "v10-step2" / "README.md")
    assert f"({command_s} on 2 CPU cores: runs/2026-12-04-quickstart)" in flat(DOCS / "debugging.md")


def test_imagenette_readme_names_the_seeds_of_the_records():
    root = RUNS / "2026-11-24-h100-imagenette"
    seeds = {v: sorted(int(p.name[4:]) for p in (root / v).glob("seed*")) for v in ("v1", "v2", "v3", "v4", "v5")}
    assert all(s == [0, 1, 2] for s in seeds.values()), seeds
    v6 = [sorted(int(p.name[4:]) for p in (root / "v6" / arm).glob("seed*")) for arm in ("v6a", "v6b")]
    assert v6[0] == v6[1]
    text = flat(REPO_ROOT / "imagenette" / "README.md")
    assert f"over seeds 0, 1, 2 (v6: seeds {v6[0][0]} to {v6[0][-1]})" in text


def test_imagenette_v7_gradient_flow_ranges_are_the_records():
    values = {}
    for path in sorted((RUNS / "2026-11-24-h100-imagenette" / "v7").glob("*/*/results.json")):
        record = json.loads(path.read_text())
        values.setdefault(record["config"]["arch"], []).append(record["checks"]["gradient_flow"]["value"])
    ranges = " / ".join(f"{min(values[a]):.2f}-{max(values[a]):.2f}" for a in ("resnet18", "resnet34", "resnet50"))
    assert f"it read {ranges} for ResNet18 / 34 / 50" in flat(REPO_ROOT / "imagenette" / "v7" / "FAZIT.md")


def first_epoch_at(curve: list[float], level: float) -> int:
    return next(epoch for epoch, accuracy in enumerate(curve, start=1) if accuracy >= level)


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1)."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def imagenette_train_curves(version: str) -> list[list[float]]:
    return [[100 * r["train_accuracy"] for r in read_jsonl(RUNS / "2026-11-24-h100-imagenette" / version /
                                                            f"seed{s}" / "history.jsonl")] for s in range(3)]


def test_imagenette_v1_and_v2_speed_claims_are_over_the_seeds():
    v1, v2 = imagenette_val_curves("v1"), imagenette_val_curves("v2")
    first = {v: [first_epoch_at(c, 51) for c in curves] for v, curves in (("v1", v1), ("v2", v2))}
    (m1, s1), (m2, s2) = mean_std(first["v1"]), mean_std(first["v2"])
    text = flat(REPO_ROOT / "imagenette" / "v2" / "FAZIT.md")
    assert (f"is {first['v2'][0]}, {first['v2'][1]} and {first['v2'][2]} for v2 (seeds 0, 1, 2; {m2:.1f} ± {s2:.1f}) "
            f"against {first['v1'][0]}, {first['v1'][1]} and {first['v1'][2]} for v1 ({m1:.1f} ± {s1:.1f}): "
            f"{m1 - m2:.1f} epochs earlier") in text
    train = imagenette_train_curves("v1")
    start, end = mean_std([c[0] for c in train]), mean_std([c[-1] for c in train])
    val_end = mean_std([c[-1] for c in v1])
    text = flat(REPO_ROOT / "imagenette" / "v1" / "FAZIT.md")
    assert (f"climbs from {start[0]:.1f} ± {start[1]:.1f}% in epoch 1 to {end[0]:.2f} ± {end[1]:.2f}% in epoch "
            f"{len(train[0])}, and validation follows it closely ({val_end[0]:.2f} ± {val_end[1]:.2f}% in epoch "
            f"{len(v1[0])}; seeds 0, 1, 2)") in text
    assert (f"(seed 0: {v1[0][16]:.0f}% at epoch 17, {v1[0][18]:.0f}% at 19)") in text


def test_cifar100_one_seed_comparison_says_so():
    """v1 with the clipping fixed against v2 with v1's scheduler: one run each, and the READMEs say
    which seed, with the numbers of those two records."""
    runs = RUNS / "2026-11-24-h100-cifar100"
    fixed, plateau = (json.loads((runs / name / "results.json").read_text()) for name in ("v1_clipfix_e30",
                                                                                          "v2_plateau_e30"))
    assert fixed["seed"] == plateau["seed"] == 0
    train = [read_jsonl(runs / name / "history.jsonl")[-1]["accuracy"] for name in ("v1_clipfix_e30", "v2_plateau_e30")]
    v2 = flat(REPO_ROOT / "cifar100" / "v2-diagnostics" / "README.md")
    assert (f"in one run each (seed {fixed['seed']}): {train[0]:.2f}% against {train[1]:.2f}% training accuracy, "
            f"{fixed['test_accuracy']:.2f}% against {plateau['test_accuracy']:.2f}% test") in v2
    v1 = flat(REPO_ROOT / "cifar100" / "v1-baseline" / "README.md")
    assert f"in this one run per side: {train[0]:.2f}% against {train[1]:.2f}%" in v1
    # the published figure names its source, not a range from nowhere
    assert "75-78%" not in v2 and "weiaicunzai/pytorch-cifar100" in v2 and "top-1 error of 24.39%" in v2


# docs/ and the exercise: numbers from the records of the docs' own commands (runs/2026-12-04-docs)
DOCS_RUNS = RUNS / "2026-12-04-docs"


def console(name: str) -> str:
    return (DOCS_RUNS / f"{name}.console.txt").read_text()


def test_the_guide_quotes_the_recorded_silent_bug_run():
    """The full silent_bug.py run docs/debugging.md quotes is the committed record's, line for line:
    each line redrawn from the record's numbers by the script's own functions."""
    module = load_script(DOCS / "examples" / "silent_bug.py")
    record = json.loads((DOCS_RUNS / "silent_bug-seeds-0-4" / "silent_bug.json").read_text())
    full = [(args, lines) for args, lines in documented_silent_bug_runs() if not is_quick(module, args)]
    assert len(full) == 1
    args, lines = full[0]
    parsed = module.parse_args(args)
    assert (parsed.seeds, parsed.steps, parsed.train_size, parsed.val_size, parsed.threads) == (
        record["seeds"], record["steps"], record["train_size"], record["val_size"], record["threads"])
    redrawn = [record["machine"], *(module.seed_line(s["seed"], s["runs"]) for s in record["per_seed"]),
               module.summary_line(record["seeds"], record["summary"])]
    assert lines == redrawn
    text = flat(DOCS / "debugging.md")
    seed3 = next(s for s in record["per_seed"] if s["seed"] == 3)["runs"]["fixed: head(x1_up)"]["curve"]
    at_200 = next(point["val_accuracy"] for point in seed3 if point["step"] == 200)
    assert f"seed 3's fixed model had {100 * at_200:.1f}% at step 200" in text
    # the old numbers: AVX2 kernels on this machine give them back
    avx2 = re.search(r"seed 0: validation accuracy buggy ([\d.]+)%, fixed ([\d.]+)%, the fix is worth ([+-][\d.]+) "
                     r"points", console("silent_bug-seed0-avx2"))
    assert "AVX2 kernels" in console("silent_bug-seed0-avx2")
    first = record["per_seed"][0]["runs"]
    now = [100 * first[k]["curve"][-1]["val_accuracy"] for k in ("buggy: head(x1)", "fixed: head(x1_up)")]
    assert (f"quoted {avx2[1]}% / {avx2[2]}% ({avx2[3]}) for seed 0, from the same command on 2026-11-24; this "
            f"machine gives {now[0]:.2f}% / {now[1]:.2f}% ({now[1] - now[0]:+.2f})") in text


def test_one_sample_one_batch_numbers_are_the_record():
    rows = lambda name: re.findall(r"^\s+(\d+)\s+(PASS|FAIL)\s+(\d+)\s+([\d.]+)\s+\d+%$", console(name),  # noqa: E731
                                   flags=re.M)
    good, bad = rows("one_sample_one_batch"), rows("one_sample_one_batch-exercise")
    assert [r[1] for r in good] == ["PASS"] * 3 and [r[1] for r in bad] == ["FAIL"] * 3
    (n1, _, s1, l1), (n2, _, s2, l2), (n3, _, s3, l3) = good
    text = flat(DOCS / "debugging.md")
    assert (f"it memorised {n1} image within {s1} steps, {n2} within {s2} and {n3} within {s3} (loss {l1}, {l2}, "
            f"{l3};") in text
    assert f"stuck near 2.24 ({', '.join(r[3] for r in bad)})" in text
    assert all(abs(float(r[3]) - 2.24) < 0.01 for r in bad)


def test_detect_anomaly_numbers_are_the_record():
    out = console("detect_anomaly")
    losses = re.search(r"losses: ([\d., ]+) \(all finite", out)[1]
    assert f"stops falling ({losses};" in flat(DOCS / "debugging.md")
    timing = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x$", out, flags=re.M)
    assert [t[0] for t in timing] == ["16", "128"]
    guide = (DOCS / "debugging.md").read_text()
    for batch, off, on, slowdown in timing:
        assert f"| {batch} | {off} | {on} | {slowdown}x |" in guide
    assert (f"{timing[0][3]} times slower at batch 16 and {timing[1][3]} times at batch 128"
            in flat(DOCS / "solutions.md"))


def test_optimizer_and_dataloader_numbers_are_the_record():
    out = console("optimizer")
    best = re.search(r"Best epoch by validation accuracy: (\d+) of (\d+) \(([\d.]+)%\)", out)
    text = flat(DOCS / "solutions.md")
    assert f"reaches {best[3]}% validation accuracy after {best[1]} epochs" in text
    for label, row in (("as reported", "training, as reported (mean over the epoch, dropout on)"),
                       ("dropout on ", "training split at the end-of-epoch weights, dropout on"),
                       ("dropout off", "training split at the end-of-epoch weights, dropout off"),
                       ("validation split", "validation split, dropout off")):
        value = re.search(rf"{label}.*?([\d.]+)$", out, flags=re.M)[1]
        assert f"| {row} | {value} |" in text, row
    out = console("dataloader")
    counts = json.loads(re.search(r"WeightedRandomSampler\s+\d+\s+(\[[\d, ]+\])", out)[1])
    assert f"(measured: {min(counts)} to {max(counts)} per class out of {sum(counts):,}" in text
    crop = re.search(r"CenterCrop\(28\) shows (\d+)% of the photo and (\d+)% of the object's pixels", out)
    corr = re.search(r"crop ([\d.]+), resize ([\d.]+)", out)
    assert (f"the crop keeps {crop[1]}% of the photo and {crop[2]}% of the object's pixels, and correlates "
            f"{corr[1]} with the original image; the resize keeps all of it (correlation {corr[2]})") in text


def test_find_the_bugs_check_values_are_the_records():
    folder = DOCS_RUNS / "find-the-bugs-preflight-quick"
    check = lambda variant, name: json.loads((folder / f"{variant}.results.json").read_text())["checks"][name]  # noqa: E731
    text = flat(EXERCISE / "solution" / "README.md")
    lr = check("learning-rate-far-too-high", "overfit_one_batch")
    quoted = re.search(r"Training diverged \(loss ([\d.]+) is above --diverged-loss 25; learning rate ([\d.]+);",
                       lr["hint"])
    assert f'"Training diverged (loss {quoted[1]} is above --diverged-loss 25; learning rate {quoted[2]}; ...)' in text
    sigmoid = "sigmoid-on-the-outputs-before-the-loss"
    assert f"`overfit_one_batch`: value {check(sigmoid, 'overfit_one_batch')['value']:.4f}," in text
    assert f"(relative difference {check(sigmoid, 'step_gradient')['value']:.2f})" in text
    assert (f"(relative difference {check('loss-without-its-target', 'step_gradient')['value']:.2f}, "
            in text)
    no_step = check("no-optimizer-step", "overfit_one_batch")
    assert f"`overfit_one_batch`: value {no_step['value']:.2f}, " in text
    assert "optimizer.step() ran 0 times in 2 training steps" in json.dumps(check("no-optimizer-step",
                                                                                   "step_gradient"))
    assert f"(value {check('forward-mixes-the-batch', 'batch_independence')['value']}: gradients" in text
    assert f'"value={check("dead-conv-blocks", "gradient_flow")["value"]} [...] none for:' in text
    inputs = check("inputs-not-divided-by-255", "input_before_net")
    assert f'"value={inputs["value"]} [...] pixel range [0.000, 255.000] is not inside [0, 1]"' in text
    assert "pixel range [0.000, 255.000] is not inside [0, 1]" in json.dumps(inputs)
    assert f"`loss_at_init`: {check('inputs-not-divided-by-255', 'loss_at_init')['value']:.2f} instead" in text
    as_is = json.loads((folder / "exercise-as-is.results.json").read_text())
    failed = sum(not c["passed"] for c in as_is["checks"].values())
    words = {6: "six", 7: "seven", 5: "five"}
    assert f"the preflight fails {words[failed]} checks at once" in text
    # each bug alone fails --preflight --quick, the solution passes
    exits = dict(re.findall(r"^(\S+): exit code (\d)$", (DOCS_RUNS / "find-the-bugs-preflight-quick.console.txt")
                            .read_text(), flags=re.M))
    assert exits.pop("solution") == "0" and set(exits.values()) == {"1"} and len(exits) == 9
    solution = json.loads((folder / "solution.results.json").read_text())
    baseline = solution["checks"]["input_independent_baseline"]["seconds"]
    assert (f"most of the time: {baseline:.1f} of the checks' {solution['checks_time_s']:.1f} s in the solution's "
            f"record") in flat(EXERCISE / "README.md")


def test_the_silent_bug_repeat_record_is_bit_for_bit():
    """docs/debugging.md: "Run twice here (seeds 0, 1 and 2), every loss and every accuracy was the
    same, bit for bit": the two recorded runs agree in everything but their --out and seconds."""
    record = RUNS / "2026-12-05-docs-repeat"
    first, second = (json.loads((record / run / "silent_bug.json").read_text()) for run in ("a", "b"))

    def without_timing(value):
        if isinstance(value, dict):
            return {k: without_timing(v) for k, v in value.items() if k not in ("seconds", "command")}
        return [without_timing(v) for v in value] if isinstance(value, list) else value

    assert first["seeds"] == second["seeds"] == [0, 1, 2]
    assert first["command"].replace("/a", "/b") == second["command"]
    assert without_timing(first) == without_timing(second)
    assert first["per_seed"][0]["runs"] != second["per_seed"][1]["runs"]  # the comparison can fail
    assert "runs/2026-12-05-docs-repeat" in flat(DOCS / "debugging.md")


def test_fashionmnist_v12_numbers_are_the_records():
    """Every number of v12's FAZIT table and README lines comes from the three H100 runs."""
    root = RUNS / "2026-12-05-h100-fashionmnist-v12" / "records"
    runs = [json.loads((root / f"+smoothing-s{seed}" / "results.json").read_text()) for seed in (0, 1, 2)]
    assert [r["seed"] for r in runs] == [0, 1, 2] and all(r["status"] == "completed" for r in runs)
    assert all(r["all_checks_passed"] and r["epochs_run"] == 40 and "H100" in r["device"] for r in runs)
    test = [100 * r["test_accuracy"] for r in runs]
    val = [100 * r["best_val_accuracy"] for r in runs]
    train = [100 * r["train_metrics"]["accuracy"] for r in runs]
    gap = [t - s for t, s in zip(train, test)]
    mean_std = lambda xs: f"{statistics.mean(xs):.2f}% ± {statistics.stdev(xs):.2f}"  # noqa: E731
    fazit = flat(REPO_ROOT / "fashionmnist" / "v12-step4" / "FAZIT.md")
    for seed, r in enumerate(runs):
        assert (f"| {seed} | {test[seed]:.2f}% | {val[seed]:.2f}% ({r['best_epoch']}) | {train[seed]:.2f}% | "
                f"{gap[seed]:.2f} points |") in fazit
    assert (f"| **mean ± std** | **{mean_std(test)}** | {mean_std(val)} | {mean_std(train)} | "
            f"{statistics.mean(gap):.2f} ± {statistics.stdev(gap):.2f} points |") in fazit
    assert f"missed by {95.5 - statistics.mean(test):.2f} points" in fazit
    row = f"{mean_std(test)}% (3 seeds; goal 95.5% missed"
    assert row in flat(REPO_ROOT / "fashionmnist" / "README.md")
    assert f"Results: {mean_std(test)} test accuracy over seeds 0-2 on an H100" in flat(
        REPO_ROOT / "fashionmnist" / "v12-step4" / "README.md")


def test_fashionmnist_v15_cpu_numbers_are_the_records():
    """v15's CPU goal line (FAZIT, the track table) comes from the three --cpu-fast runs' results.json."""
    root = RUNS / "2026-12-06-cpu-fashionmnist-v15" / "records"
    runs = [json.loads((root / f"preset-s{seed}" / "results.json").read_text()) for seed in (0, 1, 2)]
    assert [r["seed"] for r in runs] == [0, 1, 2] and all(r["status"] == "completed" for r in runs)
    assert all(r["device"] == "cpu" and r["config"]["stem_stride"] == 2 and r["config"]["epochs"] == 7 for r in runs)
    test = [100 * r["test_accuracy"] for r in runs]
    seconds = [r["train_time_s"] for r in runs]
    accuracy = f"{statistics.mean(test):.2f}% ± {statistics.stdev(test):.2f}%"
    fazit = flat(REPO_ROOT / "fashionmnist" / "v15-speed" / "FAZIT.md")
    assert (f"**{accuracy}** test accuracy over seeds 0, 1, 2 in {statistics.mean(seconds):.1f} ± "
            f"{statistics.stdev(seconds):.1f} s (at most {max(seconds):.1f} s)") in fazit
    assert statistics.mean(test) < 92.5  # the goal is missed, and the table says by how much
    row = (f"{accuracy} with `--cpu-fast` in at most {max(seconds):.1f} s of training (3 seeds; CPU goal 92.5% "
           f"in 3 min missed by {92.5 - statistics.mean(test):.2f}")
    assert row in flat(REPO_ROOT / "fashionmnist" / "README.md")


def test_fashionmnist_v15_gpu_numbers_are_the_records():
    """v15's H100 goal lines (FAZIT, its README, the track table) come from the five default runs'
    results.json; the benchmark line from loops_cuda.json."""
    root = RUNS / "2026-12-06-h100-fashionmnist-v15" / "records"
    runs = [json.loads((root / f"goal-s{seed}" / "results.json").read_text()) for seed in range(5)]
    assert [r["seed"] for r in runs] == list(range(5)) and all(r["status"] == "completed" for r in runs)
    assert all(r["device"] == "cuda (NVIDIA H100 80GB HBM3)" and not r["config"]["compile"] for r in runs)
    test = [100 * r["test_accuracy"] for r in runs]
    seconds = [r["train_time_s"] for r in runs]
    accuracy = f"{statistics.mean(test):.2f}% ± {statistics.stdev(test):.2f}%"
    span = f"{min(seconds):.1f}-{max(seconds):.1f} s"
    assert statistics.mean(test) < 94.0 and min(seconds) > 5.0  # the goal is missed on both counts
    fazit = flat(REPO_ROOT / "fashionmnist" / "v15-speed" / "FAZIT.md")
    assert f"| **defaults, seeds 0-4** | | **{accuracy}** | | **{statistics.mean(seconds):.1f} ± " \
           f"{statistics.stdev(seconds):.1f} s** (min {min(seconds):.1f}) |" in fazit
    assert f"Accuracy: **{accuracy}**, {94.0 - statistics.mean(test):.2f} points short of 94.0%" in fazit
    assert f"Time: **{span}** of training" in fazit
    assert f"{accuracy} over 5 seeds in {span} of training" in flat(REPO_ROOT / "fashionmnist" / "v15-speed" / "README.md")
    assert f"one H100: {accuracy} in {span} of training (5 seeds" in flat(REPO_ROOT / "fashionmnist" / "README.md")
    loops = json.loads((root / "benchmark" / "loops_cuda.json").read_text())["loops"]
    line = ", ".join(f"{name} {loops[key]['seconds_per_epoch']:.2f} s" for name, key in
                     (("v6", "v6"), ("v12-step4", "v12"), ("v15-speed", "v15")))
    assert f"full epochs: {line} per epoch" in flat(REPO_ROOT / "fashionmnist" / "README.md")
    # the repeats are bitwise: every batch loss of the first run again
    for name in ("goal-s1", "compile-s1"):
        first, again = (read_losses(root / folder / "history.jsonl") for folder in (name, f"repeat-{name}"))
        assert first == again and len(first) == 16 * 108


def test_fashionmnist_v15_cuda_graphs_are_the_records():
    """v15's CUDA-graph rows and paragraph (FAZIT, section 4) come from the 2026-12-07 records: the table
    from each results.json and history.jsonl, and the claim that the graphs change nothing a run computes
    from the batch losses and validation figures of the default-mode compiled runs of the same seeds."""
    import statistics as stats

    graphs = RUNS / "2026-12-07-h100-fashionmnist-v15-cudagraphs" / "records"
    compiled = RUNS / "2026-12-06-h100-fashionmnist-v15" / "records"
    fazit = flat(REPO_ROOT / "fashionmnist" / "v15-speed" / "FAZIT.md")
    per_epoch, without_compile, default_epochs, default_without = [], [], [], []
    for seed in (1, 2):
        r = json.loads((graphs / f"cudagraphs-s{seed}" / "results.json").read_text())
        c = json.loads((compiled / f"compile-s{seed}" / "results.json").read_text())
        assert r["status"] == "completed" and r["device"] == "cuda (NVIDIA H100 80GB HBM3)" and r["all_checks_passed"]
        assert r["config"]["compile"] and r["config"]["compile_mode"] == "reduce-overhead"
        assert {k: v for k, v in r["config"].items() if k not in ("compile_mode", "out")} == \
               {k: v for k, v in c["config"].items() if k not in ("compile_mode", "out")}
        history = [json.loads(line) for line in (graphs / f"cudagraphs-s{seed}" / "history.jsonl").read_text().splitlines()]
        first = next(h for h in history if h["val_accuracy"] >= 0.94)
        row = (f"| `cudagraphs-s{seed}` | {seed} | {100 * r['test_accuracy']:.2f}% | {100 * r['best_val_accuracy']:.2f}% "
               f"({r['best_epoch']}) | {r['train_time_s']:.1f} s | {r['compile_s']:.1f} s | "
               f"{stats.median(h['seconds'] for h in history):.2f} s | {r['time_to_target_s']:.1f} s (epoch {first['epoch']}) |")
        assert row in fazit, row
        assert r["test_accuracy"] == c["test_accuracy"] and r["best_val_accuracy"] == c["best_val_accuracy"]
        computed = [[{k: v for k, v in h.items() if k not in ("seconds", "train_seconds", "since_start_s")}
                     for h in _history(folder)] for folder in (graphs / f"cudagraphs-s{seed}", compiled / f"compile-s{seed}")]
        assert computed[0] == computed[1] and set(history[0]) - set(computed[0][0]) == {"seconds", "train_seconds",
                                                                                       "since_start_s"}
        assert len(read_losses(graphs / f"cudagraphs-s{seed}" / "history.jsonl")) == 1728
        per_epoch += [h["seconds"] for h in history[1:]]
        default_epochs += [json.loads(line)["seconds"] for line in
                           (compiled / f"compile-s{seed}" / "history.jsonl").read_text().splitlines()[1:]]
        without_compile.append(f"{r['train_time_s'] - r['compile_s']:.1f} s")
        default_without.append(f"{c['train_time_s'] - c['compile_s']:.1f} s")
    assert f"{min(per_epoch):.2f}-{max(per_epoch):.2f} s per epoch after the first, against " \
           f"{min(default_epochs):.2f}-{max(default_epochs):.2f} s" in fazit
    assert f"without its compilation {' and '.join(without_compile)} against {' and '.join(default_without)}" in fazit


def test_fashionmnist_v15_full_rows_budget_is_computed_from_the_speed_table():
    """The cost of the speed table's --full rows (FAZIT section 4) is s/epoch x the row's epochs from the
    GPU speed-table record, and the cold compilation from compile-s0's record."""
    record = json.loads((RUNS / "2026-12-06-h100-fashionmnist-v15" / "records" / "speed_table" / "speed_table.json")
                        .read_text())
    train = load_version("fashionmnist/v15-speed")
    # the record's flags name the GPU machine's data folder, which this machine need not have
    # (--data-dir must exist to parse): only the epochs matter here
    def epochs(flags):
        kept = [flag for i, flag in enumerate(flags) if "--data-dir" not in (flag, flags[i - 1] if i else None)]
        return train.parse_args(kept).epochs
    seconds = {row["row"]: row["seconds_per_epoch"] * epochs(row["flags"]) for row in record["rows"]}
    assert sorted(seconds) == list(range(9))
    per_seed, first_six = sum(seconds.values()), sum(seconds[r] for r in range(6))
    cold = json.loads((RUNS / "2026-12-06-h100-fashionmnist-v15" / "records" / "compile-s0" / "results.json")
                      .read_text())["compile_s"]
    fazit = flat(REPO_ROOT / "fashionmnist" / "v15-speed" / "FAZIT.md")
    assert f"is about {round(per_seed, -1):,.0f} s per seed (rows 0-5, 40 epochs each" in fazit
    assert f"are {round(first_six, -1):,.0f} s of it), plus row 8's compilation ({cold:.0f} s cold" in fazit
    assert f"about {3 * (per_seed + cold) / 60:.0f} minutes of the GPU for three seeds" in fazit


def read_losses(path):
    return [loss for line in path.read_text().splitlines() for loss in json.loads(line)["batch_losses"]]


def _merge_v12_records(tmp_path):
    """The folder regularize.py and learning_curve.py summarised: the 2026-12-06 H200 arms and learning-curve
    shares, the later 2026-12-06 H100 arms (+dropout, +early-stop) and shares (seeds 1, 2), and the 2026-12-05
    +smoothing runs (train.py's defaults; seeds 0-2 are also the curve's 100% points)."""
    import shutil

    h200 = RUNS / "2026-12-06-h200-fashionmnist-v12" / "records"
    arms_h100 = RUNS / "2026-12-06-h100-fashionmnist-v12-arms" / "records"
    h100 = RUNS / "2026-12-05-h100-fashionmnist-v12" / "records"
    arms, curve = tmp_path / "regularize", tmp_path / "learning_curve"
    for folder in [*sorted(h200.glob("*-s[0-9]")), *sorted(arms_h100.glob("*-s[0-9]"))]:
        name, seed = folder.name.rsplit("-s", 1)
        if name == "repeat":
            continue
        target = (curve / f"fraction{name[3:]}" if name.startswith("lc-") else arms / name) / f"seed{seed}"
        shutil.copytree(folder, target)
    for seed in (0, 1, 2):
        shutil.copytree(h100 / f"+smoothing-s{seed}", arms / "+smoothing" / f"seed{seed}")
        shutil.copytree(h100 / f"+smoothing-s{seed}", curve / "fraction1" / f"seed{seed}")
    return arms_h100, arms, curve


def _history(folder):
    """A run's history.jsonl without the epochs' wall times: what the run computed, not how fast."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (folder / "history.jsonl").read_text().splitlines()]


def test_fashionmnist_v12_ablation_and_learning_curve_are_the_records(tmp_path, capsys):
    """v12's ablation table and learning curve in FAZIT.md are what the two scripts print over the records,
    and the early-stopping and repeat paragraphs are what the runs' histories say."""
    records, arms, curve = _merge_v12_records(tmp_path)
    fazit = (REPO_ROOT / "fashionmnist" / "v12-step4" / "FAZIT.md").read_text()
    fazit_flat = flat(REPO_ROOT / "fashionmnist" / "v12-step4" / "FAZIT.md")
    summary = load_version("fashionmnist/v12-step4", "regularize").main(["--summarise", "--out", str(arms)])
    table = (arms / "regularize.md").read_text()
    assert table == (records / "regularize.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 2 + 7 and all(row in fazit for row in rows)
    assert [r["arm"] for r in summary["rows"]] == ["v11", "+crop-flip", "+erasing", "+weight-decay", "+smoothing",
                                                   "+dropout", "+early-stop"]
    v11_test = [100 * t for t in summary["rows"][0]["test"]]
    assert f"v11's recipe at v12's 40 epochs: {statistics.mean(v11_test):.2f}% ± {statistics.stdev(v11_test):.2f}" in fazit_flat
    best_test = max(summary["rows"], key=lambda r: statistics.mean(r["test"]))
    assert best_test["arm"] == "+dropout" and not best_test["kept"]
    assert f"the best test mean of any arm is {100 * statistics.mean(best_test['test']):.2f}% (+dropout" in fazit_flat
    assert statistics.mean(best_test["test"]) * 100 < 95.5  # the goal stays missed
    points = load_version("fashionmnist/v12-step4", "learning_curve").main(["--summarise", "--out", str(curve)])
    capsys.readouterr()
    recorded = json.loads((records / "learning_curve.json").read_text())
    assert [p["val_accuracies"] for p in points["points"]] == [p["val_accuracies"] for p in recorded["points"]]
    for p in points["points"]:
        assert len(p["seeds"]) == 3
        assert (f"| {p['fraction']:.0%} | {p['images']} | 3 | {100 * p['val_accuracy']:.2f} ± "
                f"{100 * statistics.stdev(p['val_accuracies']):.2f} | {100 * p['train_accuracy']:.2f} | "
                f"{p['train_s']:.0f} |") in fazit
    gain = 100 * points["verdict"]["gain_per_doubling"]
    assert points["verdict"]["verdict"] == "more data would still help"
    assert f"+{gain:.2f} points of validation accuracy from 50% to" in fazit_flat
    # early stopping (patience 5): each run is +smoothing's, cut short, batch loss for batch loss
    smoothing = RUNS / "2026-12-05-h100-fashionmnist-v12" / "records"
    for seed in (0, 1, 2):
        stopped, full = _history(records / f"+early-stop-s{seed}"), _history(smoothing / f"+smoothing-s{seed}")
        assert stopped == full[:len(stopped)]
        results = json.loads((records / f"+early-stop-s{seed}" / "results.json").read_text())
        assert len(stopped) == (30 if seed == 0 else 40)
        if seed == 0:
            assert (f"Seed 0 stopped at epoch {len(stopped)} (best {100 * results['best_val_accuracy']:.2f}% at epoch "
                    f"{results['best_epoch']}, against") in fazit_flat
    # the repeat: train.py --seed 0 again, the same run
    repeat, first = records / "repeat-s0", smoothing / "+smoothing-s0"
    assert _history(repeat) == _history(first)
    test = json.loads((repeat / "results.json").read_text())["test_accuracy"]
    assert test == json.loads((first / "results.json").read_text())["test_accuracy"]
    losses = sum(len(epoch["batch_losses"]) for epoch in _history(repeat))
    assert f"recorded the same {losses:,} batch losses" in fazit_flat and f"the same {100 * test:.2f}% test" in fazit_flat


def summarise_search_records(records, tmp_path, capsys):
    """search.py --summarise over a copy of a record's trials: its summary and table, the table being
    the one the record holds (search.md), byte for byte."""
    import shutil

    shutil.copytree(records / "trials", tmp_path / "trials")
    summary = load_version("fashionmnist/v13-step5", "search").main(["--summarise", "--out", str(tmp_path)])
    capsys.readouterr()
    table = (tmp_path / "search.md").read_text()
    assert table == (records / "search.md").read_text()
    return summary, table


def test_fashionmnist_v13_search_half_is_the_records(tmp_path, capsys):
    """v13's FAZIT quotes the first half of the search as search.py --summarise prints it over the trial
    records, and its reading of the table (learning rates of the best trials, the edge) is what they hold."""
    records = RUNS / "2026-12-06-h100-fashionmnist-v13-search" / "records"
    summary, table = summarise_search_records(records, tmp_path, capsys)
    fazit = (REPO_ROOT / "fashionmnist" / "v13-step5" / "FAZIT.md").read_text()
    fazit_flat = flat(REPO_ROOT / "fashionmnist" / "v13-step5" / "FAZIT.md")
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 2 + 12 and all(row in fazit for row in rows)
    trials = summary["trials"]
    assert [t["trial"] for t in trials] != sorted(t["trial"] for t in trials)  # ranked, not in trial order
    assert sorted(t["trial"] for t in trials) == list(range(0, 24, 2)) and all(t["test_set_untouched"] for t in trials)
    budget = summary["budget"]
    assert f"12 trials of 20 epochs, {budget['seconds']:.0f} s of process time ({budget['train_seconds']:.0f} s training)" \
        in fazit_flat
    assert summary["edge"]["on_edge"] and summary["edge"]["parameters"]["channels"]["edge"] == "high"
    best5, rest = trials[:5], trials[5:]
    lrs = sorted(t["config"]["lr"] for t in best5)
    assert f"The five best trials started their cosine at {lrs[0] * 1e3:.1f}e-3 to {lrs[-1] * 1e3:.1f}e-3" in fazit_flat
    assert f"(11 to 21 times v12's 3e-4)" in fazit_flat and (round(lrs[0] / 3e-4), round(lrs[-1] / 3e-4)) == (11, 21)
    assert max(t["config"]["lr"] for t in rest) < min(lrs)  # every other trial ran at a lower learning rate
    v12_defaults = 0.9425  # v12's FAZIT: 94.25% ± 0.28 best validation, checked against its records above
    above = [t for t in trials if t["val_accuracy"] > v12_defaults]
    assert "six trials are above that already" in fazit_flat and len(above) == 6


def test_fashionmnist_v13_widened_search_and_confirmation_are_the_records(tmp_path, capsys):
    """v13's result (FAZIT.md and README.md): the widened search as search.py --summarise prints it over
    the trial records, its reading (width, learning rate, the repeated trials), and the confirmation's
    table, per-seed test figures and missed goal as confirm.json holds them."""
    import statistics as stats

    records = RUNS / "2026-12-07-h100-fashionmnist-v13-widened" / "records"
    first = RUNS / "2026-12-06-h100-fashionmnist-v13-search" / "records"
    summary, table = summarise_search_records(records, tmp_path, capsys)
    fazit = (REPO_ROOT / "fashionmnist" / "v13-step5" / "FAZIT.md").read_text()
    fazit_flat = flat(REPO_ROOT / "fashionmnist" / "v13-step5" / "FAZIT.md")
    readme_flat = flat(REPO_ROOT / "fashionmnist" / "v13-step5" / "README.md")
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert len(rows) == 1 + 24
    for row in rows[1:11]:  # the ten best, without best epoch, seconds and test-set columns
        assert "| " + " | ".join(cell.strip() for cell in row.split("|")[1:9]) + " |" in fazit, row
    trials = summary["trials"]
    assert sorted(t["trial"] for t in trials) == list(range(24)) and all(t["test_set_untouched"] for t in trials)
    assert not summary["edge"]["on_edge"] and "the best lies inside every searched range" in fazit_flat
    budget = summary["budget"]
    assert f"24 trials of 20 epochs, {budget['seconds']:.0f} s of process time ({budget['train_seconds']:.0f} s training)" \
        in fazit_flat
    best9, narrow = trials[:9], [t for t in trials if t["config"]["channels"] < 48]  # ranked, best first
    assert {t["config"]["channels"] for t in best9} == {48, 64} and narrow[0] == trials[9]
    assert (f"The nine best trials all have 48 or 64 channels ({100 * best9[-1]['val_accuracy']:.2f}-"
            f"{100 * best9[0]['val_accuracy']:.2f}%); the best 24- or 32-channel trial reached "
            f"{100 * narrow[0]['val_accuracy']:.2f}%") in fazit_flat
    lrs = sorted(t["config"]["lr"] for t in best9)
    assert f"The nine best span {lrs[0]:.1e} to {lrs[-1]:.1e}".replace("e-0", "e-") in fazit_flat
    low = sorted((t for t in trials if t["config"]["lr"] < 2e-4), key=lambda t: t["val_accuracy"])
    assert len(low) == 3 and low[:2] == trials[:-3:-1]
    assert f"below 2e-4 reached {100 * low[0]['val_accuracy']:.2f}-{100 * low[-1]['val_accuracy']:.2f}%, two of them " \
        "the two worst of all" in fazit_flat
    # The repeated configurations: the same histories as in the first search, but for the seconds.
    earlier = {json.loads(f.read_text())["trial"]: json.loads(f.read_text()) for f in (first / "trials").glob("*.json")}
    same = sorted(t["trial"] for t in trials if t["trial"] in earlier and earlier[t["trial"]]["config"] == t["config"])
    assert same == [0, 2, 4, 8, 10, 12, 14, 18, 20] and "Nine trials drew the same configuration" in fazit_flat
    for trial in same:
        histories = [[{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in
                      (folder / "runs" / f"trial-{trial:04d}" / "history.jsonl").read_text().splitlines()]
                     for folder in (records, first)]
        assert histories[0] == histories[1] and len(histories[0]) == 20
    # The confirmation.
    confirm = json.loads((records / "confirm.json").read_text())
    for row in (records / "confirm.md").read_text().splitlines():
        if row.startswith("| ") and not row.startswith("| ---"):
            assert row in fazit, row
    chosen = next(row for row in confirm["rows"] if row["arm"] == confirm["chosen"])
    assert confirm["chosen"] == "trial-0020" and all(r.get("resolved", True) for r in confirm["rows"])
    test = [100 * a for a in chosen["test"]]
    assert f"**94.79% ± 0.08 test accuracy** over seeds 0-2 ({', '.join(f'{a:.2f}' for a in test)}%)" in fazit_flat
    assert f"{stats.mean(test):.2f}% ± {stats.stdev(test):.2f}" == "94.79% ± 0.08"
    assert f"missed by 1.0 point** (by {95.8 - stats.mean(test):.2f} on the mean)" in fazit_flat
    val = [100 * a for a in chosen["best_val"]]
    assert f"{stats.mean(val):.2f}% ± {stats.stdev(val):.2f} best validation" in readme_flat
    assert "**94.79% ± 0.08 test accuracy** (v12: 93.80% ± 0.13)" in readme_flat and "+1.37 points [+0.79, +1.94]" \
        in readme_flat and "missed by 1.0 point" in readme_flat
    for run in (records / "confirm").glob("*/seed*/results.json"):
        r = json.loads(run.read_text())
        assert r["status"] == "completed" and r["all_checks_passed"] and r["device"] == "cuda (NVIDIA H100 80GB HBM3)"
        assert r["torch_version"] == "2.11.0+cu130" and r["date"].startswith("2026-12-07") and r["config"]["epochs"] == 40


def test_fashionmnist_v13_preflight_time_is_the_record():
    """What v13's README says a CPU user waits for before the first epoch, from the two preflight records."""
    record = RUNS / "2026-12-07-cpu-fashionmnist-v13-preflight"
    runs = {v: json.loads((record / v / "results.json").read_text()) for v in ("v13-step5", "v12-step4")}
    assert all(r["status"] == "preflight" and r["device"] == "cpu" and r["all_checks_passed"] for r in runs.values())
    v13, v12 = runs["v13-step5"], runs["v12-step4"]
    assert (v13["num_parameters"], v12["num_parameters"]) == (1563226, 696042)
    readme = flat(REPO_ROOT / "fashionmnist" / "v13-step5" / "README.md")
    assert f"take {v13['checks_time_s']:.0f} s at v13's width (v12's: {v12['checks_time_s']:.0f} s)" in readme
    share = v13["checks"]["input_independent_baseline"]["seconds"] / v13["checks_time_s"]
    assert f"{share:.0%} of that time" in readme
    table = (record / "README.md").read_text()
    for name, r in (("v13-step5", v13), ("v12-step4", v12)):
        assert (f"| {r['checks_time_s']:.1f} s | {r['checks']['input_independent_baseline']['seconds']:.1f} s |"
                in table), name


def test_fashionmnist_v13_width_limit_is_the_record():
    """Why v13's search stops at 64 channels: the loss at init per width in the record, as FAZIT.md and
    search.py's SPACE say (96 over loss_at_init's limit for the trial seed, 24-64 under it for every seed)."""
    folder = RUNS / "2026-12-06-cpu-fashionmnist-v13-init-width"
    lines = (folder / "output.txt").read_text().splitlines()
    widths = [int(w) for w in next(line for line in lines if line.startswith("seed")).split()[1:6]]
    losses = {int(line.split()[0]): dict(zip(widths, map(float, line.split()[1:])))
              for line in lines if re.match(r"^ *\d+ +\d\.\d{3}", line)}
    limit = float(next(line for line in lines if line.startswith("limit:")).split("=")[-1])
    assert sorted(losses) == [0, 1, 42] and widths == [24, 32, 48, 64, 96]
    assert losses[42][96] > limit and all(loss < limit for row in losses.values() for w, loss in row.items() if w <= 64)
    below = [loss for row in losses.values() for w, loss in row.items() if w <= 64]
    fazit = flat(REPO_ROOT / "fashionmnist" / "v13-step5" / "FAZIT.md")
    assert (f"({losses[42][96]:.3f} for the trial seed 42) is above `loss_at_init`'s limit of {limit:.3f}" in fazit
            and f"to 64 channels it stays at {min(below):.2f}-{max(below):.2f} over three seeds" in fazit)
    space = load_version("fashionmnist/v13-step5", "search").SPACE
    assert space["channels"]["values"] == [24, 32, 48, 64]


def test_readme_suite_size_and_time_are_the_record():
    """The README's "N tests in M minutes" is the fresh-clone .ci/run of runs/2026-12-07-cpu-suite-031cb09."""
    output = (RUNS / "2026-12-07-cpu-suite-031cb09" / "output.txt").read_text()
    passed, skipped, seconds = re.search(r"^(\d+) passed, (\d+) skipped\b.* in ([\d.]+)s", output, re.M).groups()
    assert (f"{int(passed):,} tests passed ({skipped} skipped) in {float(seconds) / 60:.1f} minutes on two CPU cores"
            in flat(REPO_ROOT / "README.md"))
    assert "AMD EPYC" in output and "CPU(s):                                  2" in output


def test_fashionmnist_v15_amd_step_breakdown_is_the_record():
    """The AMD EPYC step timings and profile shares in v15's FAZIT are cpu_step_variants.txt's."""
    text = (RUNS / "2026-12-06-cpu-amd-fashionmnist-v15" / "records" / "cpu_step_variants.txt").read_text()
    ms = {m[0]: float(m[1]) for m in re.findall(r"^(eager|relu in place|torch\.compile) +([\d.]+) ms per step", text, re.M)}
    share = {m[0].strip(): float(m[1]) for m in re.findall(r"^  ([a-z ()]+?) +([\d.]+)%$", text, re.M)}
    assert len(ms) == 3 and len(share) == 5 and "AMD EPYC" in text
    conv = share["convolution forward"] + share["convolution backward"]
    fazit = flat(REPO_ROOT / "fashionmnist" / "v15-speed" / "FAZIT.md")
    assert (f"the eager step takes {ms['eager']} ms, and the convolutions are {conv:.0f}% of its CPU time (forward "
            f"{share['convolution forward']}%, backward {share['convolution backward']}%), batch norm "
            f"{share['batch norm (forward and backward)']}%, ReLU {share['relu (forward and backward)']}%, the residual "
            f"adds {share['residual add']}%") in fazit
    assert (f"The ReLUs in place take it to {ms['relu in place']} ms, torch.compile of the forward to "
            f"{ms['torch.compile']} ms") in fazit
    gains = [100 * (1 - ms[k] / ms["eager"]) for k in ("relu in place", "torch.compile")]
    assert "3-4% each" in fazit and [round(g) for g in gains] == [3, 4] and max(gains) < 10


def test_fashionmnist_v15_narrower_cpu_try_is_the_record():
    """The 24-channel try on the AMD CPU (v15's FAZIT and its run README) is what its results.json says."""
    folder = RUNS / "2026-12-07-cpu-amd-fashionmnist-v15"
    results = json.loads((folder / "records" / "c24-e8-s0" / "results.json").read_text())
    assert results["status"] == "completed" and results["device"] == "cpu" and results["cpu_threads"] == 2
    assert results["config"]["channels"] == 24 and results["epochs_run"] == 8 and results["seed"] == 0
    assert results["train_time_s"] > 180  # the time goal missed: what both texts say
    test, val = results["test_accuracy"] * 100, results["best_val_accuracy"] * 100
    fazit = flat(REPO_ROOT / "fashionmnist" / "v15-speed" / "FAZIT.md")
    readme = flat(folder / "README.md")
    assert (f"reached {test:.2f}% test in {results['train_time_s']:.1f} s of training, "
            f"{results['seconds_per_epoch']:.1f} s per epoch") in fazit
    assert (f"{test:.2f}% test, {val:.2f}% best validation (epoch {results['best_epoch']}), "
            f"{results['train_time_s']:.1f} s of training** ({results['seconds_per_epoch']:.1f} s per epoch") in readme
    assert results["command"].startswith("python train.py --cpu-fast --channels 24 --epochs 8 --seed 0")
    preset = [json.loads(line) for line in (RUNS / "2026-12-06-cpu-amd-fashionmnist-v15" / "records"
                                            / "preset-s0-interrupted" / "history.jsonl").read_text().splitlines()]
    faster = 1 - results["seconds_per_epoch"] / statistics.mean(r["seconds"] for r in preset)
    assert f"only {faster:.0%} faster than the preset's first two" in fazit
    assert f"only {faster:.0%} faster than the 32-channel preset's" in readme


def test_fashionmnist_v15_sixteen_channel_cpu_tries_are_the_records():
    """Take 2 on the AMD CPU (v15's FAZIT, its run README): the step at three widths and the two
    16-channel runs are what step_widths.txt and their results.json say."""
    folder = RUNS / "2026-12-07-cpu-amd-fashionmnist-v15"
    fazit = flat(REPO_ROOT / "fashionmnist" / "v15-speed" / "FAZIT.md")
    readme = flat(folder / "README.md")
    ratios = dict(re.findall(r"channels (\d+): .*?, ([\d.]+)x the 32-channel step",
                             (folder / "records" / "step_widths.txt").read_text()))
    assert set(ratios) == {"16", "24", "32"} and float(ratios["16"]) < 0.5 < float(ratios["24"])
    assert f"16 channels take {ratios['16']}x the 32-channel step, 24 channels {ratios['24']}x" in readme
    assert f"at 24 channels takes {ratios['24']}x the 32-channel step, at 16 channels {ratios['16']}x" in fazit
    runs = {name: json.loads((folder / "records" / name / "results.json").read_text())
            for name in ("c16-e12-s0", "c16-e12-crop0-s0")}
    for name, crop in (("c16-e12-s0", 1), ("c16-e12-crop0-s0", 0)):
        r = runs[name]
        assert r["status"] == "completed" and r["device"] == "cpu" and r["cpu_threads"] == 2 and r["seed"] == 0
        assert r["config"]["channels"] == 16 and r["epochs_run"] == 12 and r["config"]["crop_padding"] == crop
        assert r["test_accuracy"] < 0.925  # the accuracy goal missed, as both texts say
        assert (f"**{100 * r['test_accuracy']:.2f}% test, {100 * r['best_val_accuracy']:.2f}% best validation "
                f"(epoch {r['best_epoch']}), {r['train_time_s']:.1f} s") in readme
    plain, no_crop = runs["c16-e12-s0"], runs["c16-e12-crop0-s0"]
    assert plain["train_time_s"] < 180 < no_crop["train_time_s"]
    assert (f"92.14% test in {plain['train_time_s']:.1f} s of training, {plain['seconds_per_epoch']:.1f} s per epoch"
            in fazit) and f"{100 * plain['test_accuracy']:.2f}" == "92.14"
    assert f"({100 * no_crop['test_accuracy']:.2f}%, {no_crop['train_time_s']:.1f} s)" in fazit
    history = [json.loads(line) for line in (folder / "records" / "c16-e12-s0" / "history.jsonl").read_text().splitlines()]
    most = max(h["train_accuracy"] for h in history)
    assert f"training accuracy at most {100 * most:.2f}%" in fazit and f"at most {100 * most:.2f}%" in readme
    assert f"{plain['num_parameters']:,} parameters" in readme

def test_fashionmnist_v15_other_cpu_numbers_are_the_records():
    """The AMD EPYC paragraph of v15's FAZIT and its run folder's table come from that folder's records."""
    amd = RUNS / "2026-12-06-cpu-amd-fashionmnist-v15" / "records"
    xeon = RUNS / "2026-12-06-cpu-fashionmnist-v15" / "records"
    rows = {r["row"]: r["seconds_per_epoch"] for r in json.loads((amd / "speed_table_rows_3-5.json").read_text())["rows"]}
    xeon_rows = {r["row"]: r["seconds_per_epoch"] for name in ("speed_table_rows_0-3.json", "speed_table_rows_4-7.json")
                 for r in json.loads((xeon / name).read_text())["rows"]}
    history = [json.loads(line) for line in
               (amd / "preset-s0-interrupted" / "history.jsonl").read_text().splitlines()]
    results = json.loads((amd / "preset-s0-interrupted" / "results.json").read_text())
    assert results["status"] == "interrupted" and results["config"]["epochs"] == 7 and len(history) == 2
    fazit = flat(REPO_ROOT / "fashionmnist" / "v15-speed" / "FAZIT.md")
    readme = flat(RUNS / "2026-12-06-cpu-amd-fashionmnist-v15" / "README.md")
    assert (f"trains at {rows[5]:.2f} s per epoch (speed table row 5, against {xeon_rows[5]:.2f} s on the Xeon), "
            f"and a `--cpu-fast` run's first two epochs took {history[0]['seconds']:.1f} and "
            f"{history[1]['seconds']:.1f} s") in fazit
    assert 7 * statistics.mean(r["seconds"] for r in history) > 180  # "seven epochs are about 200 s"
    assert (f"bf16 still pays there ({rows[3] / rows[4]:.2f}x over float32, {xeon_rows[3] / xeon_rows[4]:.2f}x "
            "on the Xeon)") in fazit
    for row, xeon_value in ((3, None), (4, rows[3] / rows[4]), (5, rows[3] / rows[5])):
        speed = f" ({xeon_value:.2f}x)" if xeon_value else ""
        xeon_speed = f" ({xeon_rows[3] / xeon_rows[row]:.2f}x)" if xeon_value else ""
        assert f"| {rows[row]:.2f} s/epoch{speed} | {xeon_rows[row]:.2f} s/epoch{xeon_speed} |" in readme


def test_fashionmnist_v14_cpu_scale_ensemble_is_the_record():
    """v14's one ensemble at CPU scale (FAZIT, v14 README, track table, run README): the table, the
    choice, the test reads and the calibration are what its results.json says."""
    folder = RUNS / "2026-12-07-cpu-amd-fashionmnist-v14-small"
    r = json.loads((folder / "records" / "c16-e6-m5-s0" / "results.json").read_text())
    assert r["status"] == "completed" and r["device"] == "cpu" and r["config"]["channels"] == 16
    assert r["config"]["epochs"] == 6 and len(r["members"]) == 5 and r["all_checks_passed"]
    assert [e["event"] for e in r["events"]] == ["members_trained", "choice_made", "test_read"]
    for k in range(5):  # every member's own record is there and completed
        member = json.loads((folder / "records" / "c16-e6-m5-s0" / "members" / f"member-{k}" / "results.json")
                            .read_text())
        assert member["status"] == "completed" and member["seed"] == r["members"][k]["seed"] == 1000 * k
    readme, fazit = flat(folder / "README.md"), flat(REPO_ROOT / "fashionmnist" / "v14-step6" / "FAZIT.md")
    pct = lambda x: f"{100 * x:.2f}%"  # noqa: E731
    for row in r["ensemble"]["table"]:
        assert (f"| {row['size']} | {'flip' if row['tta'] else '-'} | {pct(row['val_accuracy'])} | "
                f"{pct(row['members_mean'])} | {100 * row['gain']:+.2f} | {pct(row['disagreement'])} | "
                f"{row['ece']:.4f} |") in readme
    plain = [row for row in r["ensemble"]["table"] if not row["tta"] and row["size"] > 1]
    gains, disagree = sorted(100 * row["gain"] for row in plain), sorted(100 * row["disagreement"] for row in plain)
    for text in (readme, fazit):
        assert f"gain{'s' if text is readme else 'ed'} {gains[0]:.2f}-{gains[-1]:.2f} points over" in text
        assert f"{disagree[0]:.1f}-{disagree[-1]:.1f}% of the images disagreed on" in text
    single = {row["tta"]: row["val_accuracy"] for row in r["ensemble"]["table"] if row["size"] == 1}
    assert f"flip TTA add{'s' if 'adds' in readme else 'ed'} {100 * (single[True] - single[False]):.2f} points to one member" \
        in readme and f"flip TTA added {100 * (single[True] - single[False]):.2f} points to one member" in fazit
    choice = r["choice"]
    assert choice["size"] == 5 and choice["tta"] and f"five members with flip TTA ({pct(choice['val_accuracy'])})" in fazit
    ensemble, best = r["test_accuracy"], r["best_member_test_accuracy"]
    for text in (readme, fazit):
        assert f"{pct(ensemble)} for the ensemble against {pct(best)} for the best member" in text
    assert f"+{100 * (ensemble - best):.2f} points" in readme
    assert f"{100 * (ensemble - best):.2f}" == "0.56"
    # the three ensembles (seeds 0-2): mean ± sample std of the ensemble's and the best member's test accuracy
    runs = [json.loads((folder / "records" / f"c16-e6-m5-s{s}" / "results.json").read_text()) for s in range(3)]
    assert all(x["status"] == "completed" and x["seed"] == s and x["choice"]["size"] == 5 and x["choice"]["tta"]
               for s, x in enumerate(runs))
    ens, bst = ([100 * x[key] for x in runs] for key in ("test_accuracy", "best_member_test_accuracy"))
    diff = [e - b for e, b in zip(ens, bst)]
    ms = lambda v: f"{statistics.mean(v):.2f}% ± {statistics.stdev(v):.2f}"  # noqa: E731
    assert f"{ms(ens)} test for the ensemble against {ms(bst)} for its best member" in fazit
    gain = f"+{statistics.mean(diff):.2f} ± {statistics.stdev(diff):.2f} points"
    assert gain in fazit and gain in readme
    assert f"| mean ± std | | {ms(ens)} | {ms(bst)} | {gain[:-7]} | |" in readme
    assert f"ensemble {gain} above its best member" in flat(REPO_ROOT / "fashionmnist" / "v14-step6" / "README.md")
    assert f"{ms(ens)} over three ensembles of 5" in flat(REPO_ROOT / "fashionmnist" / "README.md")
    for s, x in enumerate(runs):
        assert (f"| {s} | K = 5, flip TTA ({pct(x['choice']['val_accuracy'])}) | {pct(x['test_accuracy'])} | "
                f"{pct(x['best_member_test_accuracy'])} | {100 * (x['test_accuracy'] - x['best_member_test_accuracy']):+.2f} | "
                f"{x['wall_time_s']:,.0f} s |") in readme
    c = r["calibration"]
    assert (f"ECE {c['validation']['best_member']['ece']:.3f} for the best member on validation and "
            f"{c['validation']['ensemble']['ece']:.3f} for the ensemble, {c['test']['best_member']['ece']:.3f} and "
            f"{c['test']['ensemble']['ece']:.3f} on test") in readme
    assert (f"ECE {c['validation']['best_member']['ece']:.3f} for the best member and "
            f"{c['validation']['ensemble']['ece']:.3f} for the ensemble on validation") in fazit
    assert f"ran the whole pipeline on the real data in {r['wall_time_s']:,.0f} s" in fazit
    assert f"{r['wall_time_s']:,.0f} s for the whole run" in readme
    assert f"{r['num_parameters']:,} parameters" in readme and f"{r['num_parameters']:,} parameters" in fazit
    times = [m["train_time_s"] for m in r["members"]]
    vals = [m["best_val_accuracy"] for m in r["members"]]
    assert f"{min(times):.0f}-{max(times):.0f} s of training each" in readme
    assert f"Best validation accuracy of the members {pct(min(vals))}-{pct(max(vals))}" in readme

def test_fashionmnist_v14_cut_gpu_run_is_what_its_readme_says():
    """v14's one GPU call of 2026-12-07 (cut, no member finished): the rate and the bitwise claim."""
    folder = RUNS / "2026-12-07-h100-fashionmnist-v14"
    records = folder / "records-2026-12-07-cut"
    readme = flat(folder / "README.md")
    means, epochs, best = [], [], []
    for k in range(3):
        results = json.loads((records / f"seed0-member{k}" / "results.json").read_text())
        assert results["status"] == "interrupted" and "H100" in results["device"]
        assert f"--only-member {k}" in results["command"] and results["torch_version"] == "2.11.0+cu130"
        with gzip.open(records / f"seed0-member{k}" / "history.jsonl.gz", "rt") as lines:
            history = [json.loads(line) for line in lines]
        means.append(statistics.mean(r["seconds"] for r in history))
        epochs.append(len(history))
        best.append(max(r["val_accuracy"] for r in history) * 100)
        assert all(r["epoch"] < 40 for r in history)  # cut before the end: "no member completed"
    assert f"after {epochs[0]}, {epochs[1]} and {epochs[2]} of their 40 epochs" in readme
    assert f"so far {best[0]:.2f}, {best[1]:.2f} and {best[2]:.2f}%" in readme
    assert f"(means {means[0]:.2f}, {means[1]:.2f}, {means[2]:.2f} s;" in readme
    assert f"about {sum(1 / m for m in means):.2f} epochs per second" in readme
    ensemble = json.loads((records / "ens-seed0" / "results.json").read_text())
    assert ensemble["status"] == "interrupted" and "--resume" in ensemble["command"]
    with gzip.open(records / "ens-seed0" / "member-0-history.jsonl.gz", "rt") as lines:
        in_ensemble = [json.loads(line) for line in lines]
    with gzip.open(records / "seed0-member0" / "history.jsonl.gz", "rt") as lines:
        alone = [json.loads(line) for line in lines]
    assert len(in_ensemble) == 2  # "cut after two epochs"
    for a, b in zip(in_ensemble, alone):  # "the same 430 batch losses in both epochs they share"
        assert a["batch_losses"] == b["batch_losses"] and len(a["batch_losses"]) == 430
        assert a["train_loss"] == b["train_loss"] and a["val_accuracy"] == b["val_accuracy"]
