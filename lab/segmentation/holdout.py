"""Held-out Dice of a segmentation model folder on a ``ki67node synth`` cohort.

Each case is read as the node reads a study (DICOM series, :func:`preprocess`
at 1 mm), its true mask resampled onto the same grid; the backend segments it
with its post-processing, and Dice, status and volumes are recorded. Used by
``python -m lab.segmentation.train --holdout`` and the tests; the full
benchmark by size, site, head and vendor is ``bench/segmentation``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ai_core.segmentation.unet import UNetBackend

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Case:
    case_id: str
    image: np.ndarray  # preprocessed 1 mm [0, 255], source orientation
    mask: np.ndarray  # uint8 on the same grid
    spacing: tuple[float, float, float]
    direction: np.ndarray


def load_case(cohort: Path, row: dict[str, str]) -> Case:
    """One case's preprocessed T1C and its true mask on the same 1 mm grid."""
    import SimpleITK as sitk

    from ai_core.image import Grid
    from ai_core.preprocess import preprocess
    from ai_core.volume import load_series

    case_id = row["case_id"]
    series_dir = cohort / case_id / row["series_number"]
    volume = load_series(sorted(series_dir.glob("*.dcm")))
    pre = preprocess(volume)
    mask_img = sitk.Cast(
        sitk.ReadImage(str(cohort / "masks" / f"{case_id}.nii.gz")), sitk.sitkFloat32
    )
    ref = pre.grid.blank(sitk.sitkFloat32)
    on_grid = sitk.Resample(mask_img, ref, sitk.Transform(), sitk.sitkLinear, 0.0)
    mask = (sitk.GetArrayFromImage(on_grid) >= 0.5).astype(np.uint8)
    grid: Grid = pre.grid
    return Case(case_id, pre.image, mask, grid.spacing, np.asarray(grid.direction))


def read_rows(cohort: Path) -> list[dict[str, str]]:
    path = cohort / "ground_truth.csv"
    if not path.is_file():
        raise SystemExit(f"{path} not found: is {cohort} a finished `ki67node synth` cohort?")
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def load_cohort(cohort: Path, limit: int = 0) -> Iterator[Case]:
    rows = read_rows(cohort)
    for row in rows[:limit] if limit else rows:
        yield load_case(cohort, row)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * float(np.logical_and(a, b).sum()) / denom


def evaluate(model_dir: Path, cases: Sequence[Case], device: str = "auto") -> list[dict[str, Any]]:
    """Dice of the backend (with post-processing) against the true masks at 1 mm."""
    backend = UNetBackend(model_dir, device=device)
    out = []
    for case in cases:
        result = backend.segment(case.image, case.spacing, direction=case.direction)
        voxel_ml = float(np.prod(case.spacing)) / 1000.0
        out.append(
            {
                "case_id": case.case_id,
                "dice": round(dice(result.mask_zyx, case.mask), 4),
                "status": result.status,
                "true_ml": round(float(case.mask.sum()) * voxel_ml, 2),
                "predicted_ml": round(float(result.mask_zyx.sum()) * voxel_ml, 2),
            }
        )
        log.info("held-out %s: %s", case.case_id, out[-1])
    return out
