"""The vocabulary of the synthetic head: tissue labels, the head model's arrays, the world frame.

Everything is in the *world* frame: RAS millimetres of the ICBM 2009a MNI152
template, on a regular grid of spacing ``h`` (1 mm for ``size="full"``, 2 mm
for ``"small"``). :class:`HeadModel` holds what every case shares (it is built
once per process by :func:`lab.synth.head_build.head_model`); per-case
variation (tissue thickness, pose, contrast, tumour) is applied later. This
module also paints the pituitary region that distinct heads add
(:func:`paint_pituitary`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ai_core.errors import AiCoreError

# Padded world bounds in RAS mm (the template itself is x -98..98, y -134..98, z -72..116).
WORLD_MIN = np.array([-98.0, -134.0, -96.0])
WORLD_MAX = np.array([98.0, 118.0, 116.0])

# Template intensities (uint8 scale) of the three brain tissues, measured on
# voxels with tissue probability > 0.9: used to map the template to any contrast.
TEMPLATE_CSF, TEMPLATE_GM, TEMPLATE_WM = 55.0, 166.0, 222.0


class Label:
    """Tissue codes of the label map (everything that is not template brain)."""

    AIR = 0
    CSF = 1
    DURA = 2
    BONE = 3
    MARROW = 4
    MUSCLE = 5
    FAT = 6
    SKIN = 7
    SINUS = 8
    VESSEL = 9
    CHOROID = 10
    VITREOUS = 11
    LENS = 12
    ORBIT_FAT = 13
    MUCOSA = 14
    CORD = 15
    DISC = 16
    BRAIN = 17  # intensity comes from the template through a per-contrast curve
    PITUITARY = 18  # only in distinct heads (index >= 1, lab.synth.heads)
    COUNT = 19


class SynthError(AiCoreError):
    """The synthetic cohort cannot be generated (missing template, bad argument, output dir)."""


@dataclass(frozen=True)
class HeadModel:
    """Arrays shared by every case, indexed [x, y, z] on the world grid."""

    spacing: float
    origin: np.ndarray  # RAS mm of voxel (0, 0, 0)
    t1: np.ndarray  # float32 template T1 value (0..255), 0 outside the brain
    brain: np.ndarray  # bool, template brain (incl. ventricles and sulci)
    d_hull: np.ndarray  # float32 signed distance (mm) to the brain hull, > 0 outside
    d_skull: np.ndarray  # float32 signed distance (mm) to the outer skull surface
    static: np.ndarray  # uint8 Label of fixed structures (face, neck, sinuses...), 0 = none
    muscle_extra: np.ndarray  # float32 mm of temporalis/neck muscle
    veins: tuple[np.ndarray, ...]  # cortical vein centre lines, (n, 3) RAS mm each

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.t1.shape

    def index_to_ras(self) -> np.ndarray:
        """4x4 affine from world voxel index to RAS mm."""
        aff = np.eye(4)
        aff[:3, :3] *= self.spacing
        aff[:3, 3] = self.origin
        return aff

    def coords(self, axis: int) -> np.ndarray:
        """RAS coordinate (mm) of every index along one axis."""
        return self.origin[axis] + self.spacing * np.arange(self.shape[axis], dtype=np.float32)

    def to_index(self, ras: np.ndarray) -> np.ndarray:
        return (np.asarray(ras, dtype=float) - self.origin) / self.spacing


def ellipsoid_level(x, y, z, c, r) -> np.ndarray:
    """At most 1 inside the axis-aligned ellipsoid of centre ``c`` and radii ``r`` (mm)."""
    return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2


# Pituitary gland in the sella turcica of the template head (found on its midline
# sagittal slice: below the hypothalamus and optic chiasm, which start at z = -17,
# in front of the prepontine cistern, in a notch of the sphenoid), with the
# infundibular stalk up to the hypothalamus and the cavernous sinuses beside it.
PITUITARY_CENTRE_RAS = (0.0, -3.0, -25.0)
PITUITARY_RADII_MM = (6.5, 5.0, 4.0)  # about 0.54 cm3
STALK_RAS = ((0.0, -3.0, -21.0), (0.0, -5.0, -15.0))
CAVERNOUS_CENTRE_RAS = (10.5, -3.0, -26.0)  # x mirrored for the left side
CAVERNOUS_RADII_MM = (2.5, 7.0, 4.5)


def paint_pituitary(lab: np.ndarray, model: HeadModel) -> None:
    """Paint the pituitary gland, its stalk and the cavernous sinuses (in place, world grid).

    The gland (``Label.PITUITARY``, about 0.5-0.6 cm3) replaces bone, marrow,
    dura and CSF in the sella; the stalk and the cavernous sinuses
    (``Label.SINUS``: enhancing on T1C) never replace brain. Works on any
    head model spacing (1 or 2 mm).
    """
    if lab.shape != model.shape:
        raise SynthError(
            f"label map shape {lab.shape} is not the head model's {model.shape}; "
            "pass the map built on the same model"
        )
    h = model.spacing
    pad = max(CAVERNOUS_CENTRE_RAS[0] + CAVERNOUS_RADII_MM[0], 12.0) + 2 * h
    lo = np.floor(model.to_index(np.array(PITUITARY_CENTRE_RAS) - pad)).astype(int)
    hi = np.ceil(model.to_index(np.array(PITUITARY_CENTRE_RAS) + pad)).astype(int) + 1
    lo, hi = np.maximum(lo, 0), np.minimum(hi, np.array(model.shape))
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    x, y, z = (
        (model.origin[i] + h * np.arange(lo[i], hi[i]))[
            tuple(slice(None) if j == i else None for j in range(3))
        ]
        for i in range(3)
    )
    sub = lab[box]
    not_brain = sub != Label.BRAIN
    for side in (-1.0, 1.0):
        c = (side * CAVERNOUS_CENTRE_RAS[0], *CAVERNOUS_CENTRE_RAS[1:])
        cav = ellipsoid_level(x, y, z, c, CAVERNOUS_RADII_MM) <= 1
        sub[cav & not_brain] = Label.SINUS
    # at least one voxel across on coarse grids
    radii = tuple(max(r, 0.75 * h) for r in PITUITARY_RADII_MM)
    gland = ellipsoid_level(x, y, z, PITUITARY_CENTRE_RAS, radii) <= 1
    sub[gland & not_brain] = Label.PITUITARY
    a, b = (np.array(p) for p in STALK_RAS)
    d = b - a
    t = np.clip(((x - a[0]) * d[0] + (y - a[1]) * d[1] + (z - a[2]) * d[2]) / (d @ d), 0, 1)
    dist2 = (x - a[0] - t * d[0]) ** 2 + (y - a[1] - t * d[1]) ** 2 + (z - a[2] - t * d[2]) ** 2
    stalk = dist2 <= max(1.3, 0.6 * h) ** 2
    sub[stalk & not_brain & ((sub == Label.CSF) | (sub == Label.DURA))] = Label.PITUITARY
