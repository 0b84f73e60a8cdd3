"""The training crops' augmentation: left-right flip, small affine, intensity, noise.

Side carries no label information, so the crop is flipped left-right; the
affine resampling keeps the mask channel binary; scale, shift and noise touch
the T1C channel only. Each transform has its own seeded random state, so a
run's augmentation is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def augmenter(seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """A function augmenting one crop [2, z, y, x] (T1C, mask); its draws start at ``seed``."""
    from monai.transforms import (
        RandAffine,
        RandFlip,
        RandGaussianNoise,
        RandScaleIntensity,
        RandShiftIntensity,
    )

    flip = RandFlip(prob=0.5, spatial_axis=2)  # crop axes are [z, y, x]; x = right-left
    affine = RandAffine(
        prob=0.5,
        rotate_range=(0.15, 0.15, 0.15),
        scale_range=(0.08, 0.08, 0.08),
        translate_range=(3, 3, 3),
        padding_mode="zeros",
        mode="bilinear",
    )
    scale = RandScaleIntensity(factors=0.1, prob=0.5)
    shift = RandShiftIntensity(offsets=0.03, prob=0.5)
    noise = RandGaussianNoise(prob=0.2, std=0.008)
    for i, t in enumerate((flip, affine, scale, shift, noise)):
        t.set_random_state(seed=seed + i)

    def apply(crop: np.ndarray) -> np.ndarray:
        import torch

        out = np.asarray(flip(torch.as_tensor(crop)))
        out = np.asarray(affine(torch.as_tensor(out)))
        out[1] = (out[1] >= 0.5).astype(np.float32)
        t1c = out[:1]
        t1c = np.asarray(noise(np.asarray(shift(np.asarray(scale(torch.as_tensor(t1c)))))))
        out[:1] = t1c
        return out.astype(np.float32)

    return apply
