"""A tiny end-to-end run: synth cohort → ki67node train → bundle → ki67node evaluate → report,
and the inference API on a real image analysis.

Small (2 mm) synthetic cases, two epochs, two evaluation runs: minutes, not hours.
Research use only: synthetic data.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ai_core.errors import ModelError
from ai_core.model.bundle import load_bundle
from daemon.cli import main
from lab.model.cases import read_manifest
from lab.model.feature_cache import FeatureParams
from lab.model.fit import load_table
from lab.model.train import predict_table

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _cohort(root: Path, name: str, cases: int, seed: int, profile: str) -> Path:
    from lab.synth import generate_cohort
    from lab.synth.profiles import PROFILES

    site = PROFILES[profile]
    # balanced labels so that a dozen cases hold both classes in every split
    site = replace(site, label_model=replace(site.label_model, prevalence=0.5))
    summary = generate_cohort(
        root / name, cases=cases, seed=seed, profile=site, size="small", progress=False
    )
    return summary.manifest_csv


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("model-e2e")
    dev = _cohort(root, "dev", 12, 3101, "internal")
    ext = _cohort(root, "ext", 6, 3102, "external")
    model = root / "model"
    cache = root / "cache"
    rc = main(
        [
            "train", str(dev), "--out", str(model), "--epochs", "2", "--patience", "1",
            "--workers", "1", "--cache", str(cache), "--no-progress", "--device", "cpu",
            "--ema-decay", "0.9",
        ]
    )  # fmt: skip
    assert rc == 0
    return {"root": root, "dev": dev, "ext": ext, "model": model, "cache": cache}


def test_train_writes_an_honest_bundle(trained: dict[str, Path]) -> None:
    model = trained["model"]
    for name in ("model.json", "weights.pt", "radiomics.yaml", "standardiser.json"):
        assert (model / name).is_file()
    assert (model / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((model / "history.json").read_text())
    assert 1 <= len(history) <= 2 and all("val_auc" in row for row in history)
    meta = json.loads((model / "model.json").read_text())
    assert meta["disclaimer"] == "research use only, not for diagnostic use"
    assert meta["trained_on"]["synthetic"] is True
    assert "synthetic" in meta["version"]
    assert meta["trained_on"]["cases_training"] + meta["trained_on"]["cases_validation"] == 12
    assert 0 < meta["threshold"] < 1
    assert 0.0 <= meta["metrics"]["validation_output1"]["auc"] <= 1.0
    assert meta["architecture"]["n_radiomics"] == 1218
    assert meta["architecture"]["size_tokens"] is True
    assert meta["architecture"]["linear_skip"] is True
    assert meta["architecture"]["texture_tokens"] is True
    assert meta["crop"]["max_value"] == 4.0  # the crop reads the unclipped working image
    assert meta["training"]["ema_decay"] == 0.9
    assert meta["radiomics"]["features"] == 1218
    bundle = load_bundle(model)
    assert bundle.synthetic and "research use only" in bundle.describe()


def test_bundle_save_load_gives_identical_outputs(trained: dict[str, Path]) -> None:
    import torch

    bundle = load_bundle(trained["model"])
    params = FeatureParams(bundle.preprocess, bundle.crop, bundle.radiomics_params)
    table = load_table([trained["dev"]], params, trained["cache"], progress=False)
    a = predict_table(bundle.build_model("cpu"), table, bundle.standardiser)
    b = predict_table(bundle.build_model("cpu"), table, bundle.standardiser)
    np.testing.assert_array_equal(a["output1"], b["output1"])
    state = torch.load(trained["model"] / "checkpoints" / "best.pt", weights_only=True)
    from ai_core.model.network import CascadedMixingTransformer

    again = CascadedMixingTransformer(bundle.config)
    again.load_state_dict(state["state_dict"])
    c = predict_table(again, table, bundle.standardiser)
    np.testing.assert_allclose(a["output2"], c["output2"], rtol=1e-6, atol=1e-7)
    assert np.all((a["output1"] > 0) & (a["output1"] < 1))


def test_a_tampered_bundle_is_refused(trained: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(trained["model"], copy, ignore=shutil.ignore_patterns("cache", "checkpoints"))
    with open(copy / "radiomics.yaml", "a", encoding="utf-8") as fh:
        fh.write("\n# edited\n")
    with pytest.raises(ModelError, match="changed after training"):
        load_bundle(copy)
    (copy / "weights.pt").unlink()
    with pytest.raises(ModelError, match="weights.pt is missing"):
        load_bundle(copy)


def test_evaluate_writes_the_paper_style_report(trained: dict[str, Path]) -> None:
    report = trained["root"] / "report"
    rc = main(
        [
            "evaluate", str(trained["dev"]), str(trained["ext"]), "--model", str(trained["model"]),
            "--out", str(report), "--runs", "2", "--epochs", "2", "--patience", "1",
            "--bootstrap", "200", "--workers", "1", "--cache", str(trained["cache"]),
            "--no-progress", "--device", "cpu",
        ]
    )  # fmt: skip
    assert rc == 0
    text = (report / "report.md").read_text()
    assert "Research use only, not for diagnostic use" in text
    results = json.loads((report / "results.json").read_text())
    rows = results["over_runs"]
    for row in (
        "Output 1 (MRI + Radiological)",
        "Output 2 (MRI + Radiological + Radiomics)",
        "Model: MRI",
        "Model: Radiological",
        "Model: Radiomics",
        "Clinical model (logistic regression)",
        "Radiomics ML (LASSO logistic regression)",
    ):
        assert set(rows[row]) == {"internal", "external"}, row
        auc = rows[row]["internal"]["auc"]
        assert auc["n"] == 2
        assert 0.0 <= auc["low"] <= auc["mean"] <= auc["high"] <= 1.0
        assert set(rows[row]["external"]) >= {
            "auc",
            "accuracy",
            "sensitivity",
            "specificity",
            "f1",
            "mcc",
        }
    assert {d["versus"] for d in results["run1_delong"]} >= {
        "Clinical model (logistic regression)",
        "Radiomics ML (LASSO logistic regression)",
    }
    for plot in results["plots"].values():
        assert (report / plot).read_bytes()[:4] == b"\x89PNG"
    assert results["cohort_sizes"]["external"][0] == 6


def test_predictor_on_a_real_analysis(trained: dict[str, Path]) -> None:
    from ai_core.analysis import AnalysisOptions, analyse_series
    from ai_core.model.inputs import Characteristics
    from ai_core.model.predict import Predictor
    from lab.model.feature_cache import series_files

    case = read_manifest(trained["dev"])[0]
    bundle = load_bundle(trained["model"])
    analysis = analyse_series(
        series_files(case),
        None,  # type: ignore[arg-type]  # the reference mask replaces segmentation
        options=AnalysisOptions(
            preprocess=bundle.preprocess, radiomics_params=bundle.radiomics_params
        ),
        reference_mask=case.mask,
    )
    predictor = Predictor(bundle, device="cpu")
    first = predictor.predict(analysis, Characteristics(edema_index=1.5, necrosis=True))
    again = predictor.predict(analysis, Characteristics(edema_index=1.5, necrosis=True))
    assert first.probability_output1 == again.probability_output1
    assert first.inputs_used == {"mri": True, "characteristics": True, "radiomics": True}
    assert first.ki67_high == (first.probability_output1 >= bundle.threshold)
    assert first.gradcam_source is not None and first.gradcam_source.shape == analysis.volume.shape
    assert 0.0 <= float(first.gradcam_source.min()) and float(first.gradcam_source.max()) <= 1.0
    assert set(first.characteristic_attention) == {"edema_index", "necrosis"}
    assert len(first.radiomics_attention) == 10
    summary = first.summary()
    assert summary["model"]["synthetic"] is True
    assert summary["disclaimer"] == "research use only, not for diagnostic use"
    json.dumps(summary)
    bare = predictor.predict(analysis, None, explain=False, use_radiomics=False)
    assert bare.inputs_used == {"mri": True, "characteristics": False, "radiomics": False}
    assert bare.gradcam_source is None
    assert bare.map_towards_high is None and bare.summary()["map_class"] is None
    assert isinstance(first.map_towards_high, bool)
    assert summary["map_class"] == ("Ki-67 >= 5 %" if first.map_towards_high else "Ki-67 < 5 %")
