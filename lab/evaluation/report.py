"""The evaluation report: ``report.md`` with tables and PNGs, and ``results.json``."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ai_core.disclaimer import DISCLAIMER_SENTENCE
from lab.evaluation.metrics import METRIC_NAMES, Interval, roc_auc, roc_curve_points
from lab.evaluation.plots import plot_metric_intervals, plot_roc
from lab.evaluation.protocol import (
    BAYES,
    CLINICAL,
    COHORT_LABELS,
    OUTPUT1,
    OUTPUT2,
    RADIOMICS_ML,
    EvaluationResult,
    first_run_bootstrap,
    first_run_delong,
    summary_table,
)

_HEADERS = ("AUC", "Accuracy", "Sensitivity", "Specificity", "F1", "MCC")


def _fmt(iv: Interval) -> str:
    if iv is None or not math.isfinite(iv.mean):
        return "n/a"
    return f"{iv.mean:.3f} ({iv.low:.3f}–{iv.high:.3f})"


def _table(rows: dict[str, dict[str, Interval]]) -> list[str]:
    lines = ["| | " + " | ".join(_HEADERS) + " |", "| --- |" + " --- |" * len(_HEADERS)]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(metrics[m]) for m in METRIC_NAMES) + " |")
    return lines


def _interval_json(iv: Interval) -> dict[str, float]:
    return {"mean": iv.mean, "low": iv.low, "high": iv.high, "n": iv.n}


def _header_lines(result: EvaluationResult, manifests: Sequence[Path], bundle: Any) -> list[str]:
    s = result.settings
    lines = [
        "# Ki-67 ≥ 5 % prediction: evaluation report",
        "",
        f"**{DISCLAIMER_SENTENCE}**"
        + (
            " The model and this cohort are synthetic (ki67node synth): no real patient."
            if bundle.synthetic
            else ""
        ),
        "",
        "- Manifests: " + ", ".join(f"`{m}`" for m in manifests),
        f"- Model architecture and parameters from: {bundle.describe()}",
        f"- Protocol: {s.runs} run(s), each a stratified {1 - s.test_fraction:.0%}:"
        f"{s.test_fraction:.0%} split of the development cohort (new seed per run), "
        f"{s.train.validation_fraction:.0%} of the training part for early stopping and "
        "thresholds (Youden), at most "
        f"{s.train.epochs} epochs; bootstrap {s.bootstrap} resamples on the first run's test sets.",
        f"- Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} in "
        f"{result.seconds / 60:.1f} min.",
    ]
    for cohort, (n, k) in result.cohort_sizes.items():
        lines.append(f"- {COHORT_LABELS[cohort]}: {n} cases per run, {k} Ki-67 high")
    if result.not_assessable:
        lines.append(
            f"- Not assessable and excluded: {len(result.not_assessable)} case(s) "
            f"({', '.join(sorted(result.not_assessable)[:10])})"
        )
    if result.bayes_population_auc is not None:
        lines.append(
            f"- Bayes-optimal AUC of the generator (population): {result.bayes_population_auc:.3f}"
        )
    return [*lines, "", "Intervals: mean over runs with the 2.5th–97.5th percentiles of the runs."]


def _cohort_lines(
    result: EvaluationResult,
    cohort: str,
    summary: dict[str, dict[str, Any]],
    boot: dict[str, dict[str, Any]],
    out_dir: Path,
    plots: dict[str, str],
) -> list[str]:
    """One cohort's table over runs, its ROC and AUC plots (added to ``plots``), run 1's CIs."""
    s = result.settings
    rows = {row: c[cohort] for row, c in summary.items() if cohort in c}
    lines = ["", f"## {COHORT_LABELS[cohort]} — {s.runs} run(s)", "", *_table(rows)]
    curves = {}
    for row in (OUTPUT1, OUTPUT2, CLINICAL, RADIOMICS_ML, BAYES):
        if cohort in result.first_run.scores.get(row, {}):
            y, sc, _ = result.first_run.scores[row][cohort]
            curves[row] = roc_curve_points(y, sc)
    roc = plot_roc(
        curves,
        out_dir / f"roc_{cohort}.png",
        title=f"ROC, {COHORT_LABELS[cohort]} (run 1)",
        reference_auc=result.bayes_population_auc,
    )
    bars = plot_metric_intervals(
        {row: m["auc"] for row, m in rows.items()},
        out_dir / f"auc_{cohort}.png",
        title=f"AUC over {s.runs} run(s), {COHORT_LABELS[cohort]}",
    )
    plots[f"roc_{cohort}"] = roc.name
    plots[f"auc_{cohort}"] = bars.name
    brows = {row: c[cohort] for row, c in boot.items() if cohort in c}
    return [
        *lines,
        "",
        f"![ROC {cohort}]({roc.name})",
        "",
        f"![AUC {cohort}]({bars.name})",
        "",
        f"### Run 1, bootstrap 95 % CI ({s.bootstrap} resamples)",
        "",
        *_table(brows),
    ]


def _comparison_lines(
    result: EvaluationResult, delong: list[dict[str, Any]], bundle: Any
) -> list[str]:
    """DeLong tests of run 1 and the bundle as trained on unseen cases."""
    lines = [
        "",
        "## DeLong tests (run 1): Output 1 against the others",
        "",
        "| cohort | versus | AUC Output 1 | AUC other | p |",
        "| --- | --- | --- | --- | --- |",
    ]
    for d in delong:
        r = d["result"]
        lines.append(
            f"| {d['cohort']} | {d['versus']} | {r.auc1:.3f} | {r.auc2:.3f} | {r.p_value:.4f} |"
        )
    if result.bundle_rows:
        lines += [
            "",
            f"## The bundle as trained ({bundle.version}) on cases it has not seen",
            "",
            "| cases | n | Ki-67 high | AUC | threshold |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, (y, sc, thr) in result.bundle_rows.items():
            lines.append(
                f"| {name} | {len(y)} | {int(np.sum(y))} | {roc_auc(y, sc):.3f} | {thr:.3f} |"
            )
    return [*lines, "", f"_{DISCLAIMER_SENTENCE}_", ""]


def _payload(
    result: EvaluationResult,
    manifests: Sequence[Path],
    bundle: Any,
    tables: tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]],
    plots: dict[str, str],
) -> dict[str, Any]:
    """results.json: everything the report shows, as numbers."""
    summary, boot, delong = tables
    s = result.settings
    return {
        "disclaimer": DISCLAIMER_SENTENCE,
        "synthetic_model": bundle.synthetic,
        "model_version": result.model_version,
        "manifests": [str(m) for m in manifests],
        "settings": {
            "runs": s.runs,
            "test_fraction": s.test_fraction,
            "bootstrap": s.bootstrap,
            "seed": s.seed,
            "train": s.train.to_dict(),
        },
        "cohort_sizes": result.cohort_sizes,
        "bayes_population_auc": result.bayes_population_auc,
        "over_runs": {
            row: {c: {m: _interval_json(iv) for m, iv in ms.items()} for c, ms in cohorts.items()}
            for row, cohorts in summary.items()
        },
        "run1_bootstrap": {
            row: {c: {m: _interval_json(iv) for m, iv in ms.items()} for c, ms in cohorts.items()}
            for row, cohorts in boot.items()
        },
        "run1_delong": [
            {
                "cohort": d["cohort"],
                "versus": d["versus"],
                "auc_output1": d["result"].auc1,
                "auc_other": d["result"].auc2,
                "z": d["result"].z,
                "p": d["result"].p_value,
            }
            for d in delong
        ],
        "bundle_as_trained": {
            name: {"n": len(y), "auc": roc_auc(y, sc)}
            for name, (y, sc, _) in result.bundle_rows.items()
        },
        "not_assessable": result.not_assessable,
        "plots": plots,
        "seconds": result.seconds,
    }


def write_report(
    result: EvaluationResult, out_dir: Path, *, manifests: Sequence[Path], bundle: Any
) -> Path:
    """Write report.md, results.json and the plots into ``out_dir``; returns report.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summary_table(result)
    boot = first_run_bootstrap(result)
    delong = first_run_delong(result)
    plots: dict[str, str] = {}
    lines = _header_lines(result, manifests, bundle)
    for cohort in result.cohort_sizes:
        lines += _cohort_lines(result, cohort, summary, boot, out_dir, plots)
    lines += _comparison_lines(result, delong, bundle)
    report = out_dir / "report.md"
    _atomic(report, "\n".join(lines))
    payload = _payload(result, manifests, bundle, (summary, boot, delong), plots)
    _atomic(out_dir / "results.json", json.dumps(payload, indent=1, default=_json_default) + "\n")
    return report


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
