"""Ground truth measured on the true tumour, in patient space.

Volume: voxels of the tumour on the world grid times the voxel volume, times
the pose's volume scale (world -> patient). Maximal 3D diameter: the largest
distance between points of the tumour surface (boundary voxels moved onto
``phi = 0`` along the gradient), mapped to patient coordinates, over the
convex hull. The mask of the T1C series is the tumour's partial-volume
occupancy resampled onto its grid and thresholded at one half.

Distinct heads (:mod:`lab.synth.heads`) deform the template by
``phi^-1`` (a variant point ``p`` shows template point ``p + d(p)``): the volume
is then the sum over tumour voxels of ``det J(phi^-1)`` times the voxel volume
times the pose's volume scale; surface points and the centroid are mapped
through ``phi^-1`` before the pose; the mask samples the occupancy at
``p + d(p)``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

from lab.synth.acquisition import Grid, Pose
from lab.synth.anatomy import HeadModel
from lab.synth.heads import HeadVariant
from lab.synth.tumour import TumourGeometry


def _warped(warp: HeadVariant | None) -> HeadVariant | None:
    return None if warp is None or warp.is_identity else warp


def tumour_volume_cm3(
    geo: TumourGeometry, model: HeadModel, pose: Pose, warp: HeadVariant | None = None
) -> float:
    """True tumour volume in the patient (cm3)."""
    h = model.spacing
    w = _warped(warp)
    if w is None:
        return geo.voxels * h**3 * pose.volume_scale / 1000.0
    ras = geo.box_origin + h * np.argwhere(geo.mask)
    return float(w.inverse_jacobian_det(ras).sum()) * h**3 * pose.volume_scale / 1000.0


def surface_points(geo: TumourGeometry, model: HeadModel) -> np.ndarray:
    """Points on phi = 0 (world RAS mm), one per boundary voxel."""
    h = model.spacing
    mask = geo.mask
    border = mask & ~ndi.binary_erosion(mask, border_value=0)
    idx = np.argwhere(border)
    grads = np.stack(np.gradient(geo.phi, h), axis=0)
    g = grads[:, idx[:, 0], idx[:, 1], idx[:, 2]].T
    val = geo.phi[idx[:, 0], idx[:, 1], idx[:, 2]]
    norm2 = np.maximum((g * g).sum(axis=1), 0.25)
    ras = geo.box_origin + h * idx
    step = np.clip(-val / norm2, -h, h)[:, None] * g
    return ras + step


def max_diameter_mm(
    geo: TumourGeometry, model: HeadModel, pose: Pose, warp: HeadVariant | None = None
) -> float:
    pts = surface_points(geo, model)
    w = _warped(warp)
    if w is not None:
        pts = w.variant_points(pts)
    pts = pose.to_patient(pts)
    if len(pts) < 2:
        return 0.0
    try:
        hull = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):
        hull = pts
    d = np.sqrt(((hull[:, None, :] - hull[None, :, :]) ** 2).sum(-1))
    return float(d.max())


def centroid_patient(
    geo: TumourGeometry, model: HeadModel, pose: Pose, warp: HeadVariant | None = None
) -> np.ndarray:
    idx = np.argwhere(geo.mask)
    w = _warped(warp)
    if w is None:
        return pose.to_patient(geo.box_origin + model.spacing * idx.mean(axis=0))[0]
    ras = geo.box_origin + model.spacing * idx
    weight = w.inverse_jacobian_det(ras)
    pts = w.variant_points(ras)
    return pose.to_patient((pts * weight[:, None]).sum(axis=0) / weight.sum())[0]


def mask_on_grid(
    geo: TumourGeometry, model: HeadModel, pose: Pose, grid: Grid, warp: HeadVariant | None = None
) -> np.ndarray:
    """Tumour mask on the series grid, uint8 indexed [slice, row, column]."""
    h = model.spacing
    w = _warped(warp)
    out = np.zeros((grid.slices, grid.rows, grid.cols), dtype=np.uint8)
    shape = np.array(geo.phi.shape)
    corners = np.array(
        [[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)]
    )
    corners_ras = geo.box_origin + h * corners
    extra = 0
    if w is not None:  # the box's image under phi^-1, with a margin for its curvature
        corners_ras = w.variant_points(corners_ras)
        bend = 2.0 * float(np.abs(w.displacement(corners_ras)).max()) + 2.0 * h
        extra = int(np.ceil(bend / min(grid.row_spacing, grid.col_spacing, grid.slice_step)))
    corners_pat = pose.to_patient(corners_ras)
    g2p = grid.voxel_to_patient()
    p2g = np.linalg.inv(g2p)
    cidx = corners_pat @ p2g[:3, :3].T + p2g[:3, 3]  # (column, row, slice)
    lo = np.maximum(np.floor(cidx.min(axis=0)).astype(int) - 1 - extra, 0)
    hi = np.minimum(
        np.ceil(cidx.max(axis=0)).astype(int) + 2 + extra, [grid.cols, grid.rows, grid.slices]
    )
    if np.any(hi <= lo):
        return out
    c, r, s = np.meshgrid(
        np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), np.arange(lo[2], hi[2]), indexing="ij"
    )
    vox = np.stack([c.ravel(), r.ravel(), s.ravel()], axis=1).astype(float)
    pat = vox @ g2p[:3, :3].T + g2p[:3, 3]
    inv = np.linalg.inv(pose.matrix)
    ras = pat @ inv[:3, :3].T + inv[:3, 3]
    if w is not None:
        ras = w.template_points(ras)
    bidx = (ras - geo.box_origin) / h
    # interpolate the partial-volume occupancy, not phi: thresholding it at one half
    # keeps the mask volume unbiased (trilinear phi shrinks convex shapes ~3 %)
    occ = np.clip(0.5 - geo.phi / h, 0.0, 1.0).astype(np.float32)
    frac = ndi.map_coordinates(occ, bidx.T, order=1, mode="constant", cval=0.0)
    inside = (frac > 0.5).reshape(c.shape)
    out[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]] = inside.transpose(2, 1, 0)
    return out
