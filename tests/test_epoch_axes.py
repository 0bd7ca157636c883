"""Every plot with an epoch axis, in every version of every track (fashionmnist, imagenette, the
exercise), ticks whole epochs only: no "2.5" under a curve with one point per epoch, and a single
epoch gets its one tick instead of 0.96, 0.98, 1.00. The plots are drawn from a written
history.jsonl (and prediction-dynamics records) and their tick labels read before they are saved."""
from __future__ import annotations

import json

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from conftest import REPO_ROOT, load_version

VERSIONS = sorted(str(p.parent.relative_to(REPO_ROOT))
                  for track in ("fashionmnist", "imagenette", "exercises")
                  for p in (REPO_ROOT / track).rglob("visualization.py") if "outputs" not in p.parts)
# The plots with epochs on their x axis, each called with (history_path, out_path).
FROM_HISTORY = ["plot_training_curves", "plot_training_dynamics", "plot_gradient_norms"]


def history(epochs: int) -> list[dict]:
    """One record per epoch with every key any version's plots read."""
    groups = ["stem", "layer1", "head"]
    return [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "test_loss": 1.1 / e,
             "train_accuracy": 1 - 0.3 / e, "val_accuracy": 1 - 0.35 / e, "test_accuracy": 1 - 0.35 / e,
             "learning_rate": 0.1 / e, "learning_rate_max": 0.1, "grad_norm": 1 / e,
             "grad_norm_per_group": {g: (i + 1) / e for i, g in enumerate(groups)},
             "update_ratio_per_group": {g: 1e-3 * (i + 1) / e for i, g in enumerate(groups)}, "batch_losses": [1.0]}
            for e in range(1, epochs + 1)]


def epoch_tick_labels(figures) -> list[list[str]]:
    """The visible tick labels of every axes whose x label names epochs."""
    labels = []
    for fig in figures:
        FigureCanvasAgg(fig).draw()  # closed by the plot function: draw it on a canvas of its own
        for ax in fig.axes:
            if ax.get_xlabel().startswith("epoch"):
                low, high = sorted(ax.get_xlim())
                labels.append([label.get_text() for tick, label in zip(ax.get_xticks(), ax.get_xticklabels())
                               if low <= tick <= high])
    return labels


def is_whole(text: str) -> bool:
    return text.replace("\u2212", "-").lstrip("-").isdigit()


@pytest.mark.parametrize("epochs", [1, 5, 30])
@pytest.mark.parametrize("version", VERSIONS)
def test_epoch_axes_tick_whole_epochs(version, epochs, tmp_path, monkeypatch):
    visualization = load_version(version, "visualization")
    figures = []
    monkeypatch.setattr(visualization, "save_figure", lambda fig, path, **kw: figures.append(fig))
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps(h) + "\n" for h in history(epochs)))
    drawn = [name for name in FROM_HISTORY if hasattr(visualization, name)]
    for name in drawn:
        getattr(visualization, name)(path, tmp_path / f"{name}.png")
    if hasattr(visualization, "plot_prediction_dynamics"):  # epoch 0 = before training
        records = [{"epoch": e, "true_class_confidence": [0.1 + 0.02 * e] * 4, "predicted": [0, 1, 2, e % 4]}
                   for e in range(epochs + 1)]
        visualization.plot_prediction_dynamics({"records": records, "labels": [0, 1, 2, 3]},
                                               tmp_path / "prediction_dynamics.png")
        drawn.append("plot_prediction_dynamics")
    assert "plot_training_curves" in drawn
    labels = epoch_tick_labels(figures)
    assert len(labels) >= 2 * len(drawn) - drawn.count("plot_gradient_norms"), (drawn, labels)
    for axis in labels:
        assert axis and all(is_whole(text) for text in axis), f"{version}, {epochs} epochs: ticks {axis}"
