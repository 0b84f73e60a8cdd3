"""The growth model of the surveillance cohort: rates, follow-up visits, calibration.

Growth model (documented in docs/growth-analysis.md): the tumour volume grows
exponentially, ``V(t) = V0 · exp(r · t)`` (capped at ``max_volume_cm3``),
with a per-patient rate ``log r ~ N(mu, sigma)``; ``mu`` is higher by
``high_log_rate_shift`` for Ki-67 ≥ 5 %. ``mu`` (low class) and ``sigma``
are solved so that the cumulative incidence of growth (≥ 15 % volume vs
baseline) of the continuous process is 22.5 % at 3 years and 33.8 % at 5
years over both classes (the source study's asymptomatic cohort). Growth is
observed at follow-up visits (1, 2, 3, 5, 7 years, booked up to 45 days
before the due date); a patient leaves surveillance after a visit with
probability ``p_dropout`` (censoring) or when growth is found (treatment).
:func:`simulate` and :func:`calibration` check the model without images.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lab.synth.anatomy import SynthError
from lab.synth.plan import STREAM_GROWTH

DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class GrowthModel:
    """Growth and follow-up of the surveillance cohort (targets from the source study)."""

    target_3y: float = 0.225  # cumulative incidence of growth at 3 years
    target_5y: float = 0.338  # ... at 5 years
    threshold: float = 0.15  # growth = volume >= (1 + threshold) x baseline
    high_log_rate_shift: float = 1.4  # log growth rate, Ki-67 high minus low (our choice)
    prevalence: float = 0.23  # of Ki-67 >= 5 % (the label model's)
    max_volume_cm3: float = 60.0
    visit_years: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0, 7.0)
    visit_early_days: int = 45  # a visit is booked 0..45 days before its due date
    p_dropout: float = 0.08  # leaves surveillance after a visit without growth

    def __post_init__(self) -> None:
        if not 0 < self.target_3y < self.target_5y < 1:
            raise SynthError("growth targets must satisfy 0 < 3-year < 5-year < 1")
        if not self.visit_years or min(self.visit_years) <= 0:
            raise SynthError("visit_years must be positive years after baseline")
        if not 0 <= self.p_dropout < 1:
            raise SynthError(f"p_dropout must be in [0, 1), got {self.p_dropout}")

    @property
    def log_growth_limit(self) -> float:
        return math.log1p(self.threshold)

    def rate_parameters(self) -> tuple[float, float]:
        """(mu of the low class, sigma) of log r, solved against the two targets."""
        return _solve_rates(self)

    def incidence(self, years: float, high: bool | None = None) -> float:
        """P(true growth time <= years): one class, or both mixed by prevalence."""
        from scipy.stats import norm

        mu, sigma = self.rate_parameters()
        needed = math.log(self.log_growth_limit / years)  # log of the rate that just reaches it

        def one(h: bool) -> float:
            return float(norm.sf((needed - (mu + self.high_log_rate_shift * h)) / sigma))

        if high is not None:
            return one(high)
        return (1 - self.prevalence) * one(False) + self.prevalence * one(True)


@functools.lru_cache(maxsize=8)
def _solve_rates(model: GrowthModel) -> tuple[float, float]:
    from scipy.optimize import fsolve
    from scipy.stats import norm

    c = math.log1p(model.threshold)

    def residual(x: np.ndarray) -> list[float]:
        mu, log_sigma = x
        s = math.exp(log_sigma)
        out = []
        for years, target in ((3.0, model.target_3y), (5.0, model.target_5y)):
            need = math.log(c / years)
            p = (1 - model.prevalence) * norm.sf((need - mu) / s) + model.prevalence * norm.sf(
                (need - mu - model.high_log_rate_shift) / s
            )
            out.append(p - target)
        return out

    sol, info, ok, msg = fsolve(residual, [-4.0, 0.4], full_output=True)
    if ok != 1 or max(abs(v) for v in residual(sol)) > 1e-8:
        raise SynthError(f"cannot calibrate the growth model to its targets: {msg}")
    return float(sol[0]), float(math.exp(sol[1]))


@dataclass(frozen=True)
class Visit:
    """One follow-up study: when, and the true tumour volume then."""

    number: int  # 1, 2, ...
    date: str  # YYYYMMDD
    years: float  # since the baseline study
    volume_cm3: float
    grown: bool  # volume >= (1 + threshold) x baseline


@dataclass(frozen=True)
class GrowthHistory:
    """The drawn growth of one patient and what the follow-up visits observe."""

    rate_per_year: float
    true_growth_years: float | None  # continuous crossing of the threshold (None: never)
    visits: tuple[Visit, ...]
    event: bool  # growth found at a visit
    time_years: float  # first visit with growth, else the last visit (censoring)


def draw_growth(
    rng: np.random.Generator,
    model: GrowthModel,
    *,
    high: bool,
    baseline_volume_cm3: float,
    baseline_date: dt.date,
) -> GrowthHistory:
    """The growth rate, the visits (dropout, early booking) and the observed event."""
    mu, sigma = model.rate_parameters()
    rate = float(math.exp(rng.normal(mu + model.high_log_rate_shift * high, sigma)))
    crossing = model.log_growth_limit / rate
    visits: list[Visit] = []
    for number, nominal in enumerate(model.visit_years, start=1):
        early = int(rng.integers(0, model.visit_early_days + 1))
        # floor: a visit never falls after its due date (time_years <= nominal years)
        date = baseline_date + dt.timedelta(days=math.floor(nominal * DAYS_PER_YEAR) - early)
        years = (date - baseline_date).days / DAYS_PER_YEAR
        ratio = math.exp(rate * years)
        volume = min(baseline_volume_cm3 * ratio, max(model.max_volume_cm3, baseline_volume_cm3))
        grown = ratio >= 1 + model.threshold
        visits.append(Visit(number, date.strftime("%Y%m%d"), round(years, 4), volume, grown))
        if grown or rng.random() < model.p_dropout:
            break
    last = visits[-1]
    return GrowthHistory(
        rate_per_year=rate,
        true_growth_years=crossing if crossing < 100 else None,
        visits=tuple(visits),
        event=last.grown,
        time_years=last.years,
    )


def simulate(model: GrowthModel, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` patients' labels, true growth times, observed time and event (no images)."""
    rng = np.random.default_rng([seed, STREAM_GROWTH])
    start = dt.date(2019, 1, 7)
    high = rng.random(n) < model.prevalence
    out: dict[str, list[Any]] = {"high": [], "true_time": [], "time": [], "event": []}
    for h in high:
        g = draw_growth(rng, model, high=bool(h), baseline_volume_cm3=3.2, baseline_date=start)
        out["high"].append(bool(h))
        out["true_time"].append(g.true_growth_years or math.inf)
        out["time"].append(g.time_years)
        out["event"].append(g.event)
    return {k: np.asarray(v) for k, v in out.items()}


def km_incidence(time: np.ndarray, event: np.ndarray, at: float) -> float:
    """1 - Kaplan-Meier survival at ``at`` (the observed cumulative incidence)."""
    from lifelines import KaplanMeierFitter

    kmf = KaplanMeierFitter().fit(np.asarray(time, float), np.asarray(event, bool))
    return float(1.0 - kmf.survival_function_at_times(at).iloc[0])


def calibration(model: GrowthModel, n: int = 20_000, seed: int = 0) -> dict[str, float]:
    """Achieved incidences by simulation: continuous truth, and as the visits observe it."""
    sim = simulate(model, n, seed)
    out: dict[str, float] = {"patients": n}
    for years in (3, 5):
        out[f"true_{years}y"] = round(float(np.mean(sim["true_time"] <= years)), 4)
        out[f"km_{years}y"] = round(km_incidence(sim["time"], sim["event"], years), 4)
        for name, h in (("low", False), ("high", True)):
            sel = sim["high"] == h
            out[f"km_{years}y_{name}"] = round(
                km_incidence(sim["time"][sel], sim["event"][sel], years), 4
            )
    return out
