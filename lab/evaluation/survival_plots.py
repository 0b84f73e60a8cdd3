"""The growth analysis's figures.

Kaplan-Meier curves with the at-risk table, subgroup panels and the decision
curve; same conventions as :mod:`lab.evaluation.plots` (Agg canvas,
150 dpi, atomic write), with a footer that says "research use only -
synthetic data" when the cohort comes from ``ki67node synth``.
:mod:`lab.evaluation.growth_report` puts them in the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lab.evaluation.decision_curve import DecisionCurve
from lab.evaluation.plots import DPI, _save
from lab.evaluation.survival import KMCurve

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLOURS = {"high": "#c0392b", "low": "#2471a3"}
KM_TICKS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)
_CYCLE = ("#2471a3", "#c0392b", "#1e8449", "#7d3c98", "#b9770e")


def footer_text(synthetic: bool) -> str:
    """The line under every figure."""
    if synthetic:
        return "research use only - synthetic data (ki67node synth) - not for diagnostic use"
    return "research use only - not for diagnostic use"


def _figure(width: float, height: float, synthetic: bool) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.text(0.99, 0.005, footer_text(synthetic), ha="right", va="bottom", fontsize=6, color="0.3")
    return fig


def _colour(label: str, i: int) -> str:
    for key, c in COLOURS.items():
        if label.lower().startswith(key):
            return c
    return _CYCLE[i % len(_CYCLE)]


def _km_axes(
    ax: Axes,
    table: Axes,
    curves: Mapping[str, tuple[KMCurve, Sequence[int]]],
    ticks: Sequence[float],
    note: str,
) -> None:
    for i, (label, (curve, _)) in enumerate(curves.items()):
        c = _colour(label, i)
        ax.step(curve.times, curve.survival, where="post", color=c, lw=1.6, label=label)
        ax.fill_between(curve.times, curve.lower, curve.upper, step="post", color=c, alpha=0.12)
    ax.set_xlim(0, max(ticks))
    ax.set_ylim(0, 1.02)
    ax.set_xticks(list(ticks))
    ax.set_ylabel("growth-free probability")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7, title=note, title_fontsize=7)
    table.set_xlim(ax.get_xlim())
    table.set_ylim(-0.5, len(curves) - 0.5)
    table.set_xticks(list(ticks))
    table.set_yticks(range(len(curves)))
    table.set_yticklabels([name.split(" (")[0] for name in curves][::-1], fontsize=7)
    table.tick_params(axis="y", length=0, pad=14)
    for spine in table.spines.values():
        spine.set_visible(False)
    for row, (_, (_, counts)) in enumerate(list(curves.items())[::-1]):
        for tick, count in zip(ticks, counts, strict=True):
            table.text(tick, row, str(count), ha="center", va="center", fontsize=7)
    table.set_xlabel("years since baseline MR", fontsize=8)
    table.tick_params(axis="x", labelsize=7)
    table.set_title("number at risk", fontsize=7, loc="left")


def plot_km(
    curves: Mapping[str, tuple[KMCurve, Sequence[int]]],
    path: Path,
    *,
    title: str,
    note: str,
    synthetic: bool,
    ticks: Sequence[float] = KM_TICKS,
) -> Path:
    """Kaplan-Meier curves (label -> (curve, patients at risk at each tick)) with the at-risk table."""
    fig = _figure(6.4, 5.2, synthetic)
    ax = fig.add_axes((0.15, 0.40, 0.8, 0.52))
    table = fig.add_axes((0.15, 0.12, 0.8, 0.16))
    _km_axes(ax, table, curves, ticks, note)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_km_panels(
    panels: Mapping[str, tuple[Mapping[str, tuple[KMCurve, Sequence[int]]], str]],
    path: Path,
    *,
    synthetic: bool,
    ticks: Sequence[float] = KM_TICKS,
) -> Path:
    """Side-by-side Kaplan-Meier panels (panel title -> (curves, note)), e.g. subgroups."""
    fig = _figure(5.2 * len(panels), 5.2, synthetic)
    width = 0.86 / len(panels)
    for k, (name, (curves, note)) in enumerate(panels.items()):
        left = 0.1 / len(panels) + k * (width + 0.04 / len(panels)) + 0.04
        ax = fig.add_axes((left, 0.40, width - 0.06, 0.52))
        table = fig.add_axes((left, 0.12, width - 0.06, 0.16))
        if curves:
            _km_axes(ax, table, curves, ticks, note)
        else:
            ax.text(0.5, 0.5, "no patients", ha="center", transform=ax.transAxes)
        ax.set_title(name, fontsize=10)
    return _save(fig, path)


def plot_decision_curve(curve: DecisionCurve, path: Path, *, title: str, synthetic: bool) -> Path:
    """Net benefit against threshold probability for each risk and the two defaults."""
    fig = _figure(6.4, 4.6, synthetic)
    ax = fig.add_axes((0.13, 0.14, 0.82, 0.76))
    values: list[float] = []
    for i, (name, nb) in enumerate(curve.net_benefit.items()):
        style: dict[str, Any] = {"lw": 1.6, "color": _CYCLE[i % len(_CYCLE)]}
        if name == "treat all":
            style = {"lw": 1.0, "color": "0.45", "ls": "--"}
        elif name == "treat none":
            style = {"lw": 1.0, "color": "0.1", "ls": ":"}
        ax.plot(curve.thresholds, nb, label=name, **style)
        values.extend(v for v in nb if np.isfinite(v))
    top = max([*values, 0.01])
    ax.set_ylim(-0.05 * top - 0.01, top * 1.15)
    ax.set_xlim(min(curve.thresholds), max(curve.thresholds))
    ax.set_xlabel(f"threshold probability of growth by {curve.years:g} years")
    ax.set_ylabel("net benefit")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
