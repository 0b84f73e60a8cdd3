"""Is this image like the training images? Refuse out-of-distribution input before the network.

:class:`IntensityStats` summarise the head voxels of a preprocessed working
image; :class:`IntensityReference` is their spread over the training images
(stored in ``model.json``); :func:`intensity_check` says why an image lies
outside it, or None.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


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
