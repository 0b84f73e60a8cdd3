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

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ai_core.errors import EvaluationError
from ai_core.evaluation.metrics import (
    BinaryMetrics,
    binary_metrics,
    bootstrap_metrics,
    delong_test,
    summarise_runs,
    youden_threshold,
)
from ai_core.model.cases import FeatureParams
from ai_core.model.data import MODALITY_COMBINATIONS, CaseTable, radiomics_z
from ai_core.model.train import TrainSettings, predict_table, stratified_split, train_run

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
    from ai_core.evaluation.baselines import ClinicalBaseline, RadiomicsBaseline
    from ai_core.model.fit import fit_standardiser
    from ai_core.model.network import CascadedMixingTransformer

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


def evaluate_manifest(
    manifests: Sequence[Path],
    bundle_dir: Path | None,
    out_dir: Path,
    settings: EvaluateSettings,
    *,
    cache_dir: Path | None = None,
    workers: int = 1,
    progress: bool = True,
) -> tuple[EvaluationResult, Path]:
    """Run the protocol and write the report into ``out_dir``; returns the result and report path."""
    from ai_core.evaluation.report import write_report
    from ai_core.model.bundle import load_bundle
    from ai_core.model.fit import load_table

    start = time.perf_counter()
    bundle = load_bundle(bundle_dir)
    params = FeatureParams(bundle.preprocess, bundle.crop, bundle.radiomics_params)
    manifests = [Path(m) for m in manifests]
    table = load_table(
        manifests,
        params,
        cache_dir or out_dir / "cache",
        workers=workers,
        progress=progress,
        device=settings.train.device,
    )
    dev = table.where_cohort("development")
    external = table.where_cohort("external")
    if len(dev) < 10:
        raise EvaluationError(
            f"{len(dev)} assessable development case(s): the 8:2 protocol needs at least 10"
        )
    per_run: dict[str, dict[str, list[BinaryMetrics]]] = {}
    first: RunScores | None = None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=settings.runs, desc="evaluation runs", unit="run")
    try:
        for run in range(settings.runs):
            scores = one_run(bundle.config, dev, external if len(external) else None, settings, run)
            if first is None:
                first = scores
            for row, cohorts in scores.scores.items():
                for cohort, (y, s, thr) in cohorts.items():
                    per_run.setdefault(row, {}).setdefault(cohort, []).append(
                        binary_metrics(y, s, thr)
                    )
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    assert first is not None
    bundle_rows = _bundle_as_trained(bundle, dev, external, settings.train.device)
    sizes = {"internal": (round(len(dev) * settings.test_fraction), -1)}
    y_int = first.scores[OUTPUT1]["internal"][0]
    sizes["internal"] = (len(y_int), int(y_int.sum()))
    if len(external):
        sizes["external"] = (len(external), int(external.labels.sum()))
    result = EvaluationResult(
        settings=settings,
        per_run=per_run,
        first_run=first,
        cohort_sizes=sizes,
        bundle_rows=bundle_rows,
        not_assessable=table.not_assessable,
        seconds=time.perf_counter() - start,
        model_version=bundle.version,
        bayes_population_auc=_population_bayes(manifests),
    )
    report = write_report(result, out_dir, manifests=manifests, bundle=bundle)
    return result, report


def _bundle_as_trained(
    bundle: Any, dev: CaseTable, external: CaseTable, device: str
) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """The bundle's own model on cases it was not trained on (external + unseen development)."""
    import hashlib

    trained = set(bundle.meta.get("trained_on", {}).get("case_id_sha256", []))
    unseen = [
        i
        for i, c in enumerate(dev.case_ids)
        if hashlib.sha256(c.encode()).hexdigest()[:16] not in trained
    ]
    model = bundle.build_model(device)
    out: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    for name, table in (
        ("development (not trained on)", dev.subset(unseen)),
        ("external", external),
    ):
        if len(table) < 2 or len(np.unique(table.labels)) < 2:
            continue
        p = predict_table(model, table, bundle.standardiser, device=device)
        out[f"{name}: Output 1"] = (table.labels, p["output1"], bundle.threshold)
        out[f"{name}: Output 2"] = (table.labels, p["output2"], bundle.threshold)
    return out


def _population_bayes(manifests: Sequence[Path]) -> float | None:
    """The generator's population Bayes AUC when every manifest is a synthetic cohort."""
    values = []
    for manifest in manifests:
        try:
            info = json.loads((manifest.parent / "cohort.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if info.get("bayes_auc_population") is None:
            return None
        values.append(float(info["bayes_auc_population"]))
    return min(values) if values else None


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
