"""Builds the shared head model around the MNI152 brain, once per process.

Brain anatomy is the ICBM 2009a symmetric MNI152 T1 template (1 mm) that ships
inside the ``nilearn`` package (no download: the file is part of the wheel).
The template is skull-stripped, so a head is built around it from the signed
distance to a smoothed brain hull: extra-axial CSF, dura, inner table, diploe,
outer table, muscle, scalp fat and skin, plus venous sinuses, cortical veins,
falx, choroid plexus, orbits, nasal cavity, neck and cervical spine. The
result is an :class:`lab.synth.anatomy.HeadModel` on the world grid.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from lab.synth.anatomy import (
    TEMPLATE_WM,
    WORLD_MAX,
    WORLD_MIN,
    HeadModel,
    Label,
    SynthError,
    ellipsoid_level,
)

log = logging.getLogger(__name__)

TEMPLATE_T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def template_path() -> Path:
    """Where nilearn keeps the MNI152 T1 template, found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise SynthError(
            "the nilearn package is not installed; install it (pip install nilearn) "
            "so the synthetic cohort can use its bundled MNI152 template"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / TEMPLATE_T1
    if not path.is_file():
        raise SynthError(
            f"{path} is missing; reinstall nilearn (its wheel ships the MNI152 template)"
        )
    return path


def _load_template(spacing: float) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.Nifti1Image.from_filename(str(template_path()))
    data = np.asarray(img.dataobj, dtype=np.float32)
    aff = img.affine
    n = np.round((WORLD_MAX - WORLD_MIN) + 1).astype(int)
    full = np.zeros(tuple(n), dtype=np.float32)
    off = np.round(aff[:3, 3] - WORLD_MIN).astype(int)
    full[
        off[0] : off[0] + data.shape[0],
        off[1] : off[1] + data.shape[1],
        off[2] : off[2] + data.shape[2],
    ] = data
    origin = WORLD_MIN.copy()
    if spacing != 1.0:
        f = int(round(spacing))
        cut = [(s // f) * f for s in full.shape]
        full = full[: cut[0], : cut[1], : cut[2]]
        inside = (full > 0).astype(np.float32)
        blocks = full.reshape(cut[0] // f, f, cut[1] // f, f, cut[2] // f, f)
        cnt = inside.reshape(blocks.shape).sum(axis=(1, 3, 5))
        tot = blocks.sum(axis=(1, 3, 5))
        full = np.where(cnt >= f**3 / 2, tot / np.maximum(cnt, 1), 0).astype(np.float32)
        origin = WORLD_MIN + (f - 1) / 2.0
    return full, origin


def _grid(shape: tuple[int, ...], origin: np.ndarray, h: float) -> tuple[np.ndarray, ...]:
    axes = [origin[i] + h * np.arange(shape[i], dtype=np.float32) for i in range(3)]
    return tuple(np.meshgrid(*axes, indexing="ij", sparse=True))


def _signed_distance(mask: np.ndarray, h: float) -> np.ndarray:
    out = ndi.distance_transform_edt(~mask, sampling=h).astype(np.float32)
    inside = ndi.distance_transform_edt(mask, sampling=h).astype(np.float32)
    out -= inside
    return out


@functools.lru_cache(maxsize=2)
def head_model(spacing: float = 1.0) -> HeadModel:
    """Build (once per process and spacing) the head around the MNI152 brain."""
    if spacing not in (1.0, 2.0):
        raise ValueError(f"spacing must be 1.0 or 2.0 mm, got {spacing!r}")
    log.info("building the synthetic head model at %.0f mm (once per process)", spacing)
    h = spacing
    t1, origin = _load_template(h)
    x, y, z = _grid(t1.shape, origin, h)

    # Spinal cord below the template's lower edge (medulla ends at z = -72).
    cord = ((x / 5.5) ** 2 + ((y + 46 + 0.15 * (z + 72)) / 6.5) ** 2 <= 1) & (z < -66)
    t1 = np.where(cord & (t1 == 0), TEMPLATE_WM - 10, t1).astype(np.float32)
    brain = t1 > 0
    # The template is a population average: sharpen it a little (unsharp mask)
    # so that cortex and sulci look like one subject's scan, not a blur.
    blur = ndi.gaussian_filter(t1, 1.5 / h)
    t1 = np.where(brain, np.clip(t1 + 0.7 * (t1 - blur), 20, 255), 0).astype(np.float32)

    # Hull: brain smoothed (fills sulci, the interhemispheric fissure, cisterns).
    sm = ndi.gaussian_filter(brain.astype(np.float32), 3.0 / h)
    hull = (sm > 0.3) | brain
    hull = ndi.binary_fill_holes(hull)
    d_hull = _signed_distance(hull, h)

    # Outer skull surface: the hull grown by a typical vault thickness, then smoothed
    # so that it bridges the skull base (petrous ridges, sphenoid, clivus).
    # (computed on a 2 mm grid: it only needs to be smooth, not sharp)
    f = 2 if h == 1.0 else 1
    vault = (d_hull[::f, ::f, ::f] < 8.0).astype(np.float32)
    skull = ndi.gaussian_filter(vault, 6.0 / (h * f)) > 0.5
    skull |= d_hull[::f, ::f, ::f] < 6.5
    skull = ndi.binary_fill_holes(skull)
    d_skull = _signed_distance(skull, h * f)
    if f > 1:
        d_skull = ndi.zoom(
            d_skull, [a / b for a, b in zip(t1.shape, d_skull.shape, strict=True)], order=1
        )
        d_skull = d_skull[: t1.shape[0], : t1.shape[1], : t1.shape[2]]

    static = np.zeros(t1.shape, dtype=np.uint8)
    muscle_extra = np.zeros(t1.shape, dtype=np.float32)
    temporal = np.exp(-(((z + 5) / 28.0) ** 2) - ((y + 5) / 45.0) ** 2) * np.clip(
        (np.abs(x) - 45) / 20, 0, 1
    )
    muscle_extra += (7.0 * temporal).astype(np.float32)
    muscle_extra += (10.0 * np.clip((-z - 40) / 30, 0, 1) * (y < -20)).astype(np.float32)

    _face_and_neck(static, x, y, z, d_skull, d_hull, h)
    _sinuses(static, x, y, z, d_hull, t1, brain)
    veins = _vein_lines(d_hull, origin, h)
    log.info("head model ready: %s voxels", "x".join(str(s) for s in t1.shape))
    return HeadModel(
        spacing=h,
        origin=origin,
        t1=t1,
        brain=brain,
        d_hull=d_hull,
        d_skull=d_skull,
        static=static,
        muscle_extra=muscle_extra,
        veins=tuple(veins),
    )


def _smooth_noise(shape: tuple[int, ...], sigma_vox: float, seed: int) -> np.ndarray:
    """Unit-variance Gaussian-filtered white noise (fixed seed: part of the shared anatomy)."""
    rng = np.random.default_rng(seed)
    coarse = [max(int(np.ceil(s / 4)), 2) for s in shape]
    f = ndi.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma_vox / 4)
    f = ndi.zoom(f, [s / c for s, c in zip(shape, coarse, strict=True)], order=1)
    f = f[: shape[0], : shape[1], : shape[2]]
    return (f - f.mean()) / max(float(f.std()), 1e-6)


def _face_and_neck(static, x, y, z, d_skull, d_hull, h) -> None:
    """Orbits, nasal cavity, maxillary sinuses, neck soft tissue and cervical spine."""
    below = d_skull > 0.0  # outside the skull
    face_c, face_r = (0, 30, -64), (60, 68, 40)
    neck_c, neck_r = (0, -30, -112), (56, 62, 66)
    qf, qn = ellipsoid_level(x, y, z, face_c, face_r), ellipsoid_level(x, y, z, neck_c, neck_r)
    face = (qf <= 1) & (y > -10)
    neck = (qn <= 1) & (z < -40)
    soft = (face | neck) & below
    # depth below the skin, approximated from the ellipsoid level sets
    depth = np.maximum(
        np.where(face, (1 - np.sqrt(np.minimum(qf, 1))) * min(face_r), 0),
        np.where(neck, (1 - np.sqrt(np.minimum(qn, 1))) * min(neck_r), 0),
    )
    static[soft] = Label.MUSCLE
    streaks = _smooth_noise(static.shape, 2.5 / h, 7)
    static[soft & (streaks > 1.3)] = Label.FAT  # fat planes between the muscles
    static[soft & (depth < 7.0)] = Label.FAT  # subcutaneous fat
    static[soft & (depth < 1.8)] = Label.SKIN
    for side in (-1.0, 1.0):
        orbit_fat = ellipsoid_level(x, y, z, (side * 30, 46, -40), (16, 24, 15)) <= 1
        static[orbit_fat & (d_hull > 2.5)] = Label.ORBIT_FAT
        rectus = (ellipsoid_level(x, y, z, (side * 30, 40, -40), (14, 22, 13)) <= 1) & (
            ellipsoid_level(x, y, z, (side * 30, 40, -40), (10.5, 22, 9.5)) > 1
        )
        static[rectus & (d_hull > 2.5)] = Label.MUSCLE
        globe = ellipsoid_level(x, y, z, (side * 31, 58, -41), (12, 12, 12)) <= 1
        static[globe] = Label.VITREOUS
        lens = ellipsoid_level(x, y, z, (side * 31, 69.5, -41), (4.5, 2.0, 4.5)) <= 1
        static[lens] = Label.LENS
        maxillary = ellipsoid_level(x, y, z, (side * 22, 40, -70), (10, 14, 12)) <= 1
        wall = (ellipsoid_level(x, y, z, (side * 22, 40, -70), (8.5, 12.5, 10.5)) > 1) & maxillary
        static[maxillary & below] = Label.AIR
        static[wall & below] = Label.MUCOSA
    nasal = (ellipsoid_level(x, y, z, (0, 52, -60), (12, 32, 22)) <= 1) & below
    static[nasal] = Label.MUCOSA
    turb = _smooth_noise(static.shape, 2.0 / h, 11)
    static[nasal & (np.abs(x) > 1.5) & (turb > 0.1)] = Label.AIR
    # Cervical spine: vertebral bodies (marrow + cortex) with discs, canal CSF around the cord.
    cx, cy = x, y + 46 + 0.15 * (z + 72)
    canal = ((cx / 8.5) ** 2 + (cy / 9.5) ** 2 <= 1) & (z < -62)
    static[canal & (static == 0)] = Label.CSF
    static[canal & (static == Label.MUSCLE)] = Label.CSF
    ring = ((cx / 13) ** 2 + (cy / 14) ** 2 <= 1) & ~canal & (z < -68)
    static[ring] = Label.BONE
    body = ((cx / 10) ** 2 + ((cy - 22) / 9) ** 2 <= 1) & (z < -76)
    static[body] = Label.MARROW
    static[body & (((z + 74) % 17) > 13.5)] = Label.DISC
    shell = ((cx / 11.5) ** 2 + ((cy - 22) / 10.5) ** 2 <= 1) & ~body & (z < -76)
    static[shell] = Label.BONE


def _sinuses(static, x, y, z, d_hull, t1, brain) -> None:
    """Superior sagittal, straight and transverse sinuses, falx, choroid plexus."""
    depth = -d_hull  # mm inside the hull
    # Superior sagittal sinus: triangular, at the midline under the vertex.
    sss = (np.abs(x) < 0.6 * (5.5 - depth)) & (depth > -2.0) & (depth < 5.0) & (z > -8)
    sss &= (y > -112) & (y < 62)
    static[sss] = Label.SINUS
    # Falx: thin dural sheet in the interhemispheric fissure above the corpus callosum.
    falx = (np.abs(x) < 0.6) & (depth > 0) & (t1 < 100) & (z > 24 - 0.12 * y) & (y < 60)
    static[falx & (static == 0)] = Label.DURA
    # Straight sinus from the vein of Galen to the torcula.
    straight = (np.array([0.0, -44.0, 3.0]), np.array([0.0, -103.0, -9.0]))
    _tube(static, x, y, z, *straight, 2.2, Label.SINUS, only=(t1 < 110))
    # Transverse then sigmoid sinuses: from the torcula around the occiput, along the inner table.
    for side in (-1.0, 1.0):
        pts = np.array(
            [
                [0, -102, -10],
                [22, -100, -12],
                [40, -90, -16],
                [52, -72, -22],
                [50, -55, -32],
                [44, -45, -46],
            ],
            dtype=float,
        )
        pts[:, 0] *= side
        for a, b in zip(pts[:-1], pts[1:], strict=True):
            _tube(static, x, y, z, a, b, 3.3, Label.SINUS, only=(depth > -4) & (depth < 8) & ~brain)
    # Choroid plexus in the atria of the lateral ventricles.
    ventricle = brain & (t1 < 90)
    for side in (-1.0, 1.0):
        blob = ellipsoid_level(x, y, z, (side * 27, -40, 16), (6, 9, 7)) <= 1
        static[blob & ventricle] = Label.CHOROID


def _tube(static, x, y, z, a, b, r, label, only=None) -> None:
    lo = np.minimum(a, b) - r - 1
    hi = np.maximum(a, b) + r + 1
    sx = (x[:, 0, 0] >= lo[0]) & (x[:, 0, 0] <= hi[0])
    sy = (y[0, :, 0] >= lo[1]) & (y[0, :, 0] <= hi[1])
    sz = (z[0, 0, :] >= lo[2]) & (z[0, 0, :] <= hi[2])
    if not (sx.any() and sy.any() and sz.any()):
        return
    ix, iy, iz = np.where(sx)[0], np.where(sy)[0], np.where(sz)[0]
    sl = (slice(ix[0], ix[-1] + 1), slice(iy[0], iy[-1] + 1), slice(iz[0], iz[-1] + 1))
    px, py, pz = x[sl[0], :, :], y[:, sl[1], :], z[:, :, sl[2]]
    d = b - a
    t = np.clip(((px - a[0]) * d[0] + (py - a[1]) * d[1] + (pz - a[2]) * d[2]) / (d @ d), 0, 1)
    dist2 = (px - a[0] - t * d[0]) ** 2 + (py - a[1] - t * d[1]) ** 2 + (pz - a[2] - t * d[2]) ** 2
    hit = dist2 <= r * r
    if only is not None:
        hit &= only[sl]
    static[sl][hit] = label


def _vein_lines(d_hull: np.ndarray, origin: np.ndarray, h: float) -> list[np.ndarray]:
    """Centre lines of cortical veins: from lateral convexity points up to the midline."""
    rng = np.random.default_rng(20250101)
    grad = np.stack(np.gradient(d_hull, h), axis=0)
    veins = []
    for _ in range(36):
        side = rng.choice([-1.0, 1.0])
        start = np.array([side * rng.uniform(40, 62), rng.uniform(-80, 50), rng.uniform(0, 40)])
        end = np.array([side * 3.0, start[1] + rng.uniform(-25, 25), 70.0])
        n = 60
        pts = start[None, :] + np.linspace(0, 1, n)[:, None] * (end - start)[None, :]
        pts[:, 1] += 6 * np.sin(np.linspace(0, rng.uniform(2, 5), n) + rng.uniform(0, 6))
        target = 1.2  # mm outside the hull: in the subarachnoid CSF
        for _ in range(6):
            idx = (pts - origin) / h
            dv = ndi.map_coordinates(d_hull, idx.T, order=1, mode="nearest")
            g = np.stack([ndi.map_coordinates(gc, idx.T, order=1, mode="nearest") for gc in grad])
            norm = np.maximum(np.linalg.norm(g, axis=0), 1e-3)
            pts = pts - ((dv - target) / norm**2 * g).T
        veins.append(pts.astype(np.float32))
    return veins
