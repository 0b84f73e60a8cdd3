"""What the growth analysis writes: figures, ``report.md`` and ``results.json``.

Figures: Kaplan-Meier curves with the at-risk table, subgroup panels and the
decision curve; same conventions as :mod:`ai_core.evaluation.plots` (Agg
canvas, 150 dpi, atomic write), with a footer that says "research use only -
synthetic data" when the cohort comes from ``ki67node synth``. The report puts
the paper's value next to each number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ai_core.evaluation import survival as sv
from ai_core.evaluation.plots import DPI, _save
from ai_core.evaluation.survival import DecisionCurve, KMCurve

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ai_core.evaluation.survival_report import GrowthCohort

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


def to_json(value: Any) -> Any:
    """Results (dataclasses, numpy) as JSON-safe values; NaN becomes null."""
    if hasattr(value, "__dataclass_fields__"):
        return to_json(asdict(value))
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dump_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(to_json(value), indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _num(v: float) -> str:
    return f"{v:.3f}" if math.isfinite(v) else "n/a"


def _p(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"


def _hr(r: sv.CoxRow | None) -> str:
    return "n/a" if r is None else f"{r.hr:.3f} ({r.low:.3f}–{r.high:.3f}), p {_p(r.p_value)}"


def _auc(a: sv.TimeAUC) -> str:
    if a.auc is None:
        return f"n/a ({a.reason})"
    ci = "" if a.low is None else f" ({a.low:.3f}–{a.high:.3f})"
    return f"{a.auc:.3f}{ci}"


def _cox_table(fits: dict[str, sv.CoxFit]) -> list[str]:
    lines = ["| covariate | HR (95 % CI), p | PH test p (Schoenfeld) |", "| --- | --- | --- |"]
    for fit in fits.values():
        for r in fit.rows:
            lines.append(f"| {r.covariate} | {_hr(r)} | {_p(r.ph_p_value)} |")
    return lines


def write_growth_report(
    results: dict[str, Any], cohort: GrowthCohort, out_dir: Path, *, synthetic: bool
) -> Path:
    """report.md, results.json and the PNGs in ``out_dir``; returns report.md."""
    from ai_core.evaluation.survival_report import PAPER, PAPER_SOURCE, PROBABILITY, RISK

    out_dir.mkdir(parents=True, exist_ok=True)
    km = results["km_risk"]

    def curves(block: dict[str, Any]) -> dict[str, tuple[sv.KMCurve, list[int]]]:
        return {g: (k, block["at_risk"][g]) for g, k in block["curves"].items()}

    def note(block: dict[str, Any]) -> str:
        return f"log-rank p {_p(block['logrank'].p_value)}"

    figures = {
        "km": plot_km(
            curves(km),
            out_dir / "km_risk_groups.png",
            note=note(km),
            title="Growth-free survival by model risk group",
            synthetic=synthetic,
        )
    }
    if "km_subgroups" in results:
        panels = {
            f"{n} (n={sum(b['curves'][g].n for g in b['curves'])})": (curves(b), note(b))
            for n, b in results["km_subgroups"].items()
        }
        figures["km_subgroups"] = plot_km_panels(
            panels, out_dir / "km_skull_base.png", synthetic=synthetic
        )
    dc = results["decision_curve"]
    figures["decision_curve"] = plot_decision_curve(
        dc,
        out_dir / f"decision_curve_{dc.years:g}y.png",
        synthetic=synthetic,
        title=f"Decision curve, growth by {dc.years:g} years",
    )
    model_auc = results["time_auc"]["model probability (Output 1)"]
    multi = results["cox_multivariate"]
    risk_row = next(
        (r for r in (multi.rows if multi else []) if r.covariate in (RISK, PROBABILITY)), None
    )
    inc = results["incidence"]
    lines = [
        "# Growth analysis: time to tumour growth (≥ 15 % volume) after the baseline MR",
        "",
        "**Research use only, not for diagnostic use.**"
        + (" Synthetic cohort (ki67node synth): no real patient." if synthetic else ""),
        "",
        "- Manifests: " + ", ".join(f"`{m}`" for m in results["manifests"]),
        f"- Model: {results['model']}; risk group high when Output 1 ≥ {results['threshold']:.3f} "
        "(the bundle's threshold)",
        f"- Patients analysed: {results['n']} ({results['events']} with growth); "
        f"risk groups: " + ", ".join(f"{g}: {n}" for g, n in results["risk_groups"].items()),
        f"- Not assessable (left out): {len(results['not_assessable'])}",
        f"- Run time {results['seconds'] / 60:.1f} min.",
        "",
        f"## This cohort next to the source study ({PAPER_SOURCE})",
        "",
        "| quantity | this cohort | paper's value |",
        "| --- | --- | --- |",
        f"| 3-year time-dependent AUC of the model | {_auc(model_auc[0])} | paper: {PAPER['auc_3y']} |",
        f"| 5-year time-dependent AUC of the model | {_auc(model_auc[1])} | paper: {PAPER['auc_5y']} |",
        f"| Kaplan–Meier log-rank p, risk groups | {_p(km['logrank'].p_value)} | paper: p {PAPER['logrank_p']} |",
        f"| Multivariate Cox HR, {risk_row.covariate if risk_row else RISK} | {_hr(risk_row)} "
        f"| paper: HR {PAPER['cox_hr']} |",
        f"| Cumulative incidence of growth, 3 / 5 years | {inc['3y']:.1%} / {inc['5y']:.1%} "
        "| paper: 22.5 % / 33.8 % |",
        "",
        "## Kaplan–Meier by model risk group",
        "",
        "| group | patients | growth | incidence 3 y | incidence 5 y |",
        "| --- | --- | --- | --- | --- |",
    ]
    for g, k in km["curves"].items():
        lines.append(f"| {g} | {k.n} | {k.events} | {k.incidence(3):.1%} | {k.incidence(5):.1%} |")
    lines += [
        "",
        f"{note(km).capitalize()}. {km['logrank'].reason}",
        "",
        "![KM](km_risk_groups.png)",
        "",
    ]
    med = results["km_median_split"]
    lines += [
        "Sensitivity (not the study's grouping): split at this cohort's median Output 1 "
        f"({med['cut']:.3f}): {note(med)}; 3-year incidence "
        + ", ".join(f"{g} {v['3y']:.1%}" for g, v in med["incidence"].items()),
        "",
    ]
    if "km_true_label" in results:
        t = results["km_true_label"]["logrank"]
        lines += [
            f"Reference (synthetic truth): the true Ki-67 label separates growth with "
            f"log-rank p {_p(t.p_value)}.",
            "",
        ]
    if "km_subgroups" in results:
        lines += ["## Subgroups: skull base vs not", ""]
        for name, b in results["km_subgroups"].items():
            lines.append(f"- {name}: {note(b)} {b['logrank'].reason}")
        lines += ["", "![KM subgroups](km_skull_base.png)", ""]
    lines += [
        "## Cox proportional hazards",
        "",
        "Univariate:",
        "",
        *_cox_table(results["cox_univariate"]),
        "",
    ]
    if multi is not None:
        ph = (
            "not rejected for any covariate (all p ≥ 0.05)"
            if multi.ph_global_ok
            else (
                "rejected for at least one covariate (p < 0.05): read its HR as an average effect"
                if multi.ph_global_ok is False
                else "not available"
            )
        )
        lines += [
            "Multivariate:",
            "",
            *_cox_table({"m": multi}),
            "",
            f"Concordance {multi.concordance:.3f}; proportional hazards (Schoenfeld residuals, "
            f"rank time): {ph}.",
            "",
        ]
    lines += [f"- {n}" for n in results["cox_notes"]] + [
        "",
        "## Time-dependent AUC (cumulative/dynamic, IPCW)",
        "",
        "| score | " + " | ".join(f"{a.years:g} years" for a in model_auc) + " |",
        "| --- |" + " --- |" * len(model_auc),
    ]
    for name, aucs in results["time_auc"].items():
        lines.append(f"| {name} | " + " | ".join(_auc(a) for a in aucs) + " |")
    lines += [
        f"| paper's value | {PAPER['auc_3y']} | {PAPER['auc_5y']} |",
        "",
        "Cases: growth by the time point; controls: followed beyond it without growth; "
        "95 % intervals from bootstrap resamples.",
        "",
        f"## Decision curve at {dc.years:g} years",
        "",
        f"![decision curve]({figures['decision_curve'].name})",
        "",
        "| threshold | " + " | ".join(dc.net_benefit) + " |",
        "| --- |" + " --- |" * len(dc.net_benefit),
    ]
    for th in (0.1, 0.2, 0.3, 0.4):
        if th in dc.thresholds:
            i = dc.thresholds.index(th)
            lines.append(
                f"| {th:.0%} | " + " | ".join(_num(v[i]) for v in dc.net_benefit.values()) + " |"
            )
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    dump_json(
        out_dir / "results.json",
        {
            **results,
            "paper": PAPER,
            "synthetic": synthetic,
            "figures": {k: v.name for k, v in figures.items()},
            "footer": footer_text(synthetic),
        },
    )
    return report
