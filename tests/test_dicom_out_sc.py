"""Heatmap Secondary Captures: valid DICOM for every vendor variant, the
right orientation, the largest tumour slice, the heat where Grad-CAM is
high, read back pixel-exact, and rebuilt identically."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import SecondaryCaptureImageStorage

from dicom_out.context import (
    MANUFACTURER,
    SERIES_NUMBER_SC,
    OutputContext,
    OutputError,
)
from dicom_out.planes import RenderParams, choose_slices
from dicom_out.render import BOX_RGB, OUTLINE_RGB, RenderedSlice, render_heatmaps
from dicom_out.sc import build_heatmap_scs, gradcam_box, legend_lines
from tests.dicom_out_cases import VARIANTS, dciodvfy, make_context, variant_context


@dataclasses.dataclass(frozen=True)
class Built:
    ctx: OutputContext
    scs: list[Dataset]
    rendered: list[RenderedSlice]


def _render(ctx: OutputContext, heat: np.ndarray | None = None) -> list[RenderedSlice]:
    assert ctx.prediction is not None and ctx.prediction.gradcam_source is not None
    assert ctx.analysis.mask_source is not None
    return render_heatmaps(
        ctx.volume,
        ctx.analysis.mask_source,
        ctx.prediction.gradcam_source if heat is None else heat,
        legend_lines(ctx.prediction),
        head_mask=ctx.analysis.working.head_mask_sitk(),
        heat_box=gradcam_box(ctx.prediction.crop) if heat is None else None,
    )


# VARIANTS as single fixture values (each one a (vendor, orientation, enhanced) tuple).
VARIANT_PARAMS = [pytest.param(p.values, id=p.id) for p in VARIANTS]


@pytest.fixture(scope="module", params=VARIANT_PARAMS)
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    vendor, orientation, enhanced = request.param
    ctx = variant_context(tmp_path_factory, vendor, orientation, enhanced)
    return Built(ctx, build_heatmap_scs(ctx), _render(ctx))


@pytest.fixture(scope="module")
def axial(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """An axial source whose tumour lies anterior and on the patient's left."""
    ctx = variant_context(tmp_path_factory, "ge", "axial", False)
    return Built(ctx, build_heatmap_scs(ctx), _render(ctx))


# -- helpers ----------------------------------------------------------------------
def _tumour_centroid_lps(ctx: OutputContext) -> np.ndarray:
    assert ctx.analysis.mask_source is not None
    zyx = np.argwhere(ctx.analysis.mask_source != 0)[:, ::-1].astype(float)
    homogeneous = np.column_stack([zyx, np.ones(len(zyx))])
    return (ctx.volume.affine() @ homogeneous.T).T[:, :3].mean(axis=0)


def _fov(ctx: OutputContext) -> tuple[np.ndarray, np.ndarray]:
    """The source's LPS bounding box, computed here from its affine."""
    nz, ny, nx = ctx.volume.shape
    corners = [
        [i, j, k, 1.0] for i in (-0.5, nx - 0.5) for j in (-0.5, ny - 0.5) for k in (-0.5, nz - 0.5)
    ]
    points = (ctx.volume.affine() @ np.array(corners).T).T[:, :3]
    return points.min(axis=0), points.max(axis=0)


def _panel(item: RenderedSlice) -> np.ndarray:
    top, left, height, width = item.panel
    return item.rgb[top : top + height, left : left + width].astype(int)


def _outline(panel: np.ndarray) -> np.ndarray:
    return np.all(panel == np.array(OUTLINE_RGB), axis=-1)


def _redness(panel: np.ndarray) -> np.ndarray:
    """R - B: 0 on grey anatomy, high under the red-to-yellow heat colours."""
    return panel[..., 0] - panel[..., 2]


def _upscaled(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows = np.minimum((np.arange(shape[0]) * plane.shape[0]) // shape[0], plane.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * plane.shape[1]) // shape[1], plane.shape[1] - 1)
    return plane[np.ix_(rows, cols)]


def _largest(items: list[RenderedSlice]) -> RenderedSlice:
    return max(items, key=lambda item: item.plane.tumour_area_mm2)


# -- DICOM ---------------------------------------------------------------------------
def test_every_sc_passes_dciodvfy(built: Built, tmp_path: Path) -> None:
    assert 1 <= len(built.scs) <= 9
    for ds in built.scs:
        assert dciodvfy(ds, tmp_path) == [], f"instance {ds.InstanceNumber}"


def test_sc_header(built: Built) -> None:
    ctx, source = built.ctx, built.ctx.first
    for number, ds in enumerate(built.scs, start=1):
        assert ds.SOPClassUID == SecondaryCaptureImageStorage
        assert ds.SOPInstanceUID == ctx.sc_instance_uid(number)
        assert ds.SeriesInstanceUID == ctx.sc_series_uid
        assert ds.InstanceNumber == number
        assert ds.SeriesNumber == SERIES_NUMBER_SC
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
            assert ds[keyword].value == source[keyword].value, keyword
        assert ds.ConversionType == "WSD"
        assert ds.BurnedInAnnotation == "YES"
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert ds.SeriesDescription == "Grad-CAM heatmap (research use only)"
        assert ds.Manufacturer == MANUFACTURER
        assert ds.SoftwareVersions == ctx.software_version
        assert list(ds.PatientOrientation) == ["L", "P"]
        assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.BitsAllocated) == (
            "RGB",
            3,
            8,
        )
        assert ds.Columns >= 512


def test_source_images_are_the_slices_read(built: Built) -> None:
    ctx = built.ctx
    source = {str(ds.SOPInstanceUID): ds for ds in ctx.source}
    for ds in built.scs:
        refs = ds.SourceImageSequence
        assert refs, "every SC names its source images"
        for item in refs:
            original = source[item.ReferencedSOPInstanceUID]
            assert item.ReferencedSOPClassUID == original.SOPClassUID
            frames = item.get("ReferencedFrameNumber")
            if "NumberOfFrames" in original:
                numbers = list(frames) if isinstance(frames, MultiValue) else [frames]
                assert all(1 <= int(f) <= int(original.NumberOfFrames) for f in numbers)
            else:
                assert frames is None
    if ctx.volume.plane() == "axial" and len(ctx.source) > 1:
        # an axial source is cut through its own slices: one reference, the slice at that height
        for ds, item in zip(built.scs, built.rendered, strict=True):
            (ref,) = ds.SourceImageSequence
            z = float(source[ref.ReferencedSOPInstanceUID].ImagePositionPatient[2])
            assert z == pytest.approx(item.plane.z_mm, abs=1e-3)


def test_read_back_is_what_was_rendered(built: Built, tmp_path: Path) -> None:
    assert len(built.scs) == len(built.rendered)
    for ds, item in zip(built.scs, built.rendered, strict=True):
        path = tmp_path / f"{ds.InstanceNumber}.dcm"
        ds.save_as(path, enforce_file_format=True)
        back = pydicom.dcmread(path)
        np.testing.assert_array_equal(back.pixel_array, item.rgb)
        assert back.StudyInstanceUID == built.ctx.study_uid
        assert back.PatientName == built.ctx.first.PatientName


def test_rebuild_gives_identical_files(built: Built) -> None:
    again = build_heatmap_scs(built.ctx)

    def encoded(ds: Dataset) -> bytes:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    assert [encoded(ds) for ds in again] == [encoded(ds) for ds in built.scs]


# -- what is drawn -----------------------------------------------------------------
def test_tumour_on_patient_left_is_on_image_right_and_anterior_on_top(axial: Built) -> None:
    lo, hi = _fov(axial.ctx)
    centre = (lo + hi) / 2
    tumour = _tumour_centroid_lps(axial.ctx)
    assert tumour[0] > centre[0] + 3, "test premise: the tumour is on the patient's left (+x)"
    assert tumour[1] < centre[1] - 3, "test premise: the tumour is anterior (-y)"
    item = _largest(axial.rendered)
    panel = _panel(item)
    rows, cols = np.nonzero(_outline(panel))
    assert cols.mean() > panel.shape[1] * 0.55, "patient left must be on the image's right"
    assert rows.mean() < panel.shape[0] * 0.45, "anterior must be at the top"


def test_outline_is_where_the_tumour_is(built: Built) -> None:
    """The outline's centre in the image sits where the tumour is in patient space."""
    lo, hi = _fov(built.ctx)
    tumour = _tumour_centroid_lps(built.ctx)
    panel = _panel(_largest(built.rendered))
    rows, cols = np.nonzero(_outline(panel))
    expected_col = (tumour[0] - lo[0]) / (hi[0] - lo[0]) * panel.shape[1]
    expected_row = (tumour[1] - lo[1]) / (hi[1] - lo[1]) * panel.shape[0]
    mm_per_px = (hi[0] - lo[0]) / panel.shape[1]
    assert abs(cols.mean() - expected_col) * mm_per_px < 2.0
    assert abs(rows.mean() - expected_row) * mm_per_px < 2.0


def test_largest_tumour_slice_is_included(built: Built) -> None:
    """Areas counted on the source voxels, along its axis closest to cranio-caudal."""
    ctx = built.ctx
    assert ctx.analysis.mask_source is not None
    axis = int(np.argmax(np.abs(ctx.volume.direction[2, :])))  # x, y, z index axis
    numpy_axis = 2 - axis
    others = tuple(a for a in range(3) if a != numpy_axis)
    areas = (ctx.analysis.mask_source != 0).sum(axis=others)
    heights = ctx.volume.origin[2] + np.arange(len(areas)) * ctx.volume.spacing[axis] * float(
        ctx.volume.direction[2, axis]
    )
    shown = [int(np.argmin(np.abs(heights - item.plane.z_mm))) for item in built.rendered]
    assert max(areas[i] for i in shown) == areas.max()
    zs = [item.plane.z_mm for item in built.rendered]
    assert zs == sorted(zs), "instances run inferior to superior"


def test_heat_is_drawn_where_gradcam_is_high(built: Built) -> None:
    high, low = [], []
    for item in built.rendered:
        panel = _panel(item)
        heat = _upscaled(item.plane.heat, panel.shape[:2])
        keep = ~_outline(panel)
        high.append(_redness(panel)[(heat > 0.8) & keep])
        low.append(_redness(panel)[(heat < 0.15) & keep])
    hot, cold = np.concatenate(high), np.concatenate(low)
    assert hot.size > 100 and cold.size > 100
    assert hot.mean() > 120
    assert np.abs(cold).mean() < 5


def test_heat_follows_the_map_in_patient_space(axial: Built) -> None:
    """A map that is 1 only in the patient's anterior-left quarter shows top right only."""
    ctx = axial.ctx
    lo, hi = _fov(ctx)
    centre = (lo + hi) / 2
    nz, ny, nx = ctx.volume.shape
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    index = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    lps = (ctx.volume.affine() @ index)[:3].reshape(3, nz, ny, nx)
    quarter = ((lps[0] > centre[0] + 4) & (lps[1] < centre[1] - 4)).astype(np.float32)
    panel = _panel(_largest(_render(ctx, heat=quarter)))
    red = _redness(panel) * ~_outline(panel)
    h, w = red.shape
    assert red[: h // 3, -w // 3 :].mean() > 100  # anterior (top), patient left (right)
    assert red[h // 2 :, :].max() < 5 and red[:, : w // 2].max() < 5


def _box_pixels(item: RenderedSlice) -> tuple[np.ndarray, np.ndarray]:
    return np.nonzero(np.all(_panel(item) == np.array(BOX_RGB), axis=-1))


def test_map_box_outside_the_field_of_view_is_not_drawn(built: Built) -> None:
    """In these small test series the model crop (80 mm) is larger than the 64 mm field."""
    ctx = built.ctx
    assert ctx.prediction is not None
    box_lo, box_hi = gradcam_box(ctx.prediction.crop)
    lo, hi = _fov(ctx)
    assert np.all(box_lo[:2] < lo[:2]) and np.all(box_hi[:2] > hi[:2]), "test premise"
    for item in built.rendered:
        rows, _ = _box_pixels(item)
        assert rows.size == 0


def test_map_box_is_drawn_at_its_patient_position(axial: Built) -> None:
    ctx = axial.ctx
    lo, hi = _fov(ctx)
    centre = (lo + hi) / 2
    box_lo, box_hi = centre + np.array([4.0, -20.0, -50.0]), centre + np.array([24.0, 10.0, 50.0])
    assert ctx.prediction is not None and ctx.analysis.mask_source is not None
    item = render_heatmaps(
        ctx.volume,
        ctx.analysis.mask_source,
        ctx.prediction.gradcam_source,  # type: ignore[arg-type]
        (),
        heat_box=(box_lo, box_hi),
    )[0]
    rows, cols = _box_pixels(item)
    px_per_mm = _panel(item).shape[1] / (hi[0] - lo[0])
    expected = np.array(
        [box_lo[0] - lo[0], box_hi[0] - lo[0], box_lo[1] - lo[1], box_hi[1] - lo[1]]
    )
    found = np.array([cols.min(), cols.max(), rows.min(), rows.max()]) / px_per_mm
    assert np.allclose(found, expected, atol=0.5), (found, expected)  # mm


def test_text_stays_off_the_anatomy(axial: Built) -> None:
    ctx = axial.ctx
    assert ctx.prediction is not None and ctx.analysis.mask_source is not None
    item = axial.rendered[0]
    other = render_heatmaps(
        ctx.volume,
        ctx.analysis.mask_source,
        ctx.prediction.gradcam_source,  # type: ignore[arg-type]
        ("a different legend", "on two lines"),
        head_mask=ctx.analysis.working.head_mask_sitk(),
    )[0]
    np.testing.assert_array_equal(_panel(other), _panel(item))
    top, _, height, _ = item.panel
    assert not np.array_equal(
        other.rgb[top + height :], item.rgb[top + height : other.rgb.shape[0]]
    )
    banner = item.rgb[:top]
    amber = np.all(banner == (255, 191, 0), axis=-1).mean()
    assert amber > 0.3, "the disclaimer banner is there"


def test_legend_lines_name_the_prediction_and_the_model(axial: Built) -> None:
    prediction = axial.ctx.prediction
    assert prediction is not None
    lines = legend_lines(prediction)
    verdict = "Ki-67 >= 5 %" if prediction.ki67_high else "Ki-67 < 5 %"
    assert lines[0] == (
        f"Ki-67 >= 5 %: probability {prediction.probability_output1:.2f} (Output 1) -> "
        f"{verdict} (threshold {prediction.threshold:.2f})"
    )
    text = "\n".join(lines)
    assert prediction.map_towards_high is not None
    shown = "Ki-67 >= 5 %" if prediction.map_towards_high else "Ki-67 < 5 %"
    assert f"Map: MRI evidence for {shown} (Grad-CAM + tumour size/texture)" in lines
    flipped = legend_lines(
        dataclasses.replace(prediction, map_towards_high=not prediction.map_towards_high)
    )
    assert shown not in [line.removeprefix("Map: MRI evidence for ")[:12] for line in flipped]
    no_map = legend_lines(dataclasses.replace(prediction, map_towards_high=None))
    assert not any(line.startswith("Map:") for line in no_map)
    assert f"probability {prediction.probability_output2:.2f}" in text
    assert f"{prediction.model_name} {prediction.model_version}" in text
    assert ("trained on synthetic data" in text) == prediction.synthetic_model
    real = legend_lines(dataclasses.replace(prediction, synthetic_model=False))
    assert "synthetic data" not in "\n".join(real)
    item = axial.rendered[1]
    assert item.lines[-1].startswith(f"Axial slice 2 of {item.count}, z = ")


# -- no heatmap, bad input ---------------------------------------------------------
def test_no_prediction_no_sc(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, "siemens", "sag", False, assessable=False)
    assert ctx.prediction is None
    assert build_heatmap_scs(ctx) == []


def test_no_gradcam_no_sc_and_no_mask_is_an_error(axial: Built) -> None:
    ctx = axial.ctx
    assert ctx.prediction is not None
    no_map = dataclasses.replace(
        ctx, prediction=dataclasses.replace(ctx.prediction, gradcam_source=None)
    )
    assert build_heatmap_scs(no_map) == []
    no_mask = dataclasses.replace(ctx, analysis=dataclasses.replace(ctx.analysis, mask_source=None))
    with pytest.raises(OutputError, match="no tumour mask"):
        build_heatmap_scs(no_mask)
    empty = np.zeros_like(ctx.analysis.mask_source)
    empty_mask = dataclasses.replace(
        ctx, analysis=dataclasses.replace(ctx.analysis, mask_source=empty)
    )
    with pytest.raises(OutputError, match="tumour mask is empty"):
        build_heatmap_scs(empty_mask)


def test_choose_slices_spreads_and_keeps_the_largest() -> None:
    areas = np.zeros(40)
    areas[5:35] = np.arange(1, 31)
    areas[20] = 1000.0  # the largest, between two evenly spaced picks
    picks = choose_slices(areas, 9)
    assert len(picks) == 9 and picks == sorted(picks)
    assert 20 in picks and picks[0] == 5 and picks[-1] == 34
    assert choose_slices(np.array([0.0, 2.0, 3.0, 0.0]), 9) == [1, 2]
    with pytest.raises(ValueError, match="no plane crosses the tumour"):
        choose_slices(np.zeros(5), 9)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_slices": 0}, "max_slices"),
        ({"window_percentiles": (99.0, 1.0)}, "window_percentiles"),
        ({"heat_floor": 0.8, "heat_full": 0.5}, "heat_floor"),
        ({"heat_alpha": 0.0}, "heat_alpha"),
        ({"min_panel_px": 100}, "min_panel_px"),
    ],
)
def test_render_params_are_checked(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RenderParams(**changes)  # type: ignore[arg-type]
