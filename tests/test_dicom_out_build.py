"""All objects for one series (dicom_out.build): order, kinds, the received-SEG
and not-assessable cases, and a source without its Type 2 patient/study
attributes (a scanner may leave them out) still gives valid objects."""

from __future__ import annotations

import dataclasses
from copy import deepcopy
from pathlib import Path

import pytest

from dicom_out.build import build_outputs, kind_of
from dicom_out.context import TYPE2_PATIENT_STUDY, OutputContext
from tests.dicom_out_cases import dciodvfy, make_context, variant_context


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> OutputContext:
    return variant_context(tmp_path_factory, "ge", "axial", False)


def test_seg_first_then_scs_then_sr(ctx: OutputContext) -> None:
    kinds = [kind_of(ds) for ds in build_outputs(ctx)]
    assert kinds[0] == "seg" and kinds[-1] == "sr"
    assert set(kinds[1:-1]) == {"sc"} and len(kinds) >= 3


def test_received_seg_is_referenced_not_resent(ctx: OutputContext) -> None:
    ours = build_outputs(ctx)[0]
    theirs = ours.copy()
    theirs.SOPInstanceUID = "1.2.826.0.1.3680043.10.99.5.1"
    theirs.SeriesInstanceUID = "1.2.826.0.1.3680043.10.99.5"
    out = build_outputs(ctx, received_seg=theirs)
    assert "seg" not in [kind_of(ds) for ds in out]
    sr = out[-1]
    evidence = {
        str(ref.ReferencedSOPInstanceUID)
        for item in sr.CurrentRequestedProcedureEvidenceSequence
        for series in item.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert theirs.SOPInstanceUID in evidence


def test_not_assessable_gives_only_the_sr(tmp_path: Path) -> None:
    bare = make_context(tmp_path, "siemens", "sag", assessable=False)
    out = build_outputs(bare)
    assert [kind_of(ds) for ds in out] == ["sr"]
    assert dciodvfy(out[0], tmp_path / "v") == []


def test_source_without_type2_patient_study_attributes(ctx: OutputContext, tmp_path: Path) -> None:
    stripped = []
    for ds in ctx.source:
        bare_ds = deepcopy(ds)
        for keyword in TYPE2_PATIENT_STUDY:
            if keyword in bare_ds:
                delattr(bare_ds, keyword)
        stripped.append(bare_ds)
    bare = dataclasses.replace(ctx, source=tuple(stripped))
    out = build_outputs(bare)
    assert [kind_of(ds) for ds in out][0] == "seg"
    for ds in out:
        assert "PatientID" in ds and not ds.PatientID
        assert dciodvfy(ds, tmp_path / "v") == [], kind_of(ds)


def test_source_without_slice_thickness_still_gives_a_valid_seg(
    ctx: OutputContext, tmp_path: Path
) -> None:
    from dicom_out.seg import build_seg

    stripped = []
    for ds in ctx.source:
        bare_ds = deepcopy(ds)
        if "SliceThickness" in bare_ds:
            del bare_ds.SliceThickness
        stripped.append(bare_ds)
    bare = dataclasses.replace(ctx, source=tuple(stripped))
    seg = build_seg(bare)
    assert dciodvfy(seg, tmp_path / "v") == []
    assert all("SliceThickness" not in ds for ds in stripped)  # the caller's data untouched
