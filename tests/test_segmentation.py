"""Segmentation backends: interface, post-processing, the bundled U-Net, nnU-Net, received SEG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ai_core.segmentation import (
    STATUS_NOT_ASSESSABLE,
    STATUS_OK,
    SegmentationError,
    make_backend,
)
from ai_core.segmentation.base import Reorientation, check_image
from ai_core.segmentation.intensity import IntensityReference, IntensityStats, intensity_check
from ai_core.segmentation.postprocess import PostprocessParams, postprocess
from ai_core.segmentation.unet import (
    BUNDLED_MODEL_DIR,
    MODEL_JSON,
    UNetArchitecture,
    UNetBackend,
    load_unet_model,
)

SPACING_1MM = (1.0, 1.0, 1.0)
MAX_WEIGHTS_BYTES = 20 * 1024 * 1024

# column i = LPS direction of index axis i (x, y, z)
DIRECTIONS = {
    "axial": np.eye(3),
    "sagittal": np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
    "coronal": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
    "axial_flipped": np.diag([-1.0, -1.0, 1.0]),
}


def ball(
    shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float
) -> np.ndarray:
    zz, yy, xx = np.indices(shape, dtype=float)
    r2 = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2
    return (r2 <= radius**2).astype(np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * float(np.logical_and(a, b).sum()) / max(int(a.sum()) + int(b.sum()), 1)


def phantom(shape: tuple[int, int, int] = (48, 56, 64), seed: int = 0) -> np.ndarray:
    """A [0, 255] head-like image: grey ellipsoid, bright ball, a little noise."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape, dtype=float)
    c = [(n - 1) / 2 for n in shape]
    r2 = sum(((g - ci) / (0.45 * n)) ** 2 for g, ci, n in zip((zz, yy, xx), c, shape, strict=True))
    image = np.where(r2 <= 1.0, 110.0, 0.0)
    image[ball(shape, (c[0], c[1] - 8, c[2] + 10), 6) > 0] = 235.0
    image += rng.normal(0, 4.0, shape) * (image > 0)
    return np.clip(image, 0, 255).astype(np.float32)


# -- orientation ----------------------------------------------------------------
@pytest.mark.parametrize("name", list(DIRECTIONS), ids=list(DIRECTIONS))
def test_reorientation_round_trip_and_canonical_axes(name: str) -> None:
    direction = DIRECTIONS[name]
    reorient = Reorientation.from_direction(direction)
    array = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    canonical = reorient.forward(array)
    assert np.array_equal(reorient.backward(canonical), array)
    # a voxel one step along index x moves along direction[:, 0] in patient space;
    # in the canonical array (axes S, P, L) it must move along the matching axis
    patient_axis = int(np.argmax(np.abs(direction[:, 0])))
    sign = np.sign(direction[patient_axis, 0])
    marker = np.zeros((3, 4, 5), dtype=np.uint8)
    marker[1, 1, 1] = 1
    moved = np.zeros_like(marker)
    moved[1, 1, 2] = 1
    a = np.argwhere(reorient.forward(marker))[0]
    b = np.argwhere(reorient.forward(moved))[0]
    step = b - a
    assert step[2 - patient_axis] == sign and np.count_nonzero(step) == 1


def test_reorientation_spacing_follows_the_axes() -> None:
    reorient = Reorientation.from_direction(DIRECTIONS["sagittal"])
    # index x (0.9 mm) points along P, index y (0.8) along S, index z (1.2) along L
    assert reorient.spacing_zyx((0.9, 0.8, 1.2)) == (0.8, 0.9, 1.2)


# -- input checks and post-processing ----------------------------------------------
@pytest.mark.parametrize(
    ("image", "spacing", "message"),
    [
        (np.zeros((4, 4)), SPACING_1MM, "must be 3D"),
        (np.zeros((4, 4, 4)), (1.0, 0.0, 1.0), "spacing must be three positive"),
        (np.full((4, 4, 4), np.nan), SPACING_1MM, "NaN or infinite"),
    ],
    ids=["2d", "zero-spacing", "nan"],
)
def test_check_image_refuses_bad_input(
    image: np.ndarray, spacing: tuple[float, float, float], message: str
) -> None:
    with pytest.raises(SegmentationError, match=message):
        check_image(image, spacing)


def test_postprocess_keeps_the_largest_lesion_and_drops_speckle() -> None:
    shape = (40, 40, 40)
    big = ball(shape, (20, 20, 12), 6)
    small = ball(shape, (20, 20, 32), 3)
    prob = np.zeros(shape, dtype=np.float32)
    prob[big > 0] = 0.9
    prob[small > 0] = 0.8
    prob[2, 2, 2] = 0.99  # one-voxel speckle
    result = postprocess(prob, SPACING_1MM)
    assert result.status == STATUS_OK
    assert np.array_equal(result.mask, big)
    assert result.components == 2  # the speckle is below min_component_ml
    assert "largest of 2" in result.reason


@pytest.mark.parametrize(
    ("radius", "expected"),
    [(0.0, "no meningioma found"), (1.5, "speckle"), (2.6, "below the minimum")],
    ids=["empty", "speckle-only", "too-small"],
)
def test_postprocess_not_assessable_without_a_real_lesion(radius: float, expected: str) -> None:
    shape = (30, 30, 30)
    mask = ball(shape, (15, 15, 15), radius) if radius else np.zeros(shape, np.uint8)
    params = PostprocessParams(min_component_ml=0.02, min_lesion_ml=0.1)
    result = postprocess(mask, SPACING_1MM, params)
    assert result.status == STATUS_NOT_ASSESSABLE
    assert expected in result.reason
    assert not result.mask.any()


def _two_blobs() -> tuple[np.ndarray, np.ndarray]:
    """A large, less confident blob and a small, confident one (probabilities)."""
    shape = (40, 40, 60)
    big = ball(shape, (20, 20, 15), 8).astype(np.float32) * 0.7
    small = ball(shape, (20, 20, 45), 4).astype(np.float32) * 0.97
    return np.maximum(big, small), ball(shape, (20, 20, 45), 4)


def test_postprocess_chooses_the_confident_candidate_not_the_largest() -> None:
    prob, small = _two_blobs()
    params = PostprocessParams(select="confidence", min_confidence=0.6)
    result = postprocess(prob, SPACING_1MM, params)
    assert result.status == STATUS_OK
    assert np.array_equal(result.mask, small)
    assert "most confident of 2 candidates" in result.reason
    chosen = [c for c in result.candidates if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["confidence"] == pytest.approx(0.97)
    largest = postprocess(prob, SPACING_1MM, PostprocessParams())
    assert not np.array_equal(largest.mask, small)  # the 0.1 rule takes the big one


def test_postprocess_drops_a_candidate_outside_the_intracranial_space() -> None:
    prob, small = _two_blobs()
    intracranial = np.ones_like(prob)
    intracranial[small > 0] = 0.1  # the confident blob lies outside the skull
    params = PostprocessParams(select="confidence", min_confidence=0.6, min_intracranial=0.5)
    result = postprocess(prob, SPACING_1MM, params, intracranial=intracranial)
    assert result.status == STATUS_OK
    assert not result.mask[small > 0].any()
    rejected = [c for c in result.candidates if c["rejected"]]
    assert len(rejected) == 1 and "outside the intracranial space" in rejected[0]["rejected"]


def test_postprocess_abstains_when_no_candidate_is_plausible() -> None:
    prob, small = _two_blobs()
    intracranial = np.where(small > 0, 0.0, 1.0).astype(np.float32)
    params = PostprocessParams(select="confidence", min_confidence=0.8, min_intracranial=0.5)
    result = postprocess(prob, SPACING_1MM, params, intracranial=intracranial)
    assert result.status == STATUS_NOT_ASSESSABLE
    assert not result.mask.any()
    assert result.reason.startswith("not assessable: no plausible lesion")
    assert "low confidence (0.70 < 0.8)" in result.reason
    assert "outside the intracranial space" in result.reason


def test_postprocess_rejects_a_tiny_confident_candidate_before_choosing() -> None:
    """A small confident candidate (a vessel) must not win over the tumour and abstain the study."""
    prob, small = _two_blobs()  # big: 2.1 mL at 0.7; small: 0.26 mL at 0.97
    params = PostprocessParams(select="confidence", min_confidence=0.6, min_lesion_ml=0.3)
    result = postprocess(prob, SPACING_1MM, params)
    assert result.status == STATUS_OK
    assert not result.mask[small > 0].any() and result.mask.sum() > 2000
    rejected = [c["rejected"] for c in result.candidates if c["rejected"]]
    assert rejected == ["too small (0.26 mL < 0.3 mL)"]


def test_postprocess_rejects_a_candidate_that_does_not_enhance() -> None:
    """The pons or a gyrus is as bright as white matter; a meningioma is brighter on T1C."""
    prob, small = _two_blobs()
    big = (prob > 0.5) & (small == 0)
    rng = np.random.default_rng(0)
    image = rng.normal(150.0, 5.0, prob.shape).astype(np.float32)  # brain, about white matter
    image[small > 0] = 210.0  # the enhancing tumour
    image[big] = 152.0  # iso-intense to white matter
    intracranial = np.ones_like(prob)
    params = PostprocessParams(select="confidence", min_confidence=0.6, min_enhancement=1.15)
    both = postprocess(prob, SPACING_1MM, params, intracranial=intracranial, image=image)
    assert both.status == STATUS_OK and np.array_equal(both.mask, small)
    # the confident one iso-intense too: nothing is left, and the reason says why
    image[small > 0] = 155.0
    prob = np.where(big, 0.97, prob).astype(np.float32)
    none = postprocess(prob, SPACING_1MM, params, intracranial=intracranial, image=image)
    assert none.status == STATUS_NOT_ASSESSABLE
    assert none.reason.count("does not enhance") == 2, none.reason
    assert all(0.95 < c["enhancement"] < 1.1 for c in none.candidates)
    # without the image (or with the rule off) the rule does not apply
    assert postprocess(prob, SPACING_1MM, params, intracranial=intracranial).status == STATUS_OK
    off = PostprocessParams(select="confidence", min_confidence=0.6)
    kept = postprocess(prob, SPACING_1MM, off, intracranial=intracranial, image=image)
    assert kept.status == STATUS_OK
    assert all(c["enhancement"] is None for c in kept.candidates)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("select", "biggest", "select must be one of"),
        ("min_confidence", 1.5, "min_confidence must be in"),
        ("min_intracranial", -0.1, "min_intracranial must be in"),
        ("min_enhancement", -1.0, "min_enhancement must not be negative"),
    ],
    ids=["select", "confidence", "intracranial", "enhancement"],
)
def test_postprocess_params_validate_the_candidate_rules(
    key: str, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        PostprocessParams(**{key: value})  # type: ignore[arg-type]


def test_postprocess_threshold_applies_to_probabilities() -> None:
    shape = (30, 30, 30)
    prob = ball(shape, (15, 15, 15), 6).astype(np.float32) * 0.4
    assert postprocess(prob, SPACING_1MM).status == STATUS_NOT_ASSESSABLE
    assert postprocess(prob, SPACING_1MM, PostprocessParams(threshold=0.3)).status == STATUS_OK


def test_postprocess_params_refuse_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown post-processing key"):
        PostprocessParams.from_dict({"threshold": 0.5, "thresold": 0.4})


def test_intensity_check_flags_out_of_distribution_images() -> None:
    images = [phantom(seed=s) for s in range(3)]
    reference = IntensityReference.fit([IntensityStats.of(im) for im in images])
    assert intensity_check(phantom(seed=9), reference) is None
    assert "not preprocessed" in str(intensity_check(phantom() * 8.0, reference))
    dark = np.where(phantom() > 0, 20.0, 0.0).astype(np.float32)
    assert "out of the training distribution" in str(intensity_check(dark, reference))
    assert "empty" in str(intensity_check(np.zeros((8, 8, 8), np.float32), reference))


# -- the U-Net backend --------------------------------------------------------------
def write_random_model(folder: Path, **meta: Any) -> Path:
    """A model folder with a randomly initialised (seeded) small U-Net."""
    import torch

    torch.manual_seed(0)
    arch = UNetArchitecture(channels=(4, 8, 16), strides=(2, 2))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(arch.build().state_dict(), folder / "unet.pt")
    description = {
        "version": "test",
        "architecture": arch.to_dict(),
        "weights": "unet.pt",
        "working_spacing_mm": 2.0,
        "inference": {"roi_size": [32, 32, 32], "overlap": 0.25},
        "postprocess": {"threshold": 0.5},
        **meta,
    }
    (folder / MODEL_JSON).write_text(json.dumps(description), encoding="utf-8")
    return folder


def test_unet_backend_runs_and_is_deterministic(tmp_path: Path) -> None:
    backend = UNetBackend(write_random_model(tmp_path / "m"), device="cpu")
    image = phantom()
    direction = DIRECTIONS["sagittal"]
    first = backend.probability(image, SPACING_1MM, direction)
    second = backend.probability(image, SPACING_1MM, direction)
    assert first.shape == image.shape and first.dtype == np.float32
    assert np.array_equal(first, second)
    assert 0.0 <= float(first.min()) and float(first.max()) <= 1.0
    result = backend.segment(image, SPACING_1MM, direction=direction)
    assert result.backend == "ki67node-unet" and result.version == "test"
    assert result.status in (STATUS_OK, STATUS_NOT_ASSESSABLE)
    assert result.mask_zyx.shape == image.shape and result.mask_zyx.dtype == np.uint8


def test_unet_backend_refuses_out_of_distribution_input(tmp_path: Path) -> None:
    reference = IntensityReference.fit([IntensityStats.of(phantom(seed=s)) for s in range(3)])
    from dataclasses import asdict

    folder = write_random_model(tmp_path / "m", intensity_reference=asdict(reference))
    backend = UNetBackend(folder, device="cpu")
    result = backend.segment(phantom() * 0.15, SPACING_1MM)
    assert result.status == STATUS_NOT_ASSESSABLE
    assert "out of distribution" in result.reason
    assert result.probability is None and not result.mask_zyx.any()


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "model.json and its weights"), ("{not json", "unreadable"), ("{}", "invalid model")],
    ids=["missing", "corrupt", "incomplete"],
)
def test_unet_model_folder_errors(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / MODEL_JSON).write_text(content, encoding="utf-8")
    with pytest.raises(SegmentationError, match=message):
        load_unet_model(tmp_path)


def test_unet_weights_that_do_not_match_the_architecture(tmp_path: Path) -> None:
    folder = write_random_model(tmp_path / "m")
    meta = json.loads((folder / MODEL_JSON).read_text(encoding="utf-8"))
    meta["architecture"]["channels"] = [4, 8, 32]
    (folder / MODEL_JSON).write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(SegmentationError, match="does not match the architecture"):
        UNetBackend(folder, device="cpu").network()


def test_make_backend_errors() -> None:
    with pytest.raises(SegmentationError, match="unknown segmentation backend"):
        make_backend("deeplab")
    with pytest.raises(SegmentationError, match="needs the trained model folder"):
        make_backend("nnunet")


# -- the bundled weights -------------------------------------------------------------
def test_bundled_model_is_described_small_and_loads() -> None:
    model = load_unet_model()
    meta = model.metadata
    weights = BUNDLED_MODEL_DIR / model.weights_file
    assert weights.stat().st_size < MAX_WEIGHTS_BYTES
    assert "research use only" in meta["notice"]
    assert meta["training"]["command"].startswith("python -m ai_core.segmentation.train")
    assert isinstance(meta["training"]["params"]["seed"], int)
    # held out: never a training head, never the cohort the post-processing was tuned on
    assert not set(meta["training"]["heads"]) & set(meta["evaluation"]["heads"])
    assert meta["tuning"]["cohort_seed"] != meta["evaluation"]["cohort_seed"]
    assert not set(meta["tuning"]["heads"]) & set(meta["evaluation"]["heads"])
    assert meta["evaluation"]["cases"] >= 8
    assert 0.0 < meta["evaluation"]["dice_mean"] <= 1.0
    assert model.architecture.activation == "sigmoid"  # tumour and intracranial outputs
    assert model.postprocess.select == "confidence" and model.postprocess.min_enhancement > 1.0
    assert model.intensity_reference is not None
    net = UNetBackend(device="cpu").network()
    assert not net.training


@pytest.mark.slow
def test_bundled_model_segments_a_synthetic_case(tmp_path: Path) -> None:
    from ai_core.segmentation.holdout import dice as train_dice
    from ai_core.segmentation.holdout import load_cohort
    from ai_core.synth import generate_cohort

    generate_cohort(tmp_path / "c", cases=1, seed=5, size="small", progress=False)
    (case,) = load_cohort(tmp_path / "c")
    backend = UNetBackend(device="cpu")
    first = backend.segment(case.image, case.spacing, direction=case.direction)
    second = backend.segment(case.image, case.spacing, direction=case.direction)
    assert first.status == STATUS_OK, first.reason
    assert np.array_equal(first.mask_zyx, second.mask_zyx)
    assert train_dice(first.mask_zyx, case.mask) > 0.8  # 0.92 when trained


# -- received SEG ----------------------------------------------------------------------
def _seg_from_mask(source: list[Any], mask_zyx: np.ndarray, *, shuffle: bool = False) -> Any:
    """A highdicom BINARY SEG of ``mask_zyx`` (one frame per source slice)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="meningioma",
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    order = list(range(len(source)))
    if shuffle:
        order = order[::-1]
    return hd.seg.Segmentation(
        source_images=[source[i] for i in order],
        pixel_array=mask_zyx[order],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=99,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="radiologist",
        manufacturer_model_name="viewer",
        software_versions="1",
        device_serial_number="1",
        omit_empty_frames=True,
    )


@pytest.mark.parametrize("orientation", ["sag", "axial"], ids=["sagittal", "axial"])
@pytest.mark.parametrize("shuffle", [False, True], ids=["in-order", "reversed"])
def test_received_seg_round_trip(tmp_path: Path, orientation: str, shuffle: bool) -> None:
    from ai_core.segmentation.received_seg import mask_from_seg, received_seg_result
    from ai_core.volume import load_series
    from tests.factories import make_mr_series, write_series

    datasets = make_mr_series(orientation=orientation, n_slices=12, rows=24, cols=20)
    paths = write_series(datasets, tmp_path / "series")
    volume = load_series(paths)
    # the mask on the *sorted* volume grid, then written in the order of the source files
    truth = ball(volume.shape, (5, 10, 8), 4)
    z_of = {uid: z for z, uid in enumerate(volume.sop_instance_uids)}
    file_order = [z_of[str(ds.SOPInstanceUID)] for ds in datasets]
    seg = _seg_from_mask(datasets, truth[file_order], shuffle=shuffle)
    seg.save_as(tmp_path / "seg.dcm")
    mask = mask_from_seg(tmp_path / "seg.dcm", volume)
    assert np.array_equal(mask, truth)
    result = received_seg_result(seg, volume)
    assert result.status == STATUS_OK and result.backend == "received-seg"
    assert np.array_equal(result.mask_zyx, truth)


def test_received_seg_refusals(tmp_path: Path) -> None:
    from ai_core.segmentation.received_seg import mask_from_seg, read_seg
    from ai_core.volume import load_series
    from tests.factories import make_mr_series, write_series

    datasets = make_mr_series(orientation="axial", n_slices=8, rows=16, cols=16)
    volume = load_series(write_series(datasets, tmp_path / "a"))
    with pytest.raises(SegmentationError, match="not a DICOM Segmentation"):
        read_seg(datasets[0])
    seg = _seg_from_mask(datasets, ball(volume.shape, (4, 8, 8), 3))
    other = make_mr_series(orientation="axial", n_slices=8, rows=16, cols=16)
    other_volume = load_series(write_series(other, tmp_path / "b"))
    with pytest.raises(SegmentationError, match="Frame of Reference differs"):
        mask_from_seg(seg, other_volume)
    with pytest.raises(SegmentationError, match="segment 3 is not in the SEG"):
        mask_from_seg(seg, volume, segment_number=3)


# -- nnU-Net v2 ------------------------------------------------------------------------
def test_nnunet_backend_names_the_missing_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ai_core.segmentation.nnunet as nnunet

    monkeypatch.setattr(nnunet, "nnunet_available", lambda: False)
    with pytest.raises(SegmentationError, match="needs the 'nnunetv2' package"):
        nnunet.NnUNetBackend(tmp_path)


def test_nnunet_backend_refuses_an_incomplete_folder(tmp_path: Path) -> None:
    pytest.importorskip("nnunetv2")
    from ai_core.segmentation.nnunet import NnUNetBackend

    (tmp_path / "dataset.json").write_text("{}", encoding="utf-8")
    with pytest.raises(SegmentationError, match=r"missing plans.json, fold_0/checkpoint_final"):
        NnUNetBackend(tmp_path)


def _fake_nnunet_folder(folder: Path) -> Path:
    """A trained-looking nnU-Net v2 folder with a random tiny PlainConvUNet, via nnU-Net's classes."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    resampling = "resample_data_or_seg_to_shape"
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": [16, 16, 16],
        "median_image_size_in_voxels": [24, 24, 24],
        "spacing": [1.0, 1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": resampling,
        "resampling_fn_data_kwargs": {
            "is_seg": False,
            "order": 3,
            "order_z": 0,
            "force_separate_z": None,
        },
        "resampling_fn_seg": resampling,
        "resampling_fn_seg_kwargs": {
            "is_seg": True,
            "order": 1,
            "order_z": 0,
            "force_separate_z": None,
        },
        "resampling_fn_probabilities": resampling,
        "resampling_fn_probabilities_kwargs": {
            "is_seg": False,
            "order": 1,
            "order_z": 0,
            "force_separate_z": None,
        },
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": 2,
                "features_per_stage": [4, 8],
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[3, 3, 3], [3, 3, 3]],
                "strides": [[1, 1, 1], [2, 2, 2]],
                "n_conv_per_stage": [1, 1],
                "n_conv_per_stage_decoder": [1],
                "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-5, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": False,
    }
    plans = {
        "dataset_name": "Dataset999_Fake",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [24, 24, 24],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 255.0,
                "mean": 120.0,
                "median": 120.0,
                "min": 0.0,
                "percentile_00_5": 0.0,
                "percentile_99_5": 255.0,
                "std": 50.0,
            },
        },
    }
    dataset = {
        "channel_names": {"0": "T1C"},
        "labels": {"background": 0, "meningioma": 1},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans), encoding="utf-8")
    (folder / "dataset.json").write_text(json.dumps(dataset), encoding="utf-8")
    manager = PlansManager(plans)
    torch.manual_seed(0)
    network = nnUNetTrainer.build_network_architecture(
        manager, manager.get_configuration("3d_fullres"), 1, 2, enable_deep_supervision=False
    )
    checkpoint = {
        "network_weights": network.state_dict(),
        "trainer_name": "nnUNetTrainer",
        "init_args": {"configuration": "3d_fullres"},
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def test_nnunet_backend_predicts_with_a_tiny_model(tmp_path: Path) -> None:
    pytest.importorskip("nnunetv2")
    from ai_core.segmentation.nnunet import NnUNetBackend

    folder = _fake_nnunet_folder(tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres")
    backend = NnUNetBackend(folder, device="cpu")
    image = phantom((20, 22, 24))
    result = backend.segment(image, SPACING_1MM)
    assert result.backend == "nnunetv2" and "nnunetv2" in result.version
    assert result.probability is not None and result.probability.shape == image.shape
    assert 0.0 <= float(result.probability.min()) <= float(result.probability.max()) <= 1.0
    assert result.status in (STATUS_OK, STATUS_NOT_ASSESSABLE)
    again = backend.segment(image, SPACING_1MM)
    assert again.probability is not None
    assert np.array_equal(again.probability, result.probability)


def test_importing_the_backends_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, ai_core.segmentation, ai_core.segmentation.unet, "
        "ai_core.segmentation.nnunet, ai_core.segmentation.received_seg;"
        "print('torch' in sys.modules, 'monai' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
