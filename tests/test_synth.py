"""lab.synth: the synthetic cohort generator (issue 3, item 1).

One small cohort (2 mm voxels, three cases) is generated per module; its seed
and site profile were chosen so that the three cases cover every variant
(sagittal and axial, all three vendors, Enhanced MR, JPEG 2000 and RLE,
oblique and reversed slice order). The label statistics are checked on
feature draws alone, without rendering images.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from lab.synth.anatomy import SynthError
from lab.synth.clinical import (
    KI67_THRESHOLD,
    LabelModel,
    auc,
    draw_features,
    population_bayes_auc,
)
from lab.synth.cohort import generate_cohort
from lab.synth.plan import STREAM_CLINICAL, stream
from lab.synth.profiles import PROFILES
from lab.synth.vendors import series_profile
from tests.conftest import require_tool

SEED = 7
VARIANTS = replace(
    PROFILES["internal"],
    name="test-variants",
    p_enhanced=0.4,
    p_compressed=0.7,
    p_oblique=0.5,
    p_reverse=0.5,
)
DISTRACTORS = ("localizer", "t2_tse", "dwi", "t1_mprage_pre")
UID_CHARS = set("0123456789.")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "cohort"
    summary = generate_cohort(
        out, cases=3, seed=SEED, profile=VARIANTS, size="small", progress=False
    )
    assert summary.cases == 3
    return out


@pytest.fixture(scope="module")
def truth(cohort: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads((cohort / "ground_truth.json").read_text())
    return records


def _t1c_files(cohort: Path, rec: dict[str, Any]) -> list[Path]:
    return sorted((cohort / rec["case_id"] / str(rec["series_number"])).glob("*.dcm"))


def _series(rec: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(s for s in rec["series"] if s["kind"] == kind)


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_fixture_covers_every_variant(truth: list[dict[str, Any]]) -> None:
    # if this fails after a change to the planner, pick another SEED for the fixture
    assert {r["transfer_syntax"] for r in truth} == {"explicit", "jpeg2000", "rle"}
    assert {r["orientation"] for r in truth} == {"sag", "axial"}
    assert {r["vendor"] for r in truth} == {"siemens", "ge", "philips"}
    assert any(r["enhanced"] for r in truth)
    assert any(r["oblique"] for r in truth) and any(r["reverse_slice_order"] for r in truth)


def test_layout_and_summary_files(cohort: Path, truth: list[dict[str, Any]]) -> None:
    with (cohort / "ground_truth.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case_id"] for r in rows] == ["CASE0001", "CASE0002", "CASE0003"]
    for row, rec in zip(rows, truth, strict=True):
        assert row["study_uid"] == rec["study_uid"] and row["series_uid"] == rec["series_uid"]
        assert row["ki67_high"] == ("1" if rec["ki67_high"] else "0")
        assert (rec["ki67_index"] >= KI67_THRESHOLD) == rec["ki67_high"]
        assert 0.0 < rec["bayes_probability"] < 1.0
        assert rec["edema_index"] >= 1.0
        assert rec["location"] in ("convexity", "falx", "skull_base")
        assert rec["side"] in ("left", "right", "midline")
        assert (cohort / rec["mask_file"]).is_file()
    meta = json.loads((cohort / "cohort.json").read_text())
    assert meta["seed"] == SEED and meta["profile"] == "test-variants" and meta["synthetic"]
    assert meta["counts"]["cases"] == 3
    assert 0.75 < meta["bayes_auc_population"] < 0.95
    top = {p.name for p in cohort.iterdir()}
    assert top == {
        "CASE0001",
        "CASE0002",
        "CASE0003",
        "masks",
        "ground_truth.csv",
        "ground_truth.json",
        "cohort.json",
        "manifest.csv",
    }
    assert not list(cohort.rglob("*.tmp*"))
    from lab.model.cases import read_manifest

    cases = read_manifest(cohort / "manifest.csv")
    assert [c.label for c in cases] == [int(r["ki67_high"]) for r in rows]
    assert all(c.mask is not None and c.mask.is_file() for c in cases)
    assert [c.series_uid for c in cases] == [r["series_uid"] for r in rows]


def test_same_seed_gives_identical_bytes_other_seed_differs(cohort: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_cohort(again, cases=1, seed=SEED, profile=VARIANTS, size="small", progress=False)
    first = _tree_digest(cohort / "CASE0001")
    assert _tree_digest(again / "CASE0001") == first  # a case does not depend on the cohort size
    assert (again / "masks/CASE0001.nii.gz").read_bytes() == (
        cohort / "masks/CASE0001.nii.gz"
    ).read_bytes()
    other = tmp_path / "other"
    generate_cohort(other, cases=1, seed=SEED + 1, profile=VARIANTS, size="small", progress=False)
    assert set(_tree_digest(other / "CASE0001").values()).isdisjoint(first.values())


def test_mask_matches_recorded_volume(cohort: Path, truth: list[dict[str, Any]]) -> None:
    for rec in truth:
        img = nib.Nifti1Image.from_filename(str(cohort / rec["mask_file"]))
        mask = np.asarray(img.dataobj)
        voxel_cm3 = abs(np.linalg.det(img.affine[:3, :3])) / 1000.0
        measured = float(mask.sum()) * voxel_cm3
        assert measured == pytest.approx(rec["mask_volume_cm3"], rel=1e-3)
        # 2 mm voxels: the mask is a discretisation of the true surface
        assert measured == pytest.approx(rec["volume_cm3"], rel=0.08, abs=0.3)
        assert rec["volume_cm3"] == pytest.approx(rec["drawn"]["volume_cm3"], rel=0.02)
        pts = np.argwhere(mask > 0) @ img.affine[:3, :3].T
        span = max(np.ptp(pts, axis=0))
        assert span <= rec["max_diameter_mm"] + 4.0
        assert rec["max_diameter_mm"] <= 2 * (math.dist(pts.min(0), pts.max(0)) + 4.0)


def test_mask_geometry_is_the_t1c_geometry(cohort: Path, truth: list[dict[str, Any]]) -> None:
    for rec in truth:
        files = _t1c_files(cohort, rec)
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        img = nib.Nifti1Image.from_filename(str(cohort / rec["mask_file"]))
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine  # RAS -> LPS
        if "PerFrameFunctionalGroupsSequence" in ds:
            frame0 = ds.PerFrameFunctionalGroupsSequence[0]
            ipp = frame0.PlanePositionSequence[0].ImagePositionPatient
            shared = ds.SharedFunctionalGroupsSequence[0]
            iop = shared.PlaneOrientationSequence[0].ImageOrientationPatient
            spacing = shared.PixelMeasuresSequence[0].PixelSpacing
            n_slices = int(ds.NumberOfFrames)
        else:
            ipp, iop, spacing = ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing
            n_slices = len(files)
        assert np.allclose(lps[:3, 3], [float(v) for v in ipp], atol=1e-3)
        assert np.allclose(lps[:3, 0] / float(spacing[1]), [float(v) for v in iop[:3]], atol=1e-6)
        assert np.allclose(lps[:3, 1] / float(spacing[0]), [float(v) for v in iop[3:]], atol=1e-6)
        assert img.shape == (int(ds.Columns), int(ds.Rows), n_slices)


def test_classic_geometry_round_trip(cohort: Path, truth: list[dict[str, Any]]) -> None:
    for rec in (r for r in truth if not r["enhanced"]):
        dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in _t1c_files(cohort, rec)]
        dss.sort(key=lambda d: int(d.InstanceNumber))
        iop = np.array(dss[0].ImageOrientationPatient, dtype=float)
        x, y = iop[:3], iop[3:]
        assert (
            abs(x @ y) < 1e-6
            and np.isclose(np.linalg.norm(x), 1)
            and np.isclose(np.linalg.norm(y), 1)
        )
        normal = np.cross(x, y)
        pos = np.array([d.ImagePositionPatient for d in dss], dtype=float)
        steps = np.diff(pos @ normal)
        spacing = float(dss[0].SpacingBetweenSlices)
        assert np.allclose(np.abs(steps), spacing, atol=1e-3)
        assert np.all(np.sign(steps) == (-1 if rec["reverse_slice_order"] else 1))
        in_plane = pos - np.outer(pos @ normal, normal)
        assert np.allclose(in_plane, in_plane[0], atol=1e-3)  # slices stacked along the normal
        assert float(dss[0].PixelSpacing[0]) == pytest.approx(rec["pixel_spacing_mm"])
        assert float(dss[0].SliceThickness) == pytest.approx(rec["slice_thickness_mm"])
        assert len({d.FrameOfReferenceUID for d in dss}) == 1
        assert [int(d.InstanceNumber) for d in dss] == list(range(1, len(dss) + 1))


def test_distractors_share_the_study_and_carry_vendor_profiles(
    cohort: Path, truth: list[dict[str, Any]]
) -> None:
    for rec in truth:
        kinds = {s["kind"] for s in rec["series"]}
        assert set(DISTRACTORS) <= kinds and kinds & {"flair_2d", "flair_3d"}
        for series in rec["series"]:
            ds = pydicom.dcmread(
                next((cohort / series["folder"]).glob("*.dcm")), stop_before_pixels=True
            )
            assert ds.StudyInstanceUID == rec["study_uid"]
            assert ds.FrameOfReferenceUID == rec["frame_of_reference_uid"]
            assert ds.SeriesDescription == series["description"]
            if series["enhanced"]:
                continue
            profile = series_profile(rec["vendor"], series["kind"], orientation="sag", variant=0)
            for key in (
                "Manufacturer",
                "ManufacturerModelName",
                "ScanningSequence",
                "SequenceVariant",
                "MRAcquisitionType",
            ):
                assert ds.get(key) == profile[key], (series["kind"], key)


def test_enhanced_and_compressed_variants_decode(cohort: Path, truth: list[dict[str, Any]]) -> None:
    syntaxes = {"jpeg2000": JPEG2000Lossless, "rle": RLELossless}
    for rec in truth:
        files = _t1c_files(cohort, rec)
        ds = pydicom.dcmread(files[0])
        if rec["transfer_syntax"] in syntaxes:
            assert ds.file_meta.TransferSyntaxUID == syntaxes[rec["transfer_syntax"]]
        arr = ds.pixel_array
        rows, cols, n = rec["matrix"]
        if rec["enhanced"]:
            assert len(files) == 1 and int(ds.NumberOfFrames) == n
            assert arr.shape == (n, rows, cols)
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4.1"
        else:
            assert len(files) == n and arr.shape == (rows, cols)
        assert arr.dtype == (np.int16 if rec["vendor"] == "ge" else np.uint16)
        assert arr.max() > 50 * max(arr.min(), 1) or arr.max() > 200


def test_every_dataset_says_synthetic(cohort: Path, truth: list[dict[str, Any]]) -> None:
    for rec in truth:
        for series in rec["series"]:
            ds = pydicom.dcmread(
                next((cohort / series["folder"]).glob("*.dcm")), stop_before_pixels=True
            )
            assert str(ds.PatientName) == f"SYNTH^{rec['case_id']}"
            assert ds.PatientID == rec["patient_id"]
            assert "SYNTHETIC" in ds.ImageComments and "SYNTHETIC" in ds.StudyDescription
            for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID):
                assert len(uid) <= 64 and set(uid) <= UID_CHARS and uid.startswith("2.25.")


@pytest.mark.parametrize(
    "kind", ["t1c_mprage", "localizer", "dwi"], ids=["t1c", "localizer", "dwi"]
)
def test_dciodvfy_accepts_the_instances(
    cohort: Path, truth: list[dict[str, Any]], kind: str
) -> None:
    tool = require_tool("dciodvfy")
    for rec in truth:
        path = next((cohort / _series(rec, kind)["folder"]).glob("*.dcm"))
        out = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
        errors = [
            line
            for line in (out.stdout + out.stderr).splitlines()
            if line.startswith("Error")
            # GE writes InversionTime for BRAVO although ScanningSequence has no IR: kept as real
            and not (rec["vendor"] == "ge" and "<InversionTime>" in line)
        ]
        assert errors == [], (rec["case_id"], kind)


def _draws(n: int, model: LabelModel, subgroup: str = "surgical") -> list[Any]:
    return [draw_features(stream(99, i, STREAM_CLINICAL), model, subgroup) for i in range(n)]


def test_label_statistics_follow_the_paper() -> None:
    model = LabelModel()
    feats = _draws(4000, model)
    high = np.array([f.ki67_high for f in feats])
    vol = np.array([f.volume_cm3 for f in feats])
    nec = np.array([f.necrosis for f in feats])
    edema = np.array([f.edema_index for f in feats])
    assert high.mean() == pytest.approx(0.23, abs=0.02)
    assert vol[high].mean() == pytest.approx(46.3, rel=0.1)
    assert vol[~high].mean() == pytest.approx(27.0, rel=0.1)
    odds = (nec[high].mean() / (1 - nec[high].mean())) / (
        nec[~high].mean() / (1 - nec[~high].mean())
    )
    assert 2.8 < odds < 5.5
    assert edema[high].mean() > edema[~high].mean()
    assert all((f.ki67_index >= KI67_THRESHOLD) == f.ki67_high for f in feats)


def test_bayes_probability_is_calibrated_and_matches_population_auc() -> None:
    model = LabelModel()
    feats = _draws(6000, model)
    prob = np.array([f.bayes_probability for f in feats])
    high = np.array([f.ki67_high for f in feats])
    assert prob.mean() == pytest.approx(high.mean(), abs=0.015)
    for lo, hi in ((0.0, 0.2), (0.2, 0.5), (0.5, 1.0)):
        sel = (prob >= lo) & (prob < hi)
        assert high[sel].mean() == pytest.approx(prob[sel].mean(), abs=0.05)
    assert auc(prob, high) == pytest.approx(population_bayes_auc(model, n=100_000), abs=0.02)


def test_asymptomatic_subgroup_is_small() -> None:
    vol = np.array([f.volume_cm3 for f in _draws(3000, LabelModel(), "asymptomatic")])
    assert vol.mean() == pytest.approx(3.2, rel=0.08)
    assert vol.min() >= 0.15 and vol.max() <= 9.7


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"profile": "mars"}, "unknown profile"),
        ({"size": "huge"}, "unknown size"),
        ({"cases": 0}, "--cases must be"),
        ({"seed": -1}, "--seed must be"),
    ],
    ids=["profile", "size", "cases", "seed"],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"cases": 1, "seed": 1, "size": "small", "progress": False, **kwargs}
    with pytest.raises(SynthError, match=message):
        generate_cohort(tmp_path / "out", **args)
    assert not (tmp_path / "out" / "CASE0001").exists()


def test_non_empty_out_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SynthError, match="not empty"):
        generate_cohort(tmp_path, cases=1, seed=1, size="small", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_nothing_is_written_outside_out_dir(tmp_path: Path) -> None:
    dirs = {name: tmp_path / name for name in ("cwd", "home", "tmp", "cache")}
    for d in dirs.values():
        d.mkdir()
    env = {
        **os.environ,
        "HOME": str(dirs["home"]),
        "TMPDIR": str(dirs["tmp"]),
        "XDG_CACHE_HOME": str(dirs["cache"]),
        "MPLCONFIGDIR": str(dirs["cache"]),
    }
    code = (
        "from pathlib import Path; from lab.synth.cohort import generate_cohort;"
        f"generate_cohort(Path({str(tmp_path / 'out')!r}), cases=1, seed=3, size='small')"
    )
    repo = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = str(repo)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=dirs["cwd"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "synth" in done.stderr  # the progress bar goes to stderr
    for d in dirs.values():
        assert list(d.rglob("*")) == [], d
    assert {p.name for p in tmp_path.iterdir()} == {"cwd", "home", "tmp", "cache", "out"}
