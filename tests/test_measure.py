"""ai_core.measure: volume, exact Feret diameter, centroid, side and location."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from scipy.spatial.transform import Rotation

from ai_core.measure import measure, surface_points
from lab.synth import generate_cohort

GRID_ROTATION = Rotation.from_euler("xyz", [25.0, -10.0, 35.0], degrees=True).as_matrix()
SHAPE_ROTATION = Rotation.from_euler("zyx", [40.0, 15.0, -20.0], degrees=True).as_matrix()
SPACING = (0.9, 1.2, 1.6)  # x, y, z: anisotropic
ORIGIN = (-30.0, 20.0, -45.0)
SYNTH_SEED = 11


def _affine(
    shape_spacing: tuple[float, float, float], direction: np.ndarray, origin: Any
) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = direction * np.asarray(shape_spacing)
    out[:3, 3] = origin
    return out


def _centres(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """LPS mm of every voxel centre, array [z, y, x, 3]."""
    z, y, x = np.indices(shape)
    xyz = np.stack([x, y, z], axis=-1).astype(float)
    return xyz @ affine[:3, :3].T + affine[:3, 3]


def _ellipsoid(
    shape: tuple[int, int, int],
    affine: np.ndarray,
    centre: np.ndarray,
    radii: tuple[float, float, float],
) -> np.ndarray:
    local = (_centres(shape, affine) - centre) @ SHAPE_ROTATION  # coordinates in the shape's axes
    return (((local / np.asarray(radii)) ** 2).sum(axis=-1) <= 1.0).astype(np.uint8)


@pytest.mark.parametrize(
    "radii",
    [(12.0, 12.0, 12.0), (22.0, 15.0, 9.0)],
    ids=["sphere", "ellipsoid"],
)
def test_volume_and_feret_of_analytic_shapes(radii: tuple[float, float, float]) -> None:
    shape = (40, 50, 60)
    affine = _affine(SPACING, GRID_ROTATION, ORIGIN)
    centre = affine[:3, :3] @ np.array([30.2, 24.7, 19.4]) + affine[:3, 3]
    mask = _ellipsoid(shape, affine, centre, radii)
    result = measure(mask, SPACING, GRID_ROTATION, ORIGIN)
    true_volume = 4.0 / 3.0 * np.pi * np.prod(radii) / 1000.0
    assert result.volume_cm3 == pytest.approx(true_volume, rel=0.02)
    assert abs(result.max_diameter_mm - 2.0 * max(radii)) <= max(SPACING)
    assert result.centroid_lps_mm == pytest.approx(tuple(centre), abs=0.3)
    assert result.components == 1
    assert result.voxels == int(mask.sum())
    assert (result.location, result.side) == ("unknown", "unknown")


def test_feret_of_a_box_is_its_space_diagonal() -> None:
    """Face centres of a voxel box: the diagonal between the far faces' extreme centres."""
    mask = np.zeros((6, 7, 8), dtype=bool)
    mask[1:5, 2:5, 1:7] = True  # 4 × 3 × 6 voxels
    spacing = (1.5, 1.0, 2.0)
    result = measure(mask, spacing, np.eye(3), (0.0, 0.0, 0.0))
    # extreme surface points: face centres half a voxel inside each edge, except along the face normal
    ex, ey, ez = 6 * 1.5, 3 * 1.0, 4 * 2.0
    candidates = [
        np.sqrt(ex**2 + (ey - 1.0) ** 2 + (ez - 2.0) ** 2),
        np.sqrt((ex - 1.5) ** 2 + ey**2 + (ez - 2.0) ** 2),
        np.sqrt((ex - 1.5) ** 2 + (ey - 1.0) ** 2 + ez**2),
    ]
    assert result.max_diameter_mm == pytest.approx(max(candidates))
    assert result.volume_cm3 == pytest.approx(72 * 3.0 / 1000.0)


def test_single_voxel_and_empty_masks() -> None:
    empty = measure(np.zeros((3, 3, 3)), (1.0, 1.0, 1.0), np.eye(3), (0.0, 0.0, 0.0))
    assert (empty.volume_cm3, empty.max_diameter_mm, empty.components) == (0.0, 0.0, 0)
    assert empty.centroid_lps_mm is None and empty.location == "unknown"
    one = np.zeros((3, 3, 3))
    one[1, 1, 1] = 1
    single = measure(one, (2.0, 2.0, 2.0), np.eye(3), (10.0, 0.0, 0.0))
    assert single.max_diameter_mm == pytest.approx(2.0)
    assert single.centroid_lps_mm == pytest.approx((12.0, 2.0, 2.0))
    assert len(surface_points(one != 0)) == 6


def test_components_are_counted() -> None:
    mask = np.zeros((10, 10, 10), dtype=np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    mask[6:9, 6:9, 6:9] = 1
    mask[3, 3, 3] = 1  # touches the first blob by a corner: same component (26-connected)
    assert measure(mask, (1.0, 1.0, 1.0), np.eye(3), (0.0, 0.0, 0.0)).components == 2


def _head(shape: tuple[int, int, int]) -> np.ndarray:
    """An ellipsoidal head on a 2 mm axial LPS grid centred at x = 0, vertex at z = +80."""
    centres = _centres(shape, _affine(HEAD_SPACING, np.eye(3), HEAD_ORIGIN))
    radii = np.array([70.0, 90.0, 100.0])
    return ((((centres - np.array([0.0, 0.0, -20.0])) / radii) ** 2).sum(-1) <= 1.0).astype(
        np.uint8
    )


HEAD_SHAPE = (100, 95, 75)  # z, y, x
HEAD_SPACING = (2.0, 2.0, 2.0)
HEAD_ORIGIN = (-75.0, -95.0, -120.0)


@pytest.mark.parametrize(
    ("centre", "location", "side"),
    [
        ((55.0, 0.0, 20.0), "convexity", "left"),
        ((-55.0, -10.0, 30.0), "convexity", "right"),
        ((-12.0, 0.0, 40.0), "falx", "right"),
        ((2.0, 30.0, -45.0), "skull_base", "midline"),
    ],
    ids=["convexity-left", "convexity-right", "falx-right", "skull-base-midline"],
)
def test_location_and_side_from_the_head_mask(
    centre: tuple[float, float, float], location: str, side: str
) -> None:
    head = _head(HEAD_SHAPE)
    affine = _affine(HEAD_SPACING, np.eye(3), HEAD_ORIGIN)
    tumour = np.linalg.norm(_centres(HEAD_SHAPE, affine) - np.asarray(centre), axis=-1) <= 8.0
    result = measure(tumour.astype(np.uint8), HEAD_SPACING, np.eye(3), HEAD_ORIGIN, head_mask=head)
    assert (result.location, result.side) == (location, side)


def test_head_mask_on_another_grid_is_refused() -> None:
    with pytest.raises(ValueError, match="both must be on the same grid"):
        measure(
            np.ones((4, 4, 4)),
            (1.0, 1.0, 1.0),
            np.eye(3),
            (0.0, 0.0, 0.0),
            head_mask=np.ones((4, 4, 5)),
        )


# -- against the generator's ground truth -----------------------------------------
@pytest.fixture(scope="module")
def synth_case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("synth")
    generate_cohort(out, cases=1, seed=SYNTH_SEED, size="small", progress=False)
    with open(out / "ground_truth.csv", newline="", encoding="utf-8") as fh:
        row = next(csv.DictReader(fh))
    return {"root": out, "row": row}


def _nifti_mask(
    path: Path,
) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, tuple[float, float, float]]:
    import nibabel as nib

    img = nib.load(path)
    assert isinstance(img, nib.Nifti1Image)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine  # NIfTI is RAS; [i, j, k] = [x, y, z]
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    mask = np.asarray(img.dataobj).transpose(2, 1, 0)
    return (
        mask,
        (float(spacing[0]), float(spacing[1]), float(spacing[2])),
        lps[:3, :3] / spacing,
        (float(lps[0, 3]), float(lps[1, 3]), float(lps[2, 3])),
    )


def test_against_the_generator_ground_truth(synth_case: dict[str, Any]) -> None:
    row = synth_case["row"]
    mask, spacing, direction, origin = _nifti_mask(
        synth_case["root"] / "masks" / f"{row['case_id']}.nii.gz"
    )
    result = measure(mask, spacing, direction, origin)
    assert result.volume_cm3 == pytest.approx(float(row["mask_volume_cm3"]), rel=0.005)
    assert result.volume_cm3 == pytest.approx(float(row["volume_cm3"]), rel=0.12)
    assert abs(result.max_diameter_mm - float(row["max_diameter_mm"])) <= max(spacing)


@pytest.mark.slow
def test_location_on_a_preprocessed_synthetic_case(synth_case: dict[str, Any]) -> None:
    from ai_core.image import array_to_sitk, resample_mask
    from ai_core.preprocess import preprocess
    from ai_core.volume import load_series

    root, row = synth_case["root"], synth_case["row"]
    paths = sorted((root / row["case_id"] / row["series_number"]).glob("*.dcm"))
    assert pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID == row["series_uid"]
    pre = preprocess(load_series(paths))
    mask, spacing, direction, origin = _nifti_mask(root / "masks" / f"{row['case_id']}.nii.gz")
    native = array_to_sitk(mask.astype(np.uint8), spacing, origin, direction)
    on_grid = resample_mask(native, pre.grid, interpolation="linear")
    grid = pre.grid
    result = measure(on_grid, grid.spacing, grid.direction, grid.origin, head_mask=pre.head_mask)
    assert (result.location, result.side) == (row["location"], row["side"])
    assert result.volume_cm3 == pytest.approx(float(row["mask_volume_cm3"]), rel=0.03)
    assert abs(result.max_diameter_mm - float(row["max_diameter_mm"])) <= max(spacing)
