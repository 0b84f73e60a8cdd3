"""From a probability map (or a raw mask) to one lesion, or a reasoned refusal.

Rules, in order:

1. threshold the probability (``threshold``);
2. drop connected components (26-connectivity) smaller than
   ``min_component_ml`` (speckle);
3. keep the largest remaining component (a meningioma is one lesion; a second
   blob is far more often a false positive than a second tumour);
4. ``not_assessable`` when nothing of at least ``min_lesion_ml`` is left.

Out-of-distribution input is refused before the network runs, with
:func:`intensity_check` against the statistics of the training images.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ai_core.segmentation.base import STATUS_NOT_ASSESSABLE, STATUS_OK, Status

log = logging.getLogger(__name__)

_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
MM3_PER_ML = 1000.0


@dataclass(frozen=True)
class PostprocessParams:
    """How a probability map becomes one lesion; stored in ``model.json``."""

    threshold: float = 0.5
    min_component_ml: float = 0.05  # smaller components are speckle
    min_lesion_ml: float = 0.1  # no lesion at least this large: not assessable
    keep_largest: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.min_component_ml < 0 or self.min_lesion_ml < 0:
            raise ValueError("min_component_ml and min_lesion_ml must not be negative")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PostprocessParams:
        known = {k: data[k] for k in asdict(cls()) if k in data}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown post-processing key(s) {unknown}; remove them")
        return cls(**known)


@dataclass(frozen=True)
class Postprocessed:
    mask: np.ndarray  # uint8 0/1
    status: Status
    reason: str
    components: int  # components above the speckle size before keeping the largest


def postprocess(
    probability_or_mask: np.ndarray,
    spacing: tuple[float, float, float],
    params: PostprocessParams | None = None,
) -> Postprocessed:
    """Apply the module's rules; ``spacing`` is ``(x, y, z)`` mm."""
    params = params or PostprocessParams()
    data = np.asarray(probability_or_mask)
    binary = data > params.threshold if data.dtype.kind == "f" else data > 0
    voxel_ml = float(np.prod(spacing)) / MM3_PER_ML
    labels, count = ndi.label(binary, structure=_CONNECTIVITY)
    if count == 0:
        return _refused(binary.shape, "no lesion found in the image", 0)
    sizes = np.bincount(labels.ravel())[1:]
    big = np.flatnonzero(sizes * voxel_ml >= params.min_component_ml) + 1
    if big.size == 0:
        return _refused(
            binary.shape,
            f"only speckle found ({count} component(s), largest "
            f"{sizes.max() * voxel_ml:.3f} mL < {params.min_component_ml} mL)",
            0,
        )
    if params.keep_largest:
        keep = [int(big[np.argmax(sizes[big - 1])])]
    else:
        keep = [int(v) for v in big]
    mask = np.isin(labels, keep).astype(np.uint8)
    volume_ml = float(mask.sum()) * voxel_ml
    if volume_ml < params.min_lesion_ml:
        return _refused(
            binary.shape,
            f"largest lesion {volume_ml:.3f} mL is below the minimum {params.min_lesion_ml} mL",
            int(big.size),
        )
    reason = f"one lesion of {volume_ml:.2f} mL"
    if big.size > 1 and params.keep_largest:
        reason += f" (largest of {big.size} components kept)"
    return Postprocessed(mask, STATUS_OK, reason, int(big.size))


def _refused(shape: tuple[int, ...], reason: str, components: int) -> Postprocessed:
    log.debug("segmentation not assessable: %s", reason)
    return Postprocessed(np.zeros(shape, dtype=np.uint8), STATUS_NOT_ASSESSABLE, reason, components)


# -- input distribution ----------------------------------------------------------
@dataclass(frozen=True)
class IntensityStats:
    """Per-image statistics of the head voxels (> ``floor``) of a working image."""

    mean: float
    std: float
    head_fraction: float  # fraction of voxels above the floor

    FLOOR = 5.0  # [0, 255] scale: background is 0 after preprocessing

    @classmethod
    def of(cls, image: np.ndarray) -> IntensityStats:
        head = image[image > cls.FLOOR]
        if head.size == 0:
            return cls(0.0, 0.0, 0.0)
        return cls(float(head.mean()), float(head.std()), float(head.size / image.size))


@dataclass(frozen=True)
class IntensityReference:
    """Training distribution of :class:`IntensityStats` (mean and spread of each)."""

    mean_mean: float
    mean_std: float
    std_mean: float
    std_std: float
    max_z: float = 6.0  # a statistic further than this many SDs away is out of distribution
    value_range: tuple[float, float] = (0.0, 255.0)

    @classmethod
    def fit(cls, stats: list[IntensityStats], max_z: float = 6.0) -> IntensityReference:
        means = np.array([s.mean for s in stats])
        stds = np.array([s.std for s in stats])
        floor = 1.0  # keeps the z-scores finite on a tiny cohort
        return cls(
            float(means.mean()),
            max(float(means.std()), floor),
            float(stds.mean()),
            max(float(stds.std()), floor),
            max_z,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IntensityReference:
        values = dict(data)
        if "value_range" in values:
            low, high = values["value_range"]
            values["value_range"] = (float(low), float(high))
        return cls(**values)


def intensity_check(image: np.ndarray, reference: IntensityReference) -> str | None:
    """Why ``image`` is out of distribution, or None when it looks like the training data."""
    low, high = reference.value_range
    tolerance = 0.01 * (high - low)
    if float(image.min()) < low - tolerance or float(image.max()) > high + tolerance:
        return (
            f"intensities {float(image.min()):.1f}..{float(image.max()):.1f} are outside "
            f"[{low:g}, {high:g}]; the image was not preprocessed"
        )
    stats = IntensityStats.of(image)
    if stats.head_fraction == 0.0:
        return "the image is empty (no voxel above the background)"
    z_mean = abs(stats.mean - reference.mean_mean) / reference.mean_std
    z_std = abs(stats.std - reference.std_mean) / reference.std_std
    if max(z_mean, z_std) > reference.max_z:
        return (
            f"intensity statistics out of the training distribution (head mean {stats.mean:.1f}, "
            f"z = {z_mean:.1f}; SD {stats.std:.1f}, z = {z_std:.1f}; limit {reference.max_z})"
        )
    return None
