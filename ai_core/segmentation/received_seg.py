"""A radiologist's DICOM Segmentation (a correction) → a mask on the series grid.

Geometry comes from the SEG itself: every frame's ImagePositionPatient
(PlanePositionSequence), the shared ImageOrientationPatient and PixelSpacing.
Each positive pixel's centre is mapped into the reference grid's index space
and rounded, so a SEG drawn on the source slices (the usual case) lands
exactly on them, whatever the frame order. Frames without a position fall
back to their referenced SOP Instance UID (DerivationImageSequence /
SourceImageSequence) on a SEG with the series' rows and columns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage

from ai_core.segmentation.base import (
    STATUS_NOT_ASSESSABLE,
    STATUS_OK,
    SegmentationError,
    SegmentationResult,
)

if TYPE_CHECKING:
    from ai_core.image import Grid
    from ai_core.volume import Volume

log = logging.getLogger(__name__)

BACKEND_NAME = "received-seg"
FRACTIONAL_THRESHOLD = 0.5
MENINGIOMA_WORDS = ("meningioma", "tumour", "tumor", "lesion")


def read_seg(source: Dataset | Path | str) -> Dataset:
    ds = source if isinstance(source, Dataset) else pydicom.dcmread(Path(source))
    if str(ds.get("SOPClassUID", "")) != SegmentationStorage:
        raise SegmentationError(
            f"not a DICOM Segmentation (SOP Class {ds.get('SOPClassUID', 'missing')}); "
            "only Segmentation Storage objects can be used as a received segmentation"
        )
    return ds


def choose_segment(ds: Dataset, segment_number: int | None = None) -> int:
    """The segment to use: the one asked for, else the one labelled like a meningioma, else 1."""
    segments = ds.get("SegmentSequence") or []
    numbers = [int(s.SegmentNumber) for s in segments]
    if not numbers:
        raise SegmentationError("the SEG has no SegmentSequence; it describes no segment")
    if segment_number is not None:
        if segment_number not in numbers:
            raise SegmentationError(f"segment {segment_number} is not in the SEG (has {numbers})")
        return segment_number
    for item in segments:
        label = f"{item.get('SegmentLabel', '')} {item.get('SegmentDescription', '')}".lower()
        if any(word in label for word in MENINGIOMA_WORDS):
            return int(item.SegmentNumber)
    if len(numbers) > 1:
        log.warning(
            "SEG has %d segments and none is labelled a meningioma; using the first", len(numbers)
        )
    return numbers[0]


def mask_from_seg(
    seg: Dataset | Path | str,
    reference: Volume | Grid,
    *,
    segment_number: int | None = None,
    sop_instance_uids: Sequence[str] | None = None,
) -> np.ndarray:
    """The chosen segment as a uint8 mask ``[z, y, x]`` on ``reference``'s grid."""
    from ai_core.image import Grid

    ds = read_seg(seg)
    grid = Grid.of(reference)
    if sop_instance_uids is None:
        sop_instance_uids = getattr(reference, "sop_instance_uids", None)
    ref_for = getattr(reference, "frame_of_reference_uid", None)
    seg_for = str(ds.get("FrameOfReferenceUID", "")) or None
    if ref_for and seg_for and ref_for != seg_for:
        raise SegmentationError(
            "the SEG's Frame of Reference differs from the series'; it was drawn on another "
            "acquisition and cannot be placed on this one"
        )
    number = choose_segment(ds, segment_number)
    frames = _frames(ds)
    out = np.zeros(grid.shape, dtype=np.uint8)
    to_index = np.linalg.inv(grid.affine())
    shared = _first(ds.get("SharedFunctionalGroupsSequence"))
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != len(frames):
        raise SegmentationError(
            f"the SEG has {len(frames)} frames but {len(per_frame)} per-frame functional groups"
        )
    uid_index = {uid: z for z, uid in enumerate(sop_instance_uids or ())}
    placed = 0
    for frame, group in zip(frames, per_frame, strict=True):
        if _frame_segment(group, shared) != number or not frame.any():
            continue
        placed += _place(out, frame, group, shared, to_index, uid_index)
    if placed == 0 and any(f.any() for f in frames):
        raise SegmentationError(
            "no pixel of the SEG falls inside the series; it does not belong to this series"
        )
    return out


def received_seg_result(
    seg: Dataset | Path | str,
    reference: Volume | Grid,
    *,
    segment_number: int | None = None,
) -> SegmentationResult:
    """The SEG as a :class:`SegmentationResult` (an empty segment is not assessable)."""
    ds = read_seg(seg)
    mask = mask_from_seg(ds, reference, segment_number=segment_number)
    version = str(ds.get("SeriesInstanceUID", ""))  # which correction was used
    if not mask.any():
        return SegmentationResult(
            mask,
            None,
            STATUS_NOT_ASSESSABLE,
            "the received SEG's segment is empty",
            BACKEND_NAME,
            version,
        )
    reason = f"radiologist's segmentation ({int(mask.sum())} voxels)"
    return SegmentationResult(mask, None, STATUS_OK, reason, BACKEND_NAME, version)


# -- frames ---------------------------------------------------------------------
def _frames(ds: Dataset) -> list[np.ndarray]:
    try:
        pixels = np.asarray(ds.pixel_array)
    except (AttributeError, ValueError, TypeError, NotImplementedError, RuntimeError) as exc:
        raise SegmentationError(f"the SEG's pixel data cannot be decoded ({exc})") from exc
    if pixels.ndim == 2:
        pixels = pixels[None]
    kind = str(ds.get("SegmentationType", "BINARY")).upper()
    if kind == "FRACTIONAL":
        maximum = float(ds.get("MaximumFractionalValue", 255) or 255)
        binary = pixels.astype(np.float32) / maximum >= FRACTIONAL_THRESHOLD
    else:
        binary = pixels > 0
    return list(binary)


def _first(seq: Any) -> Dataset | None:
    return seq[0] if seq else None


def _lookup(group: Dataset, shared: Dataset | None, seq: str, keyword: str) -> Any:
    for source in (group, shared):
        if source is None:
            continue
        items = source.get(seq)
        if items and keyword in items[0]:
            return items[0].get(keyword)
    return None


def _frame_segment(group: Dataset, shared: Dataset | None) -> int:
    value = _lookup(group, shared, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
    return int(value) if value is not None else 1


def _place(
    out: np.ndarray,
    frame: np.ndarray,
    group: Dataset,
    shared: Dataset | None,
    to_index: np.ndarray,
    uid_index: dict[str, int],
) -> int:
    """Write one frame's positive pixels into ``out``; return how many landed inside."""
    position = _lookup(group, shared, "PlanePositionSequence", "ImagePositionPatient")
    orientation = _lookup(group, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
    spacing = _lookup(group, shared, "PixelMeasuresSequence", "PixelSpacing")
    rows, cols = np.nonzero(frame)
    if position is not None and orientation is not None and spacing is not None:
        pos = np.asarray([float(v) for v in position])
        ori = np.asarray([float(v) for v in orientation])
        d_row, d_col = (float(v) for v in spacing)  # between rows, between columns
        pts = pos + np.outer(cols * d_col, ori[:3]) + np.outer(rows * d_row, ori[3:])
        idx = np.rint(pts @ to_index[:3, :3].T + to_index[:3, 3]).astype(int)  # (x, y, z)
        zyx = idx[:, ::-1]
    else:
        uid = _referenced_uid(group)
        if uid is None or uid not in uid_index or frame.shape != out.shape[1:]:
            raise SegmentationError(
                "a SEG frame has neither a plane position nor a reference to a slice of the "
                "series; it cannot be placed"
            )
        zyx = np.column_stack([np.full(rows.size, uid_index[uid]), rows, cols])
    inside = np.all((zyx >= 0) & (zyx < np.asarray(out.shape)), axis=1)
    out[tuple(zyx[inside].T)] = 1
    return int(inside.sum())


def _referenced_uid(group: Dataset) -> str | None:
    for item in group.get("DerivationImageSequence") or []:
        for src in item.get("SourceImageSequence") or []:
            uid = src.get("ReferencedSOPInstanceUID")
            if uid:
                return str(uid)
    return None
