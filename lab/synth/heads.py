"""Distinct synthetic heads: one template brain, many subjects.

Every case of the default cohort shows the same head (the MNI152 brain and
the head built around it, :mod:`lab.synth.anatomy`). A segmentation
network must also be tested on heads it never saw, so :func:`head_variant`
builds, deterministically from an index, a :class:`HeadVariant`: index 0 is
today's head, unchanged; index >= 1 differs in

* an anisotropic head scale per world axis (0.88-1.12) about
  :data:`~lab.synth.acquisition.HEAD_CENTRE_RAS`, folded into the case's
  :class:`~lab.synth.acquisition.Pose` (:meth:`HeadVariant.fold_pose`), so
  ``pose.volume_scale`` stays the exact patient/world volume ratio of the
  global part;
* a smooth nonlinear displacement field ``d`` (amplitude 2-5 mm, correlation
  length 35-50 mm, a seeded coarse random grid interpolated by cubic splines)
  plus a local shift of the orbits and face (3-8 mm), so that orbits and
  sinuses move relative to the brain;
* brain atrophy (wider sulci and ventricles), orbital fat size, fatty
  (T1-bright) bone marrow, enhancing mucosa, layer thicknesses, and a
  pituitary gland with cavernous sinuses (:func:`anatomy.paint_pituitary`).

Warp convention (pull-back): the variant head is the template deformed by
``phi^-1`` with ``phi(p) = p + d(p)``; a point ``p`` of the variant head (world
RAS mm, before the pose) shows the template world point ``p + d(p)``. Images
and truth masks are sampled that way (:func:`acquisition.sample`,
:func:`truth.mask_on_grid`); the tumour's true volume is the integral of
``det J(phi^-1)`` over the tumour in the template (:mod:`lab.synth.truth`).

``d`` is evaluated as the trilinear interpolation of a fixed 4 mm lattice, so
that images, masks and truth use exactly the same field.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from lab.synth.acquisition import HEAD_CENTRE_RAS, Pose
from lab.synth.anatomy import (
    TEMPLATE_CSF,
    WORLD_MAX,
    WORLD_MIN,
    HeadModel,
    Label,
    SynthError,
)

if TYPE_CHECKING:
    from lab.synth.contrast import HeadLayers

MAX_HEAD_INDEX = 9999
LATTICE_MM = 4.0  # spacing of the lattice that d is interpolated from
LATTICE_PAD_MM = 40.0  # the lattice covers the world bounds plus this margin
FACE_CENTRE_RAS = np.array([0.0, 48.0, -52.0])  # orbits, nose, maxillary sinuses
FACE_SIGMA_MM = 22.0
MARROW_T1C = 0.72  # contrast.py's values, the base of the t1c factors
MUCOSA_T1C = 0.95
ORBIT_FAT_CENTRE = (30.0, 46.0, -40.0)  # per side (x mirrored), as head_build.py paints it
ORBIT_FAT_RADII = (16.0, 24.0, 15.0)


@dataclass(frozen=True)
class HeadVariant:
    """One synthetic subject's head, as a deformation of the shared template head."""

    index: int
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per world axis, about the head centre
    warp_amplitude_mm: float = 0.0  # largest displacement of the smooth random field
    warp_length_mm: float = 40.0  # its correlation length (coarse grid spacing)
    face_shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)  # orbits/face vs the brain
    atrophy: float = 0.0  # 0..1: sulcal CSF widening
    ventricle_mm: float = 0.0  # ventricles widened by this many mm
    orbit_fat: float = 1.0  # radius factor of the orbital fat cone
    marrow_t1c: float = MARROW_T1C  # T1C intensity of the diploic marrow (fatty: brighter)
    mucosa_t1c: float = MUCOSA_T1C  # T1C intensity of the nasal/sinus mucosa
    csf_extra_mm: float = 0.0  # added to the case's extra-axial CSF layer
    skull_extra_mm: float = 0.0  # added to the case's skull offset (thicker vault)
    fat_factor: float = 1.0  # scalp fat thickness factor

    @property
    def is_identity(self) -> bool:
        return self.index == 0

    # -- the warp -----------------------------------------------------------------

    @functools.cached_property
    def _lattice(self) -> tuple[np.ndarray, np.ndarray]:
        """(origin RAS, displacement float32 [3, nx, ny, nz]) on the 4 mm lattice."""
        lo = WORLD_MIN - LATTICE_PAD_MM
        n = np.ceil((WORLD_MAX - WORLD_MIN + 2 * LATTICE_PAD_MM) / LATTICE_MM).astype(int) + 1
        disp = np.zeros((3, *n), dtype=np.float32)
        if self.is_identity:
            return lo, disp
        axes = [lo[i] + LATTICE_MM * np.arange(n[i]) for i in range(3)]
        x, y, z = np.meshgrid(*axes, indexing="ij")
        # random field: nodes every warp_length_mm, cubic-spline interpolated
        rng = np.random.default_rng([self.index, 7])
        step = self.warp_length_mm
        nodes = np.ceil((n - 1) * LATTICE_MM / step).astype(int) + 4
        coarse = rng.standard_normal((3, *nodes))
        idx = [(c - lo[i]) / step + 1.5 for i, c in enumerate((x, y, z))]
        field = np.stack(
            [ndi.map_coordinates(coarse[k], idx, order=3, mode="nearest") for k in range(3)]
        )
        field *= self.warp_amplitude_mm / max(float(np.abs(field).max()), 1e-6)
        # local shift of the face: a Gaussian bump centred on the orbits and nose
        r2 = (
            (x - FACE_CENTRE_RAS[0]) ** 2
            + (y - FACE_CENTRE_RAS[1]) ** 2
            + (z - FACE_CENTRE_RAS[2]) ** 2
        )
        bump = np.exp(-r2 / (2 * FACE_SIGMA_MM**2))
        for k in range(3):
            field[k] += self.face_shift_mm[k] * bump
        return lo, field.astype(np.float32)

    def displacement(self, ras: np.ndarray) -> np.ndarray:
        """``d(p)`` (n, 3) mm at variant-head points ``ras`` (n, 3): p shows template p + d(p)."""
        pts = np.asarray(ras, dtype=float).reshape(-1, 3)
        if self.is_identity:
            return np.zeros_like(pts)
        lo, field = self._lattice
        idx = ((pts - lo) / LATTICE_MM).T
        return np.stack(
            [ndi.map_coordinates(field[k], idx, order=1, mode="nearest") for k in range(3)],
            axis=1,
        )

    def template_points(self, ras: np.ndarray) -> np.ndarray:
        """``phi(p) = p + d(p)``: the template point that variant point ``p`` shows."""
        pts = np.asarray(ras, dtype=float).reshape(-1, 3)
        return pts + self.displacement(pts)

    def variant_points(self, template_ras: np.ndarray) -> np.ndarray:
        """``phi^-1(q)``: where template point ``q`` lies in the variant head (fixed point)."""
        q = np.asarray(template_ras, dtype=float).reshape(-1, 3)
        p = q.copy()
        if self.is_identity:
            return p
        for _ in range(12):
            p = q - self.displacement(p)
        return p

    def inverse_jacobian_det(self, template_ras: np.ndarray) -> np.ndarray:
        """``det J(phi^-1)`` at template points: variant volume per template volume."""
        q = np.asarray(template_ras, dtype=float).reshape(-1, 3)
        if self.is_identity:
            return np.ones(len(q))
        p = self.variant_points(q)
        eps = 0.5
        jac = np.zeros((len(p), 3, 3))
        for j in range(3):
            e = np.zeros(3)
            e[j] = eps
            jac[:, :, j] = (self.displacement(p + e) - self.displacement(p - e)) / (2 * eps)
        jac += np.eye(3)[None]
        return 1.0 / np.linalg.det(jac)

    def warp_label_map(self, lab: np.ndarray, model: HeadModel) -> np.ndarray:
        """Nearest-neighbour pull-back of a world-grid label map onto the variant head.

        Voxel ``p`` of the result takes the label of the template at ``p + d(p)``
        (outside the grid: AIR). The global scale is not applied here: it lives
        in the case's pose, like every other world-to-patient transform.
        """
        if self.is_identity:
            return lab.copy()
        if lab.shape != model.shape:
            raise SynthError(
                f"label map shape {lab.shape} is not the head model's {model.shape}; "
                "pass the map built on the same model"
            )
        out = np.empty_like(lab)
        axes = [model.coords(i) for i in range(3)]
        for i in range(model.shape[0]):  # one sagittal plane at a time: bounded memory
            y, z = np.meshgrid(axes[1], axes[2], indexing="ij")
            pts = np.stack([np.full(y.size, axes[0][i]), y.ravel(), z.ravel()], axis=1)
            idx = np.rint(model.to_index(self.template_points(pts))).astype(int)
            ok = np.all((idx >= 0) & (idx < np.array(model.shape)), axis=1)
            plane = np.full(y.size, Label.AIR, dtype=lab.dtype)
            plane[ok] = lab[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
            out[i] = plane.reshape(y.shape)
        return out

    # -- the pose and the layers ---------------------------------------------------

    def fold_pose(self, pose: Pose) -> Pose:
        """The case's pose with this head's anisotropic scale (about the head centre) folded in."""
        if self.is_identity:
            return pose
        m = pose.matrix.copy()
        table = m[:3, 3] + m[:3, :3] @ HEAD_CENTRE_RAS
        m[:3, :3] = m[:3, :3] @ np.diag(self.scale)
        m[:3, 3] = table - m[:3, :3] @ HEAD_CENTRE_RAS
        return Pose(matrix=m, rotation_lps=pose.rotation_lps)

    def adjust_layers(self, layers: HeadLayers) -> HeadLayers:
        """The case's drawn layer thicknesses with this head's tweaks."""
        if self.is_identity:
            return layers
        return replace(
            layers,
            csf=layers.csf + self.csf_extra_mm,
            skull_offset=layers.skull_offset + self.skull_extra_mm,
            fat=layers.fat * self.fat_factor,
        )

    # -- tissue ------------------------------------------------------------------

    def apply_atrophy(
        self, t1: np.ndarray, brain: np.ndarray, spacing: float | None = None
    ) -> np.ndarray:
        """Template values with wider sulci and ventricles (a new array; ``t1`` is not changed).

        Grey-matter voxels within ``0.5 + 3 * atrophy`` mm of sulcal CSF or
        of the brain surface move towards the CSF value (up to 80 %, by their
        partial-volume share); the ventricles (CSF deeper than
        15 mm inside the brain) grow by ``ventricle_mm``. ``spacing`` (mm) is
        inferred from the array shape when not given.
        """
        out = np.array(t1, dtype=np.float32, copy=True)
        if self.is_identity or (self.atrophy <= 0 and self.ventricle_mm <= 0):
            return out
        h = spacing or float(round((WORLD_MAX[0] - WORLD_MIN[0] + 1) / t1.shape[0]))
        depth, near, to_ventricle = _atrophy_distances(out, brain, h)
        reach = 0.5 + 3.0 * self.atrophy  # mm of grey matter given up to CSF
        # partial volume: a voxel is that share CSF (so a 2 mm grid sees it too)
        share = np.clip((reach + 0.5 * h - near) / h, 0.0, 1.0)
        sulcal = brain & (out >= 110) & (share > 0) & (out < 175) & (depth < 14)
        out[sulcal] -= 0.8 * share[sulcal] * (out[sulcal] - TEMPLATE_CSF)
        if self.ventricle_mm > 0:
            share = np.clip((self.ventricle_mm + 0.5 * h - to_ventricle) / h, 0.0, 1.0)
            grow = brain & (depth > 8) & (share > 0) & (out > TEMPLATE_CSF)
            out[grow] -= share[grow] * (out[grow] - TEMPLATE_CSF)
        return out

    def apply_labels(self, lab: np.ndarray, model: HeadModel) -> None:
        """Orbital fat size (in place on the case's template-space label map)."""
        if self.is_identity or self.orbit_fat == 1.0:
            return
        x, y, z = (model.coords(i) for i in range(3))
        x, y, z = np.meshgrid(x, y, z, indexing="ij", sparse=True)
        f = self.orbit_fat
        c, r = ORBIT_FAT_CENTRE, ORBIT_FAT_RADII
        for side in (-1.0, 1.0):
            q = (
                ((x - side * c[0]) / r[0]) ** 2
                + ((y - c[1]) / r[1]) ** 2
                + ((z - c[2]) / r[2]) ** 2
            )
            if f > 1.0:
                grow = (q <= f * f) & (model.d_hull > 2.5)
                grow &= (lab == Label.MUSCLE) | (lab == Label.FAT) | (lab == Label.MARROW)
                grow &= model.static != Label.MUSCLE  # keep the recti
                lab[grow] = Label.ORBIT_FAT
            else:
                lab[(lab == Label.ORBIT_FAT) & (q > f * f) & (q <= 1.0)] = Label.MUSCLE

    def table_overrides(self) -> dict[int, float]:
        """T1C intensity factors per label code (multiplied into the contrast's table)."""
        if self.is_identity:
            return {}
        return {
            Label.MARROW: self.marrow_t1c / MARROW_T1C,
            Label.MUCOSA: self.mucosa_t1c / MUCOSA_T1C,
        }


_DISTANCES: dict[tuple[str, float], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _atrophy_distances(
    t1: np.ndarray, brain: np.ndarray, h: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(depth inside the brain, distance to CSF or the surface, distance to the ventricles), mm.

    They depend on the template only, so they are kept (by content) for the
    next head: three distance transforms are most of the atrophy's cost.
    """
    key = (
        hashlib.sha1(np.ascontiguousarray(t1).tobytes()).hexdigest()
        + hashlib.sha1(np.ascontiguousarray(brain).tobytes()).hexdigest(),
        h,
    )
    if key not in _DISTANCES:
        dark = brain & (t1 < 110)  # CSF and partial-volume CSF of the (averaged) template
        depth = ndi.distance_transform_edt(brain, sampling=h).astype(np.float32)
        near = np.minimum(ndi.distance_transform_edt(~dark, sampling=h), depth)
        ventricle = brain & (t1 < 90) & (depth > 15)
        to_ventricle = ndi.distance_transform_edt(~ventricle, sampling=h).astype(np.float32)
        if len(_DISTANCES) >= 2:
            _DISTANCES.pop(next(iter(_DISTANCES)))
        _DISTANCES[key] = (depth, near.astype(np.float32), to_ventricle)
    return _DISTANCES[key]


def head_variant(index: int) -> HeadVariant:
    """The head of index ``index`` (0: the template head, unchanged), the same in every process."""
    if isinstance(index, bool) or not isinstance(index, int | np.integer):
        raise SynthError(f"head index must be an integer, got {index!r}")
    if not 0 <= int(index) <= MAX_HEAD_INDEX:
        raise SynthError(f"head index must be between 0 and {MAX_HEAD_INDEX}, got {index}")
    return _head_variant(int(index))


@functools.lru_cache(maxsize=64)
def _head_variant(index: int) -> HeadVariant:
    if index == 0:
        return HeadVariant(index=0)
    rng = np.random.default_rng([20261207, index])
    scale = rng.uniform(0.88, 1.12, 3)
    shift = rng.standard_normal(3)
    shift *= rng.uniform(3.0, 8.0) / np.linalg.norm(shift)
    atrophy = float(rng.uniform(0.0, 1.0))
    return HeadVariant(
        index=index,
        scale=(float(scale[0]), float(scale[1]), float(scale[2])),
        warp_amplitude_mm=float(rng.uniform(2.0, 5.0)),
        warp_length_mm=float(rng.uniform(35.0, 50.0)),
        face_shift_mm=(float(shift[0]), float(shift[1]), float(shift[2])),
        atrophy=atrophy,
        ventricle_mm=float(rng.uniform(0.5, 1.5) + 2.5 * atrophy),
        orbit_fat=float(rng.uniform(0.85, 1.2)),
        marrow_t1c=float(rng.uniform(0.72, 1.25)),
        mucosa_t1c=float(rng.uniform(0.95, 1.35)),
        csf_extra_mm=float(rng.uniform(0.0, 1.5) * (0.4 + atrophy)),
        skull_extra_mm=float(rng.uniform(-1.0, 1.5)),
        fat_factor=float(rng.uniform(0.7, 1.4)),
    )
