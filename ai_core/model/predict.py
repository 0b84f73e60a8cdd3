"""Inference: the image pipeline's result (+ optional characteristics) → a Prediction.

One :class:`Predictor` per worker process holds the bundle's network on its
device; :meth:`Predictor.predict` returns both outputs, the class at the
bundle's threshold, which inputs were used, Grad-CAM of the MRI branch
(with the share of the tumour's size and texture values, for the class
the MRI's evidence points to: :func:`~ai_core.model.explain.evidence_map`) and the MRI
cross-attention mapped back onto the source series (for the heatmap
Secondary Captures), the attention given to each characteristic and the
most-attended radiomics features, and the model's name and version.
Eval mode and no sampling: the same inputs always give the same numbers.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ai_core.errors import ModelError
from ai_core.model.bundle import DISCLAIMER, ModelBundle, load_bundle
from ai_core.model.inputs import (
    CHARACTERISTICS,
    Characteristics,
    CropGeometry,
    crop_source,
    crop_to_grid,
    tumour_crop,
)

if TYPE_CHECKING:
    from ai_core.analysis import ImageAnalysis

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Prediction:
    """What the model says about one tumour."""

    probability_output1: float  # MRI + radiological characteristics: the reported prediction
    probability_output2: float  # after radiomics as well
    ki67_high: bool  # Output 1 >= threshold
    threshold: float
    inputs_used: dict[str, bool]  # mri, characteristics, radiomics
    characteristics: dict[str, float | bool]  # the known ones that were used
    crop: CropGeometry
    # Grad-CAM of the MRI branch with the tumour's size/texture evidence (explain.evidence_map)
    # for the class map_towards_high, float32 [z, y, x] in [0, 1] on the source series grid
    gradcam_source: np.ndarray | None
    attention_source: np.ndarray | None  # MRI cross-attention, same grid
    characteristic_attention: dict[str, float]  # attention of the query per characteristic
    radiomics_attention: list[tuple[str, float]]  # the ten most-attended features
    model_name: str
    model_version: str
    synthetic_model: bool
    device: str
    timings_s: dict[str, float] = field(default_factory=dict)
    disclaimer: str = DISCLAIMER
    # The class gradcam_source shows the MRI's evidence for (True: Ki-67 high); None: no map
    map_towards_high: bool | None = None
    # Output 1 from which the growth-risk group is "high" (None: the class threshold)
    risk_threshold: float | None = None

    @property
    def risk_group(self) -> str:
        """Growth-risk group: Output 1 at or above the bundle's growth-risk threshold → "high".

        Without a growth-risk threshold, the predicted class decides.
        """
        if self.risk_threshold is None:
            return "high" if self.ki67_high else "low"
        return "high" if self.probability_output1 >= self.risk_threshold else "low"

    def summary(self) -> dict[str, Any]:
        """JSON-safe numbers (no arrays) for the job result, the SR and logs."""
        return {
            "probability_output1": round(self.probability_output1, 4),
            "probability_output2": round(self.probability_output2, 4),
            "ki67_high": self.ki67_high,
            "class": "Ki-67 >= 5 %" if self.ki67_high else "Ki-67 < 5 %",
            "threshold": round(self.threshold, 4),
            "risk_group": self.risk_group,
            "risk_threshold": None
            if self.risk_threshold is None
            else round(self.risk_threshold, 4),
            "map_class": None  # the class the heatmap shows the MRI's evidence for
            if self.map_towards_high is None
            else ("Ki-67 >= 5 %" if self.map_towards_high else "Ki-67 < 5 %"),
            "inputs_used": dict(self.inputs_used),
            "characteristics": dict(self.characteristics),
            "characteristic_attention": {
                k: round(v, 4) for k, v in self.characteristic_attention.items()
            },
            "radiomics_attention": [[n, round(w, 5)] for n, w in self.radiomics_attention],
            "model": {
                "name": self.model_name,
                "version": self.model_version,
                "synthetic": self.synthetic_model,
                "device": self.device,
            },
            "timings": {k: round(v, 3) for k, v in self.timings_s.items()},
            "disclaimer": self.disclaimer,
        }


@dataclass(frozen=True, eq=False)
class _Inputs:
    """One analysis as the network's batch of one, and what went into it."""

    batch: dict[str, Any]
    geometry: CropGeometry
    known: np.ndarray  # which characteristics are known
    present: tuple[bool, bool, bool]  # mri, characteristics, radiomics


@dataclass(frozen=True, eq=False)
class _Maps:
    """The explanation maps on the source series grid; all None without explanation."""

    gradcam: np.ndarray | None = None
    attention: np.ndarray | None = None
    towards_high: bool | None = None


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; ``cuda``/``cuda:N`` checked."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for but CUDA is not available here; use cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ModelError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return device


class Predictor:
    """A bundle's network loaded on a device, ready for repeated predictions."""

    def __init__(
        self, bundle: ModelBundle | Path | str | None = None, device: str = "auto"
    ) -> None:
        self.bundle = bundle if isinstance(bundle, ModelBundle) else load_bundle(bundle)
        self.device = resolve_device(device)
        self.model = self.bundle.build_model(self.device)
        log.info("model %s loaded on %s", self.bundle.describe(), self.device)

    def predict(
        self,
        analysis: ImageAnalysis,
        characteristics: Characteristics | None = None,
        *,
        explain: bool = True,
        use_radiomics: bool = True,
    ) -> Prediction:
        """Predict for an assessable image analysis; :class:`ModelError` otherwise."""
        import torch

        if not analysis.ok:
            raise ModelError(
                f"the series is not assessable ({analysis.reason}); nothing to predict"
            )
        timings: dict[str, float] = {}
        start = time.perf_counter()
        chars = characteristics or Characteristics()
        inputs = self._inputs(analysis, chars, use_radiomics)
        timings["inputs"] = time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            out = self.model(**inputs.batch)
        p1 = float(torch.sigmoid(out.output1)[0])
        p2 = float(torch.sigmoid(out.output2)[0])
        if not (math.isfinite(p1) and math.isfinite(p2)):
            raise ModelError(
                "the model produced a non-finite probability; the input is out of range"
            )
        timings["model"] = time.perf_counter() - start
        char_attn = out.attention[1][0].mean(dim=(0, 1)).cpu().numpy()
        rad_attn = out.attention[2][0].mean(dim=(0, 1)).cpu().numpy()
        names = self.bundle.standardiser.names
        top = np.argsort(-rad_attn)[:10] if inputs.present[2] else np.array([], dtype=int)
        maps = _Maps()
        if explain:
            start = time.perf_counter()
            maps = self._explain(inputs, out, p1 >= self.bundle.threshold, analysis)
            timings["explain"] = time.perf_counter() - start
        return Prediction(
            probability_output1=p1,
            probability_output2=p2,
            ki67_high=p1 >= self.bundle.threshold,
            threshold=self.bundle.threshold,
            risk_threshold=self.bundle.risk_threshold,
            inputs_used=dict(
                zip(("mri", "characteristics", "radiomics"), inputs.present, strict=True)
            ),
            characteristics=chars.known(),
            crop=inputs.geometry,
            gradcam_source=maps.gradcam,
            attention_source=maps.attention,
            characteristic_attention={
                name: float(char_attn[i])
                for i, name in enumerate(CHARACTERISTICS)
                if inputs.known[i]
            },
            radiomics_attention=[(names[i], float(rad_attn[i])) for i in top],
            model_name=self.bundle.name,
            model_version=self.bundle.version,
            synthetic_model=self.bundle.synthetic,
            device=self.device,
            timings_s=timings,
            map_towards_high=maps.towards_high,
        )

    def _inputs(
        self, analysis: ImageAnalysis, chars: Characteristics, use_radiomics: bool
    ) -> _Inputs:
        """The tumour crop, the characteristics and the standardised radiomics as a batch of one."""
        import torch

        crop, geometry = tumour_crop(
            crop_source(analysis.working, self.bundle.crop),
            analysis.segmentation.mask_zyx,
            analysis.working.grid,
            self.bundle.crop,
        )
        values, known = chars.encode()
        n = self.bundle.config.n_radiomics
        rad = np.zeros(n, np.float32)
        rad_known = np.zeros(n, bool)
        if use_radiomics and analysis.radiomics is not None:
            z = self.bundle.standardiser.transform(analysis.radiomics.features)
            rad_known = ~z.missing & np.isfinite(z.values)
            rad = np.where(rad_known, z.values, 0.0).astype(np.float32)
        present = (True, bool(known.any()), bool(rad_known.any()))
        dev = self.device
        batch = {
            "image": torch.as_tensor(crop[None], device=dev),
            "characteristics": torch.as_tensor(values[None], device=dev),
            "characteristics_known": torch.as_tensor(known[None], device=dev),
            "radiomics": torch.as_tensor(rad[None], device=dev),
            "radiomics_known": torch.as_tensor(rad_known[None], device=dev),
            "present": torch.as_tensor(np.array([present]), device=dev),
        }
        return _Inputs(batch, geometry, known, present)

    def _explain(
        self, inputs: _Inputs, out: Any, reported_high: bool, analysis: ImageAnalysis
    ) -> _Maps:
        """Grad-CAM with the size/texture evidence and the MRI attention, on the source grid."""
        import torch

        from ai_core.model.explain import evidence_map, mri_attention_map

        map_high = self._map_class(inputs.batch, reported_high)
        towards = torch.tensor([map_high], device=self.device)
        cam = evidence_map(self.model, inputs.batch, head=1, towards_high=towards)
        gradcam = crop_to_grid(cam[0].cpu().numpy(), inputs.geometry, analysis.working.source)
        amap = mri_attention_map(out.attention[0], self.bundle.config)[0].cpu().numpy()
        attention = crop_to_grid(amap, inputs.geometry, analysis.working.source)
        return _Maps(gradcam, attention, map_high)

    def _map_class(self, batch: dict[str, Any], reported_high: bool) -> bool:
        """The class the heatmap shows the MRI's evidence for (True: Ki-67 high).

        Where the tumour's size/texture values point (their first-order share of
        Output 1 relative to the training-mean tumour, most of what the MRI adds
        to it; :func:`~ai_core.model.explain.size_texture_share`); the class
        reported when that share is 0 or the model has no linear path. A
        borderline call can go the other way (a tumour larger than average,
        below the threshold all the same): the map then says so rather than
        showing the little evidence there is for the call.
        """
        from ai_core.model.explain import size_texture_share

        share = size_texture_share(self.model, batch, head=1)
        if share is None:
            return reported_high
        value = float(share[0])
        return reported_high if value == 0.0 or not math.isfinite(value) else value > 0.0
