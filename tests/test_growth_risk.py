"""The growth-risk threshold: a bundle's ``growth_risk`` block decides the risk group
(not the Ki-67 class threshold), is validated on load, and is written by
``adopt_risk_threshold`` with its provenance."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from ai_core.errors import ModelError
from ai_core.evaluation.growth_report import adopt_risk_threshold
from ai_core.model.bundle import BUNDLED_DIR, load_bundle
from ai_core.model.inputs import CropGeometry
from ai_core.model.predict import Prediction


@pytest.fixture
def bundle_copy(tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(BUNDLED_DIR, out)
    return out


def _prediction(p1: float, threshold: float, risk: float | None) -> Prediction:
    geometry = CropGeometry(origin=(0.0, 0.0, 0.0), spacing_mm=1.0, size=(4, 4, 4))
    return Prediction(
        probability_output1=p1,
        probability_output2=p1,
        ki67_high=p1 >= threshold,
        threshold=threshold,
        inputs_used={"mri": True, "characteristics": False, "radiomics": True},
        characteristics={},
        crop=geometry,
        gradcam_source=None,
        attention_source=None,
        characteristic_attention={},
        radiomics_attention=[],
        model_name="m",
        model_version="1",
        synthetic_model=True,
        device="cpu",
        risk_threshold=risk,
    )


def test_adopted_threshold_is_the_bundles_risk_threshold(bundle_copy: Path) -> None:
    before = load_bundle(bundle_copy)
    record = {"threshold": 0.31, "rule": "Youden's J for growth by 3 years", "cohort": "dev.csv"}
    adopt_risk_threshold(bundle_copy, record)
    after = load_bundle(bundle_copy)
    assert after.risk_threshold == pytest.approx(0.31)
    assert after.threshold == before.threshold  # the Ki-67 class threshold is unchanged
    assert json.loads((bundle_copy / "model.json").read_text())["growth_risk"] == record
    if "growth_risk" not in before.meta:
        assert before.risk_threshold == before.threshold


@pytest.mark.parametrize("bad", [0.0, 1.0, "high", None])
def test_invalid_growth_risk_threshold_is_refused(bundle_copy: Path, bad: object) -> None:
    adopt_risk_threshold(bundle_copy, {"threshold": bad})
    with pytest.raises(ModelError, match="growth_risk must hold a threshold"):
        load_bundle(bundle_copy)


def test_risk_group_follows_the_risk_threshold_not_the_class() -> None:
    low_class_high_risk = _prediction(0.4, threshold=0.8, risk=0.3)
    assert not low_class_high_risk.ki67_high and low_class_high_risk.risk_group == "high"
    assert low_class_high_risk.summary()["risk_threshold"] == 0.3
    assert _prediction(0.2, threshold=0.8, risk=0.3).risk_group == "low"
    assert _prediction(0.9, threshold=0.8, risk=None).risk_group == "high"
    assert replace(_prediction(0.5, 0.8, None), ki67_high=False).risk_group == "low"
    assert _prediction(0.3, 0.8, 0.3).risk_group == "high"  # at the threshold: high


def test_feature_cache_key_follows_the_segmentation_models_content(tmp_path: Path) -> None:
    """Cases without a mask are segmented: new weights or rules in the same folder must not
    reuse cached features (the key holds the folder's content, not only its path)."""
    from ai_core.model.feature_cache import FeatureParams, model_fingerprint
    from ai_core.segmentation.unet import BUNDLED_MODEL_DIR

    folder = tmp_path / "seg"
    shutil.copytree(BUNDLED_MODEL_DIR, folder)
    bundle = load_bundle()
    params = FeatureParams(
        bundle.preprocess, bundle.crop, bundle.radiomics_params, segmentation_model=folder
    )
    before = params.key_material()
    assert model_fingerprint(folder) == model_fingerprint(BUNDLED_MODEL_DIR)
    meta = json.loads((folder / "model.json").read_text())
    meta["postprocess"]["threshold"] = 0.45
    (folder / "model.json").write_text(json.dumps(meta))
    after = params.key_material()
    assert after["segmentation_fingerprint"] != before["segmentation_fingerprint"]
    assert {k: v for k, v in after.items() if k != "segmentation_fingerprint"} == {
        k: v for k, v in before.items() if k != "segmentation_fingerprint"
    }
