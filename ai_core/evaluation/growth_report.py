"""``ki67node growth-analysis``: score the baselines, analyse, write ``report.md``.

:mod:`ai_core.evaluation.survival_report` reads the growth manifest and
computes every statistic; :mod:`ai_core.evaluation.survival_plots` draws the
figures. This module runs the bundle's network on every baseline, hands the
cohort to :func:`~ai_core.evaluation.survival_report.analyse` and writes
``report.md``, ``results.json`` and the PNGs, with the paper's value next to
each number (docs/growth-analysis.md).
"""

from __future__ import annotations

import json
import math
import time as clock
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from ai_core.errors import EvaluationError
from ai_core.evaluation import survival as sv
from ai_core.evaluation.survival_plots import (
    footer_text,
    plot_decision_curve,
    plot_km,
    plot_km_panels,
)
from ai_core.evaluation.survival_report import (
    PAPER,
    PAPER_SOURCE,
    PROBABILITY,
    RISK,
    GrowthCase,
    GrowthCohort,
    analyse,
    read_growth_manifest,
)
from ai_core.model.bundle import load_bundle
from ai_core.model.data import build_table
from ai_core.model.feature_cache import FeatureParams, extract_features
from ai_core.model.fit import is_synthetic
from ai_core.model.train import predict_table


def run_growth_analysis(
    manifests: Sequence[Path],
    bundle_dir: Path | None,
    out_dir: Path,
    *,
    cache_dir: Path | None = None,
    workers: int = 1,
    progress: bool = True,
    device: str = "cpu",
    bootstrap: int = 200,
    seed: int = 0,
    segment: bool = False,
    segmentation_model: Path | None = None,
) -> tuple[dict[str, Any], Path]:
    """Predict on every baseline, analyse, write the report; returns (results, report.md).

    ``segment``: the manifest's masks are ignored and the node's segmentation
    (the bundled weights, or ``segmentation_model``) outlines every baseline
    as it would in the clinic; a baseline it abstains on is not assessable.
    """
    start = clock.perf_counter()
    bundle = load_bundle(bundle_dir)
    rows: list[GrowthCase] = []
    for m in manifests:
        rows.extend(read_growth_manifest(Path(m)))
    ids = [r.case.case_id for r in rows]
    if len(set(ids)) != len(ids):
        raise EvaluationError("a case_id appears in more than one growth manifest")
    if segment:
        rows = [replace(r, case=replace(r.case, mask=None)) for r in rows]
    params = FeatureParams(
        bundle.preprocess,
        bundle.crop,
        bundle.radiomics_params,
        segmentation_model=segmentation_model if segment else None,
    )
    features = extract_features(
        [r.case for r in rows],
        params,
        cache_dir or out_dir / "cache",
        workers=workers,
        progress=progress,
        device=device,
    )
    table = build_table([r.case for r in rows], features)
    probs = predict_table(bundle.build_model(device), table, bundle.standardiser, device=device)
    by_id = {r.case.case_id: r for r in rows}
    used = [by_id[i] for i in table.case_ids]

    def col(get: Any) -> np.ndarray:
        return np.array([np.nan if (v := get(r)) is None else float(v) for r in used])

    cohort = GrowthCohort(
        case_ids=list(table.case_ids),
        time=col(lambda r: r.time_years),
        event=col(lambda r: r.event).astype(bool),
        probability=np.asarray(probs["output1"], dtype=float),
        threshold=bundle.risk_threshold,
        volume_cm3=np.asarray(table.volume_cm3, dtype=float),
        age=col(lambda r: r.case.clinical.get("age")),
        sex_female=col(lambda r: r.case.clinical.get("sex_female")),
        skull_base=col(lambda r: r.skull_base),
        label=col(lambda r: r.case.label if r.label_known else None),
        bayes=col(lambda r: r.case.bayes_probability),
    )
    results = analyse(cohort, bootstrap=bootstrap, seed=seed)
    results["not_assessable"] = dict(table.not_assessable)
    results["seconds"] = round(clock.perf_counter() - start, 1)
    results["model"] = bundle.describe()
    results["threshold"] = cohort.threshold
    results["threshold_source"] = _threshold_source(bundle.growth_risk)
    results["masks"] = (
        f"segmented by {segmentation_model or 'the bundled segmentation weights'}"
        if segment
        else "the manifest's masks"
    )
    results["manifests"] = [str(m) for m in manifests]
    synthetic = is_synthetic([Path(m) for m in manifests])
    report = write_growth_report(results, cohort, Path(out_dir), synthetic=synthetic)
    return results, report


def _threshold_source(growth_risk: dict[str, Any]) -> str:
    if not growth_risk:
        return "the bundle's Ki-67 class threshold"
    rule = growth_risk.get("rule", "growth-risk threshold")
    return (
        f"the bundle's growth-risk threshold ({rule}; derived on {growth_risk.get('cohort', '?')})"
    )


def risk_threshold_record(results: dict[str, Any]) -> dict[str, Any] | None:
    """This cohort's Youden cut as a model.json ``growth_risk`` block (None without one)."""
    cut = results.get("youden_cut")
    if cut is None:
        return None
    return {
        "threshold": round(cut.threshold, 6),
        "rule": f"Youden's J for growth (>= 15 % volume) by {cut.years:g} years, Output 1",
        "cohort": ", ".join(results["manifests"]),
        "masks": results["masks"],
        "n": results["n"],
        "cases": cut.cases,
        "controls": cut.controls,
        "j": round(cut.j, 4),
        "sensitivity": round(cut.sensitivity, 4),
        "specificity": round(cut.specificity, 4),
        "share_high": round(cut.share_high, 4),
        "model": results["model"],
        "note": "chosen on this development cohort; judge it on another cohort",
    }


def adopt_risk_threshold(bundle_dir: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` into ``bundle_dir``/model.json as its ``growth_risk`` block."""
    path = Path(bundle_dir) / "model.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["growth_risk"] = record
    tmp = path.with_name(".model.json.tmp")
    tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


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


def _curves(block: dict[str, Any]) -> dict[str, tuple[sv.KMCurve, list[int]]]:
    return {g: (k, block["at_risk"][g]) for g, k in block["curves"].items()}


def _note(block: dict[str, Any]) -> str:
    return f"log-rank p {_p(block['logrank'].p_value)}"


def _figures(results: dict[str, Any], out_dir: Path, synthetic: bool) -> dict[str, Path]:
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


def write_growth_report(
    results: dict[str, Any], cohort: GrowthCohort, out_dir: Path, *, synthetic: bool
) -> Path:
    """report.md, results.json and the PNGs in ``out_dir``; returns report.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = _figures(results, out_dir, synthetic)
    lines = [
        *_summary_lines(results, synthetic),
        *_km_lines(results),
        *_cox_lines(results),
        *_auc_lines(results, figures),
    ]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    record = risk_threshold_record(results)
    if record is not None:
        dump_json(out_dir / "growth_risk.json", record)
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
