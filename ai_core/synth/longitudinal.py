"""Longitudinal synthetic cohort: small asymptomatic meningiomas followed with MR (issue 6).

Each patient of the asymptomatic subgroup (DESIGN §5: mean 3.2 cm³, 0.15-9.7
cm³) has a baseline study, planned and written exactly like a case of
:func:`ai_core.synth.cohort.generate_cohort`, and follow-up studies of the
same patient and tumour: the baseline plan with a grown volume, a new date,
age and head position, new Study/Series UIDs; the patient identity (ID,
name, birth date) is the baseline's.

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
All draws come from the case's ``STREAM_GROWTH`` stream, so baseline studies
are identical to the normal cohort's for the same seed.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ai_core.synth.anatomy import SynthError
from ai_core.synth.output import atomic_text, check_args, progress_bar, write_mask, write_summary
from ai_core.synth.plan import STREAM_GROWTH, CasePlan, plan_case, stream
from ai_core.synth.profiles import PROFILES, SiteProfile

GROWTH_MANIFEST_EXTRA = ("time_years", "event", "skull_base")
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


def _age_at(birth: tuple[int, int, int], date: dt.date) -> int:
    y, m, d = birth
    return date.year - y - ((date.month, date.day) < (m, d))


def followup_plan(base: CasePlan, visit: Visit, rng: np.random.Generator) -> CasePlan:
    """The baseline plan at a follow-up: grown tumour, new date/age/head position, new UIDs."""
    from ai_core.synth.acquisition import HEAD_CENTRE_RAS, LPS_FROM_RAS, Pose

    b = base.study_date
    bdate = dt.date(int(b[:4]), int(b[4:6]), int(b[6:]))
    date = dt.datetime.strptime(visit.date, "%Y%m%d").date()
    birth = (bdate.year - base.age, bdate.month, bdate.day)
    ratio = visit.volume_cm3 / base.features.volume_cm3
    # same head (size, anisotropy), repositioned on the table
    old = base.pose
    rot_old = LPS_FROM_RAS @ old.rotation_lps @ LPS_FROM_RAS
    scale = rot_old.T @ LPS_FROM_RAS @ old.matrix[:3, :3]
    fresh = Pose.draw(rng)
    rot_new = LPS_FROM_RAS @ fresh.rotation_lps @ LPS_FROM_RAS
    lin = LPS_FROM_RAS @ rot_new @ scale
    matrix = fresh.matrix.copy()
    matrix[:3, 3] += (fresh.matrix[:3, :3] - lin) @ HEAD_CENTRE_RAS
    matrix[:3, :3] = lin
    return replace(
        base,
        case_id=f"{base.case_id}FU{visit.number}",
        features=replace(base.features, volume_cm3=visit.volume_cm3),
        age=_age_at(birth, date),
        study_date=visit.date,
        study_time=f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}00",
        pose=Pose(matrix=matrix, rotation_lps=fresh.rotation_lps),
        shape=replace(
            base.shape,
            volume_mm3=base.shape.volume_mm3 * ratio,
            margin_mm=base.shape.margin_mm * ratio ** (1 / 3),
        ),
        lesion=replace(base.lesion, edema_mm3=base.lesion.edema_mm3 * ratio),
    )


def restamp_identity(folder: Path, base: CasePlan, visit: Visit) -> None:
    """Give a written follow-up study the baseline's patient identity and its own accession."""
    import pydicom

    b = base.study_date
    birth = f"{int(b[:4]) - base.age:04d}{b[4:]}"
    accession = f"SYN{base.seed % 100000:05d}{base.index + 1:05d}F{visit.number}"
    for path in sorted(p for p in folder.rglob("*.dcm") if p.is_file()):
        ds = pydicom.dcmread(path)
        ds.PatientName = f"SYNTH^{base.case_id}"
        ds.PatientBirthDate = birth
        ds.AccessionNumber = accession
        ds.StudyDescription = "SYNTHETIC MR BRAIN FOLLOW-UP (ki67node synth)"
        tmp = path.with_name(f".{path.name}.tmp")
        ds.save_as(tmp)
        os.replace(tmp, path)


@dataclass(frozen=True)
class LongitudinalSummary:
    """What ``generate_longitudinal`` wrote."""

    cohort: Any  # the baseline cohort's CohortSummary
    patients: int
    events: int
    followup_studies_written: int
    growth_truth_json: Path
    growth_manifest_csv: Path
    calibration: dict[str, float]


def generate_longitudinal(
    out_dir: Path,
    *,
    cases: int,
    seed: int,
    profile: str | SiteProfile = "internal",
    size: str = "full",
    progress: bool = True,
    write_followups: bool = True,
    model: GrowthModel | None = None,
) -> LongitudinalSummary:
    """Write ``cases`` surveillance patients: baseline studies, follow-ups, truth, manifest."""
    from ai_core.synth.render import render_case

    out_dir = Path(out_dir)
    check_args(out_dir, cases, seed, profile, size)
    model = model or GrowthModel()
    site = profile if isinstance(profile, SiteProfile) else PROFILES[profile]
    site = replace(site, asymptomatic_fraction=1.0)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    bar = progress_bar(cases, progress)
    records: list[dict[str, Any]] = []
    patients: list[dict[str, Any]] = []
    written = 0
    try:
        for index in range(cases):
            plan = plan_case(seed, index, site, size)
            rendered = render_case(plan, out_dir)
            write_mask(out_dir / "masks" / f"{plan.case_id}.nii.gz", rendered)
            rendered.record["mask_file"] = f"masks/{plan.case_id}.nii.gz"
            records.append(rendered.record)
            rng = stream(seed, index, STREAM_GROWTH)
            d = plan.study_date
            history = draw_growth(
                rng,
                model,
                high=plan.features.ki67_high,
                baseline_volume_cm3=plan.features.volume_cm3,
                baseline_date=dt.date(int(d[:4]), int(d[4:6]), int(d[6:])),
            )
            followups = []
            for visit in history.visits:
                fu = followup_plan(plan, visit, rng)
                entry: dict[str, Any] = {**asdict(visit), "volume_cm3": round(visit.volume_cm3, 4)}
                entry.update(case_id=fu.case_id, age=fu.age, written=write_followups)
                if write_followups:
                    done = render_case(fu, out_dir / "followups")
                    restamp_identity(out_dir / "followups" / fu.case_id, plan, visit)
                    mask = out_dir / "masks" / f"{fu.case_id}.nii.gz"
                    write_mask(mask, done)
                    r = done.record
                    entry.update(
                        study_uid=r["study_uid"],
                        series_uid=r["series_uid"],
                        series=f"followups/{fu.case_id}/{r['series_number']}",
                        mask_file=f"masks/{fu.case_id}.nii.gz",
                        measured_volume_cm3=r["volume_cm3"],
                    )
                    written += 1
                followups.append(entry)
            patients.append(_patient_truth(rendered.record, plan, history, followups))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    summary = write_summary(out_dir, records, seed, site, size)
    return _write_growth(out_dir, summary, patients, model, written, seed)


def _patient_truth(
    record: dict[str, Any], plan: CasePlan, history: GrowthHistory, followups: list[Any]
) -> dict[str, Any]:
    return {
        "case_id": record["case_id"],
        "patient_id": record["patient_id"],
        "ki67_high": bool(record["ki67_high"]),
        "ki67_index": record["ki67_index"],
        "bayes_probability": record["bayes_probability"],
        "baseline_volume_cm3": record["volume_cm3"],
        "baseline_date": plan.study_date,
        "growth_rate_per_year": round(history.rate_per_year, 6),
        "true_growth_years": None
        if history.true_growth_years is None
        else round(history.true_growth_years, 4),
        "event": int(history.event),
        "time_years": history.time_years,
        "skull_base": int(record["location"] == "skull_base"),
        "location": record["location"],
        "age": plan.age,
        "sex": plan.sex,
        "followups": followups,
    }


def _write_growth(
    out_dir: Path,
    summary: Any,
    patients: list[dict[str, Any]],
    model: GrowthModel,
    written: int,
    seed: int,
) -> LongitudinalSummary:
    import csv

    truth_json = out_dir / "growth_truth.json"
    atomic_text(truth_json, json.dumps(patients, indent=1, sort_keys=True) + "\n")
    keys = [k for k in patients[0] if k != "followups"] + ["followup_years"]
    rows = [
        {**p, "followup_years": " ".join(str(f["years"]) for f in p["followups"])} for p in patients
    ]
    atomic_text(out_dir / "growth_truth.csv", _csv_text(keys, rows))
    by_id = {p["patient_id"]: p for p in patients}
    with open(summary.manifest_csv, newline="", encoding="utf-8") as fh:
        base_rows = list(csv.DictReader(fh))
    columns = [*base_rows[0], *GROWTH_MANIFEST_EXTRA]
    for row in base_rows:
        p = by_id[row["case_id"]]
        row.update(time_years=p["time_years"], event=p["event"], skull_base=p["skull_base"])
    manifest = out_dir / "growth_manifest.csv"
    atomic_text(manifest, _csv_text(columns, base_rows))
    time = np.array([p["time_years"] for p in patients])
    event = np.array([p["event"] for p in patients], dtype=bool)
    cal = calibration(model, seed=seed)
    mu, sigma = model.rate_parameters()
    info = json.loads(summary.cohort_json.read_text(encoding="utf-8"))
    info["longitudinal"] = {
        "growth_model": {
            **asdict(model),
            "log_rate_mu_low": round(mu, 6),
            "log_rate_sigma": round(sigma, 6),
        },
        "population_calibration": cal,
        "cohort_km_incidence": {
            f"{y}y": round(km_incidence(time, event, y), 4) if time.max() >= y else None
            for y in (3, 5)
        },
        "events": int(event.sum()),
        "followup_studies_written": written,
        "growth_manifest": manifest.name,
    }
    atomic_text(summary.cohort_json, json.dumps(info, indent=1, sort_keys=True) + "\n")
    return LongitudinalSummary(
        cohort=summary,
        patients=len(patients),
        events=int(event.sum()),
        followup_studies_written=written,
        growth_truth_json=truth_json,
        growth_manifest_csv=manifest,
        calibration=cal,
    )


def _csv_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("1" if v is True else "0" if v is False else v) for k, v in r.items()})
    return buf.getvalue()
