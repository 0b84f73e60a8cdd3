"""Where the dura is: the distance of every intracranial voxel to it.

A meningioma grows from the dura, so a candidate lesion far from it is not
one (:mod:`ai_core.segmentation.postprocess`). The 0.2 networks predict the
intracranial compartment; this module turns it into a distance map.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def dural_distance(intracranial: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Distance (mm) of every intracranial voxel to the nearest dura; 0 outside.

    ``intracranial`` is a boolean canonical (axial LPS ``[z, y, x]``) mask.
    The dura is the compartment's surface (the inner table, the skull base)
    and the falx, taken as the mid-sagittal plane fitted through the centres
    of the compartment's left-right extent, row by row (so a tilted or turned
    head keeps its falx), above the compartment's centre (the falx hangs
    from the vault; the brainstem below is midline too). Tentorium and
    ventricles are not dura here: a lesion attached only to them is not
    dural-based by this rule.
    """
    mask = np.asarray(intracranial, dtype=bool)
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.float32)
    # one solid compartment: a hole the network leaves inside it (a ventricle, the choroid
    # plexus in it) is not its surface, so an enhancing plexus is not "next to the dura"
    solid = ndi.binary_fill_holes(mask)
    surface = ndi.distance_transform_edt(solid) * spacing_mm
    count = solid.sum(axis=2)
    xs = np.arange(mask.shape[2], dtype=np.float64)
    centre = (solid * xs).sum(axis=2) / np.maximum(count, 1)
    wide = count * spacing_mm >= 60.0  # rows that cross both hemispheres
    if wide.sum() < 3:
        return surface.astype(np.float32)
    z, y = np.nonzero(wide)
    design = np.stack([np.ones(z.size), y, z], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, centre[wide], rcond=None)
    zz, yy = np.indices(mask.shape[:2], dtype=np.float64)
    plane = coef[0] + coef[1] * yy + coef[2] * zz
    midline = np.abs(xs[None, None, :] - plane[:, :, None]) * spacing_mm
    # the falx hangs in the upper half only: the brainstem and the sella are midline too
    lower = zz < np.argwhere(solid)[:, 0].mean()
    midline[lower] = np.inf
    return np.where(solid, np.minimum(surface, midline), 0.0).astype(np.float32)
