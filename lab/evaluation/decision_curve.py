"""Decision curve analysis for growth by a horizon (dcurves): the net benefit of acting
on a risk of growth against acting on everyone or no one (Vickers & Elkin 2006)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ai_core.errors import EvaluationError
from lab.evaluation.survival import check_survival

DCA_THRESHOLDS = tuple(k / 100 for k in range(61))  # 0 to 60 % risk of growth


@dataclass(frozen=True)
class DecisionCurve:
    years: float
    thresholds: list[float]
    net_benefit: dict[str, list[float]]  # model name (and "treat all", "treat none") -> values


def decision_curve(
    time: Any,
    event: Any,
    risks: dict[str, Any],
    years: float,
    thresholds: Sequence[float] = DCA_THRESHOLDS,
) -> DecisionCurve:
    """Net benefit of acting on each risk (P(growth by ``years``), or 0/1) vs treat all/none."""
    import pandas as pd
    from dcurves import dca

    t, e = check_survival(time, event)
    data = {"time_years": t, "event": e.astype(int)}
    for name, r in risks.items():
        v = np.asarray(r, dtype=float)
        if v.shape != t.shape or np.any((v < 0) | (v > 1)) or not np.all(np.isfinite(v)):
            raise EvaluationError(f"decision curve: risk {name!r} must be probabilities in [0, 1]")
        data[name] = v
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = dca(
            data=pd.DataFrame(data),
            outcome="event",
            modelnames=list(risks),
            thresholds=list(thresholds),
            time=years,
            time_to_outcome_col="time_years",
        )
    curves: dict[str, list[float]] = {}
    for name in [*risks, "all", "none"]:
        part = res[res["model"] == name].sort_values("threshold")
        label = {"all": "treat all", "none": "treat none"}.get(name, name)
        curves[label] = [
            float(v) if math.isfinite(v) else float("nan") for v in part["net_benefit"]
        ]
    return DecisionCurve(float(years), [float(v) for v in thresholds], curves)
