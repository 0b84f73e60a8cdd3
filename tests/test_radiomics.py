"""Radiomics: the 1218-feature set, analytic shapes, failures reported, standardisation."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ai_core import radiomics_features as rf
from ai_core.radiomics_features import (
    EXPECTED_FEATURE_COUNT,
    RadiomicsError,
    RadiomicsResult,
    crop_box,
    extract_radiomics,
    feature_names,
)
from ai_core.radiomics_standardiser import RadiomicsStandardiser

PER_IMAGE = 86  # 18 firstorder + 22 glcm + 16 glrlm + 16 glszm + 14 gldm
# The marching-cubes mesh of a voxelised surface has ~8 % more area than the smooth
# surface, so a voxelised sphere (r = 12 voxels) has a sphericity of ~0.93, not 1.
MESH_SPHERICITY = 0.925
SHAPE_ONLY_YAML = """\
setting:
  binWidth: 5.0
  label: 1
imageType:
  Original: {}
featureClass:
  shape: [MeshVolume, VoxelVolume, Sphericity, Maximum3DDiameter, MajorAxisLength,
          MinorAxisLength, LeastAxisLength, SurfaceArea]
"""


def _ellipsoid(
    semi_axes_xyz: tuple[float, float, float], spacing: tuple[float, float, float]
) -> np.ndarray:
    """Mask ``[z, y, x]`` of a centred solid ellipsoid in millimetres on a ``spacing`` grid."""
    axes = []
    for semi, step in zip(semi_axes_xyz, spacing, strict=True):
        n = int(math.ceil(semi / step)) + 3
        axes.append((np.arange(-n, n + 1) * step) / semi)
    x, y, z = axes
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    return (xx**2 + yy**2 + zz**2) <= 1.0


def _textured(mask: np.ndarray, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (100.0 + 80.0 * mask + rng.normal(0.0, 12.0, mask.shape)).clip(0, 255)


def _thomsen_area(a: float, b: float, c: float) -> float:
    """Ellipsoid surface area, Knud Thomsen's approximation (error < 1.1 %)."""
    p = 1.6075
    return 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)


@pytest.fixture
def shape_params(tmp_path: Path) -> Path:
    path = tmp_path / "shape.yaml"
    path.write_text(SHAPE_ONLY_YAML, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def synth_case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One small synthetic study: preprocessed-like T1C array, its true mask and truth row."""
    from ai_core.volume import load_series
    from lab.synth import generate_cohort

    nib = pytest.importorskip("nibabel")
    out = tmp_path_factory.mktemp("radiomics") / "cohort"
    generate_cohort(out, cases=1, seed=11, size="small", progress=False)
    with (out / "ground_truth.csv").open(newline="") as fh:
        rec = next(csv.DictReader(fh))
    files = sorted((out / rec["case_id"] / rec["series_number"]).glob("*"))
    vol = load_series(files)
    nii = nib.load(str(out / "masks" / f"{rec['case_id']}.nii.gz"))
    mask = np.asarray(nii.dataobj).transpose(2, 1, 0) > 0  # (col, row, slice) → [z, y, x]
    lps_origin = (np.diag([-1.0, -1.0, 1.0, 1.0]) @ nii.affine)[:3, 3]
    if not np.allclose(lps_origin, vol.origin, atol=1e-2):
        mask = mask[::-1]  # the volume sorted its slices the other way round
    image = vol.array.astype(np.float64)
    lo, hi = np.percentile(image, [0.5, 99.5])
    image = np.clip((image - lo) / (hi - lo), 0.0, 1.0) * 255.0
    return {"image": image, "mask": mask, "spacing": vol.spacing, "truth": rec}


@pytest.fixture(scope="module")
def synth_results(synth_case: dict[str, Any]) -> tuple[RadiomicsResult, RadiomicsResult]:
    args = (synth_case["image"], synth_case["mask"], synth_case["spacing"])
    return extract_radiomics(*args), extract_radiomics(*args)


def test_shipped_parameter_file_defines_1218_features() -> None:
    names = feature_names()
    assert len(names) == EXPECTED_FEATURE_COUNT == 1218
    assert len(set(names)) == len(names)
    shape = [n for n in names if "_shape_" in n]
    assert len(shape) == 14 and all(n.startswith("original_shape_") for n in shape)
    image_types = sorted({n.split("_", 1)[0] for n in names if "_shape_" not in n})
    assert len(image_types) == 14  # original + 5 LoG + 8 wavelet
    for image_type in image_types:
        assert (
            sum(n.startswith(image_type + "_") and "_shape_" not in n for n in names) == PER_IMAGE
        )
    assert not [n for n in names if n.endswith(("_SumAverage", "_MCC")) or "_ngtdm_" in n]


def test_names_follow_the_canonical_order() -> None:
    names = feature_names()
    order: list[str] = []
    for n in names:
        prefix = n.split("_", 1)[0]
        if prefix not in order:
            order.append(prefix)
    assert order == [
        "original",
        *(f"log-sigma-{s}-0-mm-3D" for s in range(1, 6)),
        *(f"wavelet-{b}" for b in ("LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH", "LLL")),
    ]
    assert names[0] == "original_shape_Elongation"
    assert names[14] == "original_firstorder_10Percentile"
    assert names[-1] == "wavelet-LLL_gldm_SmallDependenceLowGrayLevelEmphasis"


@pytest.mark.slow  # the cohort generator's first case costs 12-25 s (template loading)
def test_synthetic_case_gives_every_feature_in_order(
    synth_results: tuple[RadiomicsResult, RadiomicsResult], synth_case: dict[str, Any]
) -> None:
    result, _ = synth_results
    assert result.failed == {}
    assert list(result.features) == list(feature_names()) == list(result.names)
    assert all(math.isfinite(v) for v in result.features.values())
    truth_mm3 = float(synth_case["truth"]["mask_volume_cm3"]) * 1000.0
    assert result.features["original_shape_VoxelVolume"] == pytest.approx(truth_mm3, rel=2e-3)
    assert len(result.params_sha256) == 64 and result.seconds > 0
    assert result.vector().shape == (EXPECTED_FEATURE_COUNT,)


@pytest.mark.slow
def test_extraction_is_deterministic(
    synth_results: tuple[RadiomicsResult, RadiomicsResult],
) -> None:
    first, second = synth_results
    assert list(first.features) == list(second.features)
    assert first.features == second.features  # bit-identical, not approximately equal


@pytest.mark.parametrize(
    ("semi_axes", "spacing", "sphericity_tol"),
    [
        ((12.0, 12.0, 12.0), (1.0, 1.0, 1.0), 0.03),
        ((16.0, 10.0, 6.0), (1.0, 1.0, 1.0), 0.03),
        ((16.0, 10.0, 6.0), (0.7, 1.0, 1.5), 0.08),  # coarse z: more staircase area
    ],
    ids=["sphere", "ellipsoid", "ellipsoid-anisotropic-voxels"],
)
def test_shape_features_match_analytic_shapes(
    shape_params: Path,
    semi_axes: tuple[float, float, float],
    spacing: tuple[float, float, float],
    sphericity_tol: float,
) -> None:
    mask = _ellipsoid(semi_axes, spacing)
    result = extract_radiomics(_textured(mask), mask, spacing, params_path=shape_params)
    f = {k.removeprefix("original_shape_"): v for k, v in result.features.items()}
    a, b, c = semi_axes
    volume = 4.0 / 3.0 * math.pi * a * b * c
    assert f["MeshVolume"] == pytest.approx(volume, rel=0.03)
    assert f["VoxelVolume"] == pytest.approx(volume, rel=0.03)
    analytic = math.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / _thomsen_area(a, b, c)
    expected = analytic * MESH_SPHERICITY
    assert f["Sphericity"] == pytest.approx(expected, rel=sphericity_tol)
    # the spacing is (x, y, z): the long axis lies along x whatever the voxel size
    assert f["Maximum3DDiameter"] == pytest.approx(2 * a, abs=2 * max(spacing))
    assert f["MajorAxisLength"] == pytest.approx(4 * a / math.sqrt(5), rel=0.03)
    assert f["LeastAxisLength"] == pytest.approx(4 * c / math.sqrt(5), rel=0.05)


def test_sphere_is_rounder_than_ellipsoid(shape_params: Path) -> None:
    spacing = (1.0, 1.0, 1.0)
    values = []
    for axes in ((10.0, 10.0, 10.0), (16.0, 10.0, 6.0)):
        mask = _ellipsoid(axes, spacing)
        res = extract_radiomics(_textured(mask), mask, spacing, params_path=shape_params)
        values.append(res.features["original_shape_Sphericity"])
    assert 1.0 >= values[0] > 0.9 > 0.85 > values[1]


@pytest.mark.parametrize(
    ("voxels", "reason"),
    [(0, "mask is empty"), (1, "mask refused")],
    ids=["empty-mask", "one-voxel-mask"],
)
def test_unusable_mask_reports_every_feature_failed(voxels: int, reason: str) -> None:
    image = np.full((12, 12, 12), 100.0)
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask.flat[: voxels * 800 : 800] = 1
    result = extract_radiomics(image, mask, (1.0, 1.0, 1.0))
    assert result.features == {}
    assert list(result.failed) == list(feature_names())
    assert all(r.startswith(reason) for r in result.failed.values())
    assert np.isnan(result.vector()).all()


def test_non_finite_and_missing_values_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    names = feature_names()
    raw = {n: 1.5 for n in names[3:-1]}
    raw[names[3]], raw[names[4]] = math.nan, math.inf
    reasons = {names[0]: "shape failed: boom", "wavelet-LLL": "wavelet-LLL failed: boom"}
    monkeypatch.setattr(rf, "_run_pyradiomics", lambda *_: (raw, reasons))
    mask = np.zeros((8, 8, 8), dtype=bool)
    mask[3:5, 3:5, 3:5] = True
    result = extract_radiomics(np.ones(mask.shape), mask, (1.0, 1.0, 1.0))
    assert result.failed == {
        names[0]: "shape failed: boom",
        names[1]: "not computed by PyRadiomics (see its log)",
        names[2]: "not computed by PyRadiomics (see its log)",
        names[3]: "value is nan",
        names[4]: "value is inf",
        names[-1]: "wavelet-LLL failed: boom",
    }
    assert len(result.features) == len(names) - 6
    assert list(result.features) == [n for n in names if n in result.features]


def test_unexpected_feature_names_are_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rf, "_run_pyradiomics", lambda *_: ({"original_glcm_MCC": 0.3}, {}))
    mask = np.ones((4, 4, 4), dtype=bool)
    with pytest.raises(RadiomicsError, match="does not list"):
        extract_radiomics(np.ones(mask.shape), mask, (1.0, 1.0, 1.0))


@pytest.mark.parametrize(
    ("image_shape", "spacing", "message"),
    [
        ((5, 5, 4), (1.0, 1.0, 1.0), "one shape"),
        ((5, 5, 5), (1.0, -1.0, 1.0), "three positive"),
        ((5, 5, 5), (1.0, 1.0), "three positive"),
    ],
    ids=["shape-mismatch", "negative-spacing", "two-spacings"],
)
def test_bad_inputs_are_refused(
    image_shape: tuple[int, int, int], spacing: tuple[float, ...], message: str
) -> None:
    with pytest.raises(RadiomicsError, match=message):
        extract_radiomics(np.zeros(image_shape), np.ones((5, 5, 5)), spacing)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "does not exist"),
        ("imageType: {Square: {}}\nfeatureClass: {firstorder: [Mean]}\n", "not supported"),
        ("imageType: {Original: {}}\nfeatureClass: {glcm: }\n", "explicitly"),
        ("setting: {binWidth: -1}\n", "not a valid PyRadiomics"),
    ],
    ids=["missing-file", "unsupported-image-type", "implicit-feature-list", "schema-error"],
)
def test_bad_parameter_files_are_refused(tmp_path: Path, text: str | None, message: str) -> None:
    path = tmp_path / "params.yaml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(RadiomicsError, match=message):
        feature_names(path)


def test_crop_box_adds_the_margin_and_stays_inside() -> None:
    mask = np.zeros((40, 50, 60), dtype=bool)
    mask[20, 25, 2] = True
    box = crop_box(mask, (1.0, 2.0, 4.0), margin_mm=8.0)  # spacing (x, y, z)
    assert box is not None
    pad = rf.WAVELET_MARGIN_VOXELS
    assert box[0] == slice(20 - 2 - pad, 20 + 2 + pad + 1)  # z: 8 mm / 4 mm
    assert box[1] == slice(25 - 4 - pad, 25 + 4 + pad + 1)  # y: 8 mm / 2 mm
    assert box[2] == slice(0, 2 + 8 + pad + 1)  # x: clipped at the edge
    assert crop_box(np.zeros((3, 3, 3)), (1.0, 1.0, 1.0), 5.0) is None


def _rows() -> list[dict[str, float]]:
    return [
        {"a": 1.0, "b": 10.0, "c": 5.0, "d": 7.0},
        {"a": 3.0, "b": 30.0, "c": 5.0},
        {"a": 5.0, "b": math.nan, "c": 5.0},
    ]


def test_standardiser_z_scores_and_missing_policy() -> None:
    std = RadiomicsStandardiser.fit(_rows(), names=["a", "b", "c", "d", "e"], clip=3.0)
    assert std.mean[0] == pytest.approx(3.0) and std.std[0] == pytest.approx(math.sqrt(8 / 3))
    assert std.mean[1] == pytest.approx(20.0)  # NaN ignored
    assert std.std[2] == 1.0  # constant feature
    assert np.isnan(std.mean[3:]).all()  # fewer than two training values
    out = std.transform({"a": 3.0 + math.sqrt(8 / 3), "b": 1e9, "c": 6.0, "d": 7.0, "x": 1.0})
    assert out.names == ("a", "b", "c", "d", "e")
    assert out.values[:3] == pytest.approx([1.0, 3.0, 1.0])  # b clipped at +3
    assert out.missing.tolist() == [False, False, False, True, True]
    assert np.isnan(out.values[3:]).all()
    gaps = std.transform({"a": math.inf, "b": math.nan})
    assert gaps.missing.tolist() == [True, True, True, True, True]


def test_standardiser_json_round_trip(tmp_path: Path) -> None:
    std = RadiomicsStandardiser.fit(_rows(), names=["a", "b", "c", "d"])
    path = tmp_path / "radiomics_standardiser.json"
    std.save(path)
    again = RadiomicsStandardiser.load(path)
    assert again.names == std.names and again.n_train == 3 and again.clip == std.clip
    np.testing.assert_array_equal(again.mean, std.mean)  # NaN == NaN here
    np.testing.assert_array_equal(again.std, std.std)
    case = {"a": 2.0, "b": 25.0, "c": 5.0}
    np.testing.assert_array_equal(again.transform(case).values, std.transform(case).values)
    assert "NaN" not in path.read_text()  # strict JSON: unusable statistics are null


def test_standardiser_defaults_to_the_shipped_names() -> None:
    std = RadiomicsStandardiser.fit([{"original_shape_MeshVolume": 1.0}] * 2)
    assert std.names == feature_names()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{}", "not a ki67node-radiomics-standardiser"),
        ("[1, 2]", "not a ki67node-radiomics-standardiser"),
        (
            '{"format": "ki67node-radiomics-standardiser", "version": 1, "n_train": 2,'
            ' "clip": 10, "names": ["a", "b"], "mean": [1.0], "std": [1.0]}',
            "2 names but 1 means",
        ),
    ],
    ids=["empty-object", "not-an-object", "length-mismatch"],
)
def test_standardiser_refuses_bad_json(text: str, message: str) -> None:
    with pytest.raises(RadiomicsError, match=message):
        RadiomicsStandardiser.from_json(text)


def test_standardiser_needs_training_rows() -> None:
    with pytest.raises(RadiomicsError, match="zero training cases"):
        RadiomicsStandardiser.fit([], names=["a"])
