"""What the tumour does to its surroundings, and how it looks in each contrast.

Mass effect (brain pushed away, sulci effaced), peritumoral edema grown into
the white matter until it has the drawn volume, CSF cleft, dural tail,
necrotic core, enhancing capsule and texture. All of it lives on the
tumour's box of the world grid; :func:`composite` paints it into a contrast.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from lab.synth.anatomy import TEMPLATE_GM, TEMPLATE_WM, HeadModel, Label
from lab.synth.contrast import LESION
from lab.synth.tumour import TumourGeometry, _box_coords, unit_noise

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LesionSpec:
    """Drawn appearance of the tumour and its surroundings."""

    edema_mm3: float  # wanted edema volume (world mm3)
    necrosis: bool
    necrosis_fraction: float  # of the tumour volume
    csf_cleft: bool
    cleft_mm: float
    capsule: bool  # capsular (rim) enhancement
    dural_tail: bool
    tail_mm: float
    heterogeneity: float  # relative amplitude of the enhancement texture
    texture_mm: float  # correlation length of the texture
    enhancement: float  # tumour brightness factor on T1C (1 = table value)
    mass_effect: float  # fraction of the tumour volume that displaces brain


@dataclass
class LesionMaps:
    """Everything painted on the tumour's box (bool masks, soft maps in 0..1)."""

    tumour_occ: np.ndarray
    necrosis: np.ndarray
    capsule: np.ndarray
    edema: np.ndarray
    tail: np.ndarray
    texture: np.ndarray
    edema_voxels: int
    necrosis_voxels: int


def apply_mass_effect(
    model: HeadModel, geo: TumourGeometry, t1: np.ndarray, lab: np.ndarray, strength: float
) -> None:
    """Push the brain on the tumour's box away from the tumour (in place on t1/lab)."""
    h = model.spacing
    box = geo.box
    x, y, z = _box_coords(model, box)
    idx = np.argwhere(geo.mask)
    c = geo.box_origin + h * idx.mean(axis=0)
    radius = (3 * geo.voxels * h**3 / (4 * np.pi)) ** (1 / 3)
    half = min(min(s.stop - s.start for s in box) * h / 2, 4 * radius)
    dx, dy, dz = x - c[0], y - c[1], z - c[2]
    r = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-3
    s = np.cbrt(np.maximum(r**3 - strength * radius**3, 0.0))
    taper = np.clip((half - r) / (0.35 * half), 0, 1)
    f = 1 - taper * (1 - s / r)
    src = [
        (c[0] + dx * f - geo.box_origin[0]) / h,
        (c[1] + dy * f - geo.box_origin[1]) / h,
        (c[2] + dz * f - geo.box_origin[2]) / h,
    ]
    coords = np.stack(np.broadcast_arrays(*src)).astype(np.float32)
    t1_box = t1[box]
    lab_box = lab[box]
    brain_box = (lab_box == Label.BRAIN).astype(np.float32)
    new_t1 = ndi.map_coordinates(t1_box, coords, order=1, mode="nearest")
    new_brain = ndi.map_coordinates(brain_box, coords, order=1, mode="nearest") > 0.5
    inside = model.d_hull[box] < 0.0
    movable = inside & ((lab_box == Label.BRAIN) | (lab_box == Label.CSF))
    lab_box[movable & new_brain] = Label.BRAIN
    lab_box[movable & ~new_brain] = Label.CSF
    t1_box[movable] = new_t1[movable]
    lab[box] = lab_box
    t1[box] = t1_box


def build_lesion(
    model: HeadModel,
    geo: TumourGeometry,
    spec: LesionSpec,
    t1: np.ndarray,
    lab: np.ndarray,
    csf_mm: float,
    rng: np.random.Generator,
) -> LesionMaps:
    """Edema, cleft, tail, necrosis, capsule and texture; edits lab/t1 on the box."""
    h = model.spacing
    box = geo.box
    tumour = geo.mask
    lab_box = lab[box]
    t1_box = t1[box]
    d_hull = model.d_hull[box]
    dist_out = ndi.distance_transform_edt(~tumour, sampling=h).astype(np.float32)
    dist_in = ndi.distance_transform_edt(tumour, sampling=h).astype(np.float32)
    _interface(spec, lab_box, t1_box, dist_out, d_hull < csf_mm, d_hull, h)
    wm = np.clip((t1_box - TEMPLATE_GM) / (TEMPLATE_WM - TEMPLATE_GM), 0, 1)
    edema = _edema(spec, tumour, lab_box, t1_box, wm, dist_out, h, rng)
    tail = np.zeros(tumour.shape, dtype=bool)
    if spec.dural_tail:
        tail = _dural_tail(spec, tumour, lab_box, d_hull, dist_out, csf_mm, h)
    necrosis = np.zeros(tumour.shape, dtype=bool)
    if spec.necrosis:
        necrosis = _necrosis(spec, geo, dist_in, h, rng)
    capsule = np.zeros(tumour.shape, dtype=bool)
    if spec.capsule:
        capsule = tumour & (dist_in <= max(1.5, h)) & (d_hull < csf_mm - 1.0)

    lab[box] = lab_box
    t1[box] = t1_box
    occ = np.clip(0.5 - geo.phi / h, 0, 1).astype(np.float32)
    sig = 0.5
    return LesionMaps(
        tumour_occ=occ,
        necrosis=ndi.gaussian_filter(necrosis.astype(np.float32), sig / h * 1.2),
        capsule=ndi.gaussian_filter(capsule.astype(np.float32), sig / h),
        edema=ndi.gaussian_filter(edema.astype(np.float32), 1.5 / h)
        * (lab_box == Label.BRAIN)
        * (0.35 + 0.65 * wm),
        tail=ndi.gaussian_filter(tail.astype(np.float32), sig / h),
        texture=unit_noise(tumour.shape, spec.texture_mm / h, rng),
        edema_voxels=int(edema.sum()),
        necrosis_voxels=int(necrosis.sum()),
    )


def _interface(
    spec: LesionSpec,
    lab_box: np.ndarray,
    t1_box: np.ndarray,
    dist_out: np.ndarray,
    inside_dura: np.ndarray,
    d_hull: np.ndarray,
    h: float,
) -> None:
    """A CSF cleft around the tumour, or brain directly against it (in place)."""
    rim = (dist_out > 0) & inside_dura & ((lab_box == Label.BRAIN) | (lab_box == Label.CSF))
    if spec.csf_cleft:
        cleft = rim & (dist_out <= max(spec.cleft_mm, 0.75 * h))
        lab_box[cleft] = Label.CSF
    else:
        touching = rim & (dist_out <= 2.6) & (lab_box == Label.CSF) & (d_hull < 0)
        lab_box[touching] = Label.BRAIN
        t1_box[touching] = TEMPLATE_GM


def _edema(
    spec: LesionSpec,
    tumour: np.ndarray,
    lab_box: np.ndarray,
    t1_box: np.ndarray,
    wm: np.ndarray,
    dist_out: np.ndarray,
    h: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Brain voxels ranked by distance to the tumour, white matter first, connected to it."""
    cand = (lab_box == Label.BRAIN) & (t1_box > 100) & ~tumour
    noise = unit_noise(tumour.shape, 3.0 / h, rng)
    score = dist_out * (0.45 + 0.55 * (1 - wm)) + 2.2 * noise
    n_edema = int(round(spec.edema_mm3 / h**3))
    edema = np.zeros(tumour.shape, dtype=bool)
    vals = score[cand]
    if n_edema > 0 and vals.size:
        n_edema = min(n_edema, vals.size)
        thr = np.partition(vals, n_edema - 1)[n_edema - 1]
        edema = cand & (score <= thr)
        near = dist_out <= spec.cleft_mm + 2.0 * h
        lab_n, n = ndi.label(edema | near)
        if n > 1:  # keep only edema connected to the tumour
            keep = np.unique(lab_n[tumour])
            edema &= np.isin(lab_n, keep[keep > 0])
    return edema


def _dural_tail(
    spec: LesionSpec,
    tumour: np.ndarray,
    lab_box: np.ndarray,
    d_hull: np.ndarray,
    dist_out: np.ndarray,
    csf_mm: float,
    h: float,
) -> np.ndarray:
    """Thickened enhancing dura tapering away from the tumour's base."""
    thick = 1.6 * np.clip(1 - dist_out / max(spec.tail_mm, 1.0), 0, 1) + 0.3 * h
    near_dura = np.abs(d_hull - csf_mm) <= thick
    base = d_hull > csf_mm - 6
    return near_dura & base & ~tumour & (dist_out < spec.tail_mm) & (lab_box != Label.BRAIN)


def _necrosis(
    spec: LesionSpec, geo: TumourGeometry, dist_in: np.ndarray, h: float, rng: np.random.Generator
) -> np.ndarray:
    """The deepest part of the tumour, irregular, with the drawn share of its volume."""
    tumour = geo.mask
    deep = dist_in > max(2.0, 1.5 * h)
    if not deep.any():
        deep = dist_in >= dist_in.max()
    centre = np.unravel_index(int(np.argmax(dist_in)), dist_in.shape)
    grid = np.indices(tumour.shape, dtype=np.float32)
    ax = rng.uniform(0.7, 1.3, 3)
    d2 = sum(((grid[i] - centre[i]) * h / ax[i]) ** 2 for i in range(3))
    nscore = np.sqrt(d2) + 2.0 * unit_noise(tumour.shape, 1.5 / h, rng)
    n_nec = max(int(round(spec.necrosis_fraction * geo.voxels)), 1)
    nv = nscore[deep]
    n_nec = min(n_nec, nv.size)
    thr = np.partition(nv, n_nec - 1)[n_nec - 1]
    return deep & (nscore <= thr)


def composite(
    vol: np.ndarray,
    geo: TumourGeometry,
    maps: LesionMaps,
    spec: LesionSpec,
    contrast: str,
    gain: float = 1.0,
) -> None:
    """Paint edema, dural tail and tumour of one contrast into ``vol`` (in place)."""
    lv = LESION[contrast]
    box = geo.box
    v = vol[box]
    v += maps.edema * (lv["edema"] * gain - v)
    v += maps.tail * (lv["tail"] * gain - v)
    base = lv["tumour"] * gain * (spec.enhancement if contrast == "t1c" else 1.0)
    het = spec.heterogeneity * (1.0 if contrast == "t1c" else 0.6)
    tum = base * np.clip(1 + het * maps.texture, 0.3, None)
    tum *= 1 + (lv["capsule"] - 1) * maps.capsule
    tum += maps.necrosis * (lv["necrosis"] * gain - tum)
    v += maps.tumour_occ * (tum - v)
    vol[box] = v
