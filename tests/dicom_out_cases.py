"""Output contexts for the dicom_out tests: a real source series (vendor
profile, orientation, classic or Enhanced MR), the real image pipeline and
the bundled model's real prediction with Grad-CAM.

Only the segmentation is a test double (a threshold on the bright blob that
:func:`tests.factories.blob_pixels` draws), so the builders are tested on an
exactly known mask; the bundled network is tested in test_segmentation.py.
Stable API for every dicom_out test module:

- :func:`make_context` — one :class:`~dicom_out.context.OutputContext`.
- :func:`variant_context` — the same for a :data:`VARIANTS` case, shared by the modules.
- :func:`dciodvfy` — run dicom3tools' validator on a written file; return its errors.
- :data:`VARIANTS` — (vendor, orientation, enhanced) cases with readable ids.
"""

from __future__ import annotations

import datetime as dt
import functools
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from ai_core.analysis import AnalysisOptions, ImageAnalysis, analyse_series
from ai_core.model.inputs import Characteristics
from ai_core.segmentation.base import (
    STATUS_NOT_ASSESSABLE,
    STATUS_OK,
    SegmentationBackend,
    SegmentationResult,
)
from ai_core.volume import load_series
from dicom_out.context import OutputContext, Predecessor
from tests.factories import MAX_PIXEL, make_mr_series, write_series

VARIANTS = [
    pytest.param("siemens", "sag", False, id="siemens-sag"),
    pytest.param("ge", "axial", False, id="ge-axial"),
    pytest.param("philips", "sag", False, id="philips-sag"),
    pytest.param("siemens", "axial", True, id="siemens-axial-enhanced"),
    pytest.param("philips", "sag", True, id="philips-sag-enhanced"),
]


def lesion_pixels(z: int, rows: int, cols: int, n_slices: int) -> np.ndarray:
    """A dim head-sized ellipse with a bright off-centre sphere (the 'tumour')."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    zc = (z - (n_slices - 1) / 2.0) / (n_slices / 2.0)
    head = ((yy - rows / 2) / (rows * 0.45)) ** 2 + ((xx - cols / 2) / (cols * 0.45)) ** 2 + zc**2
    image = np.where(head < 1.0, 500.0, 20.0)
    r = min(rows, cols, n_slices) * 0.18
    tumour = (yy - rows * 0.4) ** 2 + (xx - cols * 0.6) ** 2 + (z - n_slices * 0.55) ** 2
    image = np.where(tumour < r * r, 1800.0, image)
    rng = np.random.default_rng(z)
    image = image + rng.normal(0.0, 15.0, image.shape)
    return np.clip(image, 0, MAX_PIXEL).astype(np.uint16)


class BrightBlob(SegmentationBackend):
    """Test double: the voxels brighter than 80 % of the maximum (the sphere)."""

    name = "test-threshold"
    version = "1"

    def __init__(self, empty: bool = False) -> None:
        self.empty = empty

    def segment(self, image_zyx, spacing, *, direction=None):
        mask = (image_zyx > 0.8 * float(image_zyx.max())).astype(np.uint8)
        if self.empty or not mask.any():
            none = np.zeros(image_zyx.shape, np.uint8)
            return SegmentationResult(
                none, None, STATUS_NOT_ASSESSABLE, "no lesion found", "t", "1"
            )
        return SegmentationResult(mask, None, STATUS_OK, "threshold", self.name, self.version)


@functools.lru_cache(maxsize=1)
def _predictor():
    from ai_core.model.predict import Predictor

    return Predictor(None, device="cpu")


def make_context(
    tmp_path: Path,
    vendor: str = "siemens",
    orientation: str = "sag",
    enhanced: bool = False,
    *,
    n_slices: int = 48,
    rows: int = 64,
    cols: int = 64,
    assessable: bool = True,
    characteristics: Characteristics | None = None,
    job_key: str = "test-series/r0",
    predecessor: Predecessor | None = None,
) -> OutputContext:
    """Write a series to ``tmp_path``, run the image pipeline and the bundled model on it."""
    datasets = make_mr_series(
        vendor,
        "t1c_mprage",
        orientation=orientation,
        n_slices=n_slices,
        rows=rows,
        cols=cols,
        enhanced=enhanced,
        pixel_fn=lambda z, r, c: lesion_pixels(z, r, c, n_slices),
        spacing=(1.0, 1.0, 1.0),
    )
    paths = write_series(datasets, tmp_path / f"src-{vendor}-{orientation}-{int(enhanced)}")
    volume = load_series(paths)
    analysis: ImageAnalysis = analyse_series(
        volume, BrightBlob(empty=not assessable), options=AnalysisOptions(radiomics=False)
    )
    prediction = None
    if analysis.ok:
        prediction = _predictor().predict(
            analysis, characteristics or Characteristics(), explain=True, use_radiomics=False
        )
    import pydicom

    source = tuple(pydicom.dcmread(p) for p in paths)
    return OutputContext(
        source=source,
        volume=volume,
        analysis=analysis,
        prediction=prediction,
        job_key=job_key,
        software_version="0.1.0-test",
        created=dt.datetime(2026, 1, 2, 3, 4, 5),
        characteristics_source="radiologist" if characteristics else "not provided",
        predecessor=predecessor,
    )


_VARIANT_CONTEXTS: dict[tuple[str, str, bool], OutputContext] = {}


def variant_context(
    tmp_path_factory: pytest.TempPathFactory, vendor: str, orientation: str, enhanced: bool
) -> OutputContext:
    """:func:`make_context` with the defaults for one of :data:`VARIANTS`, made once per
    test process: the SEG, SC, SR and build tests share it and only read it (the image
    pipeline and the model with Grad-CAM cost seconds per call)."""
    key = (vendor, orientation, enhanced)
    if key not in _VARIANT_CONTEXTS:
        folder = tmp_path_factory.mktemp(f"{vendor}-{orientation}-{int(enhanced)}")
        _VARIANT_CONTEXTS[key] = make_context(folder, vendor, orientation, enhanced)
    return _VARIANT_CONTEXTS[key]


def dciodvfy(ds: Dataset, folder: Path) -> list[str]:
    """Write ``ds`` and validate it with dicom3tools' ``dciodvfy``; return the 'Error' lines."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        from tests.conftest import require_tool

        tool = require_tool("dciodvfy")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    out = subprocess.run([tool, "-new", str(path)], capture_output=True, text=True, timeout=120)
    lines = (out.stdout + out.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]
