"""Where the heatmap images are: the axial planes through the tumour, reformatted.

Every plane is axial in radiological convention (columns to the patient's
left, +x of LPS; rows to posterior, +y) over the source's whole field of view
at its in-plane resolution (at most ``max_pixel_mm`` per pixel, at most
``max_plane_px`` pixels). Up to ``max_slices`` planes are spread evenly over
the tumour's cranio-caudal extent, and the plane of largest tumour area is
always one of them. :mod:`dicom_out.render` draws them.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ai_core.image import Grid, array_to_sitk
from ai_core.volume import Volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderParams:
    """How the heatmap images are made."""

    max_slices: int = 9  # images per series, spread over the tumour
    max_pixel_mm: float = 1.0  # reformat pixel: the source's in-plane spacing, at most this
    max_plane_px: int = 768  # larger fields of view get coarser pixels
    min_panel_px: int = 512  # the image is upscaled to at least this width for the text
    window_percentiles: tuple[float, float] = (0.5, 99.5)  # grey window over the head
    heat_floor: float = 0.2  # Grad-CAM at or below this is fully transparent
    heat_full: float = 0.7  # from here on the overlay has its full opacity
    heat_alpha: float = 0.6  # the full opacity: the anatomy stays visible under the heat
    outline_px: int = 2

    def __post_init__(self) -> None:
        if self.max_slices < 1:
            raise ValueError(f"max_slices must be at least 1, got {self.max_slices}")
        if not 0.0 < self.max_pixel_mm <= 5.0:
            raise ValueError(f"max_pixel_mm must be in (0, 5], got {self.max_pixel_mm}")
        if self.max_plane_px < 64 or self.min_panel_px < 256:
            raise ValueError("max_plane_px must be >= 64 and min_panel_px >= 256")
        lo, hi = self.window_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"window_percentiles must be 0 <= low < high <= 100, got {lo, hi}")
        if not 0.0 <= self.heat_floor < self.heat_full <= 1.0:
            raise ValueError("need 0 <= heat_floor < heat_full <= 1")
        if not 0.0 < self.heat_alpha <= 1.0:
            raise ValueError(f"heat_alpha must be in (0, 1], got {self.heat_alpha}")
        if self.outline_px < 1:
            raise ValueError(f"outline_px must be at least 1, got {self.outline_px}")


@dataclass(frozen=True, eq=False)
class AxialPlane:
    """One reformatted axial plane: pixel [r, c] centre is at LPS (x0 + c·p, y0 + r·p, z)."""

    z_mm: float
    x0: float
    y0: float
    pixel_mm: float
    grey: np.ndarray  # float32 [rows, cols], source intensities
    mask: np.ndarray  # uint8 [rows, cols], 1 inside the tumour
    heat: np.ndarray  # float32 [rows, cols], Grad-CAM in [0, 1]
    tumour_area_mm2: float
    heat_box: tuple[float, float, float, float] | None = None  # LPS x0, y0, x1, y1 of the map


def axial_planes(
    volume: Volume,
    mask_zyx: np.ndarray,
    heat_zyx: np.ndarray,
    *,
    heat_box: tuple[np.ndarray, np.ndarray] | None = None,
    params: RenderParams | None = None,
) -> list[AxialPlane]:
    """The planes through the tumour (see the module docstring), inferior first."""
    params = params or RenderParams()
    if mask_zyx.shape != volume.shape or heat_zyx.shape != volume.shape:
        raise ValueError(
            f"mask {mask_zyx.shape} and Grad-CAM {heat_zyx.shape} must lie on the volume's "
            f"grid {volume.shape}; put them on the source series first"
        )
    if not np.any(mask_zyx):
        raise ValueError("the tumour mask is empty; there is no slice to show")
    lo, hi = _extent(volume)
    pixel = min(volume.spacing[0], volume.spacing[1], params.max_pixel_mm)
    pixel = max(pixel, float(np.max(hi[:2] - lo[:2])) / params.max_plane_px)
    cols, rows = (int(math.ceil((hi[i] - lo[i]) / pixel - 1e-6)) for i in (0, 1))
    x0 = (lo[0] + hi[0]) / 2 - (cols - 1) / 2 * pixel
    y0 = (lo[1] + hi[1]) / 2 - (rows - 1) / 2 * pixel
    grid = Grid.of(volume)
    mask_img = array_to_sitk(
        (mask_zyx != 0).astype(np.uint8), grid.spacing, grid.origin, grid.direction
    )
    z_all, areas = _tumour_areas(volume, mask_zyx, mask_img, pixel)
    chosen = choose_slices(areas, params.max_slices)
    image = array_to_sitk(volume.array, grid.spacing, grid.origin, grid.direction)
    heat = array_to_sitk(
        heat_zyx.astype(np.float32, copy=False), grid.spacing, grid.origin, grid.direction
    )
    planes = []
    for index in chosen:
        z = float(z_all[index])
        target = Grid((1, rows, cols), (pixel, pixel, 1.0), (x0, y0, z), np.eye(3))
        mask_plane = resample(mask_img, target)[0] >= 0.5
        planes.append(
            AxialPlane(
                z_mm=z,
                x0=x0,
                y0=y0,
                pixel_mm=pixel,
                grey=resample(image, target)[0],
                mask=mask_plane.astype(np.uint8),
                heat=np.clip(resample(heat, target)[0], 0.0, 1.0),
                tumour_area_mm2=float(mask_plane.sum()) * pixel * pixel,
                heat_box=_box_at(heat_box, z),
            )
        )
    log.debug("%d axial planes of %dx%d at %.2f mm", len(planes), rows, cols, pixel)
    return planes


def choose_slices(areas: np.ndarray, max_slices: int) -> list[int]:
    """Up to ``max_slices`` indices with area > 0, evenly spread, always with the largest."""
    present = np.flatnonzero(areas > 0)
    if present.size == 0:
        raise ValueError("no plane crosses the tumour; the mask is smaller than a pixel")
    if present.size <= max_slices:
        return [int(i) for i in present]
    picks = {int(present[round(k)]) for k in np.linspace(0, present.size - 1, max_slices)}
    largest = int(np.argmax(areas))
    if largest not in picks:
        picks.remove(min(picks, key=lambda i: (abs(i - largest), i)))
        picks.add(largest)
    return sorted(picks)


def plane_grid(plane: AxialPlane, z: float) -> Grid:
    rows, cols = plane.grey.shape
    return Grid((1, rows, cols), (plane.pixel_mm,) * 3, (plane.x0, plane.y0, z), np.eye(3))


def _box_at(
    box: tuple[np.ndarray, np.ndarray] | None, z: float
) -> tuple[float, float, float, float] | None:
    """The box's (x0, y0, x1, y1) on the plane at height ``z``; None when it misses it."""
    if box is None or not box[0][2] <= z <= box[1][2]:
        return None
    return float(box[0][0]), float(box[0][1]), float(box[1][0]), float(box[1][1])


def _extent(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """LPS bounding box of the volume's voxels (edges, not centres)."""
    nz, ny, nx = volume.shape
    edges = ((-0.5, nx - 0.5), (-0.5, ny - 0.5), (-0.5, nz - 0.5), (1.0,))
    corners = np.array(list(itertools.product(*edges)))
    points = (volume.affine() @ corners.T).T[:, :3]
    return points.min(axis=0), points.max(axis=0)


def _tumour_areas(
    volume: Volume, mask_zyx: np.ndarray, mask_img: sitk.Image, pixel: float
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate plane heights over the tumour and the tumour area (mm²) on each.

    The heights follow the source axis closest to cranio-caudal, so an axial
    source is cut through its own slices.
    """
    axis = int(np.argmax(np.abs(volume.direction[2, :])))
    step = float(volume.spacing[axis])
    zyx = np.argwhere(mask_zyx != 0)[:, ::-1].astype(float)
    points = (volume.affine() @ np.column_stack([zyx, np.ones(len(zyx))]).T).T[:, :3]
    lo, hi = points.min(axis=0) - 2 * pixel, points.max(axis=0) + 2 * pixel
    z0 = volume.origin[2]
    first = math.floor((lo[2] - z0) / step)
    last = math.ceil((hi[2] - z0) / step)
    z_all = z0 + step * np.arange(first, last + 1)
    cols, rows = (int(math.ceil((hi[i] - lo[i]) / pixel)) + 1 for i in (0, 1))
    target = Grid(
        (len(z_all), rows, cols), (pixel, pixel, step), (lo[0], lo[1], z_all[0]), np.eye(3)
    )
    stack = resample(mask_img, target) >= 0.5
    return z_all, stack.sum(axis=(1, 2)).astype(float) * pixel * pixel


def resample(image: sitk.Image, target: Grid) -> np.ndarray:
    """Linear interpolation onto ``target``, as float32 whatever the input type."""
    out = sitk.Resample(
        image, target.blank(), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32
    )
    return sitk.GetArrayFromImage(out)
