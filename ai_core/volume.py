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

Headers are read by :mod:`ai_core.volume_headers` and pixels decoded by
:mod:`ai_core.volume_pixels`; this module owns :class:`Volume` and the checks
that the frames form one regular stack.

Geometry follows the ITK/SimpleITK convention (issue 3 resamples with it):
``array`` is indexed ``[z, y, x]``; ``spacing`` and ``origin`` are in
``(x, y, z)`` order; column ``i`` of ``direction`` is the patient (LPS)
direction of index axis ``i``; physical = origin + direction @ (index * spacing).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ai_core.errors import VolumeError
from ai_core.volume_headers import FileInfo, Frame, read_header, unit_vectors
from ai_core.volume_pixels import decode_into

log = logging.getLogger(__name__)

DEFAULT_MAX_VOXELS = 1024 * 1024 * 2048
GAP_FACTOR = 1.5  # a step larger than this × the median step means missing slices
CROWD_FACTOR = 0.5  # a step smaller than this × the median step means uneven spacing
ORIENTATION_TOL = 1e-3
SPACING_REL_TOL = 1e-3
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


def load_series(paths: Sequence[Path], *, max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Read the instances of one series into a :class:`Volume`.

    Raises :class:`VolumeError` for anything that is not one regular 3D stack;
    ``OSError`` (unreadable file) is left to the caller, who knows whether it
    is worth retrying.
    """
    if not paths:
        raise VolumeError("the series has no instances; nothing to load")
    files: list[FileInfo] = []
    frames: list[Frame] = []
    for index, path in enumerate(paths):
        info, file_frames = read_header(Path(path), index)
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
    decode_into(array, files, frames, rescaled)
    row_cos, col_cos = unit_vectors(frames[0].orientation)
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


# -- geometry -----------------------------------------------------------------
def _check_uniform(files: list[FileInfo], frames: list[Frame]) -> None:
    sizes = {(f.rows, f.columns) for f in files}
    if len(sizes) > 1:
        raise VolumeError(f"mixed image sizes (Rows×Columns) in the series: {sorted(sizes)}")
    refs = {f.frame_of_reference_uid for f in files}
    if len(refs) > 1:
        raise VolumeError("the instances have different Frames of Reference; not one volume")
    first = frames[0]
    unit_vectors(first.orientation)
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


def _sort_and_check_spacing(frames: list[Frame]) -> tuple[list[Frame], float]:
    """Sort along the slice normal; return the frames and the slice step (mm)."""
    row, col = unit_vectors(frames[0].orientation)
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
