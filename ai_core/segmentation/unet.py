"""The bundled 3D U-Net (MONAI) backend and its model folder.

A model folder holds ``model.json`` (version, architecture, working spacing,
intensity preprocessing, post-processing, the training intensity
distribution, how it was trained and its measured Dice) and the state_dict
named there. :func:`load_unet_model` reads it; :class:`UNetBackend` runs it:

1. check the input (preprocessed 1 mm, [0, 255]) against the training
   intensity distribution: out of distribution → ``not_assessable``;
2. reorient to the nearest axial LPS (axis permutation and flips only);
3. resample to the working spacing (area average), scale by ``input_scale``;
4. ``sliding_window_inference`` (Gaussian blending); softmax (0.1: tumour) or
   sigmoids (0.2: tumour, intracranial, and from it the distance to the dura);
5. upsample the maps back (trilinear), undo the reorientation;
6. :func:`ai_core.segmentation.postprocess.postprocess` (with the image).

torch and MONAI are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ai_core.segmentation.base import (
    STATUS_NOT_ASSESSABLE,
    Reorientation,
    SegmentationBackend,
    SegmentationError,
    SegmentationResult,
    check_image,
)
from ai_core.segmentation.dura import dural_distance
from ai_core.segmentation.intensity import IntensityReference, intensity_check
from ai_core.segmentation.postprocess import PostprocessParams, postprocess

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent.parent / "weights" / "segmentation"
MODEL_JSON = "model.json"
BACKEND_NAME = "ki67node-unet"
TUMOUR_CHANNEL = 1

ACTIVATIONS = ("softmax", "sigmoid")
#: What each output channel means, per activation.
OUTPUTS = {"softmax": ("background", "tumour"), "sigmoid": ("tumour", "intracranial")}


@dataclass(frozen=True)
class UNetArchitecture:
    """Hyper-parameters of ``monai.networks.nets.UNet`` (3D).

    ``activation="softmax"`` (models 0.1.x): two exclusive classes, background
    and tumour. ``"sigmoid"`` (models 0.2+, issue 17): two independent
    outputs, tumour and the intracranial compartment (tumour included), so a
    candidate outside the skull can be recognised and dropped.
    """

    channels: tuple[int, ...] = (8, 16, 32, 64)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    norm: str = "batch"
    dropout: float = 0.0
    in_channels: int = 1
    out_channels: int = 2
    activation: str = "softmax"

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"UNet needs one stride per down-sampling: {len(self.channels)} channels, "
                f"{len(self.strides)} strides"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.out_channels != 2:
            names = " and ".join(OUTPUTS[self.activation])
            raise ValueError(f"the tumour network has two output channels ({names})")

    @property
    def divisor(self) -> int:
        return int(np.prod(self.strides))

    @property
    def outputs(self) -> tuple[str, ...]:
        return OUTPUTS[self.activation]

    def build(self) -> torch.nn.Module:
        from monai.networks.nets import UNet

        return UNet(
            spatial_dims=3,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            channels=self.channels,
            strides=self.strides,
            num_res_units=self.num_res_units,
            norm=self.norm,
            dropout=self.dropout,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": "monai.networks.nets.UNet",
            "spatial_dims": 3,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "channels": list(self.channels),
            "strides": list(self.strides),
            "num_res_units": self.num_res_units,
            "norm": self.norm,
            "dropout": self.dropout,
            "activation": self.activation,
            "outputs": list(self.outputs),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetArchitecture:
        values = {k: v for k, v in data.items() if k not in ("class", "spatial_dims", "outputs")}
        return cls(**values)


@dataclass(frozen=True)
class UNetModel:
    """A loaded model folder: description and (lazily) the network."""

    folder: Path
    version: str
    architecture: UNetArchitecture
    weights_file: str
    working_spacing_mm: float = 2.0
    input_scale: float = 1.0 / 255.0
    roi_size: tuple[int, int, int] = (96, 96, 96)
    overlap: float = 0.25
    postprocess: PostprocessParams = field(default_factory=PostprocessParams)
    intensity_reference: IntensityReference | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # the whole model.json


def load_unet_model(folder: Path | None = None) -> UNetModel:
    """Read ``folder/model.json`` (the bundled weights by default)."""
    folder = Path(folder) if folder is not None else BUNDLED_MODEL_DIR
    path = folder / MODEL_JSON
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SegmentationError(
            f"{path} not found: a U-Net model folder needs model.json and its weights "
            "(train one with `python -m ai_core.segmentation.train`)"
        ) from None
    except (OSError, ValueError) as exc:
        raise SegmentationError(f"{path} is unreadable ({exc}); restore the model folder") from exc
    try:
        inference = meta.get("inference", {})
        reference = meta.get("intensity_reference")
        return UNetModel(
            folder=folder,
            version=str(meta["version"]),
            architecture=UNetArchitecture.from_dict(meta["architecture"]),
            weights_file=str(meta["weights"]),
            working_spacing_mm=float(meta["working_spacing_mm"]),
            input_scale=float(meta.get("input_scale", 1.0 / 255.0)),
            roi_size=_triple_int(inference.get("roi_size", (96, 96, 96))),
            overlap=float(inference.get("overlap", 0.25)),
            postprocess=PostprocessParams.from_dict(meta.get("postprocess", {})),
            intensity_reference=IntensityReference.from_dict(reference) if reference else None,
            metadata=meta,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SegmentationError(
            f"{path}: invalid model description ({exc!r}); compare it with the bundled one"
        ) from exc


def _triple_int(values: Any) -> tuple[int, int, int]:
    a, b, c = (int(v) for v in values)
    return a, b, c


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when available, else ``"cpu"``; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resample_to(array: np.ndarray, shape: tuple[int, ...], *, mode: str) -> np.ndarray:
    """Resize a 3D array to ``shape`` with torch (``area`` down, ``trilinear`` up)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    if tuple(array.shape) == tuple(shape):
        return np.asarray(array, dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    kwargs: dict[str, Any] = {"align_corners": False} if mode == "trilinear" else {}
    out = F.interpolate(tensor, size=tuple(int(s) for s in shape), mode=mode, **kwargs)
    return out[0, 0].numpy()


def working_shape(
    shape: tuple[int, ...], spacing_zyx: tuple[float, float, float], working_mm: float
) -> tuple[int, int, int]:
    """Shape of the same extent at ``working_mm`` isotropic spacing."""
    a, b, c = (max(1, round(n * s / working_mm)) for n, s in zip(shape, spacing_zyx, strict=True))
    return int(a), int(b), int(c)


def to_working(
    image_zyx: np.ndarray,
    spacing_xyz: tuple[float, float, float],
    direction: np.ndarray | None,
    working_mm: float,
) -> tuple[np.ndarray, Reorientation]:
    """Reorient to axial LPS and area-resample to ``working_mm``: the network's input grid."""
    reorient = Reorientation.from_direction(direction)
    canonical = reorient.forward(np.asarray(image_zyx, dtype=np.float32))
    spacing_zyx = reorient.spacing_zyx(spacing_xyz)
    target = working_shape(canonical.shape, spacing_zyx, working_mm)
    return resample_to(canonical, target, mode="area"), reorient


class UNetBackend(SegmentationBackend):
    """The bundled (or a site-trained) MONAI U-Net, on CPU or CUDA."""

    name = BACKEND_NAME

    def __init__(self, model_dir: Path | None = None, *, device: str = "auto") -> None:
        self.model = load_unet_model(model_dir)
        self.version = self.model.version
        self.device = resolve_device(device)
        self._network: torch.nn.Module | None = None

    def network(self) -> torch.nn.Module:
        """The network in eval mode on the device (loaded once)."""
        if self._network is None:
            import torch

            path = self.model.folder / self.model.weights_file
            if not path.is_file():
                raise SegmentationError(
                    f"weights file {path} is missing; restore the model folder or retrain"
                )
            net = self.model.architecture.build()
            state = torch.load(path, map_location="cpu", weights_only=True)
            try:
                net.load_state_dict(state)
            except RuntimeError as exc:
                raise SegmentationError(
                    f"{path} does not match the architecture in model.json ({exc})"
                ) from exc
            self._network = net.to(self.device).eval()
        return self._network

    def probabilities(
        self,
        image_zyx: np.ndarray,
        spacing: tuple[float, float, float],
        direction: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Tumour and intracranial probability on the input grid (float32, [0, 1]).

        The intracranial map is None for a softmax (0.1.x) model, which has none.
        """
        maps = self.maps(image_zyx, spacing, direction)
        return maps[0], maps[1]

    def maps(
        self,
        image_zyx: np.ndarray,
        spacing: tuple[float, float, float],
        direction: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Tumour probability, intracranial probability and distance to the dura (mm).

        The last two are None for a softmax (0.1.x) model. All on the input grid.
        """
        import torch
        from monai.inferers import sliding_window_inference

        model = self.model
        working, reorient = to_working(image_zyx, spacing, direction, model.working_spacing_mm)
        tensor = torch.from_numpy(working * np.float32(model.input_scale))[None, None]
        net = self.network()
        with torch.inference_mode():
            logits = sliding_window_inference(
                tensor.to(self.device),
                roi_size=model.roi_size,
                sw_batch_size=1,
                predictor=net,
                overlap=model.overlap,
                mode="gaussian",
            )
            assert isinstance(logits, torch.Tensor)
            if model.architecture.activation == "sigmoid":
                maps = torch.sigmoid(logits.float())[0].cpu().numpy()
                dural = dural_distance(maps[1] >= 0.5, model.working_spacing_mm)
                channels = [maps[0], maps[1], dural]
            else:
                channels = [torch.softmax(logits.float(), dim=1)[0, TUMOUR_CHANNEL].cpu().numpy()]
        canonical_shape = reorient.forward(np.empty(image_zyx.shape, dtype=np.uint8)).shape
        out = [
            reorient.backward(resample_to(c, canonical_shape, mode="trilinear")).astype(np.float32)
            for c in channels
        ]
        for probability in out[:2]:
            np.clip(probability, 0.0, 1.0, out=probability)
        if len(out) == 1:
            return out[0], None, None
        return out[0], out[1], out[2]

    def probability(
        self,
        image_zyx: np.ndarray,
        spacing: tuple[float, float, float],
        direction: np.ndarray | None = None,
    ) -> np.ndarray:
        """Tumour probability on the input grid (float32, [0, 1])."""
        return self.probabilities(image_zyx, spacing, direction)[0]

    def segment(
        self,
        image_zyx: np.ndarray,
        spacing: tuple[float, float, float],
        *,
        direction: np.ndarray | None = None,
    ) -> SegmentationResult:
        check_image(image_zyx, spacing)
        if self.model.intensity_reference is not None:
            why = intensity_check(image_zyx, self.model.intensity_reference)
            if why is not None:
                log.info("segmentation not assessable: %s", why)
                return SegmentationResult(
                    np.zeros(image_zyx.shape, dtype=np.uint8),
                    None,
                    STATUS_NOT_ASSESSABLE,
                    f"input out of distribution: {why}",
                    self.name,
                    self.version,
                )
        prob, intracranial, dural = self.maps(image_zyx, spacing, direction)
        post = postprocess(
            prob,
            spacing,
            self.model.postprocess,
            intracranial=intracranial,
            dural_distance_mm=dural,
            image=image_zyx,
        )
        return SegmentationResult(
            post.mask, prob, post.status, post.reason, self.name, self.version, post.candidates
        )
