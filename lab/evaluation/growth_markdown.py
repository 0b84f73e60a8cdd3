"""``report.md`` and the figures of ``ki67node growth-analysis``, from the analysis' results.

:mod:`lab.evaluation.growth_report` runs the analysis and writes the files;
this module turns the results into the report's sections (each number next
to the paper's value) and draws the PNGs with :mod:`lab.evaluation.survival_plots`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lab.evaluation import survival as sv
from lab.evaluation.survival_plots import plot_decision_curve, plot_km, plot_km_panels
from lab.evaluation.survival_report import PAPER, PAPER_SOURCE, PROBABILITY, RISK


def report_lines(results: dict[str, Any], figures: dict[str, Path], synthetic: bool) -> list[str]:
    """The lines of ``report.md``: summary next to the paper, Kaplan-Meier, Cox, AUCs."""
    return [
        *_summary_lines(results, synthetic),
        *_km_lines(results),
        *_cox_lines(results),
        *_auc_lines(results, figures),
    ]


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


def _curves(block: dict[str, Any]) -> dict[str, tuple[sv.KMCurve, list[int]]]:
    return {g: (k, block["at_risk"][g]) for g, k in block["curves"].items()}


def _note(block: dict[str, Any]) -> str:
    return f"log-rank p {_p(block['logrank'].p_value)}"


def draw_figures(results: dict[str, Any], out_dir: Path, synthetic: bool) -> dict[str, Path]:
    """The Kaplan-Meier PNGs (risk groups; skull-base subgroups when present) and the decision curve."""
    km = results["km_risk"]
    figures = {
        "km": plot_km(
            _curves(km),
            out_dir / "km_risk_groups.png",
            note=_note(km),
            title="Growth-free survival by model risk group",
            synthetic=synthetic,
        )
    }
    if "km_subgroups" in results:
        panels = {
            f"{n} (n={sum(b['curves'][g].n for g in b['curves'])})": (_curves(b), _note(b))
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
    return figures


def _summary_lines(results: dict[str, Any], synthetic: bool) -> list[str]:
    """The title, the cohort, and the table next to the paper."""
    km = results["km_risk"]
    model_auc = results["time_auc"]["model probability (Output 1)"]
    multi = results["cox_multivariate"]
    risk_row = next(
        (r for r in (multi.rows if multi else []) if r.covariate in (RISK, PROBABILITY)), None
    )
    inc = results["incidence"]
    return [
        "# Growth analysis: time to tumour growth (≥ 15 % volume) after the baseline MR",
        "",
        "**Research use only, not for diagnostic use.**"
        + (" Synthetic cohort (ki67node synth): no real patient." if synthetic else ""),
        "",
        "- Manifests: " + ", ".join(f"`{m}`" for m in results["manifests"]),
        f"- Model: {results['model']}; risk group high when Output 1 ≥ {results['threshold']:.3f} "
        f"({results['threshold_source']})",
        f"- Tumour masks: {results['masks']}",
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
    ]


def _km_lines(results: dict[str, Any]) -> list[str]:
    """Kaplan-Meier by risk group, the median split, the true label, the subgroups."""
    km = results["km_risk"]
    lines = [
        "## Kaplan–Meier by model risk group",
        "",
        "| group | patients | growth | incidence 3 y | incidence 5 y |",
        "| --- | --- | --- | --- | --- |",
    ]
    for g, k in km["curves"].items():
        lines.append(f"| {g} | {k.n} | {k.events} | {k.incidence(3):.1%} | {k.incidence(5):.1%} |")
    med = results["km_median_split"]
    lines += [
        "",
        f"{_note(km).capitalize()}. {km['logrank'].reason}",
        "",
        "![KM](km_risk_groups.png)",
        "",
        "Sensitivity (not the study's grouping): split at this cohort's median Output 1 "
        f"({med['cut']:.3f}): {_note(med)}; 3-year incidence "
        + ", ".join(f"{g} {v['3y']:.1%}" for g, v in med["incidence"].items()),
        "",
    ]
    cut = results.get("youden_cut")
    if cut is not None:
        lines += [
            f"The threshold this cohort would choose (Youden's J for growth by {cut.years:g} "
            f"years, {cut.cases} cases, {cut.controls} controls): Output 1 ≥ "
            f"{cut.threshold:.3f}, J {cut.j:.3f}, sensitivity {cut.sensitivity:.1%}, "
            f"specificity {cut.specificity:.1%}, {cut.share_high:.1%} of patients high "
            "(`growth_risk.json`; chosen on this cohort, so optimistic here: "
            "`--adopt-risk-threshold` writes it into the model bundle, to be judged on "
            "another cohort).",
            "",
        ]
    ki67 = results.get("ki67_auc")
    if ki67 is not None:
        bayes = (
            f"; the generator's Bayes AUC {ki67['bayes_auc']:.3f}" if "bayes_auc" in ki67 else ""
        )
        lines += [
            f"Ki-67 ≥ 5 % where known ({ki67['n']} patients, {ki67['positives']} high): "
            f"Output 1 AUC {ki67['auc']:.3f} ({ki67['low']:.3f}–{ki67['high']:.3f}){bayes}.",
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
            lines.append(f"- {name}: {_note(b)} {b['logrank'].reason}")
        lines += ["", "![KM subgroups](km_skull_base.png)", ""]
    return lines


def _cox_lines(results: dict[str, Any]) -> list[str]:
    multi = results["cox_multivariate"]
    lines = [
        "## Cox proportional hazards",
        "",
        "Univariate:",
        "",
        *_cox_table(results["cox_univariate"]),
        "",
    ]
    if multi is not None:
        if multi.ph_global_ok:
            ph = "not rejected for any covariate (all p ≥ 0.05)"
        elif multi.ph_global_ok is False:
            ph = "rejected for at least one covariate (p < 0.05): read its HR as an average effect"
        else:
            ph = "not available"
        lines += [
            "Multivariate:",
            "",
            *_cox_table({"m": multi}),
            "",
            f"Concordance {multi.concordance:.3f}; proportional hazards (Schoenfeld residuals, "
            f"rank time): {ph}.",
            "",
        ]
    return lines + [f"- {n}" for n in results["cox_notes"]] + [""]


def _auc_lines(results: dict[str, Any], figures: dict[str, Path]) -> list[str]:
    """Time-dependent AUCs and the decision curve."""
    model_auc = results["time_auc"]["model probability (Output 1)"]
    dc = results["decision_curve"]
    lines = [
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
    return lines
