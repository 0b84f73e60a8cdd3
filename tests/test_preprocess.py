"""ai_core.preprocess: 1 mm grid, head mask, N4, [0, 255] scaling, parameters as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ai_core.errors import VolumeError
from ai_core.image import Grid
from ai_core.preprocess import PreprocessParams, preprocess, working_grid
from ai_core.volume import Volume, load_series
from tests.factories import make_mr_series, write_series

ROTATION = Rotation.from_euler("xyz", [12.0, -7.0, 20.0], degrees=True).as_matrix()
FAST = PreprocessParams(n4_shrink_factor=2, n4_iterations=(20, 10))


def _volume(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    direction: np.ndarray,
    *,
    bias: float = 0.0,
    seed: int = 0,
) -> Volume:
    """A head-like phantom: a bright ellipsoid with a brighter core on noise, optional bias."""
    z, y, x = np.indices(shape).astype(np.float64)
    centre = [(n - 1) / 2.0 for n in shape]
    r2 = sum(((a - c) / (0.42 * n)) ** 2 for a, c, n in zip((z, y, x), centre, shape, strict=True))
    rng = np.random.default_rng(seed)
    image = np.where(r2 < 1.0, 600.0, 0.0) + np.where(r2 < 0.5, 300.0, 0.0)
    image += rng.normal(0.0, 10.0, shape)
    image *= np.exp(bias * (x - centre[2]) / shape[2] + bias * (z - centre[0]) / shape[0])
    array = np.clip(image, 0, 4095).astype(np.uint16)
    return Volume(array, spacing, (-40.0, 12.0, -30.0), direction, None, (), (), False)


def _inner_cv(pre: Any) -> float:
    """Coefficient of variation of the phantom's bright core (flat without a bias field)."""
    z, y, x = np.indices(pre.image.shape)
    centre = [(n - 1) / 2.0 for n in pre.image.shape]
    r2 = sum(
        ((a - c) / (0.42 * n)) ** 2
        for a, c, n in zip((z, y, x), centre, pre.image.shape, strict=True)
    )
    values = pre.image[r2 < 0.35]
    return float(values.std() / values.mean())


def test_params_json_round_trip() -> None:
    params = PreprocessParams(
        target_spacing_mm=1.5, n4=False, n4_iterations=(10, 5), percentiles=(1.0, 99.0)
    )
    text = params.to_json()
    assert json.loads(text)["n4_iterations"] == [10, 5]
    again = PreprocessParams.from_json(text)
    assert again == params
    assert hash(again) == hash(params)


def test_unknown_parameter_is_refused_by_name() -> None:
    data = PreprocessParams().to_dict() | {"n4_shrink": 2}
    with pytest.raises(ValueError, match="unknown preprocessing parameter.*n4_shrink"):
        PreprocessParams.from_dict(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target_spacing_mm": 0.0}, "target_spacing_mm"),
        ({"n4_shrink_factor": 2.5}, "n4_shrink_factor must be an integer"),
        ({"n4_shrink_factor": 0}, "n4_shrink_factor must be 1 to 16"),
        ({"n4_iterations": []}, "n4_iterations"),
        ({"n4_iterations": [10, -1]}, "n4_iterations"),
        ({"percentiles": [99.5, 0.5]}, "percentiles"),
        ({"output_range": [255, 0]}, "output_range"),
        ({"n4_convergence_threshold": 0}, "n4_convergence_threshold"),
    ],
    ids=[
        "spacing",
        "shrink-float",
        "shrink-zero",
        "iterations-empty",
        "iterations-negative",
        "percentiles-reversed",
        "range-reversed",
        "convergence",
    ],
)
def test_bad_parameters_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PreprocessParams.from_dict(PreprocessParams().to_dict() | change)


@pytest.mark.parametrize(
    ("spacing", "direction"),
    [((1.2, 0.9, 1.5), np.eye(3)), ((0.8, 1.1, 1.3), ROTATION)],
    ids=["axial-anisotropic", "oblique-anisotropic"],
)
def test_output_grid_range_and_extent(
    spacing: tuple[float, float, float], direction: np.ndarray
) -> None:
    volume = _volume((30, 40, 36), spacing, direction)
    pre = preprocess(volume, FAST)
    assert pre.grid.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_allclose(pre.grid.direction, direction, atol=1e-9)
    assert pre.image.dtype == np.float32
    assert pre.image.shape == pre.grid.shape == pre.head_mask.shape
    assert float(pre.image.min()) >= 0.0 and float(pre.image.max()) <= 255.0
    assert float(pre.image.max()) == pytest.approx(255.0)
    # the physical extent (voxel edges, along each source axis) is kept within one voxel
    src_extent = np.asarray(volume.shape[::-1]) * np.asarray(spacing)
    out_extent = np.asarray(pre.grid.shape[::-1]) * 1.0
    assert np.all(np.abs(out_extent - src_extent) <= 1.0)
    first_edge_src = np.asarray(volume.origin) - direction @ (np.asarray(spacing) / 2)
    first_edge_out = np.asarray(pre.grid.origin) - direction @ np.full(3, 0.5)
    np.testing.assert_allclose(first_edge_out, first_edge_src, atol=1e-6)
    assert pre.source.shape == volume.shape
    assert 0.3 < np.count_nonzero(pre.head_mask) / pre.head_mask.size < 0.6
    assert set(pre.timings_s) == {"resample", "head_mask", "n4", "scale", "total"}
    # the same mapping without the upper clip: equal below the top, brighter above it
    top = pre.image >= 255.0
    assert pre.image_unclipped.dtype == np.float32 and top.any()
    np.testing.assert_array_equal(pre.image_unclipped[~top], pre.image[~top])
    assert float(pre.image_unclipped[top].min()) >= 255.0
    assert float(pre.image_unclipped.max()) > 255.0


def test_preprocessing_a_dicom_series(tmp_path: Path) -> None:
    datasets = make_mr_series(
        orientation="sag", n_slices=24, rows=40, cols=40, spacing=(1.2, 1.2, 1.5)
    )
    volume = load_series(write_series(datasets, tmp_path / "t1c"))
    pre = preprocess(volume, FAST)
    assert pre.grid.shape == (36, 48, 48)
    np.testing.assert_allclose(pre.grid.direction, volume.direction)
    assert pre.to_sitk().GetSpacing() == (1.0, 1.0, 1.0)
    assert pre.head_mask_sitk().GetSize() == (48, 48, 36)
    on_source = pre.mask_to_source(pre.head_mask)
    assert on_source.shape == volume.shape and on_source.dtype == np.uint8
    core = volume.array > np.percentile(volume.array, 98)  # the blob's core is inside the "head"
    assert np.all(on_source[core] == 1)
    source_mm3 = np.count_nonzero(on_source) * float(np.prod(volume.spacing))
    assert source_mm3 == pytest.approx(float(np.count_nonzero(pre.head_mask)), rel=0.05)


def test_n4_reduces_a_multiplicative_bias_field() -> None:
    flat = preprocess(_volume((48, 48, 48), (1.0, 1.0, 1.0), np.eye(3)), PreprocessParams(n4=False))
    volume = _volume((48, 48, 48), (1.0, 1.0, 1.0), np.eye(3), bias=0.8)
    without = preprocess(volume, PreprocessParams(n4=False))
    with_n4 = preprocess(volume, PreprocessParams(n4_shrink_factor=2, n4_iterations=(30, 20, 10)))
    reference = _inner_cv(flat)  # noise only
    assert _inner_cv(without) > reference + 0.08
    # N4 takes away most of the variation the field added (about two thirds here)
    assert _inner_cv(with_n4) - reference < 0.5 * (_inner_cv(without) - reference)
    assert with_n4.timings_s["n4"] > 0.0 == without.timings_s["n4"]


def test_preprocessing_is_deterministic() -> None:
    volume = _volume((30, 36, 32), (1.1, 1.0, 1.4), ROTATION, bias=0.5, seed=3)
    first, second = preprocess(volume, FAST), preprocess(volume, FAST)
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_array_equal(first.head_mask, second.head_mask)
    assert first.intensity_window == second.intensity_window


def test_flat_image_is_refused() -> None:
    array = np.full((8, 10, 12), 100, dtype=np.uint16)
    volume = Volume(array, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), None, (), (), False)
    with pytest.raises(VolumeError, match="flat|no head"):
        preprocess(volume, PreprocessParams(n4=False, n4_shrink_factor=1))


def test_oversized_working_grid_is_refused() -> None:
    source = Grid((500, 500, 500), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    with pytest.raises(VolumeError, match="check the series' PixelSpacing"):
        working_grid(source, 1.0)
