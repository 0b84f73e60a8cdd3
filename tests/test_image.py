"""ai_core.image: SimpleITK round trips keep pixels and patient geometry exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from scipy.spatial.transform import Rotation

from ai_core.image import Grid, array_to_sitk, from_sitk, mask_to_sitk, resample_mask, to_sitk
from ai_core.volume import Volume, load_series
from tests.factories import make_mr_series, write_series

OBLIQUE_ROTATION = Rotation.from_euler("xyz", [17.0, -9.0, 23.0], degrees=True).as_matrix()


def _rotate(datasets: list[Dataset], rotation: np.ndarray) -> None:
    """Turn the whole series rigidly about the patient origin (an oblique acquisition)."""
    for ds in datasets:
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        row, col = rotation @ iop[:3], rotation @ iop[3:]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row, *col)]
        ds.ImagePositionPatient = [
            round(float(v), 6) for v in rotation @ np.asarray(ds.ImagePositionPatient, float)
        ]


def _series(
    tmp_path: Path, orientation: str, *, enhanced: bool = False, oblique: bool = False
) -> Volume:
    datasets = make_mr_series(
        orientation=orientation,
        n_slices=12,
        rows=20,
        cols=24,
        spacing=(0.9, 1.1, 1.3),
        enhanced=enhanced,
    )
    if oblique:
        _rotate(datasets, OBLIQUE_ROTATION)
    return load_series(write_series(datasets, tmp_path / "series"))


CASES = [
    ("sag", False, False),
    ("axial", False, False),
    ("coronal", False, False),
    ("sag", False, True),
    ("sag", True, False),
]


@pytest.mark.parametrize(
    ("orientation", "enhanced", "oblique"),
    CASES,
    ids=["sagittal", "axial", "coronal", "oblique", "enhanced-sagittal"],
)
def test_round_trip_keeps_pixels_and_geometry(
    tmp_path: Path, orientation: str, enhanced: bool, oblique: bool
) -> None:
    volume = _series(tmp_path, orientation, enhanced=enhanced, oblique=oblique)
    if oblique:
        assert volume.plane() == "oblique"
    img = to_sitk(volume)
    assert img.GetSize() == volume.shape[::-1]
    affine = volume.affine()
    for index in [(0, 0, 0), (23, 0, 0), (0, 19, 0), (0, 0, 11), (23, 19, 11)]:
        expected = affine @ np.array([*index, 1.0])
        assert np.allclose(img.TransformIndexToPhysicalPoint(index), expected[:3], atol=1e-6)
    back = from_sitk(img)
    assert back.array.dtype == volume.array.dtype
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.spacing == pytest.approx(volume.spacing, abs=1e-9)
    assert back.origin == pytest.approx(volume.origin, abs=1e-9)
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-12)


def test_to_sitk_converts_dtype_on_request(tmp_path: Path) -> None:
    volume = _series(tmp_path, "axial")
    img = to_sitk(volume, dtype=np.float32)
    assert img.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(img), volume.array.astype(np.float32))


def _ball(grid: Grid, centre: np.ndarray, radius: float) -> np.ndarray:
    z, y, x = np.indices(grid.shape)
    idx = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1).astype(float)
    pts = idx @ (grid.direction * np.asarray(grid.spacing)).T + np.asarray(grid.origin)
    inside = np.linalg.norm(pts - centre, axis=1) <= radius
    return inside.reshape(grid.shape).astype(np.uint8)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.mark.parametrize("interpolation", ["nearest", "linear"], ids=["nearest", "linear"])
def test_mask_goes_back_to_the_source_slices(interpolation: str) -> None:
    """A ball drawn on a 1 mm oblique grid lands on the thick-slice source grid where it is."""
    direction = OBLIQUE_ROTATION
    source = Grid((24, 40, 36), (0.8, 0.9, 2.0), (-10.0, 5.0, -20.0), direction)
    centre = np.asarray(source.origin) + direction @ (np.array([18.0, 20.0, 12.0]) * source.spacing)
    working = Grid((48, 36, 29), (1.0, 1.0, 1.0), source.origin, direction)
    mask_1mm = mask_to_sitk(_ball(working, centre, 9.0), working)
    on_source = resample_mask(mask_1mm, source, interpolation=interpolation)  # type: ignore[arg-type]
    truth = _ball(source, centre, 9.0).astype(bool)
    assert on_source.shape == source.shape
    assert on_source.dtype == np.uint8
    assert _dice(on_source.astype(bool), truth) > 0.9
    volume_error = abs(np.count_nonzero(on_source) - np.count_nonzero(truth)) / np.count_nonzero(
        truth
    )
    assert volume_error < 0.08


def test_resampling_onto_the_same_grid_is_the_identity() -> None:
    grid = Grid((10, 12, 14), (0.7, 1.2, 1.9), (3.0, -4.0, 5.0), OBLIQUE_ROTATION)
    mask = _ball(grid, np.asarray(grid.origin) + OBLIQUE_ROTATION @ np.array([8.0, 7.0, 9.0]), 5.0)
    np.testing.assert_array_equal(resample_mask(mask_to_sitk(mask, grid), grid), mask)


def test_grid_of_image_matches_the_volume(tmp_path: Path) -> None:
    volume = _series(tmp_path, "sag", oblique=True)
    grid = Grid.of(to_sitk(volume))
    assert grid.shape == volume.shape
    np.testing.assert_allclose(grid.affine(), volume.affine(), atol=1e-9)


def test_mask_of_another_shape_is_refused() -> None:
    grid = Grid((4, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    with pytest.raises(ValueError, match=r"differs from the reference grid \(4, 5, 6\)"):
        mask_to_sitk(np.zeros((4, 5, 7), dtype=np.uint8), grid)


@pytest.mark.parametrize(
    ("direction", "spacing", "message"),
    [
        (np.diag([1.0, 1.0, 2.0]), (1.0, 1.0, 1.0), "not orthonormal"),
        (np.eye(3), (1.0, 0.0, 1.0), "spacing must be positive"),
    ],
    ids=["scaled-direction", "zero-spacing"],
)
def test_bad_geometry_is_refused(
    direction: np.ndarray, spacing: tuple[float, float, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        array_to_sitk(np.zeros((2, 2, 2), dtype=np.uint8), spacing, (0.0, 0.0, 0.0), direction)


def test_unknown_interpolation_is_refused() -> None:
    grid = Grid((2, 2, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    with pytest.raises(ValueError, match="interpolation must be 'nearest' or 'linear'"):
        resample_mask(grid.blank(), grid, interpolation="cubic")  # type: ignore[arg-type]
