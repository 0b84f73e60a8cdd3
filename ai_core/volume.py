"""A DICOM MR series → one 3D volume with its geometry, or a clear refusal.

Classic single-frame series are sorted by the projection of
ImagePositionPatient on the slice normal; Enhanced MR multi-frame instances
are read from their functional groups. Compressed transfer syntaxes are
decoded with pydicom's pixel handlers (pylibjpeg plugins).

Everything that could make a silently wrong volume is refused with a
:class:`VolumeError`: missing slices, uneven spacing, mixed orientations or
sizes, short pixel data, corrupt codestreams. Sizes are checked from the
headers *before* anything is decoded, so a header claiming 65535×65535 never
allocates.

Geometry follows the ITK/SimpleITK convention (issue 3 resamples with it):
``array`` is indexed ``[z, y, x]``; ``spacing`` and ``origin`` are in
``(x, y, z)`` order; column ``i`` of ``direction`` is the patient (LPS)
direction of index axis ``i``; physical = origin + direction @ (index * spacing).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError

from ai_core.errors import VolumeError

log = logging.getLogger(__name__)

DEFAULT_MAX_VOXELS = 1024 * 1024 * 2048
GAP_FACTOR = 1.5  # a step larger than this × the median step means missing slices
CROWD_FACTOR = 0.5  # a step smaller than this × the median step means uneven spacing
ORIENTATION_TOL = 1e-3
SPACING_REL_TOL = 1e-3
_HEADER_ERRORS = (
    InvalidDicomError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    EOFError,
    struct.error,
    RecursionError,
    OverflowError,
)
_DECODE_ERRORS = (*_HEADER_ERRORS, RuntimeError, NotImplementedError)
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))  # +x, +y, +z of LPS and their opposites


@dataclass(frozen=True, eq=False)
class Volume:
    """One 3D image in patient space (see the module docstring for conventions)."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    frame_of_reference_uid: str | None
    sop_instance_uids: tuple[str, ...]  # per z index
    frame_numbers: tuple[int, ...]  # per z index; 1-based, 0 for single-frame instances
    rescaled: bool  # True when Rescale Slope/Intercept were applied (array is float32)

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.array.shape
        return int(z), int(y), int(x)

    def affine(self) -> np.ndarray:
        """4×4 matrix mapping an index ``(x, y, z, 1)`` to LPS millimetres."""
        out = np.eye(4)
        out[:3, :3] = self.direction * np.asarray(self.spacing)
        out[:3, 3] = self.origin
        return out

    def axis_codes(self) -> str:
        """The patient direction each index axis (x, y, z) points to, e.g. ``"LPS"``."""
        codes = []
        for col in self.direction.T:
            axis = int(np.argmax(np.abs(col)))
            codes.append(_AXIS_LETTERS[axis][0 if col[axis] > 0 else 1])
        return "".join(codes)

    def plane(self) -> str:
        """``axial``, ``coronal``, ``sagittal`` or ``oblique`` from the slice normal."""
        normal = np.abs(self.direction[:, 2])
        axis = int(np.argmax(normal))
        if normal[axis] < np.cos(np.deg2rad(10.0)):
            return "oblique"
        return ("sagittal", "coronal", "axial")[axis]


@dataclass(frozen=True)
class _Frame:
    """Where one 2D image of the series comes from and where it lies."""

    file_index: int
    frame_index: int  # 0-based within its file
    sop_uid: str
    position: np.ndarray
    orientation: np.ndarray  # 6 direction cosines (row, column)
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    slope: float
    intercept: float


@dataclass(frozen=True)
class _FileInfo:
    path: Path
    rows: int
    columns: int
    n_frames: int
    dtype: np.dtype
    frame_of_reference_uid: str | None


def load_series(paths: Sequence[Path], *, max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Read the instances of one series into a :class:`Volume`.

    Raises :class:`VolumeError` for anything that is not one regular 3D stack;
    ``OSError`` (unreadable file) is left to the caller, who knows whether it
    is worth retrying.
    """
    if not paths:
        raise VolumeError("the series has no instances; nothing to load")
    files: list[_FileInfo] = []
    frames: list[_Frame] = []
    for index, path in enumerate(paths):
        info, file_frames = _read_header(Path(path), index)
        files.append(info)
        frames.extend(file_frames)
    if len(frames) < 2:
        raise VolumeError("the series has a single slice; a 3D volume needs at least two")
    _check_uniform(files, frames)
    rows, columns = files[0].rows, files[0].columns
    total = rows * columns * len(frames)
    if total > max_voxels:
        raise VolumeError(
            f"the series would have {rows}×{columns}×{len(frames)} = {total} voxels, more than "
            f"the limit of {max_voxels}; refusing to decode it (corrupt Rows/Columns?)"
        )
    frames, step = _sort_and_check_spacing(frames)
    rescaled = any(f.slope != 1.0 or f.intercept != 0.0 for f in frames)
    dtypes = {f.dtype for f in files}
    dtype = np.dtype(np.float32) if rescaled or len(dtypes) > 1 else files[0].dtype
    array = np.empty((len(frames), rows, columns), dtype=dtype)
    _decode_into(array, files, frames, rescaled)
    row_cos, col_cos = _unit_vectors(frames[0].orientation)
    direction = np.column_stack([row_cos, col_cos, np.cross(row_cos, col_cos)])
    spacing = (frames[0].pixel_spacing[1], frames[0].pixel_spacing[0], step)
    origin = tuple(float(v) for v in frames[0].position)
    log.debug("loaded a %s volume from %d instance(s)", array.shape, len(files))
    return Volume(
        array=array,
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        origin=(origin[0], origin[1], origin[2]),
        direction=direction,
        frame_of_reference_uid=files[0].frame_of_reference_uid,
        sop_instance_uids=tuple(f.sop_uid for f in frames),
        frame_numbers=tuple(
            f.frame_index + 1 if files[f.file_index].n_frames > 1 else 0 for f in frames
        ),
        rescaled=rescaled,
    )


# -- headers ------------------------------------------------------------------
def _read_header(path: Path, index: int) -> tuple[_FileInfo, list[_Frame]]:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return _describe(ds, path, index)
    except VolumeError:
        raise
    except _HEADER_ERRORS as exc:
        raise VolumeError(f"{path.name}: unreadable DICOM header ({exc})") from exc


def _describe(ds: Dataset, path: Path, index: int) -> tuple[_FileInfo, list[_Frame]]:
    name = path.name
    rows, columns = _positive_int(ds, "Rows", name), _positive_int(ds, "Columns", name)
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples != 1:
        raise VolumeError(f"{name}: {samples} samples per pixel; only greyscale MR is loaded")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    info = _FileInfo(
        path=path,
        rows=rows,
        columns=columns,
        n_frames=max(n_frames, 1),
        dtype=_stored_dtype(ds, name),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")) or None,
    )
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None:
        if n_frames > 1:
            raise VolumeError(
                f"{name}: {n_frames} frames without per-frame functional groups; this "
                "multi-frame layout is unsupported (send an Enhanced MR or single frames)"
            )
        return info, [_frame(index, 0, sop_uid, name, lambda _seq, kw: ds.get(kw))]
    if len(per_frame) != n_frames:
        raise VolumeError(
            f"{name}: {len(per_frame)} per-frame functional groups, {n_frames} frames"
        )
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    groups = (Dataset(), shared_seq[0] if shared_seq else Dataset())

    def lookup(group: Dataset) -> Callable[[str, str], object]:
        def find(seq: str, keyword: str) -> object:
            for source in (group, groups[1]):
                items = source.get(seq)
                if items and keyword in items[0]:
                    return items[0].get(keyword)
            return None

        return find

    return info, [
        _frame(index, i, sop_uid, f"{name} frame {i + 1}", lookup(group))
        for i, group in enumerate(per_frame)
    ]


def _frame(
    index: int, frame_index: int, sop_uid: str, where: str, get: Callable[[str, str], object]
) -> _Frame:
    """One frame's geometry; ``get(sequence, keyword)`` reads a (functional group) value."""
    slope = get("PixelValueTransformationSequence", "RescaleSlope")
    intercept = get("PixelValueTransformationSequence", "RescaleIntercept")
    return _Frame(
        file_index=index,
        frame_index=frame_index,
        sop_uid=sop_uid,
        position=_vector(get("PlanePositionSequence", "ImagePositionPatient"), 3, where),
        orientation=_vector(get("PlaneOrientationSequence", "ImageOrientationPatient"), 6, where),
        pixel_spacing=_spacing(get("PixelMeasuresSequence", "PixelSpacing"), where),
        slope=_number(slope, 1.0, where),
        intercept=_number(intercept, 0.0, where),
    )


def _number(value: object, default: float, where: str) -> float:
    try:
        return float(str(value)) if value not in (None, "") else default
    except ValueError:
        raise VolumeError(f"{where}: rescale value {value!r} is not a number") from None


def _positive_int(ds: Dataset, keyword: str, name: str) -> int:
    value = ds.get(keyword)
    if value is None or int(value) < 1:
        raise VolumeError(f"{name}: {keyword} is missing or not positive")
    return int(value)


def _stored_dtype(ds: Dataset, name: str) -> np.dtype:
    bits = int(ds.get("BitsAllocated", 0) or 0)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if bits not in (8, 16, 32):
        raise VolumeError(f"{name}: BitsAllocated {bits} is unsupported (8, 16 or 32)")
    return np.dtype(f"{'i' if signed else 'u'}{bits // 8}")


_KEYWORDS = {3: "ImagePositionPatient", 6: "ImageOrientationPatient", 2: "PixelSpacing"}


def _vector(value: object, n: int, where: str) -> np.ndarray:
    try:
        values = [float(v) for v in value] if isinstance(value, Iterable) else []
    except (TypeError, ValueError):
        values = []
    if len(values) != n or not np.all(np.isfinite(values)):
        raise VolumeError(f"{where}: {_KEYWORDS[n]} is missing or does not have {n} numbers")
    return np.asarray(values, dtype=np.float64)


def _spacing(value: object, where: str) -> tuple[float, float]:
    vec = _vector(value, 2, where)
    if np.any(vec <= 0):
        raise VolumeError(f"{where}: PixelSpacing must be positive, got {vec.tolist()}")
    return float(vec[0]), float(vec[1])


def _unit_vectors(orientation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    row, col = orientation[:3], orientation[3:]
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if abs(nr - 1) > 0.01 or abs(nc - 1) > 0.01 or abs(float(np.dot(row, col))) > 0.01:
        raise VolumeError(
            f"ImageOrientationPatient {orientation.tolist()} is not two orthogonal unit vectors"
        )
    return row / nr, col / nc


# -- geometry -----------------------------------------------------------------
def _check_uniform(files: list[_FileInfo], frames: list[_Frame]) -> None:
    sizes = {(f.rows, f.columns) for f in files}
    if len(sizes) > 1:
        raise VolumeError(f"mixed image sizes (Rows×Columns) in the series: {sorted(sizes)}")
    refs = {f.frame_of_reference_uid for f in files}
    if len(refs) > 1:
        raise VolumeError("the instances have different Frames of Reference; not one volume")
    first = frames[0]
    _unit_vectors(first.orientation)
    for frame in frames[1:]:
        if np.max(np.abs(frame.orientation - first.orientation)) > ORIENTATION_TOL:
            raise VolumeError(
                "mixed orientations in the series (ImageOrientationPatient differs between "
                "slices): several stacks or a localizer mixed in"
            )
        if not np.allclose(frame.pixel_spacing, first.pixel_spacing, rtol=SPACING_REL_TOL):
            raise VolumeError(
                f"mixed PixelSpacing in the series: {first.pixel_spacing} and {frame.pixel_spacing}"
            )


def _sort_and_check_spacing(frames: list[_Frame]) -> tuple[list[_Frame], float]:
    """Sort along the slice normal; return the frames and the slice step (mm)."""
    row, col = _unit_vectors(frames[0].orientation)
    normal = np.cross(row, col)
    order = sorted(range(len(frames)), key=lambda i: float(np.dot(frames[i].position, normal)))
    frames = [frames[i] for i in order]
    proj = np.array([float(np.dot(f.position, normal)) for f in frames])
    steps = np.diff(proj)
    median = float(np.median(steps))
    if np.min(steps) < 1e-3 or median < 1e-3:
        raise VolumeError(
            "several slices share one position (repeated acquisitions, echoes or phases "
            "in one series); unsupported"
        )
    worst = int(np.argmax(steps))
    if steps[worst] > GAP_FACTOR * median:
        raise VolumeError(
            f"missing slices: a gap of {steps[worst]:.3f} mm after slice {worst + 1} of "
            f"{len(frames)} where the spacing is {median:.3f} mm; resend the whole series"
        )
    if np.min(steps) < CROWD_FACTOR * median:
        raise VolumeError(
            f"uneven slice spacing: steps from {np.min(steps):.3f} to {np.max(steps):.3f} mm"
        )
    offsets = np.array([f.position - frames[0].position for f in frames])
    in_plane = offsets - np.outer(proj - proj[0], normal)
    tolerance = 0.5 * min(frames[0].pixel_spacing)
    if float(np.max(np.linalg.norm(in_plane, axis=1))) > tolerance:
        raise VolumeError(
            "the slices are not stacked along their normal (sheared or tilted stack); unsupported"
        )
    return frames, float((proj[-1] - proj[0]) / (len(frames) - 1))


# -- pixels ---------------------------------------------------------------------
def _decode_into(
    out: np.ndarray, files: list[_FileInfo], frames: list[_Frame], rescaled: bool
) -> None:
    targets: dict[int, list[tuple[int, _Frame]]] = {}
    for z, frame in enumerate(frames):
        targets.setdefault(frame.file_index, []).append((z, frame))
    for file_index, wanted in targets.items():
        info = files[file_index]
        pixels = _decode_file(info)
        for z, frame in wanted:
            plane = pixels[frame.frame_index]
            if rescaled:
                out[z] = plane.astype(np.float32) * frame.slope + frame.intercept
            else:
                out[z] = plane


def _decode_file(info: _FileInfo) -> np.ndarray:
    name = info.path.name
    try:
        ds = pydicom.dcmread(info.path)
    except _HEADER_ERRORS as exc:
        raise VolumeError(f"{name}: unreadable DICOM file ({exc})") from exc
    if "PixelData" not in ds:
        raise VolumeError(f"{name}: no PixelData (float or double pixel data is unsupported)")
    encapsulated = ds.file_meta.TransferSyntaxUID.is_encapsulated
    if encapsulated:
        _check_codestreams(ds, info)
    else:
        expected = info.rows * info.columns * info.n_frames * info.dtype.itemsize
        actual = len(ds.PixelData)
        if actual < expected:
            raise VolumeError(
                f"{name}: pixel data has {actual} bytes but Rows×Columns×Frames needs {expected}; "
                "the instance is truncated"
            )
    try:
        pixels = ds.pixel_array
    except _DECODE_ERRORS as exc:
        kind = "compressed" if encapsulated else "native"
        raise VolumeError(
            f"{name}: corrupt {kind} pixel data could not be decoded ({exc})"
        ) from exc
    pixels = np.asarray(pixels).reshape((-1, *pixels.shape[-2:]))
    if pixels.shape != (info.n_frames, info.rows, info.columns):
        raise VolumeError(
            f"{name}: decoded pixels have shape {pixels.shape}, the header says "
            f"{(info.n_frames, info.rows, info.columns)}"
        )
    return pixels


def _check_codestreams(ds: Dataset, info: _FileInfo) -> None:
    """Refuse codestreams whose own header claims another size (decompression bombs)."""
    name = info.path.name
    try:
        for number, frame in enumerate(
            generate_frames(ds.PixelData, number_of_frames=info.n_frames), start=1
        ):
            dims = _codestream_dims(frame)
            if dims is None:
                continue
            width, height = dims
            if width != info.columns or height not in (0, info.rows):
                raise VolumeError(
                    f"{name}: frame {number}'s codestream is {width}×{height}, the header says "
                    f"{info.columns}×{info.rows}; refusing to decode it"
                )
    except VolumeError:
        raise
    except _DECODE_ERRORS as exc:
        raise VolumeError(f"{name}: corrupt encapsulated pixel data ({exc})") from exc


def _codestream_dims(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG 2000 SIZ or JPEG/JPEG-LS SOF marker, if found."""
    if data[:4] == b"\xff\x4f\xff\x51" and len(data) >= 24:
        xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", data[8:24])
        return xsiz - xosiz, ysiz - yosiz
    if data[:2] != b"\xff\xd8":
        return None  # RLE or unknown: the decoder sizes its output from the dataset
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        if marker == 0xDA:
            return None
        pos += 2 + length
    return None
