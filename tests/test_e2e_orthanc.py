"""PACS → node → AI → PACS, with a real Orthanc as the PACS.

DCMTK ``storescu`` sends a synthetic study (the T1C MP-RAGE with a meningioma
plus its distractor series) to a real ``ki67node serve``; Orthanc must then
hold exactly one SEG, one heatmap SC series and one SR in the same study, and
nothing made from the distractors. Then Orthanc goes down, the radiologist's
characteristics are entered (an amended SR is due), and after Orthanc comes
back every object arrives exactly once.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, SegmentationStorage

from tests.daemon_process import DaemonProcess, jobs, query
from tests.e2e_chain import PROCESS_TIMEOUT_SECONDS, download, node_for, storescu, wait_for
from tests.orthanc import Orthanc, orthanc_fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

orthanc = orthanc_fixture()


@dataclass
class Study:
    folder: Path
    study_uid: str
    t1c_series_uid: str
    series_uids: set[str]
    n_files: int


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    from lab.synth import generate_cohort

    out = tmp_path_factory.mktemp("cohort") / "c"
    generate_cohort(out, cases=1, seed=5151, progress=False)
    row = next(csv.DictReader((out / "ground_truth.csv").open()))
    folder = out / row["case_id"]
    files = [p for p in folder.rglob("*.dcm")]
    series = {str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID) for p in files}
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return Study(folder, str(ds.StudyInstanceUID), row["series_uid"], series, len(files))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, orthanc: Orthanc) -> Iterator[DaemonProcess]:
    with node_for(tmp_path_factory.mktemp("node"), orthanc) as daemon:
        yield daemon


def ours(orthanc: Orthanc, study: Study) -> list:
    return [i for i in orthanc.instances() if i.series_uid not in study.series_uids]


def test_pacs_receives_one_seg_one_sc_series_one_sr_and_nothing_for_distractors(
    node: DaemonProcess, orthanc: Orthanc, study: Study
) -> None:
    orthanc.clear()
    storescu(node, study.folder)

    def log() -> str:
        return node.log_tail() + "\n" + json.dumps(jobs(node.data_dir), default=str)[:3000]

    wait_for(
        "the SR in Orthanc",
        lambda: any(i.sop_class_uid == Comprehensive3DSRStorage for i in ours(orthanc, study)),
        PROCESS_TIMEOUT_SECONDS,
        log,
    )
    wait_for("every object delivered", lambda: _backlog(node) == 0, 60, log)
    found = ours(orthanc, study)
    by_class = Counter(i.sop_class_uid for i in found)
    assert by_class[SegmentationStorage] == 1
    assert by_class[Comprehensive3DSRStorage] == 1
    assert by_class[SecondaryCaptureImageStorage] >= 1
    assert set(by_class) == {
        SegmentationStorage,
        Comprehensive3DSRStorage,
        SecondaryCaptureImageStorage,
    }
    series_by_class: dict[str, set[str]] = {}
    for i in found:
        series_by_class.setdefault(i.sop_class_uid, set()).add(i.series_uid)
    assert all(len(s) == 1 for s in series_by_class.values()), series_by_class
    assert {i.study_uid for i in found} == {study.study_uid}
    # only the T1C was analysed: one job, done
    rows = jobs(node.data_dir)
    assert [(uid, state) for uid, state, _, _ in rows] == [(study.t1c_series_uid, "done")]
    result = json.loads(rows[0][3])
    assert result["status"] == "ok" and result["prediction"] is not None
    assert {o["sop_instance_uid"] for o in result["outputs"]} == {i.sop_instance_uid for i in found}
    assert len(orthanc.sop_instance_uids()) == len(set(orthanc.sop_instance_uids()))


def _backlog(node: DaemonProcess) -> int:
    rows = query(node.data_dir, "SELECT COUNT(*) FROM outbox WHERE state != 'delivered'")
    return int(rows[0][0])


def test_pacs_down_then_back_gets_the_amended_sr_exactly_once(
    node: DaemonProcess, orthanc: Orthanc, study: Study, tmp_path: Path
) -> None:
    before = ours(orthanc, study)
    if not before:
        pytest.skip("depends on the first test having delivered the first results")
    first_sr = [i for i in before if i.sop_class_uid == Comprehensive3DSRStorage]
    orthanc.stop()
    try:
        done = node.cli(
            "characteristics",
            study.study_uid,
            "--necrosis",
            "yes",
            "--edema-index",
            "2.5",
            "--csf-cleft",
            "no",
            "--capsular-enhancement",
            "present",
        )
        assert done.returncode == 0, done.stderr
        assert "re-analysis queued for 1 series" in done.stdout

        def log() -> str:
            return node.log_tail()

        wait_for(
            "the re-analysis to finish",
            lambda: [s for _, s, _, _ in jobs(node.data_dir)] == ["done", "done"],
            PROCESS_TIMEOUT_SECONDS,
            log,
        )
        wait_for(
            "failed delivery attempts while the PACS is down",
            lambda: (
                query(
                    node.data_dir,
                    "SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND attempts >= 2",
                )[0][0]
                > 0
            ),
            60,
            log,
        )
    finally:
        orthanc.start()
    wait_for("the backlog to drain", lambda: _backlog(node) == 0, 120, node.log_tail)
    after = ours(orthanc, study)
    uids = [i.sop_instance_uid for i in after]
    assert len(uids) == len(set(uids)), "an object arrived twice"
    assert {i.sop_instance_uid for i in before} <= set(uids)
    srs = [i for i in after if i.sop_class_uid == Comprehensive3DSRStorage]
    assert len(srs) == 2
    # the mask did not change: the same SEG stands, it is not sent a second time
    assert sum(i.sop_class_uid == SegmentationStorage for i in after) == 1
    amended = [i for i in srs if i.sop_instance_uid != first_sr[0].sop_instance_uid][0]
    ds = pydicom.dcmread(download(orthanc, amended.sop_instance_uid, tmp_path))
    predecessor = ds.PredecessorDocumentsSequence[0]
    refs = predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert refs.ReferencedSOPInstanceUID == first_sr[0].sop_instance_uid
    delivered = query(node.data_dir, "SELECT COUNT(*) FROM outbox WHERE state = 'delivered'")
    assert delivered[0][0] == len(after)


def test_radiologist_seg_reruns_the_series_and_our_own_seg_routed_back_does_not(
    node: DaemonProcess, orthanc: Orthanc, study: Study, tmp_path: Path
) -> None:
    before = ours(orthanc, study)
    segs = [i for i in before if i.sop_class_uid == SegmentationStorage]
    if len(segs) != 1:
        pytest.skip("depends on the first test having delivered our SEG")
    n_jobs = len(jobs(node.data_dir))
    ours_back = download(orthanc, segs[0].sop_instance_uid, tmp_path)
    theirs = pydicom.dcmread(ours_back)
    theirs.SeriesInstanceUID = pydicom.uid.generate_uid()
    theirs.SOPInstanceUID = pydicom.uid.generate_uid()
    theirs.file_meta.MediaStorageSOPInstanceUID = theirs.SOPInstanceUID
    theirs.SeriesDescription = "meningioma corrected by radiologist"
    theirs.SeriesNumber = 42
    (tmp_path / "theirs").mkdir()
    theirs.save_as(tmp_path / "theirs" / "seg.dcm", enforce_file_format=True)
    (tmp_path / "ours").mkdir()
    shutil.copy(ours_back, tmp_path / "ours" / "seg.dcm")

    storescu(node, tmp_path / "ours")  # the PACS routing our own output back to us
    wait_for(
        "our SEG decided",
        lambda: any(
            "our own SEG" in r
            for (r,) in query(node.data_dir, "SELECT reason FROM series_decisions")
        ),
        60,
        node.log_tail,
    )
    assert len(jobs(node.data_dir)) == n_jobs  # no re-run for our own SEG

    storescu(node, tmp_path / "theirs")
    wait_for(
        "the re-analysis with the radiologist's SEG",
        lambda: len(jobs(node.data_dir)) == n_jobs + 1 and jobs(node.data_dir)[-1][1] == "done",
        PROCESS_TIMEOUT_SECONDS,
        node.log_tail,
    )
    wait_for("the backlog to drain", lambda: _backlog(node) == 0, 120, node.log_tail)
    result = json.loads(jobs(node.data_dir)[-1][3])
    assert result["received_seg"] is True
    assert result["analysis"]["segmentation"]["backend"] == "received-seg"
    assert "seg" not in [o["kind"] for o in result["outputs"]]  # theirs is used, not re-sent
    after = ours(orthanc, study)
    new = {i.sop_instance_uid for i in after} - {i.sop_instance_uid for i in before}
    new_classes = Counter(i.sop_class_uid for i in after if i.sop_instance_uid in new)
    # the radiologist's SEG itself is not in Orthanc (we never send it); a new SR and SCs are
    assert new_classes[SegmentationStorage] == 0
    assert new_classes[Comprehensive3DSRStorage] == 1
    sr_uid = next(
        i.sop_instance_uid
        for i in after
        if i.sop_instance_uid in new and i.sop_class_uid == Comprehensive3DSRStorage
    )
    sr = pydicom.dcmread(download(orthanc, sr_uid, tmp_path))
    evidence = {
        str(ref.ReferencedSOPInstanceUID)
        for item in sr.CurrentRequestedProcedureEvidenceSequence
        for series in item.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert str(theirs.SOPInstanceUID) in evidence
    assert "PredecessorDocumentsSequence" in sr
