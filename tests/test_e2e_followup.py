"""Surveillance end to end: a baseline and a follow-up study of the same
synthetic patient go through ``storescu`` → ``ki67node serve`` → Orthanc.

The baseline puts the small asymptomatic meningioma on the follow-up list;
the follow-up study closes that entry, and its SR in Orthanc reports the
measured growth against the prior (prior study, volumes, change).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from highdicom.sr import CodedConcept
from pydicom.uid import Comprehensive3DSRStorage

from dicom_out import codes
from tests.daemon_process import DaemonProcess, jobs
from tests.e2e_chain import (
    PROCESS_TIMEOUT_SECONDS,
    download,
    node_for,
    storescu,
    study_uid_of,
    wait_for,
)
from tests.orthanc import Orthanc, orthanc_fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

orthanc = orthanc_fixture()
SEED = 8080
PATIENT = "CASE0002"  # grows: +15 % is reached between its 2nd and 3rd follow-up
FOLLOW_UP = "CASE0002FU3"


@dataclass
class Patient:
    baseline: Path
    follow_up: Path
    patient_id: str


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory) -> Patient:
    from lab.synth import generate_cohort

    out = tmp_path_factory.mktemp("long") / "c"
    generate_cohort(out, cases=2, seed=SEED, longitudinal=True, progress=False)
    rows = {r["case_id"]: r for r in csv.DictReader((out / "ground_truth.csv").open())}
    return Patient(out / PATIENT, out / "followups" / FOLLOW_UP, rows[PATIENT]["patient_id"])


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, orthanc: Orthanc) -> Iterator[DaemonProcess]:
    with node_for(tmp_path_factory.mktemp("node"), orthanc) as daemon:
        yield daemon


def srs_of(orthanc: Orthanc, study_uid: str) -> list[str]:
    return [
        i.sop_instance_uid
        for i in orthanc.instances()
        if i.study_uid == study_uid and i.sop_class_uid == Comprehensive3DSRStorage
    ]


def _done(node: DaemonProcess, n: int) -> bool:
    rows = jobs(node.data_dir)
    return len(rows) >= n and all(state in ("done", "failed") for _, state, _, _ in rows)


def _measurement(sr: pydicom.Dataset, concept: CodedConcept) -> float | None:
    from highdicom.sr.utils import find_content_items

    found = find_content_items(sr, name=concept, recursive=True)
    if not found:
        return None
    return float(found[0].MeasuredValueSequence[0].NumericValue)


def test_follow_up_sr_reports_growth_and_the_entry_is_closed(
    node: DaemonProcess, orthanc: Orthanc, patient: Patient, tmp_path: Path
) -> None:
    orthanc.clear()
    log = node.log_tail
    storescu(node, patient.baseline)
    wait_for("the baseline job", lambda: _done(node, 1), PROCESS_TIMEOUT_SECONDS, log)
    baseline = json.loads(jobs(node.data_dir)[0][3] or "{}")
    assert baseline.get("status") == "ok", jobs(node.data_dir)
    listed = node.cli("followups", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)["followups"]
    # one open entry; the synthetic baseline is dated years ago, so it may show as overdue
    assert [e["status"] in ("scheduled", "due", "overdue") for e in entries] == [True], entries
    assert entries[0]["patient_id"] == patient.patient_id

    storescu(node, patient.follow_up)
    wait_for("the follow-up job", lambda: _done(node, 2), PROCESS_TIMEOUT_SECONDS, log)
    follow = json.loads(jobs(node.data_dir)[1][3] or "{}")
    assert follow.get("status") == "ok", jobs(node.data_dir)
    growth = follow["growth"]
    v0 = baseline["analysis"]["measurements"]["volume_cm3"]
    v1 = follow["analysis"]["measurements"]["volume_cm3"]
    assert growth["prior_study_uid"] == study_uid_of(patient.baseline)
    assert growth["prior_volume_cm3"] == pytest.approx(v0, rel=1e-3)
    assert growth["change_percent"] == pytest.approx(100 * (v1 - v0) / v0, abs=0.05)

    study = study_uid_of(patient.follow_up)
    wait_for("the follow-up SR in Orthanc", lambda: bool(srs_of(orthanc, study)), 120, log)
    sr = pydicom.dcmread(download(orthanc, srs_of(orthanc, study)[0], tmp_path))
    assert _measurement(sr, codes.PRIOR_VOLUME) == pytest.approx(v0, abs=1e-3)
    assert _measurement(sr, codes.VOLUME_CHANGE) == pytest.approx(
        growth["change_percent"], abs=0.01
    )
    assert study_uid_of(patient.baseline) in str(sr.to_json_dict())

    entries = json.loads(node.cli("followups", "--json").stdout)["followups"]
    closed = [e for e in entries if e["status"] in ("completed", "grown")]
    assert len(closed) == 1, entries
    assert closed[0]["status"] == ("grown" if growth["grown"] else "completed")
    still_open = [e for e in entries if e["status"] in ("scheduled", "due", "overdue")]
    # the next follow-up is booked while the tumour stays under followup.max_diameter_mm (30)
    small = follow["analysis"]["measurements"]["max_diameter_mm"] < 30.0
    assert len(still_open) == (1 if small else 0), (follow["analysis"], entries)
