"""The segmentation backend interface and the geometry helpers every backend shares.

A backend takes the *preprocessed* working image (1 mm isotropic, intensities
in [0, 255], indexed ``[z, y, x]``, see :mod:`ai_core.preprocess`) and returns
a :class:`SegmentationResult` on the same grid: a binary tumour mask, the
tumour probability when the backend has one, and a status. ``"not_assessable"``
is returned, with a reason, when no lesion of at least the minimum volume is
found or the input does not look like the training data: never a guess.

No torch import here: the listener may import this module.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np

from ai_core.errors import AiCoreError

log = logging.getLogger(__name__)

STATUS_OK: Final = "ok"
STATUS_NOT_ASSESSABLE: Final = "not_assessable"
Status = Literal["ok", "not_assessable"]
RESEARCH_ONLY = "trained on synthetic data — research use only, not for diagnostic use"


class SegmentationError(AiCoreError):
    """A backend cannot run (missing package, unreadable model folder, bad input array).

    Unlike a ``not_assessable`` result, this is a fault of the installation or
    of the caller; the message says what to install or fix.
    """


@dataclass(frozen=True, eq=False)
class SegmentationResult:
    """One segmentation on the working grid of the input image."""

    mask_zyx: np.ndarray  # uint8 0/1, same shape as the input
    probability: np.ndarray | None  # float32 [0, 1] tumour probability, or None
    status: Status
    reason: str  # why not assessable, or a short summary when ok
    backend: str  # e.g. "ki67node-unet", "nnunetv2", "received-seg"
    version: str  # the backend's model version
    #: every candidate lesion the backend weighed (volume, confidence, intracranial
    #: share, whether chosen and why not), for the job result and benchmarks
    candidates: tuple[dict[str, Any], ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def lesion_voxels(self) -> int:
        return int(np.count_nonzero(self.mask_zyx))


class SegmentationBackend(abc.ABC):
    """Something that turns a working image into a tumour mask."""

    name: str = "backend"
    version: str = "0"

    @abc.abstractmethod
    def segment(
        self,
        image_zyx: np.ndarray,
        spacing: tuple[float, float, float],
        *,
        direction: np.ndarray | None = None,
    ) -> SegmentationResult:
        """Segment ``image_zyx`` (spacing in ``(x, y, z)`` mm, ITK order).

        ``direction`` (3×3, column ``i`` = LPS direction of index axis ``i``)
        lets a backend orient the image the way it was trained; without it
        the image is taken as axial LPS.
        """


def check_image(image_zyx: np.ndarray, spacing: tuple[float, float, float]) -> None:
    """Refuse arrays no backend can use (wrong rank, non-finite values, bad spacing)."""
    if image_zyx.ndim != 3:
        raise SegmentationError(
            f"the image must be 3D [z, y, x], got shape {image_zyx.shape}; pass the "
            "preprocessed working image"
        )
    if min(image_zyx.shape) < 1:
        raise SegmentationError(f"the image is empty (shape {image_zyx.shape})")
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise SegmentationError(f"spacing must be three positive numbers (mm), got {spacing}")
    if not np.all(np.isfinite(image_zyx)):
        raise SegmentationError("the image has NaN or infinite values; preprocess it first")


# -- orientation ----------------------------------------------------------------
@dataclass(frozen=True)
class Reorientation:
    """Axis permutation and flips that bring a ``[z, y, x]`` array to the nearest axial LPS.

    ``perm[k]`` is the array axis that becomes axis ``k`` of the canonical
    array (whose axes are patient S, P, L in that order, i.e. ``[z, y, x]``
    of an axial LPS image); ``flip[k]`` reverses canonical axis ``k``. No
    interpolation: an oblique image is brought to the *nearest* canonical
    orientation.
    """

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    @classmethod
    def from_direction(cls, direction: np.ndarray | None) -> Reorientation:
        if direction is None:
            return cls((0, 1, 2), (False, False, False))
        d = np.asarray(direction, dtype=float).reshape(3, 3)
        # index axis i (x, y, z) points mostly along patient axis patient_of[i]
        patient_of = [int(np.argmax(np.abs(d[:, i]))) for i in range(3)]
        if sorted(patient_of) != [0, 1, 2]:
            # degenerate (two axes along one patient axis): assign greedily
            patient_of = _assign_axes(np.abs(d))
        perm = [0, 0, 0]
        flip = [False, False, False]
        for i, patient_axis in enumerate(patient_of):
            canonical = 2 - patient_axis  # patient x (L) -> array axis 2, z (S) -> axis 0
            perm[canonical] = 2 - i  # index axis x is array axis 2
            flip[canonical] = bool(d[patient_axis, i] < 0)
        return cls((perm[0], perm[1], perm[2]), (flip[0], flip[1], flip[2]))

    def spacing_zyx(self, spacing_xyz: tuple[float, float, float]) -> tuple[float, float, float]:
        """Spacing of the canonical array per canonical axis (z, y, x)."""
        zyx = (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])
        return (zyx[self.perm[0]], zyx[self.perm[1]], zyx[self.perm[2]])

    def forward(self, array: np.ndarray) -> np.ndarray:
        out = np.transpose(array, self.perm)
        axes = tuple(k for k in range(3) if self.flip[k])
        return np.ascontiguousarray(np.flip(out, axes) if axes else out)

    def backward(self, array: np.ndarray) -> np.ndarray:
        axes = tuple(k for k in range(3) if self.flip[k])
        out = np.flip(array, axes) if axes else array
        return np.ascontiguousarray(np.transpose(out, np.argsort(self.perm)))


def _assign_axes(abs_d: np.ndarray) -> list[int]:
    taken: list[int] = []
    out = [0, 0, 0]
    for i in np.argsort(-abs_d.max(axis=0)):
        order = [int(a) for a in np.argsort(-abs_d[:, i]) if int(a) not in taken]
        out[int(i)] = order[0]
        taken.append(order[0])
    return out
