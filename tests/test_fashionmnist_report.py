"""fashionmnist/v10-step2's REPORT.md and evaluation plots, on small hand-made records (no training):
the plots are listed in the order the run makes them, every failed check shows its hint, a failure
marked "expected" reads as one (and the summary line keeps it apart from real failures), and the
titles of the most confident mistakes carry the digits that rank them. The exercise's
visualization.py is v10's, byte for byte (test_exercise_find_the_bugs), so this holds there too."""
from __future__ import annotations

import re

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from conftest import REPO_ROOT
from fmnist_helpers import CLASSES, V10, VersionContext, assert_png_has_content

# The order of the pipeline: data, checks before training, training, evaluation.
PIPELINE_ORDER = ["data_samples.png", "class_means.png", "pixel_histogram.png", "human_baseline_samples.png",
                  "input_visualization.png", "overfit_one_batch.png",
                  "training_curves.png", "batch_level_loss.png", "prediction_dynamics.png",
                  "confusion_matrix.png", "train_vs_test_comparison.png", "misclassifications.png"]


@pytest.fixture
def v10():
    """v10's debug_tools and visualization modules."""
    with VersionContext(V10):
        import debug_tools
        import visualization

        yield debug_tools, visualization


def check(debug_tools, name: str, passed: bool, hint: str, **extra) -> dict:
    """A check dict as results.json holds it (CheckResult.to_dict), with `extra` keys set or added."""
    result = debug_tools.CheckResult(name=name, passed=passed, value=0.5, threshold=0.1,
                                     criterion="value | x <= threshold", hint=hint)
    return {**result.to_dict(), **extra}


def results_with(checks: dict, outputs: list[str]) -> dict:
    return {"version": V10, "command": "python train.py", "date": "2026-01-01T00:00:00+00:00", "device": "cpu",
            "torch_version": "2.x", "seed": 42, "wall_time_s": 1.0, "checks_time_s": 0.5, "num_parameters": 429_450,
            "best_epoch": 1, "best_val_accuracy": 0.5, "baselines": {}, "checks": checks, "outputs": outputs,
            "test_metrics": {"accuracy": 0.5, "accuracy_std_error": 0.01, "loss": 1.0, "top3_accuracy": 0.8,
                             "top5_accuracy": 0.9}}


def table_rows(report: str) -> dict[str, list[str]]:
    """The rows of the checks table by check name, split into cells at unescaped |."""
    section = report.split("## Checks", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith(("| check |", "| ---")):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows[cells[0]] = cells
    return rows


def test_plots_are_listed_in_the_order_of_the_pipeline(v10, tmp_path):
    """results["outputs"] is sorted by name; REPORT.md lists the plots phase by phase, and a plot
    it does not know comes after them, sorted."""
    _, visualization = v10
    unknown = ["a_new_plot.png", "zz_extra.png"]
    outputs = sorted(PIPELINE_ORDER + unknown + ["REPORT.md", "results.json", "history.jsonl"])
    visualization.write_report(results_with({}, outputs), tmp_path / "REPORT.md")
    report = (tmp_path / "REPORT.md").read_text()
    shown = re.findall(r"^!\[([^\]]+)\]\(\1\)$", report, re.M)
    assert shown == PIPELINE_ORDER + unknown
    assert shown != sorted(shown)  # the control: alphabetical is not the pipeline's order
    headings = re.findall(r"^### (.+)$", report.split("## Plots", 1)[1], re.M)
    assert headings == ["Data", "Checks before training", "Training", "Evaluation (best model, test set)",
                        "Other plots"]


def test_a_run_without_some_plots_skips_them_and_their_empty_phase(v10, tmp_path):
    _, visualization = v10
    outputs = ["confusion_matrix.png", "data_samples.png", "training_curves.png"]
    visualization.write_report(results_with({}, outputs), tmp_path / "REPORT.md")
    report = (tmp_path / "REPORT.md").read_text()
    assert re.findall(r"^!\[([^\]]+)\]", report, re.M) == ["data_samples.png", "training_curves.png",
                                                            "confusion_matrix.png"]
    assert "### Checks before training" not in report and "### Other plots" not in report


def test_every_plot_v10_writes_has_its_place_in_the_order(v10):
    """Each PNG file name in v10's train.py and debug_tools.py is in the ordering, so a real run
    puts nothing under "Other plots"."""
    _, visualization = v10
    listed = [name for names in visualization.PLOTS_BY_PHASE.values() for name in names]
    assert listed == PIPELINE_ORDER
    written = set()
    for file in ("train.py", "debug_tools.py"):
        written |= set(re.findall(r'"(\w+\.png)"', (REPO_ROOT / V10 / file).read_text()))
    assert written and written <= set(listed), sorted(written - set(listed))


def test_no_fail_row_without_its_hint(v10, tmp_path):
    """Passed, failed, failed as expected (CheckResult.expected, the reason), and failed with the
    key as older records lack it or as a plain flag: each failure's row carries its hint (a | or a
    line break in it does not break the table), an expected one reads "FAIL (expected)" with its
    reason, and the summary line counts the two kinds apart."""
    debug_tools, visualization = v10
    reason = "MyNN overfits by design; step 4 closes the gap"
    checks = {
        "fine": check(debug_tools, "fine", True, "not shown when it passes"),
        "broken": check(debug_tools, "broken", False, "look at |x| first;\nthen at the loss"),
        "gap_by_design": check(debug_tools, "gap_by_design", False, "compare train and test", expected=reason),
        "flagged": check(debug_tools, "flagged", False, "a flagged hint", expected=True),
        "old_record": {key: value for key, value in check(debug_tools, "old_record", False, "an old hint").items()
                       if key != "expected"},
    }
    visualization.write_report(results_with(checks, []), tmp_path / "REPORT.md")
    report = (tmp_path / "REPORT.md").read_text()
    rows = table_rows(report)
    assert list(rows) == list(checks)
    assert all(len(cells) == 6 for cells in rows.values()), rows
    assert [rows[name][1] for name in checks] == ["PASS", "**FAIL**", "FAIL (expected)", "FAIL (expected)",
                                                  "**FAIL**"]
    assert rows["fine"][5] == ""
    assert rows["broken"][5] == "look at \\|x\\| first; then at the loss"
    assert rows["gap_by_design"][5] == f"compare train and test Expected: {reason}"
    assert rows["flagged"][5] == "a flagged hint"
    assert rows["old_record"][5] == "an old hint"
    for name, cells in rows.items():
        if "FAIL" in cells[1]:
            assert cells[5], f"{name}: a FAIL row without its hint"
    assert "\n1/5 passed; **FAILED: broken, old_record**; failed as expected: gap_by_design, flagged\n" in report


def test_summary_line_without_failures_and_with_expected_ones_only(v10, tmp_path):
    debug_tools, visualization = v10
    passing = {"a": check(debug_tools, "a", True, "hint a"), "b": check(debug_tools, "b", True, "hint b")}
    visualization.write_report(results_with(passing, []), tmp_path / "all.md")
    assert "\n2/2 passed\n" in (tmp_path / "all.md").read_text()
    expected_only = {**passing, "gap": check(debug_tools, "gap", False, "a hint", expected="by design")}
    visualization.write_report(results_with(expected_only, []), tmp_path / "expected.md")
    report = (tmp_path / "expected.md").read_text()
    assert "\n2/3 passed; failed as expected: gap\n" in report and "FAILED" not in report


@pytest.mark.parametrize("version", [V10, "fashionmnist/v7", "fashionmnist/v8"])
def test_titles_of_confident_mistakes_rank_them(version, tmp_path, monkeypatch):
    """Whole percent or two decimals show all of these as 100% / 1.00; each title's last line
    (its confidence) tells them apart, in the order of the records."""
    import torch

    probabilities = [1.0, 0.99999994, 0.9999991, 0.9999987, 0.99991, 0.99987, 0.9987, 0.97, 0.1261, 0.1255]
    with VersionContext(version):
        import visualization

        figures = []
        monkeypatch.setattr(visualization, "save_figure", lambda fig, path, **kw: figures.append(fig))
        images = torch.rand(len(probabilities), 1, 28, 28)
        if version == V10:
            mistakes = [{"index": i, "true": 0, "predicted": 1, "confidence": p} for i, p in enumerate(probabilities)]
            visualization.plot_misclassifications(images, mistakes, CLASSES, tmp_path / "misclassifications.png")
        else:
            mistakes = [{"index": i, "label": 0, "predicted": 1, "confidence": p} for i, p in enumerate(probabilities)]
            visualization.plot_confident_mistakes(images, mistakes, CLASSES, tmp_path / "confident_mistakes.png")
    (fig,) = figures
    confidences = [ax.get_title().splitlines()[-1] for ax in fig.axes if ax.get_title()]
    assert len(confidences) == len(probabilities)
    assert len(set(confidences)) == len(confidences), confidences
    assert confidences[0] == "p = 1 (float32)" and confidences[5] == "p = 0.99987" and confidences[8] == "p = 0.1261"
    for p, text in zip(probabilities[1:], confidences[1:]):  # the digits shown are the record's, rounded
        shown = text.removeprefix("p = ")
        assert float(shown) == pytest.approx(p, abs=0.51 * 10 ** -(len(shown) - 2)), (p, text)


def test_train_vs_test_plot_keeps_its_legend_off_the_bars(v10, tmp_path, monkeypatch):
    """Bars that reach 1.0 in both panels: the legend sits above the panels, not in them; both
    panels have a y label; no bar is below the lower end of its axis."""
    _, visualization = v10
    figures = []
    real_save = visualization.save_figure
    monkeypatch.setattr(visualization, "save_figure", lambda fig, path, **kw: (figures.append(fig),
                                                                              real_save(fig, path, **kw)))
    per_class_train = [1.0, 1.0, 0.97, 0.99, 0.96, 1.0, 0.9, 0.99, 1.0, 0.99]
    per_class_test = [0.86, 0.98, 0.88, 0.92, 0.87, 0.98, 0.31, 0.96, 0.98, 0.96]
    train = {"accuracy": 0.98, "top3_accuracy": 1.0, "top5_accuracy": 1.0, "macro_f1": 0.98,
             "per_class_accuracy": per_class_train}
    test = {"accuracy": 0.91, "top3_accuracy": 0.99, "top5_accuracy": 1.0, "macro_f1": 0.42,
            "per_class_accuracy": per_class_test}
    visualization.plot_train_vs_test(train, test, CLASSES, tmp_path / "train_vs_test_comparison.png")
    assert_png_has_content(tmp_path / "train_vs_test_comparison.png")
    (fig,) = figures
    canvas = FigureCanvasAgg(fig)  # the figure is closed: draw it on a canvas of its own
    canvas.draw()
    renderer = canvas.get_renderer()
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    legend_box = fig.legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        assert ax.get_ylabel()
        assert not legend_box.overlaps(ax.get_window_extent(renderer)), ax.get_title()
        low = ax.get_ylim()[0]
        assert all(bar.get_height() > low for bar in ax.patches), ax.get_title()  # 0.42 and 0.31 visible


def test_saturated_mistakes_are_ranked_by_their_logit_gap():
    """float32's softmax gives exactly 1.0 for every logit gap above ~17: among such mistakes the
    gap to the runner-up decides the order, and each record carries it for the title."""
    import torch

    gaps = [30.0, 40.0, 2.0, 25.0, 35.0]  # all but 2.0 saturate to p = 1.0
    logits = torch.zeros(len(gaps), 10)
    for i, gap in enumerate(gaps):
        logits[i, 1] = gap  # predicted class 1, runner-up at 0
    labels = torch.zeros(len(gaps), dtype=torch.long)  # every prediction is wrong

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits[x.flatten().long()]

    with VersionContext(V10):
        import metrics

        loader = [(torch.arange(len(gaps)).float()[:, None], labels)]
        mistakes = metrics.compute_detailed_metrics(Fixed(), loader, "cpu", 10)["most_confident_mistakes"]
    assert [m["confidence"] for m in mistakes[:4]] == [1.0] * 4  # the probability alone cannot rank them
    assert [m["index"] for m in mistakes] == [1, 4, 0, 3, 2]
    assert [m["margin"] for m in mistakes] == pytest.approx([40.0, 35.0, 30.0, 25.0, 2.0])
