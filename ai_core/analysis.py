"""The image pipeline in one call: series → volume → working image →
tumour mask → measurements → radiomics.

Used by the daemon's job and by ``ki67node process`` alike, so both run the
same code. A series that yields no tumour comes back "not assessable" with
the reason, never with a guessed mask.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset

from ai_core.measure import Measurements, measure
from ai_core.preprocess import Preprocessed, PreprocessParams, preprocess
from ai_core.radiomics_features import RadiomicsResult, extract_radiomics
from ai_core.segmentation.base import SegmentationBackend, SegmentationResult
from ai_core.volume import Volume, load_series

log = logging.getLogger(__name__)

AnalysisStatus = Literal["ok", "not_assessable"]


@dataclass(frozen=True)
class AnalysisOptions:
    """What to run; the model bundle fills these in."""

    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    radiomics: bool = True
    radiomics_params: Path | None = None


@dataclass(frozen=True, eq=False)
class ImageAnalysis:
    """Everything the image pipeline found in one series."""

    status: AnalysisStatus
    reason: str
    volume: Volume  # the source series
    working: Preprocessed  # 1 mm working image and its grids
    segmentation: SegmentationResult  # on the working grid
    mask_source: np.ndarray | None  # the mask on the source series' slices (for the SEG)
    measurements: Measurements | None
    radiomics: RadiomicsResult | None
    timings_s: dict[str, float]

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def summary(self) -> dict[str, Any]:
        """JSON-safe numbers for logs, the job result and reports (no arrays)."""
        m = self.measurements
        return {
            "status": self.status,
            "reason": self.reason,
            "segmentation": {
                "backend": self.segmentation.backend,
                "version": self.segmentation.version,
                "status": self.segmentation.status,
                "candidates": [dict(c) for c in self.segmentation.candidates],
            },
            "measurements": None
            if m is None
            else {
                "volume_cm3": round(m.volume_cm3, 3),
                "max_diameter_mm": round(m.max_diameter_mm, 2),
                "location": m.location,
                "side": m.side,
                "components": m.components,
            },
            "radiomics": None
            if self.radiomics is None
            else {
                "features": len(self.radiomics.features),
                "failed": len(self.radiomics.failed),
            },
            "timings": {k: round(v, 3) for k, v in self.timings_s.items()},
        }


def analyse_series(
    source: Sequence[Path] | Volume,
    backend: SegmentationBackend,
    *,
    options: AnalysisOptions | None = None,
    received_seg: Dataset | Path | None = None,
    reference_mask: Path | None = None,
    working: Preprocessed | None = None,
) -> ImageAnalysis:
    """Run the image pipeline on one series (file paths or a loaded volume).

    ``received_seg`` (a radiologist's DICOM SEG for this series) or
    ``reference_mask`` (a mask image in patient space, e.g. the NIfTI of a
    training manifest) replaces the automatic segmentation. ``working`` is the
    series' preprocessed image when the caller already has it (benchmarks
    comparing backends preprocess once).
    """
    options = options or AnalysisOptions()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    volume = source if isinstance(source, Volume) else load_series(list(source))
    timings["load"] = time.perf_counter() - start

    start = time.perf_counter()
    if working is None:
        working = preprocess(volume, options.preprocess)
    timings["preprocess"] = time.perf_counter() - start

    start = time.perf_counter()
    if reference_mask is not None:
        segmentation = _reference_mask(reference_mask, working)
    else:
        segmentation = _segment(volume, working, backend, received_seg)
    timings["segmentation"] = time.perf_counter() - start
    if not segmentation.ok:
        none = (None, None, None)
        return ImageAnalysis(
            "not_assessable", segmentation.reason, volume, working, segmentation, *none, timings
        )

    start = time.perf_counter()
    mask_source = working.mask_to_source(segmentation.mask_zyx, interpolation="linear")
    measurements = _measure(segmentation.mask_zyx, mask_source, working)
    timings["measure"] = time.perf_counter() - start

    radiomics = None
    if options.radiomics:
        start = time.perf_counter()
        radiomics = extract_radiomics(
            working.image,
            segmentation.mask_zyx,
            working.grid.spacing,
            params_path=options.radiomics_params,
        )
        timings["radiomics"] = time.perf_counter() - start
    log.info(
        "image pipeline: %.1f cm3, %.1f mm, %s %s (%s)",
        measurements.volume_cm3,
        measurements.max_diameter_mm,
        measurements.location,
        measurements.side,
        ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()),
    )
    found = (segmentation, mask_source, measurements, radiomics)
    return ImageAnalysis("ok", segmentation.reason, volume, working, *found, timings)


def _measure(
    mask_working: np.ndarray, mask_source: np.ndarray, working: Preprocessed
) -> Measurements:
    """Volume, diameter and centroid of the mask the SEG carries (the source slices).

    The SR must give the number a radiologist gets when measuring the delivered
    SEG in the viewer, so size comes from the mask on the source grid; location
    and side need the head mask and come from the working grid.
    """
    grid, source = working.grid, working.source
    on_working = measure(
        mask_working, grid.spacing, grid.direction, grid.origin, head_mask=working.head_mask
    )
    if not np.any(mask_source):  # a lesion thinner than the source slices: keep the working one
        return on_working
    on_source = measure(mask_source, source.spacing, source.direction, source.origin)
    return replace(on_source, location=on_working.location, side=on_working.side)


def _segment(
    volume: Volume,
    working: Preprocessed,
    backend: SegmentationBackend,
    received_seg: Dataset | Path | None,
) -> SegmentationResult:
    if received_seg is None:
        return backend.segment(
            working.image, working.grid.spacing, direction=working.grid.direction
        )
    from ai_core.image import mask_to_sitk, resample_mask
    from ai_core.segmentation.received_seg import received_seg_result

    on_source = received_seg_result(received_seg, volume)
    mask = resample_mask(
        mask_to_sitk(on_source.mask_zyx, working.source), working.grid, interpolation="linear"
    )
    return SegmentationResult(
        mask, None, on_source.status, on_source.reason, on_source.backend, on_source.version
    )


def _reference_mask(path: Path, working: Preprocessed) -> SegmentationResult:
    """A mask file (NIfTI, NRRD... anything SimpleITK reads) put on the working grid."""
    import SimpleITK as sitk

    from ai_core.errors import VolumeError
    from ai_core.image import resample_mask
    from ai_core.segmentation.base import STATUS_NOT_ASSESSABLE, STATUS_OK

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise VolumeError(f"cannot read the mask {path}: {str(exc).strip()[:200]}") from exc
    mask = resample_mask(image, working.grid, interpolation="linear")
    if not mask.any():
        return SegmentationResult(
            mask,
            None,
            STATUS_NOT_ASSESSABLE,
            f"the reference mask {path.name} is empty on this series",
            "reference-mask",
            path.name,
        )
    return SegmentationResult(
        mask, None, STATUS_OK, f"reference mask {path.name}", "reference-mask", path.name
    )
