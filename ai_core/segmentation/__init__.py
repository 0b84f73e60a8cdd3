"""Segmentation backends: the bundled U-Net, a site's nnU-Net, a radiologist's SEG.

Importing this package is cheap (no torch, MONAI or SimpleITK); the heavy
imports happen when a backend is built. :func:`make_backend` picks one by name.

``__all__`` is what ``daemon`` and ``dicom_out`` may use: the names below and
one submodule, :mod:`~ai_core.segmentation.received_seg` (a radiologist's
SEG as a mask). The backends' modules are reached through :func:`make_backend`.
"""

from __future__ import annotations

from pathlib import Path

from ai_core.segmentation.base import (
    RESEARCH_ONLY,
    STATUS_NOT_ASSESSABLE,
    STATUS_OK,
    SegmentationBackend,
    SegmentationError,
    SegmentationResult,
)
from ai_core.segmentation.postprocess import PostprocessParams, postprocess

BACKENDS = ("unet", "nnunet")

__all__ = [
    "BACKENDS",
    "RESEARCH_ONLY",
    "STATUS_NOT_ASSESSABLE",
    "STATUS_OK",
    "PostprocessParams",
    "SegmentationBackend",
    "SegmentationError",
    "SegmentationResult",
    "make_backend",
    "postprocess",
    "received_seg",
]


def make_backend(
    kind: str = "unet", model_dir: Path | None = None, *, device: str = "auto"
) -> SegmentationBackend:
    """``"unet"`` (bundled weights unless ``model_dir``) or ``"nnunet"`` (``model_dir`` required)."""
    if kind == "unet":
        from ai_core.segmentation.unet import UNetBackend

        return UNetBackend(model_dir, device=device)
    if kind == "nnunet":
        if model_dir is None:
            raise SegmentationError(
                "the nnunet backend needs the trained model folder "
                "(<Trainer>__<Plans>__<configuration>); set its path"
            )
        from ai_core.segmentation.nnunet import NnUNetBackend

        return NnUNetBackend(model_dir, device=device)
    raise SegmentationError(f"unknown segmentation backend {kind!r}; choose one of {BACKENDS}")
