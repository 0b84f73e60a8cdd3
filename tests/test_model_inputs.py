"""The model's inputs: tumour-centred crop geometry, characteristics, manifests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ai_core.errors import EvaluationError, ModelError
from ai_core.image import Grid
from ai_core.model.inputs import (
    Characteristics,
    CropParams,
    crop_source,
    crop_to_grid,
    parse_bool,
    tumour_crop,
)
from lab.model.cases import read_manifest, read_manifests

AXIAL = np.eye(3)
# sagittal slices: columns run anterior->posterior, rows superior->inferior, slices right->left
SAGITTAL = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _sphere_on(grid: Grid, centre_lps: np.ndarray, radius: float) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    idx = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1).astype(float)
    aff = grid.affine()
    lps = idx @ aff[:3, :3].T + aff[:3, 3]
    inside = np.linalg.norm(lps - centre_lps, axis=1) <= radius
    return inside.reshape(grid.shape).astype(np.uint8)


@pytest.mark.parametrize("direction", [AXIAL, SAGITTAL], ids=["axial", "sagittal"])
def test_crop_is_patient_aligned_and_centred(direction: np.ndarray) -> None:
    grid = Grid((60, 70, 80), (1.0, 1.0, 1.0), (-30.0, -20.0, 10.0), direction)
    aff = grid.affine()
    centre = aff[:3, :3] @ np.array([40.0, 35.0, 30.0]) + aff[:3, 3]
    # an asymmetric object: a sphere plus a bright blob to the patient's left (+x)
    mask = _sphere_on(grid, centre, 8.0)
    image = 100.0 * mask + 200.0 * _sphere_on(grid, centre + np.array([6.0, 0.0, 0.0]), 3.0)
    crop, geometry = tumour_crop(
        image.astype(np.float32), mask, grid, CropParams((32, 32, 32), 1.0)
    )
    assert crop.shape == (2, 32, 32, 32)
    # the tumour sits at the crop centre
    com = np.argwhere(crop[1] > 0.5).mean(axis=0)
    np.testing.assert_allclose(com, [15.5, 15.5, 15.5], atol=1.0)
    # crop x runs to the patient's left: the bright blob lies at larger x index
    hot = np.unravel_index(np.argmax(crop[0]), crop[0].shape)
    assert hot[2] > 15.5 + 3
    assert abs(hot[0] - 15.5) <= 2 and abs(hot[1] - 15.5) <= 2
    # the volume is kept (1 mm crop, 1 mm grid)
    assert abs(crop[1].sum() - mask.sum()) / mask.sum() < 0.08  # half-voxel resampling


def test_axial_and_sagittal_give_the_same_crop() -> None:
    crops = []
    for direction in (AXIAL, SAGITTAL):
        grid = Grid((64, 64, 64), (1.0, 1.0, 1.0), (-32.0, -32.0, -32.0), direction)
        aff = grid.affine()
        origin_centre = aff[:3, :3] @ np.array([31.5, 31.5, 31.5]) + aff[:3, 3]
        centre = origin_centre + np.array([3.0, -2.0, 1.0])
        mask = _sphere_on(grid, centre, 7.0)
        image = 50.0 * mask + 150.0 * _sphere_on(grid, centre + np.array([0.0, 0.0, 5.0]), 2.5)
        crops.append(
            tumour_crop(image.astype(np.float32), mask, grid, CropParams((24, 24, 24), 1.0))[0]
        )
    assert np.abs(crops[0] - crops[1]).mean() < 0.01


def test_map_on_crop_goes_back_onto_the_source_grid() -> None:
    grid = Grid((50, 50, 50), (1.2, 1.0, 1.0), (0.0, 0.0, 0.0), SAGITTAL)
    aff = grid.affine()
    centre = aff[:3, :3] @ np.array([20.0, 25.0, 30.0]) + aff[:3, 3]
    mask = _sphere_on(grid, centre, 10.0)
    crop, geometry = tumour_crop(
        mask.astype(np.float32), mask, grid, CropParams((32, 32, 32), 1.25)
    )
    back = crop_to_grid(crop[1], geometry, grid)
    assert back.shape == grid.shape
    overlap = ((back > 0.5) & (mask > 0)).sum() / mask.sum()
    assert overlap > 0.85
    np.testing.assert_allclose(
        np.argwhere(back > 0.5).mean(axis=0), np.argwhere(mask).mean(axis=0), atol=1.0
    )


def test_crop_of_an_empty_mask_is_refused() -> None:
    grid = Grid((8, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), AXIAL)
    zeros = np.zeros(grid.shape, np.uint8)
    with pytest.raises(ModelError, match="mask is empty"):
        tumour_crop(zeros.astype(np.float32), zeros, grid, CropParams((8, 8, 8), 1.0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": (2, 64, 64)}, "size"),
        ({"spacing_mm": 0.0}, "spacing_mm"),
        ({"intensity_scale": -1.0}, "intensity_scale"),
        ({"max_value": 0.5}, "max_value"),
        ({"max_value": float("nan")}, "max_value"),
    ],
    ids=["size", "spacing", "scale", "max-below-1", "max-nan"],
)
def test_crop_params_are_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        CropParams(**kwargs)


def test_crop_params_round_trip() -> None:
    p = CropParams((48, 56, 64), 1.5)
    assert CropParams.from_dict(p.to_dict()) == p
    # a bundle written before max_value read the clipped working image: it keeps doing so
    assert CropParams.from_dict({"size": [8, 8, 8]}).max_value == 1.0
    with pytest.raises(ModelError, match="unknown crop parameter"):
        CropParams.from_dict({"size": [8, 8, 8], "colour": 1})


def test_characteristics_encoding() -> None:
    values, known = Characteristics(edema_index=2.0, necrosis=True).encode()
    np.testing.assert_allclose(values, [np.log(2.0), 1.0, 0.0, 0.0], rtol=1e-6)
    assert known.tolist() == [True, True, False, False]
    assert not Characteristics().any_known
    with pytest.raises(ModelError, match="edema_index"):
        Characteristics(edema_index=0.5)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("yes", True),
        ("Present", True),
        ("0", False),
        ("absent", False),
        ("", None),
        ("unknown", None),
    ],
)
def test_parse_bool(text: str, value: bool | None) -> None:
    assert parse_bool(text, "necrosis") is value


def test_parse_bool_refuses_nonsense() -> None:
    with pytest.raises(ModelError, match="necrosis must be yes/no"):
        parse_bool("maybe", "necrosis")


def _manifest(tmp_path: Path, rows: list[str], header: str | None = None) -> Path:
    (tmp_path / "s1").mkdir(exist_ok=True)
    (tmp_path / "s2").mkdir(exist_ok=True)
    path = tmp_path / "m.csv"
    head = header or "case_id,series,ki67_index,necrosis,cohort"
    path.write_text("\n".join([head, *rows]) + "\n", encoding="utf-8")
    return path


def test_manifest_is_read(tmp_path: Path) -> None:
    path = _manifest(tmp_path, ["A,s1,7.5,yes,external", "B,s2,2,,"])
    a, b = read_manifest(path)
    assert (a.label, a.cohort, a.characteristics.necrosis) == (1, "external", True)
    assert (b.label, b.cohort, b.characteristics.necrosis) == (0, "development", None)
    assert a.series == (tmp_path / "s1").resolve()


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        (["A,s1,7.5,yes,"], "case_id,series,grade,necrosis,cohort", "ki67_index"),
        (["A,missing,7.5,yes,"], None, "does not exist"),
        (["A,s1,abc,yes,"], None, "ki67_index must be a number"),
        (["A,s1,7.5,yes,", "A,s2,1,no,"], None, "appears twice"),
        (["A,s1,7.5,perhaps,"], None, "necrosis must be yes/no"),
        (["A,s1,7.5,yes,mars"], None, "cohort must be one of"),
        ([], None, "no cases"),
    ],
    ids=[
        "no-label-column",
        "no-series",
        "bad-number",
        "duplicate",
        "bad-sign",
        "bad-cohort",
        "empty",
    ],
)
def test_manifest_errors_name_the_problem(
    tmp_path: Path, rows: list[str], header: str | None, message: str
) -> None:
    path = _manifest(tmp_path, rows, header)
    with pytest.raises(EvaluationError, match=message):
        read_manifest(path)


def test_manifests_with_the_same_case_are_refused(tmp_path: Path) -> None:
    path = _manifest(tmp_path, ["A,s1,7.5,yes,"])
    with pytest.raises(EvaluationError, match="is in both"):
        read_manifests([path, path])


def test_crop_keeps_the_texture_of_a_tumour_brighter_than_the_window() -> None:
    """Above the head's upper percentile the clipped working image is flat; the crop is not."""
    grid = Grid((40, 40, 40), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), AXIAL)
    mask = _sphere_on(grid, np.array([20.0, 20.0, 20.0]), 8.0)
    rng = np.random.default_rng(0)
    unclipped = np.where(mask > 0, 400.0 * (1 + 0.1 * rng.standard_normal(grid.shape)), 100.0)
    unclipped = unclipped.astype(np.float32)
    clipped = np.minimum(unclipped, np.float32(255.0))

    class Working:  # the two images of ai_core.preprocess.Preprocessed
        image, image_unclipped = clipped, unclipped

    new, old = CropParams((24, 24, 24), 1.0), CropParams((24, 24, 24), 1.0, max_value=1.0)
    assert crop_source(Working, new) is unclipped  # type: ignore[arg-type]
    assert crop_source(Working, old) is clipped  # type: ignore[arg-type]
    inside = slice(8, 16)
    fresh = tumour_crop(unclipped, mask, grid, new)[0][0, inside, inside, inside]
    flat = tumour_crop(clipped, mask, grid, old)[0][0, inside, inside, inside]
    assert float(flat.std()) < 0.01 and float(flat.max()) == pytest.approx(1.0)
    # white noise of CV 0.1, averaged by the half-voxel linear resampling
    assert 0.02 < float(fresh.std() / fresh.mean()) < 0.1
    # the crop is capped at max_value
    capped = tumour_crop(unclipped, mask, grid, CropParams((24, 24, 24), 1.0, max_value=1.5))
    assert float(capped[0][0].max()) == pytest.approx(1.5)
