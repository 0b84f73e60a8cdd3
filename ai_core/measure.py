"""Measurements of a tumour mask in patient space: volume, diameter, where it is.

- **Volume**: voxel count × voxel volume, in cm³.
- **Maximal 3D diameter**: the exact Feret diameter of the mask surface. The
  surface is the set of centres of the voxel faces between an inside and an
  outside voxel — exactly the vertices that marching cubes puts on a binary
  mask at level ½ — mapped to LPS mm with the affine (anisotropic spacing and
  oblique directions handled). Their convex hull (scipy) keeps the candidate
  points, and the largest pairwise distance of the hull vertices is the
  diameter. For a voxelised sphere it is within one voxel of the true
  diameter (each end is off by at most half a voxel).
- **Centroid** in LPS mm (mean of the voxel centres).
- **Side** (needs the head mask): the centroid's LPS x against the head's
  midline (the head mask's mean x; patients lie straight within a few
  degrees). ``midline`` within :data:`MIDLINE_HALF_WIDTH_MM`, else ``left``
  (LPS +x) or ``right``.
- **Location** (needs the head mask), a geometric heuristic, not anatomy:
  ``skull_base`` when the centroid lies more than :data:`SKULL_BASE_DEPTH_MM`
  below the vertex (the head mask's highest point along LPS +z); otherwise
  ``falx`` when the centroid is nearer the midline plane than the inner
  table of the skull (distance to the head surface less
  :data:`SCALP_SKULL_MM`), else ``convexity``. Without a head mask both are
  ``unknown``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

log = logging.getLogger(__name__)

MIDLINE_HALF_WIDTH_MM = 5.0
# vertex to skull base level; on 27 synthetic heads convexity/falx centroids lay
# at most 97 mm below the vertex and skull base ones at least 117 mm
SKULL_BASE_DEPTH_MM = 105.0
SCALP_SKULL_MM = 10.0  # scalp + skull thickness between the head surface and the dura
PAIRWISE_CHUNK = 2048  # hull vertices compared per block (memory ~ chunk × n × 8 bytes)
UNKNOWN: Final = "unknown"

Location = Literal["convexity", "falx", "skull_base", "unknown"]
Side = Literal["left", "right", "midline", "unknown"]
_FACE_AXES = ((0, 1), (1, 1), (2, 1), (0, -1), (1, -1), (2, -1))  # (array axis, step)


@dataclass(frozen=True)
class Measurements:
    """What the SR reports about one tumour mask."""

    volume_cm3: float
    max_diameter_mm: float
    centroid_lps_mm: tuple[float, float, float] | None  # None for an empty mask
    location: Location
    side: Side
    components: int  # 26-connected components of the mask
    voxels: int


def measure(
    mask_zyx: np.ndarray,
    spacing: tuple[float, float, float],
    direction: np.ndarray,
    origin: tuple[float, float, float],
    *,
    head_mask: np.ndarray | None = None,
) -> Measurements:
    """Measure a binary mask (non-zero = tumour) on the grid ``spacing``/``direction``/``origin``.

    ``head_mask`` (same grid) enables location and side; see the module docstring.
    """
    mask = np.asarray(mask_zyx) != 0
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D [z, y, x], got shape {mask.shape}")
    if np.any(np.asarray(spacing, dtype=float) <= 0):
        raise ValueError(f"spacing must be positive, got {tuple(spacing)}")
    if head_mask is not None and tuple(head_mask.shape) != mask.shape:
        raise ValueError(
            f"head_mask shape {tuple(head_mask.shape)} differs from the mask's {mask.shape}; "
            "both must be on the same grid"
        )
    affine = _affine(spacing, direction, origin)
    voxels = int(np.count_nonzero(mask))
    volume = voxels * float(np.prod(spacing)) / 1000.0
    if voxels == 0:
        return Measurements(0.0, 0.0, None, UNKNOWN, UNKNOWN, 0, 0)
    box = ndi.find_objects(mask.astype(np.uint8))[0]  # work on the tumour's bounding box
    sub = mask[box]
    offset = np.array([s.start for s in box], dtype=np.float64)
    _, components = ndi.label(sub, structure=np.ones((3, 3, 3), dtype=bool))
    centroid = _to_lps(np.argwhere(sub).mean(axis=0, keepdims=True) + offset, affine)[0]
    diameter = _feret(surface_points(sub) + offset, affine)
    location: Location = UNKNOWN
    side: Side = UNKNOWN
    if head_mask is not None and np.any(head_mask):
        location, side = _place(centroid, np.asarray(head_mask) != 0, affine)
    return Measurements(
        volume_cm3=volume,
        max_diameter_mm=diameter,
        centroid_lps_mm=(float(centroid[0]), float(centroid[1]), float(centroid[2])),
        location=location,
        side=side,
        components=int(components),
        voxels=voxels,
    )


def surface_points(mask: np.ndarray) -> np.ndarray:
    """Centres of the boundary faces of a boolean ``[z, y, x]`` mask, as ``(z, y, x)`` indices."""
    padded = np.pad(mask, 1)
    inner = tuple(slice(1, -1) for _ in range(3))
    points = []
    for axis, step in _FACE_AXES:
        neighbour = np.roll(padded, -step, axis=axis)[inner]
        idx = np.argwhere(mask & ~neighbour).astype(np.float64)
        idx[:, axis] += 0.5 * step
        points.append(idx)
    return np.concatenate(points)


def feret_diameter(mask: np.ndarray, affine: np.ndarray) -> float:
    """Largest distance (mm) between two surface points of ``mask`` (see the module docstring)."""
    return _feret(surface_points(mask), affine)


def _feret(points_zyx: np.ndarray, affine: np.ndarray) -> float:
    pts = _to_lps(points_zyx, affine)
    if len(pts) < 2:
        return 0.0
    try:
        hull = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):  # flat point sets: every point is a candidate
        hull = np.unique(pts, axis=0)
    return _max_pairwise(hull)


def _max_pairwise(points: np.ndarray) -> float:
    best = 0.0
    for start in range(0, len(points), PAIRWISE_CHUNK):
        block = points[start : start + PAIRWISE_CHUNK]
        d2 = ((block[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)
        best = max(best, float(d2.max()))
    return float(np.sqrt(best))


def _place(centroid: np.ndarray, head: np.ndarray, affine: np.ndarray) -> tuple[Location, Side]:
    mean_index = np.asarray(ndi.center_of_mass(head), dtype=np.float64)  # affine is linear
    midline_x = float(_to_lps(mean_index[None, :], affine)[0, 0])
    surface = _to_lps(surface_points(head), affine)
    offset = float(centroid[0] - midline_x)
    side: Side = "midline"
    if abs(offset) > MIDLINE_HALF_WIDTH_MM:
        side = "left" if offset > 0 else "right"  # LPS: +x points to the patient's left
    depth = float(surface[:, 2].max() - centroid[2])  # the vertex: the head's highest face
    if depth > SKULL_BASE_DEPTH_MM:
        return "skull_base", side
    to_skull = float(np.sqrt(((surface - centroid) ** 2).sum(axis=1).min())) - SCALP_SKULL_MM
    location: Location = "falx" if abs(offset) < to_skull else "convexity"
    log.debug(
        "placement: %.1f mm from midline, %.1f mm below vertex, %.1f mm from the skull -> %s",
        offset,
        depth,
        to_skull,
        location,
    )
    return location, side


def _affine(
    spacing: tuple[float, float, float], direction: np.ndarray, origin: tuple[float, float, float]
) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = np.asarray(direction, dtype=float).reshape(3, 3) * np.asarray(spacing, float)
    out[:3, 3] = np.asarray(origin, dtype=float)
    return out


def _to_lps(zyx: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(z, y, x)`` indices (fractional allowed) → LPS mm."""
    xyz = np.asarray(zyx, dtype=np.float64)[:, ::-1]
    return xyz @ affine[:3, :3].T + affine[:3, 3]
