"""``ki67node train MANIFEST --out MODEL_DIR``: a model bundle from a site's cases.

Development cases of the manifest (external ones are left for
``ki67node evaluate``) go through the image pipeline (cached), are split
stratified into training and validation, the radiomics standardiser is
fitted on the training part only, one run trains the Transformer
(:mod:`lab.model.train`), the decision threshold is Youden's on the
validation part, and the bundle is written with the measured validation
metrics, the training curve and what it was trained on.

Segmentation is not trained here: the image pipeline uses the manifest's
masks or the bundled U-Net; to train a U-Net on a site's masks run
``python -m lab.segmentation.train`` (docs/segmentation.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ai_core.errors import EvaluationError
from ai_core.model.config import ModelConfig
from ai_core.model.inputs import CropParams
from ai_core.preprocess import PreprocessParams
from ai_core.radiomics_features import DEFAULT_PARAMS_PATH
from ai_core.radiomics_standardiser import RadiomicsStandardiser
from lab.model.cases import read_manifests
from lab.model.data import CaseTable, build_table
from lab.model.feature_cache import FeatureParams, extract_features
from lab.model.run_record import write_history
from lab.model.train import RunResult, TrainSettings, stratified_split, train_run

log = logging.getLogger(__name__)

#: What the bundle says about its validation metrics.
VALIDATION_NOTE = (
    "measured on the validation split that also chose the epoch and the threshold "
    "(optimistic); `ki67node evaluate` gives held-out estimates with confidence intervals"
)


@dataclass(frozen=True)
class TrainOutcome:
    bundle_dir: Path
    cases_used: int
    not_assessable: int
    best_epoch: int
    validation: dict[str, Any]
    seconds: float
    curve: Path


def fit_standardiser(table: CaseTable) -> RadiomicsStandardiser:
    rows = [dict(zip(table.radiomics_names, row.tolist(), strict=True)) for row in table.radiomics]
    return RadiomicsStandardiser.fit(rows, names=table.radiomics_names)


def load_table(
    manifests: Sequence[Path],
    params: FeatureParams,
    cache_dir: Path,
    *,
    workers: int = 1,
    progress: bool = True,
    device: str = "cpu",
) -> CaseTable:
    cases = read_manifests(manifests)
    features = extract_features(
        cases, params, cache_dir, workers=workers, progress=progress, device=device
    )
    return build_table(cases, features)


def is_synthetic(manifests: Sequence[Path]) -> bool:
    """Cohorts written by ``ki67node synth`` say so in cohort.json next to their manifest."""
    for manifest in manifests:
        try:
            info = json.loads((manifest.parent / "cohort.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if not info.get("synthetic", False):
            return False
    return bool(manifests)


def train_bundle(
    manifests: Sequence[Path],
    out_dir: Path,
    *,
    settings: TrainSettings | None = None,
    config_overrides: dict[str, Any] | None = None,
    crop: CropParams | None = None,
    preprocess: PreprocessParams | None = None,
    radiomics_params: Path | None = None,
    cache_dir: Path | None = None,
    workers: int = 1,
    progress: bool = True,
    synthetic: bool | None = None,
) -> TrainOutcome:
    """Train on the manifest's development cases and write a bundle to ``out_dir``."""
    from ai_core.model.bundle import save_bundle
    from lab.evaluation.metrics import binary_metrics, youden_threshold

    settings = settings or TrainSettings()
    crop = crop or CropParams()
    params = FeatureParams(
        preprocess or PreprocessParams(), crop, Path(radiomics_params or DEFAULT_PARAMS_PATH)
    )
    cache = cache_dir or out_dir / "cache"
    manifests = [Path(m) for m in manifests]
    table = load_table(
        manifests, params, cache, workers=workers, progress=progress, device=settings.device
    )
    dev, train, val = _development_split(table, settings)
    standardiser = fit_standardiser(train)
    config = _model_config(config_overrides, crop, table)
    log.info(
        "training on %d cases (%d high), validating on %d (%d high)",
        len(train),
        int(train.labels.sum()),
        len(val),
        int(val.labels.sum()),
    )
    run = train_run(
        config,
        train,
        val,
        standardiser,
        settings,
        progress=progress,
        checkpoint_dir=out_dir / "checkpoints",
    )
    threshold = float(np.clip(youden_threshold(val.labels, run.val_output1), 0.02, 0.98))
    val_metrics = binary_metrics(val.labels, run.val_output1, threshold).as_dict()
    synthetic = is_synthetic(manifests) if synthetic is None else synthetic
    save_bundle(
        out_dir,
        state_dict=run.state_dict,
        config=config,
        crop=crop,
        preprocess=params.preprocess,
        radiomics_params=params.radiomics_params,
        standardiser=standardiser,
        threshold=threshold,
        trained_on=_trained_on(manifests, synthetic, table, dev, train, val),
        training=_training_record(settings, run, train),
        metrics={"validation_output1": val_metrics, "note": VALIDATION_NOTE},
    )
    curve = write_history(run.history, out_dir, title=f"Training ({len(train)} cases)")
    return TrainOutcome(
        out_dir,
        len(dev),
        len(table.not_assessable),
        run.best_epoch,
        val_metrics,
        run.seconds,
        curve,
    )


def _development_split(
    table: CaseTable, settings: TrainSettings
) -> tuple[CaseTable, CaseTable, CaseTable]:
    """The development cases, and their stratified training and validation parts."""
    dev = table.where_cohort("development")
    if len(dev) < 8:
        raise EvaluationError(
            f"only {len(dev)} assessable development case(s); training needs at least 8"
        )
    train_idx, val_idx = stratified_split(dev.labels, settings.validation_fraction, settings.seed)
    train, val = dev.subset(train_idx), dev.subset(val_idx)
    return dev, train, val


def _model_config(
    overrides: dict[str, Any] | None, crop: CropParams, table: CaseTable
) -> ModelConfig:
    """The network's configuration: ``overrides`` with the crop size and radiomics count fixed."""
    return ModelConfig(
        **{
            **(overrides or {}),
            "crop_size": crop.size,
            "n_radiomics": len(table.radiomics_names),
        }
    )


def _trained_on(
    manifests: Sequence[Path],
    synthetic: bool,
    table: CaseTable,
    dev: CaseTable,
    train: CaseTable,
    val: CaseTable,
) -> dict[str, Any]:
    """The bundle's record of the data: manifests, case counts, hashed case ids."""
    return {
        "synthetic": synthetic,
        "notice": "synthetic cohort made by ki67node synth; no real patient"
        if synthetic
        else "site data",
        "manifests": [
            {"file": m.name, "sha256": hashlib.sha256(m.read_bytes()).hexdigest()}
            for m in manifests
        ],
        "cases_training": len(train),
        "cases_validation": len(val),
        "ki67_high_training": int(train.labels.sum()),
        "ki67_high_validation": int(val.labels.sum()),
        "not_assessable": len(table.not_assessable),
        "case_id_sha256": sorted(_case_hash(c) for c in dev.case_ids),
    }


def _training_record(settings: TrainSettings, run: RunResult, train: CaseTable) -> dict[str, Any]:
    """The bundle's record of the run: its settings, epochs, time and threshold rule."""
    return {
        **settings.to_dict(),
        "epochs_run": len(run.history),
        "best_epoch": run.best_epoch,
        "seconds": round(run.seconds, 1),
        "pos_weight": round((len(train) - train.labels.sum()) / max(train.labels.sum(), 1), 4),
        "threshold_rule": "Youden's J on the validation split (Output 1)",
    }


def _case_hash(case_id: str) -> str:
    return hashlib.sha256(case_id.encode()).hexdigest()[:16]


def settings_with(settings: TrainSettings, **changes: Any) -> TrainSettings:
    return replace(settings, **{k: v for k, v in changes.items() if v is not None})
