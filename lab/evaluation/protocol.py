"""``ki67node evaluate``: the source study's evaluation protocol on a site's manifest.

For each of ``runs`` repetitions: the development cohort is split 8:2
(stratified, a new seed per run); the 80 % is split again for early stopping
and thresholds; the Transformer is trained with the bundle's architecture,
crop, preprocessing and radiomics parameters; the clinical logistic
regression and the radiomics machine-learning baseline are fitted on the
same training part; everything is scored on the 20 % internal test set and
on the external cohort. Every modality combination (the rows of the paper's
Table 2) is scored with the same trained model by switching modalities off
(the "not available" input the model was trained with).

Reported: mean and 95 % interval over runs of AUC, accuracy, sensitivity,
specificity, F1 and MCC; for the first run, bootstrap confidence intervals
on each test set, DeLong tests of Output 1 against the baselines and ROC
plots; the bundle itself (as trained) on the external cohort.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ai_core.errors import EvaluationError
from lab.evaluation.metrics import (
    BinaryMetrics,
    bootstrap_metrics,
    delong_test,
    summarise_runs,
    youden_threshold,
)
from lab.model.data import MODALITY_COMBINATIONS, CaseTable, radiomics_z
from lab.model.train import TrainSettings, predict_table, stratified_split, train_run

log = logging.getLogger(__name__)

OUTPUT1 = "Output 1 (MRI + Radiological)"
OUTPUT2 = "Output 2 (MRI + Radiological + Radiomics)"
CLINICAL = "Clinical model (logistic regression)"
RADIOMICS_ML = "Radiomics ML (LASSO logistic regression)"
BAYES = "Bayes-optimal (synthetic ground truth)"
COHORT_LABELS = {"internal": "Internal test (20 % of development)", "external": "External cohort"}


@dataclass(frozen=True)
class EvaluateSettings:
    runs: int = 50
    test_fraction: float = 0.2
    bootstrap: int = 1000
    seed: int = 0
    train: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self) -> None:
        if self.runs < 1:
            raise EvaluationError(f"--runs must be >= 1, got {self.runs}")
        if not 0.05 <= self.test_fraction <= 0.5:
            raise EvaluationError(f"test fraction must be in [0.05, 0.5], got {self.test_fraction}")
        if self.bootstrap < 100:
            raise EvaluationError(f"--bootstrap must be >= 100 resamples, got {self.bootstrap}")


def ablation_rows() -> dict[str, tuple[tuple[bool, bool, bool], str]]:
    """Row name -> (modalities switched on, which output scores it)."""
    rows: dict[str, tuple[tuple[bool, bool, bool], str]] = {
        OUTPUT1: ((True, True, False), "output1"),
        OUTPUT2: ((True, True, True), "output2"),
    }
    for name, present in MODALITY_COMBINATIONS.items():
        if name in ("MRI + Radiological", "MRI + Radiological + Radiomics"):
            continue
        rows[f"Model: {name}"] = (present, "output2" if present[2] else "output1")
    return rows


@dataclass
class RunScores:
    """Scores of one run: row -> cohort -> (labels, scores, threshold)."""

    scores: dict[str, dict[str, tuple[np.ndarray, np.ndarray, float]]] = field(default_factory=dict)

    def add(self, row: str, cohort: str, y: np.ndarray, s: np.ndarray, threshold: float) -> None:
        self.scores.setdefault(row, {})[cohort] = (y, s, threshold)


def _model_scores(
    model: Any, table: CaseTable, standardiser: Any, device: str
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    cache: dict[tuple[bool, bool, bool], dict[str, np.ndarray]] = {}
    for row, (present, which) in ablation_rows().items():
        if present not in cache:
            cache[present] = predict_table(
                model, table, standardiser, present=present, device=device
            )
        out[row] = cache[present][which]
    return out


def one_run(
    config: Any,
    dev: CaseTable,
    external: CaseTable | None,
    settings: EvaluateSettings,
    run: int,
) -> RunScores:
    """Train and score one repetition of the protocol."""
    from ai_core.model.network import CascadedMixingTransformer
    from lab.evaluation.baselines import ClinicalBaseline, RadiomicsBaseline
    from lab.model.fit import fit_standardiser

    seed = settings.seed * 1000 + run
    rest_idx, test_idx = stratified_split(dev.labels, settings.test_fraction, seed)
    rest, test = dev.subset(rest_idx), dev.subset(test_idx)
    tr_idx, va_idx = stratified_split(rest.labels, settings.train.validation_fraction, seed + 7)
    train, val = rest.subset(tr_idx), rest.subset(va_idx)
    standardiser = fit_standardiser(train)
    train_settings = TrainSettings(**{**settings.train.to_dict(), "seed": seed})
    result = train_run(config, train, val, standardiser, train_settings)
    model = CascadedMixingTransformer(config)
    model.load_state_dict(result.state_dict)
    model = model.to(train_settings.device).eval()

    cohorts: dict[str, CaseTable] = {"internal": test}
    if external is not None and len(external):
        cohorts["external"] = external
    scores = RunScores()
    val_scores = _model_scores(model, val, standardiser, train_settings.device)
    for row, val_s in val_scores.items():
        thr = youden_threshold(val.labels, val_s)
        for cohort, table in cohorts.items():
            s = _model_scores(model, table, standardiser, train_settings.device)[row]
            scores.add(row, cohort, table.labels, s, thr)

    x_train, names = train.clinical_matrix()
    clinical = ClinicalBaseline(seed=seed).fit(x_train, train.labels, names)
    rad_names = list(train.radiomics_names)
    z_train = radiomics_z(train, standardiser)
    radiomic = RadiomicsBaseline(seed=seed).fit(z_train, train.labels, rad_names)
    baselines: dict[str, Callable[[CaseTable], np.ndarray]] = {
        CLINICAL: lambda t: clinical.predict_proba(t.clinical_matrix()[0]),
        RADIOMICS_ML: lambda t: radiomic.predict_proba(radiomics_z(t, standardiser)),
    }
    for row, predict in baselines.items():
        thr = youden_threshold(val.labels, predict(val))
        for cohort, table in cohorts.items():
            scores.add(row, cohort, table.labels, predict(table), thr)
    for cohort, table in cohorts.items():
        if np.isfinite(table.bayes).all():
            scores.add(BAYES, cohort, table.labels, table.bayes, 0.5)
    return scores


@dataclass
class EvaluationResult:
    settings: EvaluateSettings
    per_run: dict[str, dict[str, list[BinaryMetrics]]]  # row -> cohort -> metrics per run
    first_run: RunScores
    cohort_sizes: dict[str, tuple[int, int]]  # cohort -> (cases, Ki-67 high)
    bundle_rows: dict[str, tuple[np.ndarray, np.ndarray, float]]  # the bundle as trained
    not_assessable: dict[str, str]
    seconds: float
    model_version: str
    bayes_population_auc: float | None = None


def summary_table(result: EvaluationResult) -> dict[str, dict[str, dict[str, Any]]]:
    """row -> cohort -> metric -> Interval (over runs)."""
    return {
        row: {cohort: summarise_runs(runs) for cohort, runs in cohorts.items()}
        for row, cohorts in result.per_run.items()
    }


def first_run_bootstrap(result: EvaluationResult) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row, cohorts in result.first_run.scores.items():
        for cohort, (y, s, thr) in cohorts.items():
            out.setdefault(row, {})[cohort] = bootstrap_metrics(
                y, s, thr, n_boot=result.settings.bootstrap, seed=result.settings.seed
            )
    return out


def first_run_delong(result: EvaluationResult) -> list[dict[str, Any]]:
    rows = []
    for cohort in result.cohort_sizes:
        y, s1, _ = result.first_run.scores[OUTPUT1][cohort]
        for other in (CLINICAL, RADIOMICS_ML, OUTPUT2):
            if cohort not in result.first_run.scores.get(other, {}):
                continue
            _, s2, _ = result.first_run.scores[other][cohort]
            d = delong_test(y, s1, s2)
            rows.append({"cohort": cohort, "versus": other, "result": d})
    return rows
