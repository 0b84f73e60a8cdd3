"""The DICOM headers of a series' instances: sizes, pixel type, every frame's geometry.

The headers are read without pixel data (classic single-frame instances
directly, Enhanced MR multi-frame ones from their functional groups); a
header that cannot describe a regular greyscale frame is a
:class:`VolumeError` naming the file and the attribute.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ai_core.errors import VolumeError

HEADER_ERRORS = (
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


@dataclass(frozen=True)
class Frame:
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
class FileInfo:
    """What decoding one instance's pixels needs to know from its header."""

    path: Path
    rows: int
    columns: int
    n_frames: int
    dtype: np.dtype
    frame_of_reference_uid: str | None


def read_header(path: Path, index: int) -> tuple[FileInfo, list[Frame]]:
    """The instance ``path`` (number ``index`` of the series) and the frames it holds."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return _describe(ds, path, index)
    except VolumeError:
        raise
    except HEADER_ERRORS as exc:
        raise VolumeError(f"{path.name}: unreadable DICOM header ({exc})") from exc


def _describe(ds: Dataset, path: Path, index: int) -> tuple[FileInfo, list[Frame]]:
    name = path.name
    rows, columns = _positive_int(ds, "Rows", name), _positive_int(ds, "Columns", name)
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples != 1:
        raise VolumeError(f"{name}: {samples} samples per pixel; only greyscale MR is loaded")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    info = FileInfo(
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
) -> Frame:
    """One frame's geometry; ``get(sequence, keyword)`` reads a (functional group) value."""
    slope = get("PixelValueTransformationSequence", "RescaleSlope")
    intercept = get("PixelValueTransformationSequence", "RescaleIntercept")
    return Frame(
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


def unit_vectors(orientation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The row and column direction cosines, normalised; refused unless orthonormal."""
    row, col = orientation[:3], orientation[3:]
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if abs(nr - 1) > 0.01 or abs(nc - 1) > 0.01 or abs(float(np.dot(row, col))) > 0.01:
        raise VolumeError(
            f"ImageOrientationPatient {orientation.tolist()} is not two orthogonal unit vectors"
        )
    return row / nr, col / nc
