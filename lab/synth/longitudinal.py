"""Longitudinal synthetic cohort: small asymptomatic meningiomas followed with MR (issue 6).

Each patient of the asymptomatic subgroup (DESIGN §5: mean 3.2 cm³, 0.15-9.7
cm³) has a baseline study, planned and written exactly like a case of
:func:`lab.synth.cohort.generate_cohort`, and follow-up studies of the
same patient and tumour: the baseline plan with a grown volume, a new date,
age and head position, new Study/Series UIDs; the patient identity (ID,
name, birth date) is the baseline's.

How the tumour grows and when the visits are is :mod:`lab.synth.growth`.
All draws come from the case's ``STREAM_GROWTH`` stream, so baseline studies
are identical to the normal cohort's for the same seed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lab.synth.growth import (
    GrowthHistory,
    GrowthModel,
    Visit,
    calibration,
    draw_growth,
    km_incidence,
)
from lab.synth.output import (
    atomic_text,
    check_args,
    csv_text,
    progress_bar,
    write_mask,
    write_summary,
)
from lab.synth.plan import STREAM_GROWTH, CasePlan, plan_case, stream
from lab.synth.profiles import PROFILES, SiteProfile

GROWTH_MANIFEST_EXTRA = ("time_years", "event", "skull_base")


def _age_at(birth: tuple[int, int, int], date: dt.date) -> int:
    y, m, d = birth
    return date.year - y - ((date.month, date.day) < (m, d))


def followup_plan(base: CasePlan, visit: Visit, rng: np.random.Generator) -> CasePlan:
    """The baseline plan at a follow-up: grown tumour, new date/age/head position, new UIDs."""
    from lab.synth.acquisition import HEAD_CENTRE_RAS, LPS_FROM_RAS, Pose

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
    from lab.synth.render import render_case

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
    atomic_text(out_dir / "growth_truth.csv", csv_text(keys, rows))
    by_id = {p["patient_id"]: p for p in patients}
    with open(summary.manifest_csv, newline="", encoding="utf-8") as fh:
        base_rows = list(csv.DictReader(fh))
    columns = [*base_rows[0], *GROWTH_MANIFEST_EXTRA]
    for row in base_rows:
        p = by_id[row["case_id"]]
        row.update(time_years=p["time_years"], event=p["event"], skull_base=p["skull_base"])
    manifest = out_dir / "growth_manifest.csv"
    atomic_text(manifest, csv_text(columns, base_rows))
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
