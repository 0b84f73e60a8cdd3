"""The image pipeline's single entry point on a small synthetic study: load →
preprocess → segment → measure → radiomics, and the received-SEG path.

The segmentation backend here is a test double (a threshold on the known
tumour region) so the flow is tested independently of the trained weights;
the bundled network is tested in test_segmentation.py and bench/pipeline."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ai_core.analysis import AnalysisOptions, analyse_series
from ai_core.image import Grid, mask_to_sitk, resample_mask
from ai_core.segmentation.base import (
    STATUS_NOT_ASSESSABLE,
    STATUS_OK,
    SegmentationBackend,
    SegmentationResult,
)
from tests.test_segmentation import _seg_from_mask

pytestmark = pytest.mark.slow


class KnownMask(SegmentationBackend):
    """Returns a fixed mask (the generator's truth on the working grid)."""

    name = "test-double"
    version = "1"

    def __init__(self, mask: np.ndarray | None) -> None:
        self.mask = mask

    def segment(self, image_zyx, spacing, *, direction=None):  # type: ignore[no-untyped-def]
        if self.mask is None or not self.mask.any():
            empty = np.zeros(image_zyx.shape, np.uint8)
            return SegmentationResult(empty, None, STATUS_NOT_ASSESSABLE, "no lesion", "t", "1")
        return SegmentationResult(self.mask, None, STATUS_OK, "known", self.name, self.version)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory):
    from lab.synth import generate_cohort

    out = tmp_path_factory.mktemp("cohort") / "c"
    generate_cohort(out, cases=1, seed=23, size="small", progress=False)
    row = next(csv.DictReader((out / "ground_truth.csv").open()))
    for folder in sorted((out / row["case_id"]).iterdir()):
        files = sorted(folder.glob("*.dcm"))
        if files and str(pydicom.dcmread(files[0]).SeriesInstanceUID) == row["series_uid"]:
            return out, row, files
    raise AssertionError("T1C not found")


def _truth_on(grid: Grid, cohort: Path, case_id: str) -> np.ndarray:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(cohort / "masks" / f"{case_id}.nii.gz"))
    return resample_mask(img, grid, interpolation="nearest")


def test_full_pipeline_measures_the_true_tumour(case) -> None:
    cohort, row, files = case
    from ai_core.preprocess import preprocess
    from ai_core.volume import load_series

    volume = load_series(files)
    working_grid = preprocess(volume).grid
    truth = _truth_on(working_grid, cohort, row["case_id"])
    analysis = analyse_series(files, KnownMask(truth))
    assert analysis.ok, analysis.reason
    m = analysis.measurements
    assert m is not None
    assert m.volume_cm3 == pytest.approx(float(row["mask_volume_cm3"]), rel=0.1)
    assert m.max_diameter_mm == pytest.approx(float(row["max_diameter_mm"]), rel=0.15)
    assert m.location == row["location"] and m.side == row["side"]
    assert analysis.mask_source is not None
    assert analysis.mask_source.shape == analysis.volume.shape
    source_truth = _truth_on(Grid.of(analysis.volume), cohort, row["case_id"])
    overlap = np.logical_and(analysis.mask_source, source_truth).sum()
    assert 2 * overlap / (analysis.mask_source.sum() + source_truth.sum()) > 0.9
    assert analysis.radiomics is not None and len(analysis.radiomics.names) == 1218
    # the SR's volume is the delivered SEG's volume (what a viewer measures on it)
    source_ml = float(analysis.mask_source.sum()) * float(np.prod(analysis.volume.spacing)) / 1000
    assert m.volume_cm3 == pytest.approx(source_ml, rel=1e-9)
    assert m.voxels == int(analysis.mask_source.sum())
    summary = analysis.summary()
    assert summary["status"] == "ok" and summary["radiomics"]["features"] > 1000
    assert set(summary["timings"]) >= {"load", "preprocess", "segmentation", "measure", "radiomics"}


def test_no_lesion_is_not_assessable_not_a_guess(case) -> None:
    _, _, files = case
    analysis = analyse_series(files, KnownMask(None), options=AnalysisOptions(radiomics=False))
    assert not analysis.ok
    assert analysis.status == "not_assessable" and analysis.reason == "no lesion"
    assert analysis.measurements is None and analysis.mask_source is None


def test_received_seg_replaces_the_automatic_mask(case, tmp_path: Path) -> None:
    cohort, row, files = case
    source = [pydicom.dcmread(f) for f in files]
    from ai_core.volume import load_series

    volume = load_series(files)
    truth = _truth_on(Grid.of(volume), cohort, row["case_id"])
    order = {str(ds.SOPInstanceUID): ds for ds in source}
    ordered = [order[uid] for uid in volume.sop_instance_uids]
    seg = _seg_from_mask(ordered, truth)
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    analysis = analyse_series(
        files, KnownMask(None), options=AnalysisOptions(radiomics=False), received_seg=path
    )
    assert analysis.ok, analysis.reason
    assert analysis.segmentation.backend == "received-seg"
    assert analysis.measurements is not None
    assert analysis.measurements.volume_cm3 == pytest.approx(float(row["mask_volume_cm3"]), rel=0.1)
    # the working-grid mask came from the SEG, not from the (empty) backend
    back = resample_mask(
        mask_to_sitk(analysis.segmentation.mask_zyx, analysis.working.grid),
        Grid.of(volume),
        interpolation="nearest",
    )
    assert np.logical_and(back, truth).sum() > 0.8 * truth.sum()
