"""``ki67node growth-analysis``: score the baselines, analyse, write ``report.md``.

:mod:`lab.evaluation.survival_report` reads the growth manifest and
computes every statistic; :mod:`lab.evaluation.survival_plots` draws the
figures. This module runs the bundle's network on every baseline, hands the
cohort to :func:`~lab.evaluation.survival_report.analyse` and writes
``report.md`` and the PNGs (:mod:`lab.evaluation.growth_markdown`, the paper's
value next to each number) and ``results.json`` (docs/growth-analysis.md).
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
from ai_core.model.bundle import load_bundle
from lab.evaluation.growth_markdown import draw_figures, report_lines
from lab.evaluation.survival_plots import footer_text
from lab.evaluation.survival_report import (
    PAPER,
    GrowthCase,
    GrowthCohort,
    analyse,
    read_growth_manifest,
)
from lab.model.data import build_table
from lab.model.feature_cache import FeatureParams, extract_features
from lab.model.fit import is_synthetic
from lab.model.train import predict_table


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


def write_growth_report(
    results: dict[str, Any], cohort: GrowthCohort, out_dir: Path, *, synthetic: bool
) -> Path:
    """report.md, results.json and the PNGs in ``out_dir``; returns report.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(results, out_dir, synthetic)
    report = out_dir / "report.md"
    report.write_text("\n".join(report_lines(results, figures, synthetic)) + "\n", encoding="utf-8")
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
