"""ai_core.volume: geometry, enhanced multi-frame, compressed syntaxes, every refusal."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from ai_core.errors import VolumeError
from ai_core.volume import Volume, load_series
from tests.conftest import require_tool

ROWS, COLS = 40, 36  # not square, so a transposition shows
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
_C, _S = np.cos(np.deg2rad(20.0)), np.sin(np.deg2rad(20.0))
OBLIQUE = (1.0, 0.0, 0.0, 0.0, float(_C), float(_S))


def plane_pixels(k: int, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """Slice ``k``'s pixels: unique per slice and per position."""
    return (k * 100 + np.arange(rows * cols, dtype=np.uint16).reshape(rows, cols)).astype(np.uint16)


def _base(sop_class: str, frame_of_ref: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.FrameOfReferenceUID = frame_of_ref
    ds.Modality = "MR"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


def slice_positions(orientation: Sequence[float], n: int, step: float) -> list[np.ndarray]:
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col)
    start = np.array([-40.0, 12.5, 30.0])
    return [start + k * step * normal for k in range(n)]


def write_classic(
    folder: Path,
    *,
    n: int = 5,
    orientation: Sequence[float] = AXIAL,
    step: float = 2.0,
    pixel_spacing: tuple[float, float] = (0.6, 0.5),
    positions: Sequence[np.ndarray] | None = None,
    edit: Callable[[int, Dataset], None] | None = None,
) -> list[Path]:
    """Write one single-frame MR instance per slice (file order reversed)."""
    folder.mkdir(parents=True, exist_ok=True)
    positions = positions if positions is not None else slice_positions(orientation, n, step)
    paths = []
    for k, pos in enumerate(positions):
        ds = _base(MR_STORAGE, "1.2.3.4.9")
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.PixelSpacing = list(pixel_spacing)
        ds.Rows, ds.Columns = ROWS, COLS
        ds.PixelData = plane_pixels(k).tobytes()
        if edit is not None:
            edit(k, ds)
        path = folder / f"slice{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths[::-1]


def write_enhanced(folder: Path, *, n: int = 4, step: float = 1.5, rescale: bool = False) -> Path:
    """One Enhanced MR instance, frames stored in scrambled order."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = _base(ENHANCED_MR_STORAGE, "1.2.3.4.9")
    ds.Rows, ds.Columns = ROWS, COLS
    ds.NumberOfFrames = n
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.6, 0.5]
    measures.SliceThickness = step
    orient = Dataset()
    orient.ImageOrientationPatient = list(SAGITTAL)
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orient])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    order = [2, 0, 3, 1][:n] if n == 4 else list(range(n))[::-1]
    positions = slice_positions(SAGITTAL, n, step)
    groups, planes = [], []
    for k in order:
        group = Dataset()
        plane = Dataset()
        plane.ImagePositionPatient = [float(v) for v in positions[k]]
        group.PlanePositionSequence = DicomSequence([plane])
        if rescale:
            transform = Dataset()
            transform.RescaleSlope = 2.0
            transform.RescaleIntercept = -10.0
            transform.RescaleType = "US"
            group.PixelValueTransformationSequence = DicomSequence([transform])
        groups.append(group)
        planes.append(plane_pixels(k))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(groups)
    ds.PixelData = np.stack(planes).tobytes()
    path = folder / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def expected_stack(n: int) -> np.ndarray:
    return np.stack([plane_pixels(k) for k in range(n)])


# -- geometry -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("orientation", "codes", "plane"),
    [(AXIAL, "LPS", "axial"), (SAGITTAL, "PIR", "sagittal"), (CORONAL, "LIP", "coronal")],
    ids=["axial", "sagittal", "coronal"],
)
def test_classic_series_geometry(
    tmp_path: Path, orientation: tuple[float, ...], codes: str, plane: str
) -> None:
    paths = write_classic(tmp_path, orientation=orientation, step=2.0)
    vol = load_series(paths)
    assert vol.shape == (5, ROWS, COLS)
    assert vol.array.dtype == np.uint16
    np.testing.assert_array_equal(vol.array, expected_stack(5))
    assert vol.spacing == pytest.approx((0.5, 0.6, 2.0))
    assert vol.origin == pytest.approx((-40.0, 12.5, 30.0))
    assert vol.axis_codes() == codes
    assert vol.plane() == plane
    assert vol.frame_of_reference_uid == "1.2.3.4.9"
    assert vol.frame_numbers == (0,) * 5


def test_oblique_series_affine_maps_indices_to_positions(tmp_path: Path) -> None:
    positions = slice_positions(OBLIQUE, 6, 1.2)
    vol = load_series(write_classic(tmp_path, orientation=OBLIQUE, n=6, step=1.2))
    assert vol.plane() == "oblique"
    affine = vol.affine()
    for z, pos in enumerate(positions):
        np.testing.assert_allclose(affine @ np.array([0, 0, z, 1.0]), [*pos, 1.0], atol=1e-6)
    # one pixel along x moves 0.5 mm along the row direction
    step_x = affine @ np.array([1, 0, 0, 1.0]) - affine @ np.array([0, 0, 0, 1.0])
    np.testing.assert_allclose(step_x[:3], [0.5, 0, 0], atol=1e-9)
    step_y = affine @ np.array([0, 1, 0, 1.0]) - affine @ np.array([0, 0, 0, 1.0])
    np.testing.assert_allclose(step_y[:3], 0.6 * np.array(OBLIQUE[3:]), atol=1e-9)


def test_rescale_slope_gives_float32(tmp_path: Path) -> None:
    def edit(_k: int, ds: Dataset) -> None:
        ds.RescaleSlope = 0.5
        ds.RescaleIntercept = 3

    vol = load_series(write_classic(tmp_path, edit=edit))
    assert vol.rescaled and vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.array, expected_stack(5) * 0.5 + 3)


@pytest.mark.parametrize("rescale", [False, True], ids=["stored", "rescaled"])
def test_enhanced_multiframe(tmp_path: Path, rescale: bool) -> None:
    path = write_enhanced(tmp_path, n=4, step=1.5, rescale=rescale)
    vol = load_series([path])
    assert vol.shape == (4, ROWS, COLS)
    want = expected_stack(4).astype(np.float32) * 2 - 10 if rescale else expected_stack(4)
    np.testing.assert_allclose(vol.array, want)
    assert vol.spacing == pytest.approx((0.5, 0.6, 1.5))
    assert vol.axis_codes() == "PIR"
    # frames were stored in the order 2, 0, 3, 1: z=0 is frame 2 of the file
    assert vol.frame_numbers == (2, 4, 1, 3)
    assert len(set(vol.sop_instance_uids)) == 1


# -- compressed transfer syntaxes ------------------------------------------------
def _pydicom_compress(syntax: str) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        from pydicom import dcmread

        ds = dcmread(path)
        ds.compress(syntax, generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)

    return run


def _dcmtk(tool: str, *args: str) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        exe = require_tool(tool)
        out = path.with_suffix(".tmp")
        subprocess.run([exe, *args, str(path), str(out)], check=True, capture_output=True)
        out.replace(path)

    return run


COMPRESSORS = {
    "rle-pydicom": (_pydicom_compress(RLELossless), RLELossless),
    "j2k-lossless-pydicom": (_pydicom_compress(JPEG2000Lossless), JPEG2000Lossless),
    "jpeg-lossless-dcmcjpeg": (_dcmtk("dcmcjpeg", "+e1"), JPEGLosslessSV1),
    "jpegls-dcmcjpls": (_dcmtk("dcmcjpls"), JPEGLSLossless),
    "rle-dcmcrle": (_dcmtk("dcmcrle"), RLELossless),
}


@pytest.mark.parametrize("name", list(COMPRESSORS), ids=list(COMPRESSORS))
def test_compressed_series_decodes_losslessly(tmp_path: Path, name: str) -> None:
    compress, syntax = COMPRESSORS[name]
    paths = write_classic(tmp_path)
    for path in paths:
        compress(path)
    from pydicom import dcmread

    assert dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    vol = load_series(paths)
    np.testing.assert_array_equal(vol.array, expected_stack(5))


def _corrupt_fragment(path: Path, syntax: str) -> None:
    from pydicom import dcmread
    from pydicom.encaps import encapsulate, generate_frames

    ds = dcmread(path)
    ds.compress(syntax, generate_instance_uid=False)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    if syntax == RLELossless:
        bad = frame[:4] + b"\xff\xff\xff\x7f" * 15 + frame[64:70]  # offsets past the end
    else:
        bad = frame[:30] + bytes(b ^ 0x5A for b in frame[30:])  # keep the SIZ marker
    ds.PixelData = encapsulate([bad])
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless], ids=["j2k", "rle"])
def test_corrupt_codestream_is_a_volume_error(tmp_path: Path, syntax: str) -> None:
    paths = write_classic(tmp_path)
    _corrupt_fragment(paths[2], syntax)
    with pytest.raises(VolumeError, match="corrupt compressed pixel data"):
        load_series(paths)


def test_codestream_larger_than_header_is_refused_before_decoding(tmp_path: Path) -> None:
    from pydicom import dcmread

    def shrink(k: int, ds: Dataset) -> None:
        ds.Rows, ds.Columns = ROWS // 2, COLS // 2
        ds.PixelData = plane_pixels(k, ROWS // 2, COLS // 2).tobytes()

    paths = write_classic(tmp_path / "small", n=3, edit=shrink)
    big = dcmread(write_classic(tmp_path / "big", n=3)[-1])  # slice000, full size
    big.compress(JPEG2000Lossless, generate_instance_uid=False)
    big.Rows, big.Columns = ROWS // 2, COLS // 2  # the codestream still says 36×40
    big.save_as(tmp_path / "small" / "slice000.dcm", enforce_file_format=True)
    with pytest.raises(VolumeError, match=r"codestream is 36×40, the header says 18×20"):
        load_series(paths)


# -- refusals -------------------------------------------------------------------
def _drop_middle(tmp_path: Path) -> list[Path]:
    paths = write_classic(tmp_path, n=6)
    return [p for p in paths if p.name != "slice003.dcm"]


def _uneven(tmp_path: Path) -> list[Path]:
    pos = [np.array([0.0, 0.0, z]) for z in (0.0, 2.0, 4.0, 4.5, 6.0, 8.0)]
    return write_classic(tmp_path, positions=pos)


def _duplicate(tmp_path: Path) -> list[Path]:
    pos = [np.array([0.0, 0.0, z]) for z in (0.0, 2.0, 2.0, 4.0)]
    return write_classic(tmp_path, positions=pos)


def _mixed_orientation(tmp_path: Path) -> list[Path]:
    def edit(k: int, ds: Dataset) -> None:
        if k == 2:
            ds.ImageOrientationPatient = list(CORONAL)

    return write_classic(tmp_path, edit=edit)


def _mixed_size(tmp_path: Path) -> list[Path]:
    def edit(k: int, ds: Dataset) -> None:
        if k == 1:
            ds.Rows, ds.Columns = COLS, ROWS

    return write_classic(tmp_path, edit=edit)


def _mixed_spacing(tmp_path: Path) -> list[Path]:
    def edit(k: int, ds: Dataset) -> None:
        if k == 3:
            ds.PixelSpacing = [0.9, 0.9]

    return write_classic(tmp_path, edit=edit)


def _short_pixels(tmp_path: Path) -> list[Path]:
    def edit(k: int, ds: Dataset) -> None:
        if k == 2:
            ds.PixelData = ds.PixelData[:20]

    return write_classic(tmp_path, edit=edit)


def _absurd_size(tmp_path: Path) -> list[Path]:
    def edit(_k: int, ds: Dataset) -> None:
        ds.Rows = ds.Columns = 65535  # tiny pixel data behind it

    return write_classic(tmp_path, edit=edit)


def _single(tmp_path: Path) -> list[Path]:
    return write_classic(tmp_path, n=1)


def _no_orientation(tmp_path: Path) -> list[Path]:
    def edit(_k: int, ds: Dataset) -> None:
        del ds.ImageOrientationPatient

    return write_classic(tmp_path, edit=edit)


def _sheared(tmp_path: Path) -> list[Path]:
    pos = [np.array([3.0 * k, 0.0, 2.0 * k]) for k in range(4)]
    return write_classic(tmp_path, positions=pos)


def _colour(tmp_path: Path) -> list[Path]:
    def edit(_k: int, ds: Dataset) -> None:
        ds.SamplesPerPixel = 3

    return write_classic(tmp_path, edit=edit)


def _not_dicom(tmp_path: Path) -> list[Path]:
    paths = write_classic(tmp_path)
    paths[1].write_bytes(b"this is not DICOM at all")
    return paths


def _truncated_header(tmp_path: Path) -> list[Path]:
    paths = write_classic(tmp_path)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[:200])
    return paths


def _truncated_pixels(tmp_path: Path) -> list[Path]:
    paths = write_classic(tmp_path)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[:-100])
    return paths


def _multiframe_without_groups(tmp_path: Path) -> list[Path]:
    def edit(_k: int, ds: Dataset) -> None:
        ds.NumberOfFrames = 2
        ds.PixelData = ds.PixelData * 2

    return write_classic(tmp_path, n=2, edit=edit)


def _enhanced_without_positions(tmp_path: Path) -> list[Path]:
    from pydicom import dcmread

    path = write_enhanced(tmp_path)
    ds = dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence
    ds.save_as(path, enforce_file_format=True)
    return [path]


def _enhanced_two_stacks(tmp_path: Path) -> list[Path]:
    from pydicom import dcmread

    path = write_enhanced(tmp_path)
    ds = dcmread(path)
    groups = ds.PerFrameFunctionalGroupsSequence
    groups[1].PlanePositionSequence[0].ImagePositionPatient = list(
        groups[0].PlanePositionSequence[0].ImagePositionPatient
    )
    ds.save_as(path, enforce_file_format=True)
    return [path]


REFUSALS: dict[str, tuple[Callable[[Path], list[Path]], str]] = {
    "missing-slice": (_drop_middle, "missing slices: a gap of 4.000 mm"),
    "uneven-spacing": (_uneven, "uneven slice spacing"),
    "duplicate-positions": (_duplicate, "share one position"),
    "mixed-orientation": (_mixed_orientation, "mixed orientations"),
    "mixed-size": (_mixed_size, "mixed image sizes"),
    "mixed-spacing": (_mixed_spacing, "mixed PixelSpacing"),
    "short-pixel-data": (
        _short_pixels,
        "pixel data has 20 bytes but Rows×Columns×Frames needs 2880",
    ),
    "absurd-rows-columns": (_absurd_size, "more than the limit"),
    "single-slice": (_single, "single slice"),
    "no-orientation": (_no_orientation, "ImageOrientationPatient is missing"),
    "sheared-stack": (_sheared, "not stacked along their normal"),
    "colour": (_colour, "3 samples per pixel"),
    "not-dicom": (_not_dicom, "unreadable DICOM header"),
    "truncated-header": (_truncated_header, "slice003.dcm: Rows is missing"),
    "truncated-pixels": (_truncated_pixels, "slice003.dcm: .*truncated"),
    "multiframe-without-groups": (_multiframe_without_groups, "without per-frame functional"),
    "enhanced-without-positions": (
        _enhanced_without_positions,
        "frame 2: ImagePositionPatient is missing",
    ),
    "enhanced-two-stacks": (_enhanced_two_stacks, "share one position"),
}


@pytest.mark.parametrize("case", list(REFUSALS), ids=list(REFUSALS))
def test_refusals_are_clear_volume_errors(tmp_path: Path, case: str) -> None:
    build, message = REFUSALS[case]
    paths = build(tmp_path)
    with pytest.raises(VolumeError, match=message):
        load_series(paths)


def test_empty_path_list_is_refused() -> None:
    with pytest.raises(VolumeError, match="no instances"):
        load_series([])


def test_voxel_cap_is_checked_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ai_core.volume as volume_module

    def must_not_decode(*_args: object) -> Volume:
        raise AssertionError("decoded although the cap was exceeded")

    monkeypatch.setattr(volume_module, "decode_into", must_not_decode)
    paths = write_classic(tmp_path)
    with pytest.raises(VolumeError, match=r"40×36×5 = 7200 voxels, more than the limit of 100"):
        load_series(paths, max_voxels=100)


# -- the shared test-data factory's vendor series ------------------------------------
@pytest.mark.parametrize("vendor", ["siemens", "ge", "philips"], ids=["siemens", "ge", "philips"])
@pytest.mark.parametrize("enhanced", [False, True], ids=["classic", "enhanced"])
@pytest.mark.parametrize(
    ("orientation", "plane"), [("sag", "sagittal"), ("ax", "axial")], ids=["sag", "ax"]
)
def test_factory_series_load(
    tmp_path: Path, vendor: str, enhanced: bool, orientation: str, plane: str
) -> None:
    from tests.factories import make_mr_series

    def pixel_fn(z: int, rows: int, cols: int) -> np.ndarray:
        return np.full((rows, cols), z + 1, dtype=np.uint16)

    datasets = make_mr_series(
        vendor,
        orientation=orientation,
        n_slices=8,
        rows=16,
        cols=12,
        enhanced=enhanced,
        pixel_fn=pixel_fn,
        spacing=(0.9, 0.8, 1.2),
    )
    paths = []
    for i, ds in enumerate(datasets):
        paths.append(tmp_path / f"{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    vol = load_series(paths[::-1])
    assert vol.shape == (8, 16, 12) and vol.plane() == plane
    assert vol.spacing == pytest.approx((0.8, 0.9, 1.2))
    order = vol.array[:, 0, 0].astype(int).tolist()
    assert order in (list(range(1, 9)), list(range(8, 0, -1)))  # stacked, none lost
