"""A site's own nnU-Net v2 model as a segmentation backend.

The model folder is what ``nnUNetv2_train`` leaves in ``nnUNet_results``::

    <Dataset>/<Trainer>__<Plans>__<configuration>/
        dataset.json  plans.json  fold_0/checkpoint_final.pth  [fold_1/ ...]

It is loaded with nnU-Net's own ``nnUNetPredictor`` (``nnunetv2`` must be
installed: ``pip install nnunetv2``). The input is our preprocessed working
image (1 mm, [0, 255]); nnU-Net then applies its own normalisation and
resampling from ``plans.json``. Train the site model on images exported by
:func:`ai_core.preprocess.preprocess` so that the two agree. The tumour is
the label named ``label_name`` in ``dataset.json`` (default: the first
non-background label).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ai_core.segmentation.base import (
    SegmentationBackend,
    SegmentationError,
    SegmentationResult,
    check_image,
)
from ai_core.segmentation.postprocess import PostprocessParams, postprocess
from ai_core.segmentation.unet import resolve_device

log = logging.getLogger(__name__)

BACKEND_NAME = "nnunetv2"
REQUIRED_FILES = ("dataset.json", "plans.json")


def nnunet_available() -> bool:
    return importlib.util.find_spec("nnunetv2") is not None


def _require_nnunet() -> str:
    if not nnunet_available():
        raise SegmentationError(
            "the nnU-Net backend needs the 'nnunetv2' package, which is not installed; "
            "install it into the service's environment (pip install nnunetv2) or choose "
            "the bundled 'unet' backend"
        )
    from importlib.metadata import version

    return version("nnunetv2")


class NnUNetBackend(SegmentationBackend):
    """Runs ``nnUNetPredictor`` on a trained nnU-Net v2 model folder."""

    name = BACKEND_NAME

    def __init__(
        self,
        model_folder: Path,
        *,
        folds: Sequence[int | str] = (0,),
        checkpoint: str = "checkpoint_final.pth",
        device: str = "auto",
        label_name: str | None = None,
        postprocess_params: PostprocessParams | None = None,
        mirroring: bool = False,
    ) -> None:
        nnunet_version = _require_nnunet()
        self.folder = Path(model_folder)
        self.folds = tuple(folds)
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        self.postprocess_params = postprocess_params or PostprocessParams()
        self.mirroring = mirroring
        dataset = self._check_folder()
        self.label_value = _label_value(dataset, label_name, self.folder)
        self.version = f"{self.folder.name} (nnunetv2 {nnunet_version})"
        self._predictor: Any = None

    def _check_folder(self) -> dict[str, Any]:
        missing = [n for n in REQUIRED_FILES if not (self.folder / n).is_file()]
        missing += [
            f"fold_{f}/{self.checkpoint}"
            for f in self.folds
            if not (self.folder / f"fold_{f}" / self.checkpoint).is_file()
        ]
        if missing:
            raise SegmentationError(
                f"{self.folder} is not a complete nnU-Net v2 model folder (missing "
                f"{', '.join(missing)}); point the backend at <Trainer>__<Plans>__<config>"
            )
        try:
            data = json.loads((self.folder / "dataset.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SegmentationError(f"{self.folder}/dataset.json is unreadable ({exc})") from exc
        if not isinstance(data, dict):
            raise SegmentationError(f"{self.folder}/dataset.json is not a JSON object")
        return data

    def predictor(self) -> Any:
        if self._predictor is None:
            import torch
            from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

            predictor = nnUNetPredictor(
                tile_step_size=0.5,
                use_gaussian=True,
                use_mirroring=self.mirroring,
                perform_everything_on_device=self.device.startswith("cuda"),
                device=torch.device(self.device),
                verbose=False,
                verbose_preprocessing=False,
                allow_tqdm=False,
            )
            try:
                predictor.initialize_from_trained_model_folder(
                    str(self.folder), use_folds=self.folds, checkpoint_name=self.checkpoint
                )
            except (KeyError, RuntimeError, ValueError, OSError) as exc:
                raise SegmentationError(
                    f"nnU-Net could not load {self.folder} ({exc!r}); check that it was trained "
                    "with a compatible nnunetv2 version"
                ) from exc
            self._predictor = predictor
        return self._predictor

    def segment(
        self,
        image_zyx: np.ndarray,
        spacing: tuple[float, float, float],
        *,
        direction: np.ndarray | None = None,
    ) -> SegmentationResult:
        """nnU-Net takes the array as is (SimpleITK axis order); ``direction`` is not used."""
        check_image(image_zyx, spacing)
        predictor = self.predictor()
        props = {"spacing": [float(spacing[2]), float(spacing[1]), float(spacing[0])]}
        data = np.asarray(image_zyx, dtype=np.float32)[None]
        _seg, probabilities = predictor.predict_single_npy_array(
            data, props, None, None, save_or_return_probabilities=True
        )
        prob = np.asarray(probabilities[self.label_value], dtype=np.float32)
        if prob.shape != image_zyx.shape:
            raise SegmentationError(
                f"nnU-Net returned shape {prob.shape} for an image of shape {image_zyx.shape}"
            )
        post = postprocess(prob, spacing, self.postprocess_params)
        return SegmentationResult(
            post.mask, prob, post.status, post.reason, self.name, self.version
        )


def _label_value(dataset: dict[str, Any], label_name: str | None, folder: Path) -> int:
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise SegmentationError(f"{folder}/dataset.json has no 'labels' mapping")
    if label_name is not None:
        if label_name not in labels:
            raise SegmentationError(
                f"label {label_name!r} is not in {folder}/dataset.json (labels: {sorted(labels)})"
            )
        value = labels[label_name]
    else:
        foreground = [v for k, v in labels.items() if k != "background"]
        if not foreground:
            raise SegmentationError(f"{folder}/dataset.json has no foreground label")
        value = foreground[0]
    if not isinstance(value, int):
        raise SegmentationError(
            f"label {label_name or 'foreground'} is a region ({value!r}); give a plain label"
        )
    return value
