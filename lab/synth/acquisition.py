"""From the world volume to pixels: head pose, slice grid, resampling and MR physics.

Patient coordinates are DICOM LPS millimetres. A case's :class:`Pose` maps
world (template RAS) to patient coordinates with a small rotation, a head-size
scaling and a table offset. A :class:`Grid` is one series' slice geometry,
written to DICOM as ImageOrientationPatient / ImagePositionPatient /
PixelSpacing. Sampling is trilinear after a Gaussian point-spread function
(partial volume); slices thicker than the world spacing average sub-slices
across their thickness. Then a smooth multiplicative bias field, Rician
noise, and quantisation to stored values with RescaleSlope/Intercept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from lab.synth.anatomy import HeadModel


class HeadWarp(Protocol):
    """A nonlinear head deformation (:class:`lab.synth.heads.HeadVariant` is one)."""

    @property
    def is_identity(self) -> bool: ...

    def template_points(self, ras: np.ndarray) -> np.ndarray:
        """The template point (RAS mm) that each variant-head point ``ras`` (n, 3) shows."""
        ...


LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
BASES = {  # (row direction X, column direction Y) in LPS, as scanners write them
    "sag": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
}
HEAD_CENTRE_RAS = np.array([0.0, -18.0, 8.0])


@dataclass(frozen=True)
class Pose:
    """World (template RAS) -> patient (LPS) for one case."""

    matrix: np.ndarray  # 4x4
    rotation_lps: np.ndarray  # 3x3 head rotation expressed in LPS

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Pose:
        pitch, roll, yaw = rng.normal(0, [5.0, 2.5, 2.5]).clip(-12, 12)
        rot = Rotation.from_euler("xyz", [pitch, roll, yaw], degrees=True).as_matrix()
        size = rng.uniform(0.93, 1.07)
        scale = np.diag(size * rng.uniform(0.97, 1.03, 3))
        lin = LPS_FROM_RAS @ rot @ scale
        table = np.array([rng.normal(0, 4), rng.normal(-5, 8), rng.normal(0, 12)])
        m = np.eye(4)
        m[:3, :3] = lin
        m[:3, 3] = table - lin @ HEAD_CENTRE_RAS
        return cls(matrix=m, rotation_lps=LPS_FROM_RAS @ rot @ LPS_FROM_RAS)

    @property
    def volume_scale(self) -> float:
        """Patient volume per world volume."""
        return float(abs(np.linalg.det(self.matrix[:3, :3])))

    def to_patient(self, ras: np.ndarray) -> np.ndarray:
        ras = np.atleast_2d(ras)
        return ras @ self.matrix[:3, :3].T + self.matrix[:3, 3]


@dataclass(frozen=True)
class Grid:
    """The slice geometry of one series (DICOM Image Plane module)."""

    rows: int
    cols: int
    slices: int
    row_spacing: float  # PixelSpacing[0]: between rows
    col_spacing: float  # PixelSpacing[1]: between columns
    slice_step: float  # distance between slice centres (SpacingBetweenSlices)
    thickness: float
    row_dir: np.ndarray  # X: direction of increasing column index
    col_dir: np.ndarray  # Y: direction of increasing row index
    step_dir: np.ndarray  # unit direction from slice k to k+1 (plus or minus the normal)
    origin: np.ndarray  # ImagePositionPatient of slice 0

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def iop(self) -> list[float]:
        return [float(round(v, 8)) for v in (*self.row_dir, *self.col_dir)]

    def position(self, k: int) -> list[float]:
        p = self.origin + k * self.slice_step * self.step_dir
        return [float(round(v, 4)) for v in p]

    def voxel_to_patient(self) -> np.ndarray:
        """4x4: (column, row, slice) index -> LPS mm."""
        m = np.eye(4)
        m[:3, 0] = self.row_dir * self.col_spacing
        m[:3, 1] = self.col_dir * self.row_spacing
        m[:3, 2] = self.step_dir * self.slice_step
        m[:3, 3] = self.origin
        return m

    def nifti_affine(self) -> np.ndarray:
        """RAS affine of an array indexed [column, row, slice] (nibabel convention)."""
        m = self.voxel_to_patient()
        m[:2] *= -1
        return m


def plan_grid(
    orientation: str,
    *,
    rows: int,
    cols: int,
    slices: int,
    pixel: float,
    thickness: float,
    step: float,
    pose: Pose,
    head_pts: np.ndarray,
    rng: np.random.Generator,
    oblique: bool = False,
    reverse: bool = False,
    cover_top: bool = True,
) -> Grid:
    """Place a slab over the head the way a technologist would."""
    x, y = (np.array(v) for v in BASES[orientation])
    basis = np.stack([x, y, np.cross(x, y)], axis=1)
    if oblique:
        tweak = Rotation.from_euler("xyz", rng.normal(0, 2.0, 3), degrees=True).as_matrix()
        basis = tweak @ pose.rotation_lps @ basis
    u, v, n = basis[:, 0], basis[:, 1], basis[:, 2]
    pts = pose.to_patient(head_pts)
    pu, pv, pn = pts @ u, pts @ v, pts @ n
    fov_u, fov_v, slab = cols * pixel, rows * pixel, slices * step
    cu = 0.5 * (pu.min() + pu.max()) + rng.normal(0, 3)
    cv = 0.5 * (pv.min() + pv.max()) + rng.normal(0, 3)
    cn = 0.5 * (pn.min() + pn.max()) + rng.normal(0, 2)
    margin = rng.uniform(3, 12)
    sup = np.array([0.0, 0.0, 1.0])  # superior in LPS
    if cover_top:  # keep the vertex in the field of view along the axis that points up
        for axis, (proj, length) in enumerate(((pu, fov_u), (pv, fov_v), (pn, slab))):
            direction = (u, v, n)[axis]
            up = float(direction @ sup)
            if abs(up) < 0.7 or proj.max() - proj.min() + margin < length:
                continue
            top = proj.max() if up > 0 else proj.min()
            centre = top - np.sign(up) * (length / 2 - margin)
            cu, cv, cn = (centre if a == axis else c for a, c in enumerate((cu, cv, cn)))
    centre = cu * u + cv * v + cn * n
    step_dir = -n if reverse else n
    origin = (
        centre
        - 0.5 * (cols - 1) * pixel * u
        - 0.5 * (rows - 1) * pixel * v
        - 0.5 * (slices - 1) * step * step_dir
    )
    return Grid(
        rows=rows,
        cols=cols,
        slices=slices,
        row_spacing=pixel,
        col_spacing=pixel,
        slice_step=step,
        thickness=thickness,
        row_dir=u,
        col_dir=v,
        step_dir=step_dir,
        origin=origin,
    )


def world_from_output(model: HeadModel, pose: Pose, grid: Grid) -> np.ndarray:
    """4x4: output index (slice, row, column) -> world voxel index."""
    perm = np.zeros((4, 4))
    perm[0, 2] = perm[1, 1] = perm[2, 0] = perm[3, 3] = 1.0
    world_inv = np.linalg.inv(model.index_to_ras())
    return world_inv @ np.linalg.inv(pose.matrix) @ grid.voxel_to_patient() @ perm


def point_spread(world: np.ndarray, model: HeadModel, pixel_mm: float) -> np.ndarray:
    """Gaussian point-spread function of an acquisition with ``pixel_mm`` voxels."""
    sigma = 0.42 * pixel_mm / model.spacing
    return ndi.gaussian_filter(world, sigma, truncate=2.5) if sigma > 0.3 else world


def sample(
    world: np.ndarray,
    model: HeadModel,
    pose: Pose,
    grid: Grid,
    warp: HeadWarp | None = None,
) -> np.ndarray:
    """Resample a (PSF-blurred) world volume onto the grid -> float32 [slice, row, col].

    Slices thicker than twice the world spacing average two sub-slices. For
    large outputs the world array is first transposed so that its memory
    order follows the grid's axes (about 1.5x faster trilinear sampling).
    With a head ``warp`` (not the identity), each output voxel's world point
    ``p`` shows the template at ``p + d(p)`` (:mod:`lab.synth.heads`).
    """
    h = model.spacing
    m = world_from_output(model, pose, grid)
    if warp is not None and not warp.is_identity:
        return _sample_warped(world, model, m, grid, warp)
    lin, off = m[:3, :3], m[:3, 3]
    src = world
    n_out = grid.slices * grid.rows * grid.cols
    order = [int(np.argmax(np.abs(lin[:, j]))) for j in range(3)]
    if n_out > 4_000_000 and sorted(order) == [0, 1, 2] and order != [0, 1, 2]:
        src = np.ascontiguousarray(world.transpose(order))
        lin, off = lin[order, :], off[order]
    n_sub = 2 if grid.thickness > 2.0 * h else 1
    out = np.zeros((grid.slices, grid.rows, grid.cols), dtype=np.float32)
    step = lin[:, 0] / grid.slice_step  # source index shift per mm along the slice step
    for k in range(n_sub):
        shift = ((k + 0.5) / n_sub - 0.5) * grid.thickness if n_sub > 1 else 0.0
        out += ndi.affine_transform(
            src,
            lin,
            offset=off + shift * step,
            output_shape=out.shape,
            order=1,
            mode="constant",
            cval=0.0,
            prefilter=False,
            output=np.float32,
        )
    if n_sub > 1:
        out /= n_sub
    return out


def _sample_warped(
    world: np.ndarray, model: HeadModel, m: np.ndarray, grid: Grid, warp: HeadWarp
) -> np.ndarray:
    """:func:`sample` through a nonlinear warp, a few slices at a time (bounded memory)."""
    h = model.spacing
    lin, off = m[:3, :3], m[:3, 3]
    n_sub = 2 if grid.thickness > 2.0 * h else 1
    step = lin[:, 0] / grid.slice_step
    out = np.zeros((grid.slices, grid.rows, grid.cols), dtype=np.float32)
    r, c = np.meshgrid(np.arange(grid.rows), np.arange(grid.cols), indexing="ij")
    plane = np.stack([np.zeros(r.size), r.ravel(), c.ravel()]).astype(float)  # (3, rows*cols)
    chunk = max(1, 2_000_000 // plane.shape[1])
    for s0 in range(0, grid.slices, chunk):
        ks = np.arange(s0, min(s0 + chunk, grid.slices))
        pts = np.concatenate([plane + np.array([[k], [0.0], [0.0]]) for k in ks], axis=1)
        base = lin @ pts + off[:, None]  # world index, (3, n)
        acc = np.zeros(pts.shape[1], dtype=np.float32)
        for k in range(n_sub):
            shift = ((k + 0.5) / n_sub - 0.5) * grid.thickness if n_sub > 1 else 0.0
            idx = base + (shift * step)[:, None]
            ras = model.origin + h * idx.T
            src = (warp.template_points(ras) - model.origin) / h
            acc += ndi.map_coordinates(
                world, src.T, order=1, mode="constant", cval=0.0, prefilter=False, output=np.float32
            )
        out[ks] = (acc / n_sub).reshape(len(ks), grid.rows, grid.cols)
    return out


def apply_bias_field(img: np.ndarray, amplitude: float, rng: np.random.Generator) -> None:
    """Multiply ``img`` [slice, row, col] in place by a smooth field, roughly +-amplitude.

    log(field) is a quadratic polynomial of the normalised coordinates with an
    in-plane cross term; it factorises into a per-slice and a per-plane part.
    """
    s_ax, r_ax, c_ax = (np.linspace(-1, 1, n, dtype=np.float32) for n in img.shape)
    k = rng.normal(0, amplitude / 2, 7).astype(np.float32)
    along = np.exp(k[0] * s_ax + k[1] * s_ax * s_ax)
    plane = np.exp(
        k[2] * r_ax[:, None]
        + k[3] * c_ax[None, :]
        + k[4] * r_ax[:, None] ** 2
        + k[5] * c_ax[None, :] ** 2
        + k[6] * r_ax[:, None] * c_ax[None, :]
    )
    img *= along[:, None, None]
    img *= plane[None, :, :]


def add_rician_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise (in place where possible)."""
    n1 = rng.standard_normal(img.shape, dtype=np.float32)
    n1 *= sigma
    n1 += img
    n2 = rng.standard_normal(img.shape, dtype=np.float32)
    n2 *= sigma
    np.hypot(n1, n2, out=n1)
    return n1


@dataclass(frozen=True)
class Quantisation:
    """How relative intensities become stored pixel values."""

    scale: float  # real-world value of white matter
    slope: float = 1.0
    intercept: float = 0.0
    signed: bool = False
    bits_stored: int = 12

    @property
    def max_stored(self) -> int:
        return 2 ** (self.bits_stored - (1 if self.signed else 0)) - 1

    def apply(self, rel: np.ndarray) -> np.ndarray:
        stored = (rel * self.scale - self.intercept) / self.slope
        np.clip(stored, 0, self.max_stored, out=stored)
        np.rint(stored, out=stored)
        return stored.astype(np.int16 if self.signed else np.uint16)

    def window(self) -> tuple[float, float]:
        """WindowCenter/Width in real-world values: grey matter to bright fat."""
        return round(0.6 * self.scale, 1), round(1.4 * self.scale, 1)
