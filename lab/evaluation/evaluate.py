"""``ki67node evaluate``: run the protocol on a manifest and write the report.

:mod:`lab.evaluation.protocol` holds one run of the source study's
protocol and the summaries of many; :mod:`lab.evaluation.report` writes
them as Markdown with plots. This module puts the two together: load the
bundle and the feature table, repeat the runs, score the bundle as it was
trained, write the report.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ai_core.errors import EvaluationError
from ai_core.model.bundle import load_bundle
from lab.evaluation.metrics import BinaryMetrics, binary_metrics
from lab.evaluation.protocol import (
    OUTPUT1,
    EvaluateSettings,
    EvaluationResult,
    RunScores,
    one_run,
)
from lab.evaluation.report import write_report
from lab.model.data import CaseTable
from lab.model.feature_cache import FeatureParams
from lab.model.fit import load_table
from lab.model.train import predict_table


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
