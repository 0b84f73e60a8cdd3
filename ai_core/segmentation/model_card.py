"""What a 0.2 segmentation model is: its architectures, post-processing and ``model.json``.

The training (:mod:`ai_core.segmentation.train`) writes a model folder whose
``model.json`` :class:`~ai_core.segmentation.unet.UNetBackend` reads: the
architecture, the inference window, the post-processing that turns the two
probability maps into one lesion or an abstention, the intensity reference
that flags out-of-distribution input, and how the weights were made.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ai_core.segmentation.base import RESEARCH_ONLY
from ai_core.segmentation.intensity import IntensityReference
from ai_core.segmentation.postprocess import PostprocessParams
from ai_core.segmentation.synthesis import SynthesisParams
from ai_core.segmentation.unet import BACKEND_NAME, MODEL_JSON, UNetArchitecture

WEIGHTS_FILE = "unet.pt"
MODEL_VERSION = "0.2.1"
#: ``--arch``: "base" (16-32-64-128, instance norm) or "small" (the 0.1 network's
#: 8-16-32-64 with batch norm, which ``--init`` can warm-start from a 0.1 model).
ARCHITECTURES = {
    "base": UNetArchitecture(
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=1,
        norm="instance",
        activation="sigmoid",
    ),
    "small": UNetArchitecture(
        channels=(8, 16, 32, 64),
        strides=(2, 2, 2),
        num_res_units=1,
        norm="batch",
        activation="sigmoid",
    ),
}
#: Post-processing of the 0.2 models: the most confident intracranial, dural-based, enhancing
#: candidate (thresholds chosen on the validation cohort, docs/segmentation.md).
POSTPROCESS = PostprocessParams(
    threshold=0.5,
    min_component_ml=0.05,
    min_lesion_ml=0.3,
    select="confidence",
    min_confidence=0.8,
    confidence_quantile=0.9,
    min_intracranial=0.5,
    max_dural_distance_mm=8.0,
    min_enhancement=1.15,
)
#: Head statistics of preprocessed synthetic T1C studies (40 studies, cohort seed 101,
#: measured for model 0.1.0); the preprocessing has not changed since.
INTENSITY_REFERENCE = IntensityReference(
    mean_mean=124.17456493377685,
    mean_std=6.667965593906663,
    std_mean=66.05041217803955,
    std_std=3.2137810695440834,
    max_z=8.0,
)


def describe(
    params: Any,
    synthesis: SynthesisParams,
    step: int,
    seconds: float,
    bank_s: float,
    device: str,
    losses: list[float],
) -> dict[str, Any]:
    """model.json of a trained 0.2 model: architecture, inference, post-processing, provenance."""
    import torch

    return {
        "name": BACKEND_NAME,
        "version": MODEL_VERSION,
        "notice": RESEARCH_ONLY,
        "architecture": ARCHITECTURES[params.arch].to_dict(),
        "weights": WEIGHTS_FILE,
        "working_spacing_mm": params.working_mm,
        "input": (
            "ai_core.preprocess.preprocess defaults (1 mm, N4, head 0.5-99.5 percentiles to "
            "[0, 255]); reoriented to the nearest axial LPS; area-resampled to the working "
            "spacing; multiplied by input_scale"
        ),
        "input_scale": 1.0 / 255.0,
        "inference": {
            "roi_size": [params.roi or synthesis.crop] * 3,
            "overlap": 0.25,
            "blend": "gaussian",
        },
        "postprocess": asdict(POSTPROCESS),
        "intensity_reference": asdict(INTENSITY_REFERENCE),
        "training": {
            "command": "python -m ai_core.segmentation.train " + shlex.join(sys.argv[1:]),
            "data": (
                "images synthesised on the fly from label maps with a random appearance per "
                "label (ai_core.segmentation.labelmaps / synthesis); no rendered study"
            ),
            "params": asdict(params),
            "synthesis": asdict(synthesis),
            "steps_done": step,
            "final_loss": round(float(np.mean(losses[-100:])), 4) if losses else None,
            "device": device,
            "torch": torch.__version__,
            "label_map_seconds": round(bank_s, 1),
            "seconds": round(seconds, 1),
        },
    }


def write_meta(out: Path, meta: dict[str, Any]) -> None:
    (out / MODEL_JSON).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
