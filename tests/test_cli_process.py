"""``ki67node process DICOM_DIR --out DIR``: the daemon's pipeline offline.

A synthetic study (T1C MP-RAGE with a meningioma plus distractors) gives one
SEG, one heatmap SC series and one SR for the T1C only, every file valid by
dciodvfy, in the source study. A second run with the radiologist's SEG in the
folder and the four characteristics sends no SEG of ours, new UIDs, and an SR
that carries the characteristics and references the radiologist's SEG. A
folder with no T1C exits 3; a missing folder exits 1.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, SegmentationStorage

from daemon.cli import main
from tests.dicom_out_cases import dciodvfy
from tests.factories import make_mr_series, write_series

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@dataclass
class Run:
    source: Path
    out: Path
    code: int
    stdout: str
    summary: dict
    t1c_series_uid: str
    study_uid: str
    truth_mask: Path | None = None

    def objects(self) -> dict[str, list[pydicom.Dataset]]:
        found: dict[str, list[pydicom.Dataset]] = {}
        for path in sorted(self.out.rglob("*.dcm")):
            ds = pydicom.dcmread(path)
            found.setdefault(str(ds.SOPClassUID), []).append(ds)
        return found


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Run:
    from lab.synth import generate_cohort

    cohort = tmp_path_factory.mktemp("cohort") / "c"
    generate_cohort(cohort, cases=1, seed=5252, progress=False)
    row = next(csv.DictReader((cohort / "ground_truth.csv").open()))
    source = cohort / row["case_id"]
    (source / "README.txt").write_text("not DICOM: must be skipped\n")
    out = tmp_path_factory.mktemp("out")
    run = _run(source, out, row["series_uid"])
    run.truth_mask = cohort / "masks" / f"{row['case_id']}.nii.gz"
    return run


def _run(source: Path, out: Path, t1c: str, *extra: str) -> Run:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["process", str(source), "--out", str(out), "--no-progress", *extra])
    summary = json.loads((out / "summary.json").read_text())
    study = str(
        pydicom.dcmread(next(source.rglob("*.dcm")), stop_before_pixels=True).StudyInstanceUID
    )
    return Run(source, out, code, buffer.getvalue(), summary, t1c, study)


def test_only_the_t1c_is_analysed_and_every_series_has_a_reason(first: Run) -> None:
    assert first.code == 0, first.stdout
    series = first.summary["series"]
    assert [s["series_uid"] for s in series if s["qualifies"]] == [first.t1c_series_uid]
    assert all(s["reason"] for s in series)
    assert first.summary["skipped_files"] == 1  # README.txt
    t1c = next(s for s in series if s["qualifies"])
    assert t1c["result"]["status"] == "ok"
    assert 0.0 <= t1c["result"]["prediction"]["probability_output1"] <= 1.0
    assert "P(Ki-67 >= 5 %)" in first.stdout and "not for diagnostic use" in first.stdout


def test_writes_one_seg_one_sc_series_one_sr_valid_and_in_the_source_study(
    first: Run, tmp_path: Path
) -> None:
    found = first.objects()
    assert set(found) == {
        SegmentationStorage,
        SecondaryCaptureImageStorage,
        Comprehensive3DSRStorage,
    }
    assert len(found[SegmentationStorage]) == 1 and len(found[Comprehensive3DSRStorage]) == 1
    assert len({str(ds.SeriesInstanceUID) for ds in found[SecondaryCaptureImageStorage]}) == 1
    for objects in found.values():
        for ds in objects:
            assert str(ds.StudyInstanceUID) == first.study_uid
            assert dciodvfy(ds, tmp_path / "v") == [], ds.SOPClassUID.name
    seg = found[SegmentationStorage][0]
    referenced = {str(i.SeriesInstanceUID) for i in seg.ReferencedSeriesSequence}
    assert referenced == {first.t1c_series_uid}


def test_the_seg_placed_by_its_own_geometry_lies_on_the_true_tumour(first: Run) -> None:
    import numpy as np
    import SimpleITK as sitk

    from ai_core.volume import load_series
    from dicom_out.preview import seg_mask_on_volume

    files = [
        p
        for p in first.source.rglob("*.dcm")
        if str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID)
        == first.t1c_series_uid
    ]
    volume = load_series(files)
    seg = first.objects()[SegmentationStorage][0]
    placed = seg_mask_on_volume(seg, volume)
    affine = volume.affine()
    zyx = np.argwhere(placed > 0).mean(axis=0)
    seg_centroid = affine[:3, :3] @ zyx[::-1] + affine[:3, 3]
    assert first.truth_mask is not None
    truth = sitk.ReadImage(str(first.truth_mask))
    idx = np.argwhere(sitk.GetArrayFromImage(truth) > 0).mean(axis=0)[::-1]
    truth_centroid = np.array(truth.TransformContinuousIndexToPhysicalPoint(idx.tolist()))
    assert np.linalg.norm(seg_centroid - truth_centroid) < 5.0, (seg_centroid, truth_centroid)


def test_second_run_with_radiologist_seg_and_characteristics(first: Run, tmp_path: Path) -> None:
    source = tmp_path / "study"
    shutil.copytree(first.source, source)
    ours = first.objects()[SegmentationStorage][0]
    # The radiologist's corrected SEG: our mask, re-issued under their own UIDs.
    theirs = pydicom.dcmread(next(p for p in first.out.rglob("*.dcm") if _is(p, ours)))
    theirs.SeriesInstanceUID = pydicom.uid.generate_uid()
    theirs.SOPInstanceUID = pydicom.uid.generate_uid()
    theirs.file_meta.MediaStorageSOPInstanceUID = theirs.SOPInstanceUID
    theirs.SeriesDescription = "corrected by radiologist"
    (source / "seg").mkdir()
    theirs.save_as(source / "seg" / "corrected.dcm", enforce_file_format=True)

    second = _run(
        source,
        tmp_path / "out",
        first.t1c_series_uid,
        "--necrosis",
        "yes",
        "--edema-index",
        "1.6",
    )
    assert second.code == 0, second.stdout
    found = second.objects()
    assert SegmentationStorage not in found  # their SEG is used, not re-sent as ours
    sr = found[Comprehensive3DSRStorage][0]
    assert str(sr.SOPInstanceUID) != str(
        first.objects()[Comprehensive3DSRStorage][0].SOPInstanceUID
    )
    evidence = {
        str(ref.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert str(theirs.SOPInstanceUID) in evidence
    t1c = next(s for s in second.summary["series"] if s["qualifies"])
    assert t1c["result"]["analysis"]["segmentation"]["backend"] == "received-seg"
    assert t1c["result"]["prediction"]["inputs_used"]["characteristics"] is True
    assert t1c["result"]["prediction"]["characteristics"] == {"edema_index": 1.6, "necrosis": True}
    assert dciodvfy(sr, tmp_path / "v") == []


def _is(path: Path, ds: pydicom.Dataset) -> bool:
    return path.stem == str(ds.SOPInstanceUID)


def test_folder_without_a_t1c_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_series(
        make_mr_series("siemens", "t2_tse", orientation="axial", n_slices=4), tmp_path / "s"
    )
    assert (
        main(["process", str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--no-progress"]) == 3
    )
    text = capsys.readouterr().out
    assert "skipped" in text and "not 3D" in text
    assert (
        json.loads((tmp_path / "o" / "summary.json").read_text())["series"][0]["qualifies"] is False
    )
    assert list((tmp_path / "o").rglob("*.dcm")) == []


def test_missing_or_empty_folder_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["process", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["process", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 1
    assert "no DICOM files found" in capsys.readouterr().err
