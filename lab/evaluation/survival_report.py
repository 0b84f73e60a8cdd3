"""``ki67node growth-analysis``: the source study's surveillance analysis on a site's cohort.

The growth manifest is a training manifest (docs/model.md) of the BASELINE
studies plus ``time_years`` (first follow-up with growth, else the last
follow-up), ``event`` (1 = growth >= 15 %) and optional ``skull_base``
(yes/no); the Ki-67 label may be blank (most surveillance patients have no
histology). The bundle's network scores each baseline (image pipeline with
the feature cache, Output 1, risk group at the bundle's threshold), then
:func:`analyse` computes Kaplan-Meier curves, log-rank tests, Cox models,
time-dependent AUCs and the decision curve;
:mod:`lab.evaluation.growth_report` runs it all and writes ``report.md``,
``results.json`` and the PNGs (docs/growth-analysis.md).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ai_core.errors import AiCoreError, EvaluationError
from lab.evaluation import survival as sv
from lab.evaluation.decision_curve import decision_curve
from lab.evaluation.metrics import delong_ci, roc_auc
from lab.evaluation.survival_plots import KM_TICKS
from lab.model.cases import ManifestCase

log = logging.getLogger(__name__)

PAPER = {"auc_3y": 0.756, "auc_5y": 0.727, "logrank_p": "< 0.001", "cox_hr": 1.996}
PAPER_SOURCE = "Chen et al., npj Precision Oncology 2025 (asymptomatic cohort)"
RISK = "model risk group (high vs low)"
PROBABILITY = "model probability (per 0.1)"
_YES = {"1", "yes", "true", "y"}
_NO = {"0", "no", "false", "n"}


@dataclass(frozen=True)
class GrowthCase:
    """One row of a growth manifest."""

    case: ManifestCase
    time_years: float
    event: bool
    skull_base: bool | None
    label_known: bool


def _flag(value: str | None, column: str, *, required: bool) -> bool | None:
    text = (value or "").strip().lower()
    if not text and not required:
        return None
    if text in _YES:
        return True
    if text in _NO:
        return False
    raise ValueError(f"column {column!r}: must be 0/1 or yes/no, got {value!r}")


def read_growth_manifest(path: Path) -> list[GrowthCase]:
    """The cases of one growth manifest; errors name the file, line and column."""
    from lab.model.cases import _case

    path = Path(path)
    try:
        rows = list(csv.DictReader(path.read_text(encoding="utf-8-sig").splitlines()))
    except OSError as exc:
        raise EvaluationError(f"cannot read the growth manifest {path}: {exc}") from exc
    if not rows:
        raise EvaluationError(f"the growth manifest {path} has no patients")
    for needed in ("case_id", "series", "time_years", "event"):
        if needed not in rows[0]:
            raise EvaluationError(
                f"the growth manifest {path} has no {needed!r} column "
                "(needed: case_id, series, time_years, event; see docs/growth-analysis.md)"
            )
    out: list[GrowthCase] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        where = f"{path.name} line {line}"
        known = bool((row.get("ki67_index") or "").strip() or (row.get("ki67_high") or "").strip())
        try:
            text = (row.get("time_years") or "").strip()
            try:
                years = float(text)
            except ValueError:
                raise ValueError(f"column 'time_years': must be a number, got {text!r}") from None
            if not math.isfinite(years) or years <= 0:
                raise ValueError(f"column 'time_years': must be years > 0, got {text!r}")
            event = bool(_flag(row.get("event"), "event", required=True))
            skull = _flag(row.get("skull_base"), "skull_base", required=False)
            case = _case(row if known else {**row, "ki67_high": "0"}, path.parent)
        except (AiCoreError, ValueError) as exc:
            raise EvaluationError(f"{where}: {exc}") from None
        if case.case_id in seen:
            raise EvaluationError(f"{where}: case_id {case.case_id!r} appears twice")
        seen.add(case.case_id)
        out.append(GrowthCase(case, years, event, skull, known))
    return out


@dataclass(frozen=True)
class GrowthCohort:
    """The analysed patients as arrays (row i = case_ids[i])."""

    case_ids: list[str]
    time: np.ndarray
    event: np.ndarray  # bool
    probability: np.ndarray  # Output 1
    threshold: float
    volume_cm3: np.ndarray  # measured on the baseline mask
    age: np.ndarray  # NaN = unknown
    sex_female: np.ndarray  # NaN = unknown
    skull_base: np.ndarray  # NaN = unknown
    label: np.ndarray  # NaN = unknown (no histology)
    bayes: np.ndarray  # NaN unless synthetic

    @property
    def high(self) -> np.ndarray:
        return self.probability >= self.threshold


def _groups(high: np.ndarray, threshold: float) -> np.ndarray:
    return np.where(
        high, f"high risk (Output 1 >= {threshold:.3f})", f"low risk (Output 1 < {threshold:.3f})"
    )


def _km_block(c: GrowthCohort, sel: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    curves = {
        g: sv.kaplan_meier(c.time[sel & (groups == g)], c.event[sel & (groups == g)], g)
        for g in sorted(set(groups[sel].tolist()))
    }
    test = sv.logrank(c.time[sel], c.event[sel], groups[sel])
    return {
        "curves": curves,
        "at_risk": {g: sv.at_risk(c.time[sel & (groups == g)], KM_TICKS) for g in curves},
        "logrank": test,
        "incidence": {
            g: {f"{y:g}y": round(k.incidence(y), 4) for y in (3.0, 5.0)} for g, k in curves.items()
        },
    }


def _covariates(c: GrowthCohort, use_risk_group: bool) -> tuple[dict[str, np.ndarray], list[str]]:
    out: dict[str, np.ndarray] = {}
    notes = []
    if use_risk_group:
        out[RISK] = c.high.astype(float)
    else:
        out[PROBABILITY] = c.probability * 10
        notes.append("every patient is in one risk group: the model probability is used instead")
    for name, values in (
        ("age (per 10 years)", c.age / 10),
        ("sex (female)", c.sex_female),
        ("baseline volume (per cm3)", c.volume_cm3),
        ("skull base (yes)", c.skull_base),
    ):
        if not np.all(np.isfinite(values)):
            notes.append(f"{name}: unknown for some patients, left out")
        elif np.unique(values).size < 2:
            notes.append(f"{name}: no variation, left out")
        else:
            out[name] = values
    return out, notes


def _ki67_auc(c: GrowthCohort) -> dict[str, Any] | None:
    """Output 1 against the Ki-67 label where it is known (DeLong 95 % CI), else None."""
    known = np.isfinite(c.label)
    y = c.label[known].astype(int)
    if y.size < 10 or y.min() == y.max():
        return None
    iv = delong_ci(y, c.probability[known])
    out = {"n": int(y.size), "positives": int(y.sum()), "auc": iv.mean, "low": iv.low}
    out["high"] = iv.high
    if np.all(np.isfinite(c.bayes[known])):
        out["bayes_auc"] = roc_auc(y, c.bayes[known])
    return out


def analyse(
    c: GrowthCohort,
    *,
    years: Sequence[float] = (3.0, 5.0),
    bootstrap: int = 200,
    seed: int = 0,
    decision_years: float = 3.0,
) -> dict[str, Any]:
    """Every statistic of the report, on arrays (no images)."""
    everyone = np.ones(c.time.size, dtype=bool)
    groups = _groups(c.high, c.threshold)
    res: dict[str, Any] = {"n": int(c.time.size), "events": int(c.event.sum())}
    overall = sv.kaplan_meier(c.time, c.event, "all patients")
    res["incidence"] = {f"{y:g}y": round(overall.incidence(y), 4) for y in years}
    res["km_risk"] = _km_block(c, everyone, groups)
    res["risk_groups"] = {g: int((groups == g).sum()) for g in sorted(set(groups.tolist()))}
    cut = float(np.median(c.probability))
    halves = np.where(c.probability > cut, "upper half of Output 1", "lower half of Output 1")
    res["km_median_split"] = {**_km_block(c, everyone, halves), "cut": cut}
    if np.all(np.isfinite(c.skull_base)):
        res["km_subgroups"] = {
            name: _km_block(c, sel, groups)
            for name, sel in (
                ("skull base", c.skull_base == 1),
                ("not skull base", c.skull_base == 0),
            )
            if sel.any()
        }
    if np.all(np.isfinite(c.label)):
        res["km_true_label"] = _km_block(
            c, everyone, np.where(c.label == 1, "true Ki-67 >= 5 %", "true Ki-67 < 5 %")
        )
    res["ki67_auc"] = _ki67_auc(c)
    two_groups = len(res["risk_groups"]) == 2
    univariate = {}
    covs, notes = _covariates(c, two_groups)
    candidates = {**covs, PROBABILITY: c.probability * 10}
    for name, values in candidates.items():
        try:
            univariate[name] = sv.cox(c.time, c.event, {name: values})
        except EvaluationError as exc:
            notes.append(f"univariate {name}: {exc}")
    res["cox_univariate"] = univariate
    try:
        res["cox_multivariate"] = sv.cox(c.time, c.event, covs)
    except EvaluationError as exc:
        res["cox_multivariate"] = None
        notes.append(f"multivariate Cox: {exc}")
    res["cox_notes"] = notes
    res["time_auc"] = {
        "model probability (Output 1)": sv.time_dependent_auc(
            c.time, c.event, c.probability, years, n_boot=bootstrap, seed=seed
        )
    }
    if np.all(np.isfinite(c.bayes)):
        res["time_auc"]["Bayes probability (synthetic truth, reference)"] = sv.time_dependent_auc(
            c.time, c.event, c.bayes, years, n_boot=bootstrap, seed=seed
        )
    res["youden_cut"] = sv.youden_cut(c.time, c.event, c.probability, decision_years)
    risks: dict[str, Any] = {}
    try:
        risks["model (Cox-calibrated Output 1)"] = sv.cox_risk_at(
            c.time, c.event, c.probability, decision_years
        )
    except Exception as exc:  # noqa: BLE001 - the decision curve falls back to the risk group
        log.warning(
            "cannot calibrate the model probability to %g-year risk: %s", decision_years, exc
        )
    risks["model risk group (treat high)"] = c.high.astype(float)
    res["decision_curve"] = decision_curve(c.time, c.event, risks, decision_years)
    return res
