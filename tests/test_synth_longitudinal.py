"""The longitudinal synthetic cohort (issue 6): growth calibration without images, and
one surveillance patient written with follow-up studies of the same patient."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from lab.synth.anatomy import SynthError
from lab.synth.cohort import generate_cohort
from lab.synth.growth import GrowthModel, calibration, draw_growth, km_incidence, simulate
from lab.synth.longitudinal import generate_longitudinal


def test_growth_is_calibrated_to_the_source_study() -> None:
    """20 000 simulated patients: 3/5-year growth within 2 points of 22.5 % / 33.8 %."""
    cal = calibration(GrowthModel(), n=20_000, seed=11)
    for key in ("true_3y", "km_3y"):
        assert abs(cal[key] - 0.225) < 0.02, cal
    for key in ("true_5y", "km_5y"):
        assert abs(cal[key] - 0.338) < 0.02, cal
    # the analytic incidence the solver aimed at
    assert GrowthModel().incidence(3.0) == pytest.approx(0.225, abs=1e-6)
    assert GrowthModel().incidence(5.0) == pytest.approx(0.338, abs=1e-6)


def test_high_ki67_grows_more_and_sooner() -> None:
    sim = simulate(GrowthModel(), 10_000, seed=4)
    high = sim["high"]
    for years in (3.0, 5.0):
        hi = km_incidence(sim["time"][high], sim["event"][high], years)
        lo = km_incidence(sim["time"][~high], sim["event"][~high], years)
        assert hi > 2 * lo, (years, hi, lo)
    grown = sim["event"]
    assert np.median(sim["time"][grown & high]) <= np.median(sim["time"][grown & ~high])


def test_follow_up_stops_at_growth_and_visits_come_before_due_dates() -> None:
    model = GrowthModel()
    rng = np.random.default_rng(0)
    start = dt.date(2020, 3, 2)
    for _ in range(300):
        g = draw_growth(rng, model, high=True, baseline_volume_cm3=2.0, baseline_date=start)
        assert [v.grown for v in g.visits[:-1]] == [False] * (len(g.visits) - 1)
        assert g.event == g.visits[-1].grown and g.time_years == g.visits[-1].years
        for v, due in zip(g.visits, model.visit_years, strict=False):
            assert due - 46 / 365.25 <= v.years <= due + 1e-9
            assert v.volume_cm3 <= max(model.max_volume_cm3, 2.0)


def test_bad_growth_model_is_refused() -> None:
    with pytest.raises(SynthError, match="3-year < 5-year"):
        GrowthModel(target_3y=0.4, target_5y=0.3)


def test_one_patient_with_follow_up_studies(tmp_path: Path) -> None:
    model = GrowthModel(visit_years=(1.0, 3.0))
    out = tmp_path / "long"
    summary = generate_longitudinal(out, cases=1, seed=7, size="small", progress=False, model=model)
    truth = json.loads((out / "growth_truth.json").read_text())[0]
    assert summary.followup_studies_written == len(truth["followups"]) >= 1
    base = pydicom.dcmread(next((out / "CASE0001").rglob("*.dcm")), stop_before_pixels=True)
    studies = {str(base.StudyInstanceUID)}
    for fu in truth["followups"]:
        files = sorted((out / fu["series"]).glob("*.dcm"))
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        for tag in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex"):
            assert ds[tag].value == base[tag].value, tag
        assert ds.StudyDate == fu["date"] and ds.AccessionNumber != base.AccessionNumber
        assert str(ds.StudyInstanceUID) == fu["study_uid"]
        studies.add(fu["study_uid"])
        # the rendered tumour has the drawn volume (within the mask's partial-volume error)
        assert fu["measured_volume_cm3"] == pytest.approx(fu["volume_cm3"], rel=0.05)
        assert (out / fu["mask_file"]).is_file()
    assert len(studies) == 1 + len(truth["followups"])
    with open(out / "growth_manifest.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert float(row["time_years"]) == truth["time_years"]
    assert row["event"] == str(truth["event"]) and row["series"].startswith("CASE0001/")
    info = json.loads((out / "cohort.json").read_text())
    assert info["longitudinal"]["followup_studies_written"] == len(truth["followups"])
    assert info["counts"]["by_subgroup"] == {"asymptomatic": 1}


# One case in the fast lane; two (several patients in one cohort) in the slow lane only:
# three cohorts are generated, the heaviest test of `make check` with two cases.
@pytest.mark.parametrize("cases", [1, pytest.param(2, marks=pytest.mark.slow)], ids=["1", "2"])
def test_baseline_only_is_deterministic_and_matches_the_normal_cohort(
    tmp_path: Path, cases: int
) -> None:
    a = generate_longitudinal(
        tmp_path / "a", cases=cases, seed=5, size="small", progress=False, write_followups=False
    )
    b = generate_cohort(
        tmp_path / "b", cases=cases, seed=5, size="small", progress=False, longitudinal=True
    )
    assert a.followup_studies_written == 0 and not (tmp_path / "a" / "followups").exists()
    assert (tmp_path / "b" / "followups").is_dir()
    for name in ("ground_truth.csv", "manifest.csv"):
        assert (tmp_path / "a" / name).read_text() == b.out_dir.joinpath(name).read_text()
    ta = json.loads((tmp_path / "a" / "growth_truth.json").read_text())
    tb = json.loads((tmp_path / "b" / "growth_truth.json").read_text())
    assert [p["followups"][-1]["volume_cm3"] for p in ta] == [
        p["followups"][-1]["volume_cm3"] for p in tb
    ]
    # baseline studies are the normal cohort's (asymptomatic subgroup) for the same seed
    normal = generate_cohort(
        tmp_path / "c", cases=cases, seed=5, size="small", progress=False, asymptomatic_fraction=1.0
    )
    assert normal.ground_truth_csv.read_text() == (tmp_path / "a" / "ground_truth.csv").read_text()
