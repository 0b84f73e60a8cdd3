"""One series in, the DICOM objects for the PACS out: image pipeline →
Transformer → SEG / heatmap SCs / SR.

The single code path behind the daemon's job (:mod:`daemon.jobs.pipeline`) and
``ki67node process``. It imports torch (through ai_core), so it only ever runs
in worker processes or the offline command, never in the serving process.
The segmentation backend and the model are loaded once per process.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from ai_core.analysis import AnalysisOptions, ImageAnalysis, analyse_series
from ai_core.model.inputs import Characteristics
from ai_core.model.predict import Prediction, Predictor
from ai_core.segmentation import SegmentationBackend, make_backend
from ai_core.volume import Volume, load_series
from daemon import __version__
from daemon.settings import PipelineSettings
from dicom_out.build import build_outputs, kind_of
from dicom_out.context import OutputContext, Predecessor, PriorComparison

log = logging.getLogger(__name__)

CHARACTERISTICS_FROM_RADIOLOGIST = "radiologist (ki67node characteristics)"
CHARACTERISTICS_NONE = "not provided"


@dataclass(frozen=True)
class ChainRequest:
    """One series to analyse and what is known about it."""

    paths: Sequence[Path]
    job_key: str  # output UIDs derive from it: the same for every retry
    characteristics: Characteristics = field(default_factory=Characteristics)
    received_seg: Path | None = None  # the radiologist's SEG for this series, if any
    predecessor: Predecessor | None = None  # the SR this run amends


@dataclass(frozen=True, eq=False)
class ChainResult:
    datasets: list[Dataset]
    analysis: ImageAnalysis
    prediction: Prediction | None
    timings: dict[str, float]
    prior: PriorComparison | None = None

    def outputs(self) -> list[dict[str, str]]:
        return [
            {
                "kind": kind_of(ds),
                "sop_class_uid": str(ds.SOPClassUID),
                "series_uid": str(ds.SeriesInstanceUID),
                "sop_instance_uid": str(ds.SOPInstanceUID),
            }
            for ds in self.datasets
        ]

    def summary(self) -> dict[str, Any]:
        """JSON-safe: what the job keeps in its result row (no arrays, no patient data)."""
        return {
            "status": self.analysis.status,
            "reason": self.analysis.reason,
            "analysis": self.analysis.summary(),
            "prediction": None if self.prediction is None else self.prediction.summary(),
            "outputs": self.outputs(),
            "growth": None if self.prior is None else _json_safe(self.prior),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


@dataclass(frozen=True)
class Models:
    """The segmentation backend and the Ki-67 predictor of one process."""

    backend: SegmentationBackend
    predictor: Predictor

    @property
    def options(self) -> AnalysisOptions:
        bundle = self.predictor.bundle
        return AnalysisOptions(
            preprocess=bundle.preprocess, radiomics=True, radiomics_params=bundle.radiomics_params
        )


@functools.lru_cache(maxsize=2)
def load_models(device: str, model_dir: str, segmentation: str, segmentation_dir: str) -> Models:
    """Load once per process (the first job pays for it)."""
    start = time.perf_counter()
    predictor = Predictor(model_dir or None, device=device)
    backend = make_backend(
        segmentation, Path(segmentation_dir) if segmentation_dir else None, device=device
    )
    log.info(
        "models loaded in %.1f s (%s)", time.perf_counter() - start, predictor.bundle.describe()
    )
    return Models(backend, predictor)


def models_for(cfg: PipelineSettings) -> Models:
    return load_models(
        cfg.device,
        cfg.model_dir,
        cfg.segmentation,
        cfg.segmentation_model_dir,
    )


PriorHook = Callable[[ImageAnalysis, Prediction, Dataset], PriorComparison | None]


def run_chain(
    request: ChainRequest,
    cfg: PipelineSettings,
    volume: Volume | None = None,
    prior: PriorHook | None = None,
) -> ChainResult:
    """Analyse the series, predict, build the objects. ai_core errors propagate.

    ``prior`` (the daemon's surveillance) is called with the analysis, the
    prediction and the first source header before the objects are built; the
    comparison it returns goes into the SR.
    """
    timings: dict[str, float] = {}
    if volume is None:
        start = time.perf_counter()
        volume = load_series(list(request.paths))
        timings["load"] = time.perf_counter() - start
    models = models_for(cfg)
    options = models.options
    if not cfg.radiomics:
        options = AnalysisOptions(preprocess=options.preprocess, radiomics=False)
    analysis = analyse_series(
        volume, models.backend, options=options, received_seg=request.received_seg
    )
    timings.update({k: v for k, v in analysis.timings_s.items() if k != "load"})
    prediction = None
    if analysis.ok:
        prediction = models.predictor.predict(analysis, request.characteristics, explain=True)
        timings.update(prediction.timings_s)
    start = time.perf_counter()
    source = tuple(pydicom.dcmread(p, stop_before_pixels=True) for p in request.paths)
    comparison = None
    if prior is not None and prediction is not None:
        comparison = prior(analysis, prediction, source[0])
    received = None
    if request.received_seg is not None and analysis.ok:
        received = pydicom.dcmread(request.received_seg, stop_before_pixels=True)
    ctx = OutputContext(
        source=source,
        volume=volume,
        analysis=analysis,
        prediction=prediction,
        job_key=request.job_key,
        software_version=__version__,
        created=dt.datetime.now().replace(microsecond=0),
        characteristics_source=CHARACTERISTICS_FROM_RADIOLOGIST
        if request.characteristics.any_known
        else CHARACTERISTICS_NONE,
        predecessor=request.predecessor,
        prior=comparison,
    )
    datasets = build_outputs(ctx, received)
    timings["build"] = time.perf_counter() - start
    log.info(
        "series analysed: %s; %d object(s) built (%s)",
        analysis.status if prediction is None else f"p={prediction.probability_output1:.2f}",
        len(datasets),
        ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()),
    )
    return ChainResult(datasets, analysis, prediction, timings, comparison)


def _json_safe(prior: PriorComparison) -> dict[str, Any]:
    out = dataclasses.asdict(prior)
    if prior.prior_study_date is not None:
        out["prior_study_date"] = prior.prior_study_date.isoformat()
    return out
