"""Figures of an evaluation: ROC curves, training curves, metric intervals.

Each function draws one PNG (150 dpi) with the "research use only" footer and
writes it atomically (a temporary file in the target folder, then a rename),
so a reader never sees half a figure. Figures are built with matplotlib's
object API on an Agg canvas chosen here: pyplot's global figure list and the
process-wide backend are left untouched, so nothing stays open.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ai_core.errors import EvaluationError
from lab.evaluation.metrics import Interval

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 150
FOOTER = "Research use only — not for diagnostic use"


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.text(0.99, 0.005, FOOTER, ha="right", va="bottom", fontsize=6, color="0.4")
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            fig.savefig(out, format="png", dpi=DPI)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.trapezoid(tpr, fpr))


def plot_roc(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    *,
    title: str,
    reference_auc: float | None = None,
    reference_label: str = "Bayes-optimal",
) -> Path:
    """One ROC curve per name (``(fpr, tpr)`` as from ``roc_curve_points``), legend "name (AUC 0.81)".

    ``reference_auc`` (e.g. the Bayes-optimal AUC of a synthetic cohort) is
    written in the legend as an entry without a line.
    """
    if not curves:
        raise EvaluationError("plot_roc needs at least one curve")
    checked: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, (fpr, tpr) in curves.items():
        f, t = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
        if f.ndim != 1 or f.shape != t.shape or f.size < 2:
            raise EvaluationError(
                f"plot_roc: curve {name!r} needs 1-D fpr and tpr of the same length >= 2, "
                f"got {f.shape} and {t.shape}"
            )
        checked[name] = (f, t)
    fig = _new_figure(5.0, 5.3)
    ax = fig.add_subplot()
    for name, (f, t) in checked.items():
        ax.plot(f, t, lw=1.6, label=f"{name} (AUC {_auc(f, t):.2f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6", label="chance")
    if reference_auc is not None:
        ax.plot([], [], " ", label=f"{reference_label}: AUC {reference_auc:.2f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("1 − specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (true-positive rate)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return _save(fig, path)


def _column(history: Sequence[Mapping[str, float]], key: str) -> np.ndarray:
    return np.array([float(row.get(key, math.nan)) for row in history], dtype=np.float64)


def plot_training_curve(history: Sequence[Mapping[str, float]], path: Path, *, title: str) -> Path:
    """Losses (left) and validation AUC with the best epoch marked (right), per epoch.

    Rows need ``epoch`` and ``train_loss``; ``val_loss`` and ``val_auc`` may
    be missing or NaN (those points are not drawn).
    """
    if len(history) == 0:
        raise EvaluationError("plot_training_curve needs at least one epoch in history")
    absent = [i for i, row in enumerate(history) if "epoch" not in row or "train_loss" not in row]
    if absent:
        raise EvaluationError(
            f"plot_training_curve: rows {absent[:5]} lack 'epoch' or 'train_loss'"
        )
    epoch = _column(history, "epoch")
    fig = _new_figure(9.0, 3.8)
    losses, aucs = fig.subplots(1, 2)
    for key, style in (("train_loss", "-"), ("val_loss", "--")):
        values = _column(history, key)
        ok = np.isfinite(values)
        if ok.any():
            losses.plot(epoch[ok], values[ok], style, marker=".", label=key.replace("_", " "))
    losses.set_xlabel("epoch")
    losses.set_ylabel("loss")
    losses.set_title("loss")
    losses.grid(alpha=0.3)
    losses.legend(fontsize=8)
    auc = _column(history, "val_auc")
    ok = np.isfinite(auc)
    if ok.any():
        aucs.plot(epoch[ok], auc[ok], marker=".", color="C2", label="validation AUC")
        best = int(np.flatnonzero(ok)[np.argmax(auc[ok])])  # first epoch with the highest AUC
        aucs.axvline(epoch[best], color="0.5", ls=":", lw=1)
        aucs.plot(
            [epoch[best]],
            [auc[best]],
            marker="*",
            ms=12,
            color="C3",
            ls="none",
            label=f"best: epoch {epoch[best]:g} (AUC {auc[best]:.3f})",
        )
        aucs.legend(fontsize=8, loc="lower right")
    else:
        aucs.text(0.5, 0.5, "no validation AUC", ha="center", va="center", transform=aucs.transAxes)
    aucs.set_ylim(0, 1)
    aucs.set_xlabel("epoch")
    aucs.set_ylabel("AUC")
    aucs.set_title("validation AUC")
    aucs.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return _save(fig, path)


def plot_metric_intervals(
    rows: Mapping[str, Interval], path: Path, *, title: str, metric: str = "AUC"
) -> Path:
    """One horizontal error bar (mean with its interval) per row, first row on top.

    Rows whose interval is undefined (NaN) are listed with "n/a".
    """
    if not rows:
        raise EvaluationError("plot_metric_intervals needs at least one row")
    names = list(rows)
    ivs = [rows[n] for n in names]
    ypos = np.arange(len(names))[::-1].astype(np.float64)
    fig = _new_figure(6.5, 1.2 + 0.45 * len(names))
    ax = fig.add_subplot()
    finite = [
        (y, iv)
        for y, iv in zip(ypos, ivs, strict=True)
        if all(math.isfinite(v) for v in (iv.mean, iv.low, iv.high))
    ]
    if finite:
        ys = np.array([y for y, _ in finite])
        means = np.array([iv.mean for _, iv in finite])
        err = np.array(
            [[iv.mean - iv.low for _, iv in finite], [iv.high - iv.mean for _, iv in finite]]
        )
        ax.errorbar(means, ys, xerr=np.clip(err, 0, None), fmt="o", color="C0", capsize=4, lw=1.4)
        lo = min(0.0, min(iv.low for _, iv in finite))
        hi = max(1.0, max(iv.high for _, iv in finite))
    else:
        lo, hi = 0.0, 1.0
    ax.set_xlim(lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo))
    for y, iv in zip(ypos, ivs, strict=True):
        label = str(iv) if math.isfinite(iv.mean) else "n/a"
        # x in axes coordinates: the numbers sit just right of the plot area
        ax.text(1.02, y, label, va="center", fontsize=8, transform=ax.get_yaxis_transform())
    ax.set_yticks(ypos, names)
    ax.set_ylim(-0.7, len(names) - 0.3)
    ax.set_xlabel(metric)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(fig, path)
