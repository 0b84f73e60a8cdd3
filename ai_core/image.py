"""SimpleITK conversions that keep the patient geometry exactly.

A :class:`~ai_core.volume.Volume` and a ``SimpleITK.Image`` use the same
convention (ITK's): the numpy array is ``[z, y, x]``; spacing and origin are
``(x, y, z)``; column ``i`` of the 3×3 direction is the LPS direction of
index axis ``i``. ``SimpleITK`` stores the direction row-major, so
``direction.ravel()`` is what it wants.

:class:`Grid` is the geometry without the pixels: the source series' grid is
kept so that a mask computed on the 1 mm working grid can be put back onto
the original slices (:func:`resample_mask`), which is what a DICOM SEG
referencing those slices needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import SimpleITK as sitk

from ai_core.volume import Volume

log = logging.getLogger(__name__)

DIRECTION_ORTHO_TOL = 0.02  # |DᵀD − I| above this is not a rotation; load_series allows 0.01
MaskInterpolation = Literal["nearest", "linear"]
LINEAR_MASK_THRESHOLD = 0.5  # "linear": a voxel is in the mask when ≥ half of it is


class ImageArrays(NamedTuple):
    """What :func:`from_sitk` returns: the pixels and their geometry."""

    array: np.ndarray  # [z, y, x]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray  # 3×3, column i = LPS direction of index axis i


@dataclass(frozen=True, eq=False)
class Grid:
    """A voxel grid in patient (LPS) space; ``shape`` is ``(z, y, x)``."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray

    @classmethod
    def of(cls, item: Volume | sitk.Image | Grid) -> Grid:
        """The grid of a volume, an image or a grid."""
        if isinstance(item, Grid):
            return item
        if isinstance(item, Volume):
            return cls(item.shape, item.spacing, item.origin, np.asarray(item.direction, float))
        if isinstance(item, sitk.Image):
            if item.GetDimension() != 3:
                raise ValueError(f"reference image has {item.GetDimension()} dimensions, not 3")
            x, y, z = item.GetSize()
            return cls(
                (int(z), int(y), int(x)),
                _triple(item.GetSpacing()),
                _triple(item.GetOrigin()),
                np.asarray(item.GetDirection(), dtype=float).reshape(3, 3),
            )
        raise TypeError(f"reference must be a Volume, SimpleITK Image or Grid, not {type(item)}")

    def affine(self) -> np.ndarray:
        """4×4 matrix mapping an index ``(x, y, z, 1)`` to LPS millimetres."""
        out = np.eye(4)
        out[:3, :3] = self.direction * np.asarray(self.spacing)
        out[:3, 3] = self.origin
        return out

    def blank(self, pixel_id: int = sitk.sitkUInt8) -> sitk.Image:
        """A zero image on this grid."""
        z, y, x = self.shape
        img = sitk.Image([x, y, z], pixel_id)
        _set_geometry(img, self.spacing, self.origin, self.direction)
        return img


def to_sitk(volume: Volume, *, dtype: np.dtype | type | None = None) -> sitk.Image:
    """The volume as a SimpleITK image with the same pixels and geometry.

    ``dtype`` converts the pixels first (e.g. ``np.float32`` for filters that
    need floating point); None keeps the stored type.
    """
    array = volume.array if dtype is None else volume.array.astype(dtype, copy=False)
    return array_to_sitk(array, volume.spacing, volume.origin, volume.direction)


def array_to_sitk(
    array: np.ndarray,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    direction: np.ndarray,
) -> sitk.Image:
    """A ``[z, y, x]`` array with its geometry as a SimpleITK image (pixels copied)."""
    if array.ndim != 3:
        raise ValueError(f"array must be 3D [z, y, x], got shape {array.shape}")
    if np.any(np.asarray(spacing) <= 0):
        raise ValueError(f"spacing must be positive, got {tuple(spacing)}")
    img = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)
    _set_geometry(img, spacing, origin, direction)
    return img


def from_sitk(img: sitk.Image) -> ImageArrays:
    """The pixels (``[z, y, x]``, a copy) and geometry of a 3D SimpleITK image."""
    grid = Grid.of(img)
    return ImageArrays(sitk.GetArrayFromImage(img), grid.spacing, grid.origin, grid.direction)


def mask_to_sitk(mask_zyx: np.ndarray, reference: Volume | sitk.Image | Grid) -> sitk.Image:
    """A binary mask (any dtype, non-zero = inside) on the reference's grid, as UInt8."""
    grid = Grid.of(reference)
    if tuple(mask_zyx.shape) != grid.shape:
        raise ValueError(
            f"mask shape {tuple(mask_zyx.shape)} differs from the reference grid {grid.shape}; "
            "resample the mask onto that grid first (resample_mask)"
        )
    mask = (np.asarray(mask_zyx) != 0).astype(np.uint8)
    return array_to_sitk(mask, grid.spacing, grid.origin, grid.direction)


def resample_mask(
    mask: sitk.Image,
    target: Volume | sitk.Image | Grid,
    *,
    interpolation: MaskInterpolation = "nearest",
) -> np.ndarray:
    """The mask on another grid (e.g. the source series), uint8 ``[z, y, x]``.

    ``"nearest"`` takes the label of the nearest working-grid voxel;
    ``"linear"`` interpolates the mask and keeps voxels at least half inside,
    which keeps the volume unbiased when the target voxels are larger (thick
    slices). Voxels of the target outside the mask's extent are 0.
    """
    grid = Grid.of(target)
    binary = sitk.Cast(mask != 0, sitk.sitkUInt8)
    if interpolation == "nearest":
        out = sitk.Resample(binary, grid.blank(), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        return sitk.GetArrayFromImage(out).astype(np.uint8, copy=False)
    if interpolation == "linear":
        frac = sitk.Resample(
            sitk.Cast(binary, sitk.sitkFloat32),
            grid.blank(sitk.sitkFloat32),
            sitk.Transform(),
            sitk.sitkLinear,
            0.0,
        )
        return (sitk.GetArrayFromImage(frac) >= LINEAR_MASK_THRESHOLD).astype(np.uint8)
    raise ValueError(f"interpolation must be 'nearest' or 'linear', got {interpolation!r}")


def _set_geometry(
    img: sitk.Image,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    direction: np.ndarray,
) -> None:
    matrix = np.asarray(direction, dtype=float)
    if matrix.shape != (3, 3):
        raise ValueError(f"direction must be 3×3, got shape {matrix.shape}")
    if np.max(np.abs(matrix.T @ matrix - np.eye(3))) > DIRECTION_ORTHO_TOL:
        raise ValueError(
            "direction is not orthonormal (its columns must be unit, orthogonal LPS axes); "
            f"got {matrix.tolist()}"
        )
    img.SetSpacing([float(v) for v in spacing])
    img.SetOrigin([float(v) for v in origin])
    img.SetDirection([float(v) for v in matrix.ravel()])


def _triple(values: tuple[float, ...]) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])
