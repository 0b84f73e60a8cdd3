"""Time-to-growth statistics of the source study's surveillance analysis.

Thin, checked wrappers over the reference implementations: Kaplan-Meier and
log-rank (lifelines), Cox proportional hazards with the Schoenfeld-residual
test of proportional hazards (lifelines), cumulative/dynamic time-dependent
AUC with inverse-probability-of-censoring weights (scikit-survival) and
decision curves for a time-to-event outcome (dcurves). Inputs are arrays of
follow-up time (years), event (1 = growth) and scores; outputs are frozen
dataclasses of plain numbers, JSON-ready. A quantity that cannot be
estimated (one group, no case at risk) comes back as ``None`` with its
reason instead of an exception, so one gap never stops a report.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ai_core.errors import EvaluationError
from lab.evaluation.metrics import youden_threshold

log = logging.getLogger(__name__)


def check_survival(time: Any, event: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated float times (> 0, finite) and boolean events of the same length."""
    t = np.asarray(time, dtype=float)
    e = np.asarray(event)
    if t.ndim != 1 or t.shape != e.shape or t.size == 0:
        raise EvaluationError("time and event must be 1-D arrays of the same, non-zero length")
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise EvaluationError("every follow-up time must be a finite number of years > 0")
    if not np.isin(e, (0, 1, True, False)).all():
        raise EvaluationError("event must be 0/1 (1 = growth observed)")
    return t, e.astype(bool)


@dataclass(frozen=True)
class KMCurve:
    """A Kaplan-Meier estimate of growth-free survival, with its at-risk counts."""

    label: str
    n: int
    events: int
    times: list[float]  # step times, starting at 0
    survival: list[float]
    lower: list[float]  # 95 % confidence band (exponential Greenwood)
    upper: list[float]

    def at(self, years: float) -> float:
        """Survival at ``years`` (right-continuous step function)."""
        i = int(np.searchsorted(self.times, years, side="right")) - 1
        return self.survival[max(i, 0)]

    def incidence(self, years: float) -> float:
        """Cumulative incidence of growth by ``years``: 1 - S(years)."""
        return 1.0 - self.at(years)


def kaplan_meier(time: Any, event: Any, label: str = "all") -> KMCurve:
    from lifelines import KaplanMeierFitter

    t, e = check_survival(time, event)
    kmf = KaplanMeierFitter(label=label).fit(t, e)
    sf = kmf.survival_function_
    ci = kmf.confidence_interval_survival_function_
    return KMCurve(
        label=label,
        n=int(t.size),
        events=int(e.sum()),
        times=[float(v) for v in sf.index],
        survival=[float(v) for v in sf.iloc[:, 0]],
        lower=[float(v) for v in ci.iloc[:, 0]],
        upper=[float(v) for v in ci.iloc[:, 1]],
    )


def at_risk(time: Any, at: Sequence[float]) -> list[int]:
    """Patients still followed (time >= t) at each time of ``at``."""
    t = np.asarray(time, dtype=float)
    return [int((t >= a).sum()) for a in at]


@dataclass(frozen=True)
class LogRank:
    statistic: float | None
    p_value: float | None
    groups: dict[str, int]  # group -> patients
    reason: str = ""


def logrank(time: Any, event: Any, groups: Sequence[str]) -> LogRank:
    """Log-rank test of equal growth-free survival across ``groups`` (2 or more)."""
    from lifelines.statistics import multivariate_logrank_test

    t, e = check_survival(time, event)
    g = np.asarray(groups, dtype=str)
    if g.shape != t.shape:
        raise EvaluationError("groups must have one entry per patient")
    counts = {str(k): int((g == k).sum()) for k in sorted(set(g.tolist()))}
    if len(counts) < 2:
        return LogRank(None, None, counts, "only one group: nothing to compare")
    if not e.any():
        return LogRank(None, None, counts, "no growth event in the cohort")
    res = multivariate_logrank_test(t, g, e)
    return LogRank(float(res.test_statistic), float(res.p_value), counts)


@dataclass(frozen=True)
class CoxRow:
    covariate: str
    hr: float
    low: float  # 95 % CI
    high: float
    p_value: float
    ph_p_value: float | None = None  # Schoenfeld (rank time) test of proportional hazards


@dataclass(frozen=True)
class CoxFit:
    rows: list[CoxRow]
    n: int
    events: int
    concordance: float
    penalizer: float
    ph_global_ok: bool | None  # no covariate's PH test below 0.05
    notes: list[str] = field(default_factory=list)

    def row(self, covariate: str) -> CoxRow:
        for r in self.rows:
            if r.covariate == covariate:
                return r
        raise KeyError(covariate)


def cox(time: Any, event: Any, covariates: dict[str, Any], *, check_ph: bool = True) -> CoxFit:
    """Cox model of growth on ``covariates`` (name -> values); HR per unit of each value.

    A model that does not converge is refitted with a small ridge penalty
    (0.01, said in ``notes``). The proportional-hazards check is lifelines'
    Schoenfeld-residual test with rank-transformed time, per covariate.
    """
    import pandas as pd
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError
    from lifelines.statistics import proportional_hazard_test

    t, e = check_survival(time, event)
    if not covariates:
        raise EvaluationError("a Cox model needs at least one covariate")
    df = pd.DataFrame({k: np.asarray(v, dtype=float) for k, v in covariates.items()})
    if len(df) != t.size or df.isna().any().any():
        raise EvaluationError("Cox covariates need one finite value per patient")
    constant = [k for k in df if df[k].nunique() < 2]
    if constant:
        raise EvaluationError(f"Cox covariate(s) without variation: {', '.join(constant)}")
    if e.sum() < 2:
        raise EvaluationError("a Cox model needs at least two growth events")
    df["_time"], df["_event"] = t, e.astype(int)
    notes: list[str] = []
    fitted = None
    for penalizer in (0.0, 0.01):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fitted = CoxPHFitter(penalizer=penalizer).fit(df, "_time", "_event")
            break
        except ConvergenceError as exc:
            notes.append(f"no convergence without penalty ({str(exc)[:80]}); ridge 0.01 used")
    if fitted is None:
        raise EvaluationError("the Cox model did not converge, even with a ridge penalty")
    ph: dict[str, float] = {}
    if check_ph:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                test = proportional_hazard_test(fitted, df, time_transform="rank")
            ph = {str(k): float(v) for k, v in test.summary["p"].items()}
        except Exception as exc:  # noqa: BLE001 - the PH test is a diagnostic, not the result
            notes.append(f"proportional-hazards test failed: {exc}")
    s = fitted.summary
    rows = [
        CoxRow(
            covariate=str(name),
            hr=float(s.loc[name, "exp(coef)"]),
            low=float(s.loc[name, "exp(coef) lower 95%"]),
            high=float(s.loc[name, "exp(coef) upper 95%"]),
            p_value=float(s.loc[name, "p"]),
            ph_p_value=ph.get(str(name)),
        )
        for name in s.index
    ]
    return CoxFit(
        rows=rows,
        n=int(t.size),
        events=int(e.sum()),
        concordance=float(fitted.concordance_index_),
        penalizer=float(fitted.penalizer),
        ph_global_ok=None if not ph else all(p >= 0.05 for p in ph.values()),
        notes=notes,
    )


def cox_risk_at(time: Any, event: Any, score: Any, years: float) -> np.ndarray:
    """P(growth by ``years``) from a one-covariate Cox model of ``score`` fitted on this cohort."""
    import pandas as pd
    from lifelines import CoxPHFitter

    t, e = check_survival(time, event)
    df = pd.DataFrame({"score": np.asarray(score, float), "_time": t, "_event": e.astype(int)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cph = CoxPHFitter(penalizer=0.0).fit(df, "_time", "_event")
    surv = cph.predict_survival_function(df[["score"]], times=[years])
    return 1.0 - surv.to_numpy()[0]


@dataclass(frozen=True)
class TimeAUC:
    years: float
    auc: float | None
    low: float | None  # bootstrap 95 % percentile interval
    high: float | None
    cases: int  # growth by ``years``
    controls: int  # followed beyond ``years`` without growth
    reason: str = ""


def _structured(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(event=event, time=time)


def time_dependent_auc(
    time: Any,
    event: Any,
    score: Any,
    years: Sequence[float],
    *,
    reference: tuple[Any, Any] | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> list[TimeAUC]:
    """Cumulative/dynamic AUC at each of ``years``, censoring handled by IPCW.

    ``reference`` (time, event) estimates the censoring distribution for the
    weights: the cohort the model was trained on when the scores come from a
    Cox model fitted there; by default the scored cohort itself (right for a
    model that never saw it, like the Ki-67 network here). An AUC needs at
    least one case and one control, and ``years`` inside the test follow-up.
    """
    from sksurv.metrics import cumulative_dynamic_auc

    t, e = check_survival(time, event)
    s = np.asarray(score, dtype=float)
    if s.shape != t.shape or not np.all(np.isfinite(s)):
        raise EvaluationError("score must be one finite value per patient")
    ref = _structured(*check_survival(*reference)) if reference is not None else None
    rng = np.random.default_rng(seed)
    out = []
    for y in years:
        cases = int(((t <= y) & e).sum())
        controls = int((t > y).sum())
        if cases == 0 or controls == 0 or y < t.min():
            reason = f"{cases} case(s) and {controls} control(s) at {y:g} years"
            if y >= t.max() or y < t.min():
                reason = f"{y:g} years is outside the follow-up [{t.min():.2f}, {t.max():.2f})"
            out.append(TimeAUC(y, None, None, None, cases, controls, reason))
            continue
        test = _structured(t, e)
        try:
            auc = float(
                cumulative_dynamic_auc(ref if ref is not None else test, _cut(t, e, y), s, [y])[0][
                    0
                ]
            )
        except ValueError as exc:
            out.append(TimeAUC(y, None, None, None, cases, controls, str(exc)))
            continue
        boots = []
        for _ in range(n_boot):
            i = rng.integers(0, t.size, t.size)
            if not (((t[i] <= y) & e[i]).any() and (t[i] > y).any()) or y >= t[i].max():
                continue
            bt = _structured(t[i], e[i])
            try:
                boots.append(
                    cumulative_dynamic_auc(
                        ref if ref is not None else bt, _cut(t[i], e[i], y), s[i], [y]
                    )[0][0]
                )
            except ValueError:
                continue
        low, high = (
            (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5)))
            if len(boots) >= 20
            else (None, None)
        )
        out.append(TimeAUC(y, auc, low, high, cases, controls))
    return out


def _cut(t: np.ndarray, e: np.ndarray, years: float) -> Any:
    """The scored patients with follow-up after ``years`` censored just after it.

    The cumulative/dynamic AUC at ``years`` is unchanged (a control is anyone
    still free of growth at ``years``), but no censoring weight is asked for
    at a later event time: after the last censoring the censoring survival
    is zero there, and scikit-survival refuses the whole AUC for it. The
    censoring distribution itself is still estimated from the whole
    follow-up.
    """
    later = t > years
    return _structured(np.where(later, np.nextafter(years, np.inf), t), e & ~later)


@dataclass(frozen=True)
class CutPoint:
    """The score threshold that best separates growth by ``years`` (Youden's J)."""

    threshold: float
    years: float
    j: float
    sensitivity: float
    specificity: float
    cases: int  # growth by ``years``
    controls: int  # followed beyond ``years`` without growth by then
    share_high: float  # of every patient scored, the share at or above the threshold


def youden_cut(time: Any, event: Any, score: Any, years: float) -> CutPoint | None:
    """The threshold on ``score`` with the largest sensitivity + specificity - 1.

    Cases: growth by ``years``; controls: followed beyond ``years`` (growth
    later or never). Patients censored before ``years`` without growth are
    neither (no inverse-probability weights: a development-cohort rule, not an
    estimate). Ties go to the higher threshold. None without a case or a control.
    """
    t, e = check_survival(time, event)
    s = np.asarray(score, dtype=float)
    if s.shape != t.shape or not np.all(np.isfinite(s)):
        raise EvaluationError("score must be one finite value per patient")
    case, control = (t <= years) & e, t > years
    if not case.any() or not control.any():
        return None
    known = case | control
    th = youden_threshold(case[known].astype(int), s[known])
    sens = float((s[case] >= th).mean())
    spec = float((s[control] < th).mean())
    j = sens + spec - 1
    return CutPoint(
        threshold=th,
        years=float(years),
        j=j,
        sensitivity=sens,
        specificity=spec,
        cases=int(case.sum()),
        controls=int(control.sum()),
        share_high=float((s >= th).mean()),
    )
