"""Meningioma geometry: where it sits on the dura and its lobulated shape.

The tumour is an implicit surface ``phi(x) < 0`` (``phi`` ~ signed distance in
mm) on a box of the world grid: a smooth union of one to four ellipsoidal
lobes centred just inside the dura, lobulated by smooth noise, clipped by the
dura (so it has a broad dural base and never enters bone) and, for falx
tumours, by the midline. A constant shift of ``phi`` makes the enclosed
volume exactly the drawn one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from lab.synth.anatomy import HeadModel

log = logging.getLogger(__name__)

LOCATIONS = ("convexity", "falx", "skull_base")
SIDES = ("left", "right", "midline")
MAX_BOX_HALF_MM = 100.0


@dataclass(frozen=True)
class TumourShape:
    """Drawn shape parameters of one tumour (world mm)."""

    location: str
    side: str  # wanted side for convexity/falx; skull base takes the anchor's
    volume_mm3: float  # world volume (patient volume / pose determinant)
    embed: float  # how deep the main lobe centre sits below the dura, in radii
    lobes: int
    lobulation: float  # amplitude of the surface bumps, 0..1
    elongation: tuple[float, float]  # axis ratios of the main lobe
    margin_mm: float  # extra box margin needed around the tumour (edema, warp)


@dataclass
class TumourGeometry:
    """The placed tumour: its field on a box of the world grid and where it sits."""

    box: tuple[slice, slice, slice]
    box_origin: np.ndarray  # RAS mm of the box's first voxel
    phi: np.ndarray  # float32 (mm), < 0 inside the tumour
    mask: np.ndarray  # bool, phi < 0, one connected component
    anchor: np.ndarray  # RAS mm of the dural attachment point
    normal: np.ndarray  # unit vector from the dura into the brain
    side: str
    location: str

    @property
    def voxels(self) -> int:
        return int(self.mask.sum())


def _box_coords(model: HeadModel, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, ...]:
    axes = [
        (model.origin[i] + model.spacing * np.arange(box[i].start, box[i].stop)).astype(np.float32)
        for i in range(3)
    ]
    return tuple(np.meshgrid(*axes, indexing="ij", sparse=True))


def make_box(model: HeadModel, centre: np.ndarray, half_mm: float) -> tuple[slice, slice, slice]:
    lo = np.floor(model.to_index(centre - half_mm)).astype(int)
    hi = np.ceil(model.to_index(centre + half_mm)).astype(int) + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.array(model.shape))
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))


def _dura_normals(model: HeadModel, idx: np.ndarray) -> np.ndarray:
    """Unit normals pointing from the dura into the brain at world indices ``idx``."""
    g = []
    for axis in range(3):
        lo = idx.copy()
        hi = idx.copy()
        lo[:, axis] = np.maximum(lo[:, axis] - 1, 0)
        hi[:, axis] = np.minimum(hi[:, axis] + 1, model.shape[axis] - 1)
        g.append(model.d_hull[tuple(hi.T)] - model.d_hull[tuple(lo.T)])
    n = -np.stack(g, axis=1)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-6)


def choose_anchor(
    model: HeadModel, shape: TumourShape, csf_mm: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, str]:
    """A dural attachment point (RAS), its inward normal and the resulting side."""
    h = model.spacing
    if shape.location == "falx":
        sign = 1.0 if shape.side == "right" else -1.0
        y = float(rng.uniform(-75, 40))
        z_min = 30 - 0.12 * y
        z = float(rng.uniform(z_min, z_min + 0.55 * (70 - z_min)))
        return np.array([0.0, y, z]), np.array([sign, 0.0, 0.0]), shape.side
    width = 0.75 * h
    idx = np.zeros((0, 3), dtype=int)
    while len(idx) == 0:  # the dura surface: one voxel thick band at the CSF width
        idx = np.argwhere((np.abs(model.d_hull - csf_mm) < width) & ~model.brain)
        width *= 1.5
    ras = model.origin + h * idx
    normals = _dura_normals(model, idx)
    if shape.location == "convexity":
        sign = 1.0 if shape.side == "right" else -1.0
        ok = (
            (ras[:, 2] > -12)
            & (ras[:, 0] * sign > 14)
            & (normals[:, 2] < 0.2 + 0.8 * (ras[:, 2] > 30))
        )
        ok &= ras[:, 1] > -100
    else:  # skull base: the floor of the anterior, middle and posterior fossae
        ok = (normals[:, 2] > 0.55) & (ras[:, 2] < -8) & (ras[:, 2] > -58)
        ok &= np.abs(ras[:, 0]) < 55
    cand = np.flatnonzero(ok)
    if cand.size == 0:  # cannot happen with the bundled template; keep a sane fallback
        cand = np.arange(len(idx))
    pick = int(rng.choice(cand))
    p, n = ras[pick], normals[pick]
    side = shape.side
    if shape.location == "skull_base":
        side = "midline" if abs(p[0]) < 10 else ("right" if p[0] > 0 else "left")
    return p.astype(float), n.astype(float), side


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _frame(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotation whose first column is ``normal`` (the other two random in the dural plane)."""
    t = rng.standard_normal(3)
    t -= normal * (t @ normal)
    t /= max(float(np.linalg.norm(t)), 1e-6)
    return np.stack([normal, t, np.cross(normal, t)], axis=1)


def unit_noise(shape: tuple[int, ...], sigma_vox: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), max(sigma_vox, 0.5))
    return (f - f.mean()) / max(float(f.std()), 1e-6)


def place_tumour(
    model: HeadModel, shape: TumourShape, csf_mm: float, rng: np.random.Generator
) -> TumourGeometry:
    """Place and shape the tumour so that it encloses exactly ``shape.volume_mm3``."""
    h = model.spacing
    anchor, normal, side = choose_anchor(model, shape, csf_mm, rng)
    radius = (3 * shape.volume_mm3 / (4 * np.pi)) ** (1 / 3)
    centre = anchor + normal * shape.embed * radius
    rot = _frame(normal, rng)
    flat, ratio = shape.elongation
    axes = np.array([flat, ratio / np.sqrt(flat), 1.0 / (ratio * np.sqrt(flat))]) * radius
    lobes = [(centre, axes, rot)]
    for _ in range(shape.lobes - 1):
        t = rng.standard_normal(3)
        t -= normal * (t @ normal)
        t /= max(float(np.linalg.norm(t)), 1e-6)
        c = centre + radius * (0.55 * t + normal * rng.uniform(-0.1, 0.3))
        lobes.append(
            (c, radius * rng.uniform(0.4, 0.7) * rng.uniform(0.85, 1.15, 3), _rotation(rng))
        )
    half = min(1.3 * radius + shape.margin_mm + 3 * h, MAX_BOX_HALF_MM)
    for _attempt in range(3):
        geo = _shape_in_box(model, shape, lobes, anchor, normal, side, csf_mm, half, rng)
        if geo is not None:
            return geo
        half = min(half * 1.4, MAX_BOX_HALF_MM * 1.3)
    geo = _shape_in_box(model, shape, lobes, anchor, normal, side, csf_mm, half, rng, force=True)
    assert geo is not None
    return geo


def _shape_in_box(
    model, shape, lobes, anchor, normal, side, csf_mm, half, rng, force=False
) -> TumourGeometry | None:
    h = model.spacing
    centre = lobes[0][0]
    box = make_box(model, centre, half)
    x, y, z = _box_coords(model, box)
    smooth = 2.0
    acc = np.zeros(tuple(s.stop - s.start for s in box), dtype=np.float32)
    for c, ax, rot in lobes:
        q = [
            (x - c[0]) * rot[0, i] + (y - c[1]) * rot[1, i] + (z - c[2]) * rot[2, i]
            for i in range(3)
        ]
        rho = np.sqrt((q[0] / ax[0]) ** 2 + (q[1] / ax[1]) ** 2 + (q[2] / ax[2]) ** 2)
        phi_k = ((rho - 1) * ax.min()).astype(np.float32)
        term = np.exp(-np.clip(phi_k, -60, 60) / smooth)
        acc += term
    phi = (-smooth * np.log(acc)).astype(np.float32)
    radius = (3 * shape.volume_mm3 / (4 * np.pi)) ** (1 / 3)
    bump = unit_noise(phi.shape, max(0.3 * radius, 2.0) / h, rng)
    phi += (shape.lobulation * 0.06 * radius) * bump
    allowed = model.d_hull[box] < csf_mm
    if shape.location == "falx":
        sign = 1.0 if side == "right" else -1.0
        allowed &= x * sign > 0.25 * h
    n_target = max(int(round(shape.volume_mm3 / h**3)), 1)
    vals = phi[allowed]
    if vals.size <= n_target:
        if not force:
            return None
        n_target = max(vals.size - 1, 1)
    part = np.partition(vals, [n_target - 1, n_target])
    delta = -0.5 * (float(part[n_target - 1]) + float(part[n_target]))
    phi = phi + delta
    clip = np.where(allowed, model.d_hull[box] - csf_mm, 10.0).astype(np.float32)
    if shape.location == "falx":
        clip = np.maximum(clip, (-(x * sign) + 0.25 * h).astype(np.float32))
    phi = np.maximum(phi, clip)
    mask = phi < 0
    lab, n = ndi.label(mask)
    if n > 1:
        sizes = ndi.sum_labels(mask, lab, index=np.arange(1, n + 1))
        mask = lab == (1 + int(np.argmax(sizes)))
        phi = np.where(~mask & (phi < 0), np.float32(0.5 * h), phi)
    touches = any(mask.take(0, axis=a).any() or mask.take(-1, axis=a).any() for a in range(3))
    if touches and not force:
        return None
    box_origin = model.origin + h * np.array([s.start for s in box], dtype=float)
    return TumourGeometry(
        box=box,
        box_origin=box_origin,
        phi=phi.astype(np.float32),
        mask=mask,
        anchor=anchor,
        normal=normal,
        side=side,
        location=shape.location,
    )
