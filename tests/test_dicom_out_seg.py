"""DICOM SEG: valid by dciodvfy, read back with highdicom, every frame on its source slice.

Each source variant (vendor, orientation, classic or Enhanced MR) is built
once per module; the mask is the threshold double's exactly known sphere.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage

from dicom_out import codes
from dicom_out.context import SERIES_NUMBER_SEG, OutputContext, OutputError
from dicom_out.preview import PreviewParams, outline_rgb, seg_mask_on_volume, seg_overlay_png
from dicom_out.seg import SEGMENT_LABEL, build_seg, tracking_uid
from tests.dicom_out_cases import VARIANTS, BrightBlob, dciodvfy, make_context, variant_context


@dataclasses.dataclass(frozen=True)
class Built:
    ctx: OutputContext
    seg: Dataset
    back: hd.seg.Segmentation  # the SEG written to bytes and read again


def _read_back(ds: Dataset) -> hd.seg.Segmentation:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return hd.seg.segread(buffer)


# VARIANTS as fixture params: one value (the tuple) each, same ids.
VARIANT_PARAMS = [pytest.param(v.values, id=v.id) for v in VARIANTS]


@pytest.fixture(scope="module", params=VARIANT_PARAMS)
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    vendor, orientation, enhanced = request.param
    ctx = variant_context(tmp_path_factory, vendor, orientation, enhanced)
    seg = build_seg(ctx)
    return Built(ctx, seg, _read_back(seg))


def _source_positions(ctx: OutputContext) -> dict[tuple[str, int], np.ndarray]:
    """(SOP Instance UID, frame number or 0) → ImagePositionPatient of that source slice."""
    out = {}
    for ds in ctx.source:
        uid = str(ds.SOPInstanceUID)
        if "PerFrameFunctionalGroupsSequence" in ds:
            for n, item in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
                ipp = item.PlanePositionSequence[0].ImagePositionPatient
                out[(uid, n)] = np.asarray(ipp, float)
        else:
            out[(uid, 0)] = np.asarray(ds.ImagePositionPatient, float)
    return out


def test_seg_passes_dciodvfy(built: Built, tmp_path: Path) -> None:
    assert dciodvfy(built.seg, tmp_path) == []


def test_seg_header_reads_back(built: Built) -> None:
    ctx, back = built.ctx, built.back
    assert back.SOPClassUID == SegmentationStorage
    assert back.SegmentationType == "BINARY"
    assert (back.SeriesInstanceUID, back.SOPInstanceUID) == (
        ctx.seg_series_uid,
        ctx.seg_instance_uid,
    )
    assert back.StudyInstanceUID == ctx.study_uid
    assert back.FrameOfReferenceUID == ctx.volume.frame_of_reference_uid
    assert (back.PatientID, str(back.PatientName)) == (
        ctx.first.PatientID,
        str(ctx.first.PatientName),
    )
    assert back.AccessionNumber == ctx.first.AccessionNumber
    assert int(back.SeriesNumber) == SERIES_NUMBER_SEG
    assert "research use only" in back.SeriesDescription.lower()
    (ref_series,) = back.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == ctx.source_series_uid
    referenced = {str(i.ReferencedSOPInstanceUID) for i in ref_series.ReferencedInstanceSequence}
    assert referenced == {str(ds.SOPInstanceUID) for ds in ctx.source}


def test_segment_description_reads_back(built: Built) -> None:
    ctx, back = built.ctx, built.back
    assert back.segment_numbers == [1]
    desc = back.get_segment_description(1)
    assert desc.segment_label == SEGMENT_LABEL
    assert desc.segmented_property_category == codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE
    assert desc.segmented_property_type == codes.NEOPLASM
    assert desc.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    assert desc.algorithm_identification is not None
    algorithm = desc.algorithm_identification[0]
    assert algorithm.AlgorithmName == ctx.analysis.segmentation.backend
    assert algorithm.AlgorithmVersion == ctx.analysis.segmentation.version
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # AI (CID 7162)
    assert desc.tracking_uid == tracking_uid(ctx)
    assert [c.value for c in desc.anatomic_regions] == [codes.MENINGES.value]


def _assert_frames_on_source_slices(ctx: OutputContext, back: hd.seg.Segmentation) -> None:
    """Each SEG frame: its referenced source slice, that slice's position, that slice's mask."""
    mask = ctx.analysis.mask_source
    assert mask is not None
    positions = _source_positions(ctx)
    volume = ctx.volume
    z_of = {
        key: z
        for z, key in enumerate(zip(volume.sop_instance_uids, volume.frame_numbers, strict=True))
    }
    seen = []
    for i, group in enumerate(back.PerFrameFunctionalGroupsSequence):
        source = group.DerivationImageSequence[0].SourceImageSequence[0]
        key = (str(source.ReferencedSOPInstanceUID), int(source.get("ReferencedFrameNumber", 0)))
        z = z_of[key]
        seen.append(z)
        ipp = np.asarray(group.PlanePositionSequence[0].ImagePositionPatient, float)
        np.testing.assert_allclose(ipp, positions[key], atol=1e-4)
        frame = np.asarray(back.get_stored_frame(i + 1)) != 0
        np.testing.assert_array_equal(frame, mask[z] != 0)
    # empty slices are omitted, every slice with tumour is there once
    assert sorted(seen) == [z for z in range(mask.shape[0]) if mask[z].any()]
    assert int(back.NumberOfFrames) < mask.shape[0]


def test_every_frame_lies_on_its_source_slice(built: Built) -> None:
    _assert_frames_on_source_slices(built.ctx, built.back)


def test_order_of_the_source_instances_does_not_matter(built: Built) -> None:
    if len(built.ctx.source) == 1:  # Enhanced MR: frames are placed by their frame numbers
        sop = str(built.ctx.source[0].SOPInstanceUID)
        for group in built.back.PerFrameFunctionalGroupsSequence:
            ref = group.DerivationImageSequence[0].SourceImageSequence[0]
            assert str(ref.ReferencedSOPInstanceUID) == sop
            assert int(ref.ReferencedFrameNumber) in built.ctx.volume.frame_numbers
        return
    ctx = dataclasses.replace(built.ctx, source=tuple(reversed(built.ctx.source)))
    _assert_frames_on_source_slices(ctx, _read_back(build_seg(ctx)))


def test_geometry_and_references_rebuild_the_mask(built: Built) -> None:
    ctx, back = built.ctx, built.back
    assert ctx.analysis.mask_source is not None
    mask = (np.asarray(ctx.analysis.mask_source) != 0).astype(np.uint8)
    np.testing.assert_array_equal(seg_mask_on_volume(back, ctx.volume), mask)
    volume = ctx.volume
    if any(volume.frame_numbers):
        by_ref = back.get_pixels_by_source_frame(
            source_sop_instance_uid=volume.sop_instance_uids[0],
            source_frame_numbers=list(volume.frame_numbers),
            combine_segments=True,
            assert_missing_frames_are_empty=True,  # empty frames were omitted on purpose
        )
    else:
        by_ref = back.get_pixels_by_source_instance(
            source_sop_instance_uids=list(volume.sop_instance_uids),
            combine_segments=True,
            assert_missing_frames_are_empty=True,
        )
    np.testing.assert_array_equal(by_ref != 0, mask != 0)


def test_seg_uids_follow_the_mask_not_the_job(built: Built) -> None:
    again = build_seg(built.ctx)
    assert _bytes(again) == _bytes(built.seg)
    # a new revision of the series with the same mask names the same SEG (not re-sent) ...
    same = build_seg(dataclasses.replace(built.ctx, job_key="test-series/r1"))
    assert same.SOPInstanceUID == built.seg.SOPInstanceUID
    assert same.SeriesInstanceUID == built.seg.SeriesInstanceUID
    # ... a changed mask is a new SEG, and the tumour keeps its tracking UID
    mask = built.ctx.analysis.mask_source.copy()
    z = int(np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0])
    mask[z] = 0
    changed = dataclasses.replace(
        built.ctx,
        job_key="test-series/r2",
        analysis=dataclasses.replace(built.ctx.analysis, mask_source=mask),
    )
    other = build_seg(changed)
    assert other.SeriesInstanceUID != built.seg.SeriesInstanceUID
    assert other.SOPInstanceUID != built.seg.SOPInstanceUID
    assert other.SegmentSequence[0].TrackingUID == built.seg.SegmentSequence[0].TrackingUID


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("orientation", "enhanced"),
    [pytest.param("sag", False, id="classic"), pytest.param("axial", True, id="enhanced")],
)
def test_volume_sorted_the_other_way_gives_the_same_placement(
    orientation: str, enhanced: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Reverse the volume's z order: frames still pair with their source slices/frames."""
    ctx = make_context(tmp_path_factory.mktemp("rev"), "siemens", orientation, enhanced)
    volume, analysis = ctx.volume, ctx.analysis
    assert analysis.mask_source is not None
    n = volume.shape[0]
    direction = volume.direction.copy()
    direction[:, 2] *= -1
    last = volume.affine() @ np.array([0.0, 0.0, n - 1.0, 1.0])
    reversed_volume = dataclasses.replace(
        volume,
        array=volume.array[::-1].copy(),
        origin=(float(last[0]), float(last[1]), float(last[2])),
        direction=direction,
        sop_instance_uids=volume.sop_instance_uids[::-1],
        frame_numbers=volume.frame_numbers[::-1],
    )
    reversed_mask = analysis.mask_source[::-1].copy()
    reversed_ctx = dataclasses.replace(
        ctx,
        volume=reversed_volume,
        analysis=dataclasses.replace(analysis, volume=reversed_volume, mask_source=reversed_mask),
    )
    flipped = _read_back(build_seg(reversed_ctx))
    _assert_frames_on_source_slices(reversed_ctx, flipped)
    np.testing.assert_array_equal(seg_mask_on_volume(flipped, reversed_volume), reversed_mask)
    if enhanced:  # one multi-frame source: the SEG is the same, frame for frame
        original = _read_back(build_seg(ctx))
        assert flipped.pixel_array.tobytes() == original.pixel_array.tobytes()
        assert _frame_refs(flipped) == _frame_refs(original)


def _frame_refs(seg: Dataset) -> list[int]:
    return [
        int(g.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        for g in seg.PerFrameFunctionalGroupsSequence
    ]


def test_not_assessable_analysis_has_no_seg(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, assessable=False, n_slices=16, rows=32, cols=32)
    with pytest.raises(OutputError, match="not assessable"):
        build_seg(ctx)


def test_mask_off_the_source_grid_is_refused(built: Built) -> None:
    ctx = built.ctx
    assert ctx.analysis.mask_source is not None
    wrong = dataclasses.replace(ctx.analysis, mask_source=ctx.analysis.mask_source[:, :-1])
    with pytest.raises(OutputError, match="mask has shape"):
        build_seg(dataclasses.replace(ctx, analysis=wrong))


# -- the preview ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("vendor", "orientation"),
    [pytest.param("siemens", "sag", id="sagittal"), pytest.param("ge", "axial", id="axial")],
)
def test_overlay_png_shows_the_outline_in_all_planes(
    vendor: str, orientation: str, tmp_path: Path
) -> None:
    ctx = make_context(tmp_path, vendor, orientation, False)
    seg = build_seg(ctx)
    params = PreviewParams()
    out = seg_overlay_png(seg, ctx.volume, tmp_path / "overlay.png")
    image = np.asarray(Image.open(out).convert("RGB"))
    assert (image.shape[1], image.shape[0]) == params.size
    colour = np.all(image == np.asarray(outline_rgb(seg)), axis=2)
    panels = [
        colour[params.header_px : params.header_px + params.panel_px, k * params.panel_px :][
            :, : params.panel_px
        ]
        for k in range(3)
    ]
    assert all(p.sum() > 50 for p in panels), [int(p.sum()) for p in panels]


def test_overlay_refuses_a_seg_of_another_frame_of_reference(built: Built, tmp_path: Path) -> None:
    other = dataclasses.replace(built.ctx.volume, frame_of_reference_uid="1.2.3.4")
    with pytest.raises(OutputError, match="Frame of Reference"):
        seg_overlay_png(built.seg, other, tmp_path / "x.png")


@pytest.mark.slow  # the fast lane has the same checks on every vendor variant (`built`)
def test_realistic_synthetic_case_round_trips(tmp_path: Path) -> None:
    """A synthetic study with its ground-truth mask: SEG geometry exact, preview written."""
    from ai_core.analysis import AnalysisOptions, analyse_series
    from lab.synth import generate_cohort

    generate_cohort(tmp_path / "cohort", cases=1, seed=23, size="small", progress=False)
    with open(tmp_path / "cohort" / "manifest.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    paths = sorted((tmp_path / "cohort" / row["series"]).glob("*.dcm"))
    analysis = analyse_series(
        paths,
        BrightBlob(),
        options=AnalysisOptions(radiomics=False),
        reference_mask=tmp_path / "cohort" / row["mask"],
    )
    assert analysis.ok and analysis.mask_source is not None
    ctx = OutputContext(
        source=tuple(pydicom.dcmread(p) for p in paths),
        volume=analysis.volume,
        analysis=analysis,
        prediction=None,
        job_key="synth/r0",
        software_version="0.1.0-test",
    )
    seg = build_seg(ctx)
    assert dciodvfy(seg, tmp_path / "dv") == []
    mask = (analysis.mask_source != 0).astype(np.uint8)
    np.testing.assert_array_equal(seg_mask_on_volume(seg, ctx.volume), mask)
    out = seg_overlay_png(seg, ctx.volume, tmp_path / "synthetic.png")
    image = np.asarray(Image.open(out).convert("RGB"))
    assert np.all(image == np.asarray(outline_rgb(seg)), axis=2).sum() > 100
