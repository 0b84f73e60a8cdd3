"""Training images synthesised from label maps with a random appearance (issue 17).

After Billot et al., SynthSeg (Medical Image Analysis 2023): one sample is a
crop of a :class:`~lab.segmentation.labelmaps.LabelMap`, spatially
deformed (random rotation, anisotropic scale, smooth elastic displacement,
left-right flip), then painted label by label with a random mean and spread,
blurred by a random (possibly anisotropic) point-spread function, multiplied
by a weak smooth bias field (what N4 leaves), normalised like
:func:`ai_core.preprocess.preprocess` (the whole head's 0.5-99.5 percentiles
to [0, 1], clipped), gamma-transformed and made noisy. A share of samples keep a *realistic* T1C appearance (the generator's
table, jittered), so the network also sees the ordinary case; the rest are
fully random, so brightness alone never identifies a tumour: fat, marrow,
sinuses, vessels, choroid plexus and the pituitary are sometimes brighter,
sometimes darker than it.

Targets are two channels: tumour (the truth mask's codes) and the
intracranial compartment (inside the inner table, tumour included).

Pure numpy/scipy; crops are made at the network's working spacing (2 mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from lab.segmentation.labelmaps import DECOYS, INTRACRANIAL, TUMOUR_CODES, LabelMap, SegLabel
from lab.synth.anatomy import Label

N_CODES = 256


@dataclass(frozen=True)
class SynthesisParams:
    """Ranges of the random appearance and deformation."""

    crop: int = 64
    p_realistic: float = 0.4
    p_tumour_centre: float = 0.45
    p_decoy_centre: float = 0.25
    p_brain_centre: float = 0.0  # hard negatives: the brainstem and deep brain above the skull base
    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    elastic_mm: float = 3.0
    blur_voxels: tuple[float, float] = (0.3, 1.0)
    p_thick: float = 0.25  # one axis blurred like a thick slice
    bias: float = 0.15  # what N4 leaves of a bias field
    gamma_sd: float = 0.15
    noise: tuple[float, float] = (0.0, 0.05)
    #: realistic samples: the enhancing tumour relative to white matter (a meningioma enhances
    #: avidly on T1C; the renderer's is 1.22)
    tumour_contrast: tuple[float, float] = (0.9, 1.6)

    def __post_init__(self) -> None:
        if self.crop < 16 or self.crop % 8:
            raise ValueError(f"crop must be a multiple of 8 and >= 16, got {self.crop}")
        for name in (
            "p_realistic",
            "p_tumour_centre",
            "p_decoy_centre",
            "p_brain_centre",
            "p_thick",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        low, high = self.tumour_contrast
        if not 0.0 < low <= high:
            raise ValueError(f"tumour_contrast must be 0 < low <= high, got {self.tumour_contrast}")


def _realistic_means(rng: np.random.Generator, contrast: tuple[float, float]) -> np.ndarray:
    """The generator's T1C table, each tissue jittered ±25 %, lesion drawn in plausible ranges."""
    from lab.synth.contrast import BRAIN_CURVES, label_table

    means = np.zeros(N_CODES, dtype=np.float32)
    table = label_table("t1c")
    means[: table.size] = table * rng.uniform(0.75, 1.3, table.size)
    means[Label.PITUITARY] = rng.uniform(0.8, 1.5)
    curve = BRAIN_CURVES["t1c"]
    means[SegLabel.BRAIN_CSF] = curve[1] * rng.uniform(0.6, 1.6)
    means[SegLabel.WHITE] = 1.0
    means[SegLabel.GREY] = rng.uniform(0.5, 0.8)
    tumour = rng.uniform(*contrast)
    means[SegLabel.TUMOUR] = tumour
    means[SegLabel.CAPSULE] = tumour * rng.uniform(1.0, 1.3)
    means[SegLabel.NECROSIS] = rng.uniform(0.1, 0.5)
    means[SegLabel.EDEMA] = rng.uniform(0.4, 0.8)
    means[SegLabel.TAIL] = tumour * rng.uniform(0.7, 1.0)
    means[Label.AIR] = 0.0
    return means


BRAIN_CODES = (SegLabel.BRAIN_CSF, SegLabel.GREY, SegLabel.WHITE)


def _brain_curve(rng: np.random.Generator, realistic: bool) -> tuple[np.ndarray, np.ndarray]:
    """Template T1 value -> intensity: the T1C curve jittered, or random (monotone half the time)."""
    from lab.synth.contrast import BRAIN_CURVES, brain_curve

    if realistic:
        xp, fp = brain_curve("t1c", float(rng.uniform(0.8, 1.2)))
        return xp, (fp * rng.uniform(0.85, 1.15)).astype(np.float32)
    xp = np.asarray(brain_curve("t1c")[0], dtype=np.float32)
    fp = rng.uniform(0.0, 1.0, len(BRAIN_CURVES["t1c"])).astype(np.float32)
    if rng.random() < 0.5:
        fp.sort()
    return xp, fp


def _appearance(
    rng: np.random.Generator, realistic: bool, params: SynthesisParams
) -> tuple[np.ndarray, np.ndarray]:
    if realistic:
        means = _realistic_means(rng, params.tumour_contrast)
        spread = rng.uniform(0.0, 0.05, N_CODES).astype(np.float32)
    else:
        means = rng.uniform(0.0, 1.0, N_CODES).astype(np.float32)
        if rng.random() < 0.8:
            means[Label.AIR] = rng.uniform(0.0, 0.05)
        spread = rng.uniform(0.0, 0.1, N_CODES).astype(np.float32)
    return means, spread


def _lower_brain(lm: LabelMap) -> np.ndarray:
    """Flat indices of brain voxels in the lower third of the brain (brainstem, temporal lobes)."""
    brain = np.isin(lm.labels, BRAIN_CODES)
    z = np.flatnonzero(brain.any(axis=(0, 1)))
    if z.size == 0:
        return np.flatnonzero(brain)
    cut = z[0] + (z[-1] - z[0]) // 3
    brain[:, :, cut + 1 :] = False
    return np.flatnonzero(brain)


def _centre(lm: LabelMap, rng: np.random.Generator, params: SynthesisParams) -> np.ndarray:
    """Index of the crop centre: on the tumour, a decoy, the lower brain, or anywhere in the head."""
    roll = rng.random()
    codes: tuple[int, ...]
    if lm.tumour_cm3 > 0 and roll < params.p_tumour_centre:
        codes = TUMOUR_CODES
    elif roll < params.p_tumour_centre + params.p_decoy_centre:
        codes = DECOYS
    elif roll < params.p_tumour_centre + params.p_decoy_centre + params.p_brain_centre:
        idx = _lower_brain(lm)
        if idx.size:
            flat = int(idx[int(rng.integers(idx.size))])
            centre = np.array(np.unravel_index(flat, lm.labels.shape), dtype=float)
            return centre + rng.uniform(-4.0 / lm.spacing, 4.0 / lm.spacing, 3)
        codes = tuple(range(1, N_CODES))
    elif rng.random() < 0.7:
        codes = tuple(range(1, N_CODES))  # anywhere in the head
    else:
        codes = tuple(range(N_CODES))  # anywhere, air and the field's edge included
    pick = lm.lookup(codes)[lm.labels]
    idx = np.flatnonzero(pick)
    if idx.size == 0:
        idx = np.flatnonzero(lm.labels)
    flat = int(idx[int(rng.integers(idx.size))])
    centre = np.array(np.unravel_index(flat, lm.labels.shape), dtype=float)
    jitter = 8.0 / lm.spacing if codes == TUMOUR_CODES else 4.0 / lm.spacing
    return centre + rng.uniform(-jitter, jitter, 3)


def _coordinates(
    lm: LabelMap, centre: np.ndarray, rng: np.random.Generator, params: SynthesisParams
) -> np.ndarray:
    """Source indices (3, n, n, n) of the deformed crop around ``centre``."""
    n = params.crop
    from scipy.spatial.transform import Rotation

    angles = rng.uniform(-params.rotation_deg, params.rotation_deg, 3)
    rot = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    lin = rot @ np.diag(rng.uniform(*params.scale, 3))
    if rng.random() < 0.5:  # left-right (world x) flip
        lin = np.diag([-1.0, 1.0, 1.0]) @ lin
    grid = np.indices((n, n, n), dtype=np.float32).reshape(3, -1) - (n - 1) / 2.0
    src = (lin.astype(np.float32) @ grid).reshape(3, n, n, n)
    coarse = rng.normal(0.0, params.elastic_mm / lm.spacing, (3, 5, 5, 5)).astype(np.float32)
    return src + _upsample(coarse, n) + centre.reshape(3, 1, 1, 1).astype(np.float32)


def _upsample(coarse: np.ndarray, n: int) -> np.ndarray:
    """Smooth fields ``(c, k, k, k)`` to ``(c, n, n, n)`` by separable linear interpolation."""
    k = coarse.shape[1]
    pos = np.linspace(0.0, k - 1.0, n)
    lo = np.minimum(pos.astype(int), k - 2)
    w = (pos - lo).astype(np.float32)
    out = coarse
    for axis in (1, 2, 3):
        a = np.take(out, lo, axis=axis)
        b = np.take(out, lo + 1, axis=axis)
        shape = [1, 1, 1, 1]
        shape[axis] = n
        out = a + (b - a) * w.reshape(shape)
    return out


def _bias(shape: tuple[int, ...], rng: np.random.Generator, amplitude: float) -> np.ndarray:
    coarse = rng.normal(0.0, amplitude, (1, 4, 4, 4)).astype(np.float32)
    return np.exp(_upsample(coarse, shape[0])[0])


def _window(lm: LabelMap, means: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> tuple[float, float]:
    """The 0.5 and 99.5 percentiles of the *whole head's* intensities, as preprocessing takes them.

    :func:`ai_core.preprocess.preprocess` maps these percentiles of the head to
    [0, 255] and clips; a crop's own percentiles would differ (a tumour-centred
    crop is mostly tumour), so they come from the map's voxel counts per
    label and the brain's template-value histogram, painted with this sample's
    appearance.
    """
    values = np.concatenate([means, np.interp(np.arange(256), xp, fp).astype(np.float32)])
    weights = np.concatenate([lm.label_counts, lm.brain_histogram])
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    total = cumulative[-1]
    if total <= 0:
        return 0.0, 1.0
    low = float(values[order][np.searchsorted(cumulative, 0.005 * total)])
    high = float(values[order][min(np.searchsorted(cumulative, 0.995 * total), len(order) - 1)])
    return low, max(high, low + 1e-3)


def synthesise(
    lm: LabelMap, rng: np.random.Generator, params: SynthesisParams | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One training pair: image ``(1, n, n, n)`` in [0, 1] and target ``(2, n, n, n)`` (0/1).

    Arrays are indexed like the network's input: the canonical axial LPS
    ``[z, y, x]`` (S, P, L) of :class:`~ai_core.segmentation.base.Reorientation`;
    a random left-right flip is part of the deformation.
    """
    params = params or SynthesisParams()
    centre = _centre(lm, rng, params)
    coords = _coordinates(lm, centre, rng, params)
    labels = ndi.map_coordinates(lm.labels, coords, order=0, mode="constant", cval=0)
    t1 = ndi.map_coordinates(lm.brain_t1, coords, order=1, mode="constant", cval=0.0)
    # world [x, y, z] (R, A, S) -> the canonical [z, y, x] (S, P, L) of Reorientation
    labels = np.ascontiguousarray(labels.transpose(2, 1, 0)[:, ::-1, ::-1])
    t1 = np.ascontiguousarray(t1.transpose(2, 1, 0)[:, ::-1, ::-1]).astype(np.float32)
    realistic = bool(rng.random() < params.p_realistic)
    means, spread = _appearance(rng, realistic, params)
    image = means[labels] + spread[labels] * rng.standard_normal(labels.shape, dtype=np.float32)
    brain = np.isin(labels, BRAIN_CODES)
    xp, fp = _brain_curve(rng, realistic)
    image[brain] = np.interp(t1[brain], xp, fp).astype(np.float32) + spread[
        SegLabel.WHITE
    ] * rng.standard_normal(int(brain.sum()), dtype=np.float32)
    sigma = rng.uniform(*params.blur_voxels, 3)
    if rng.random() < params.p_thick:
        sigma[int(rng.integers(3))] = rng.uniform(1.0, 2.0)
    image = ndi.gaussian_filter(image, sigma, truncate=2.5)
    image *= _bias(image.shape, rng, params.bias)
    low, high = _window(lm, means, xp, fp)
    high = low + (high - low) * rng.uniform(0.93, 1.07)
    image = np.clip((image - low) / max(high - low, 1e-3), 0.0, 1.0)
    image **= float(np.exp(rng.normal(0.0, params.gamma_sd)))
    image += rng.normal(0.0, rng.uniform(*params.noise), image.shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    tumour = lm.lookup(TUMOUR_CODES)[labels]
    icv = lm.lookup(INTRACRANIAL)[labels]
    target = np.stack([tumour, icv | tumour]).astype(np.float32)
    return image[None], target
