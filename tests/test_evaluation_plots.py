"""Evaluation figures are real PNG files, written atomically, with no figure left open."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from ai_core.errors import EvaluationError
from lab.evaluation.metrics import Interval, roc_curve_points
from lab.evaluation.plots import plot_metric_intervals, plot_roc, plot_training_curve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def no_open_figures() -> Iterator[None]:
    assert plt.get_fignums() == []
    yield
    assert plt.get_fignums() == []


def _assert_png(path: Path, written: Path) -> None:
    assert written == path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left


def test_plot_roc(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    score = rng.normal(size=120) + y
    curves = {
        "model": roc_curve_points(y, score),
        "clinical": roc_curve_points(y, score + rng.normal(size=120)),
    }
    path = tmp_path / "figures" / "roc.png"
    _assert_png(path, plot_roc(curves, path, title="Test set", reference_auc=0.84))


def test_plot_roc_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "roc.png"
    path.write_bytes(b"old")
    curve = (np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.8, 1.0]))
    _assert_png(path, plot_roc({"model": curve}, path, title="t"))


@pytest.mark.parametrize(
    ("curves", "match"),
    [
        pytest.param({}, "at least one curve", id="empty"),
        pytest.param(
            {"m": (np.array([0.0, 1.0]), np.array([0.0, 0.5, 1.0]))}, "same length", id="lengths"
        ),
    ],
)
def test_plot_roc_rejects_bad_curves(
    tmp_path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], match: str
) -> None:
    with pytest.raises(EvaluationError, match=match):
        plot_roc(curves, tmp_path / "roc.png", title="t")
    assert list(tmp_path.iterdir()) == []


def test_plot_training_curve(tmp_path: Path) -> None:
    history: list[dict[str, float]] = [
        {
            "epoch": e,
            "train_loss": 1 / (e + 1),
            "val_loss": 1.2 / (e + 1) + 0.01 * e,
            "val_auc": 0.6 + 0.02 * e - 0.001 * e * e,
        }
        for e in range(20)
    ]
    history[2]["val_auc"] = math.nan
    del history[3]["val_loss"]
    path = tmp_path / "training.png"
    _assert_png(path, plot_training_curve(history, path, title="fold 1"))


def test_plot_training_curve_without_validation(tmp_path: Path) -> None:
    path = tmp_path / "training.png"
    history = [{"epoch": 1.0, "train_loss": 0.7}, {"epoch": 2.0, "train_loss": 0.5}]
    _assert_png(path, plot_training_curve(history, path, title="no validation"))


def test_plot_training_curve_rejects_bad_history(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="at least one epoch"):
        plot_training_curve([], tmp_path / "t.png", title="t")
    with pytest.raises(EvaluationError, match="lack 'epoch' or 'train_loss'"):
        plot_training_curve([{"epoch": 1.0}], tmp_path / "t.png", title="t")


def test_plot_metric_intervals(tmp_path: Path) -> None:
    rows = {
        "T1C": Interval(0.81, 0.77, 0.85, 50),
        "T1C + T2": Interval(0.84, 0.80, 0.88, 50),
        "clinical": Interval(0.70, 0.60, 0.79, 50),
        "MCC (may be negative)": Interval(0.1, -0.2, 0.4, 50),
        "undefined": Interval(math.nan, math.nan, math.nan, 0),
    }
    path = tmp_path / "table2.png"
    _assert_png(path, plot_metric_intervals(rows, path, title="Table 2", metric="AUC"))


def test_plot_metric_intervals_rejects_no_rows(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="at least one row"):
        plot_metric_intervals({}, tmp_path / "t.png", title="t")
