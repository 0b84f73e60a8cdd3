"""Training/evaluation manifests: reading them, and writing one for a synthetic cohort.

A manifest is a CSV, one row per case (paths relative to the CSV's folder):

=====================  ==========================================================
column                 meaning
=====================  ==========================================================
case_id                unique, required
series                 folder with the T1C series' DICOM files (searched
                       recursively), required
series_uid             optional: pick this series when the folder holds several
mask                   optional tumour mask (NIfTI...) in patient space; without
                       it the segmentation backend makes one
ki67_index / ki67_high the label: Ki-67 index in % (high = ≥ 5) or 0/1; one needed
edema_index, necrosis, csf_cleft, capsular_enhancement
                       optional radiological characteristics (blank = unknown)
cohort                 optional: ``development`` (default) or ``external``
age, sex, bayes_probability
                       optional: clinical baseline inputs; the synthetic cohort's
                       Bayes-optimal probability (a reference line in reports)
=====================  ==========================================================

The image pipeline's result per case is cached by
:mod:`lab.model.feature_cache`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_core.errors import AiCoreError, EvaluationError
from ai_core.model.inputs import CHARACTERISTICS, Characteristics, parse_bool

KI67_THRESHOLD = 5.0
COHORTS = ("development", "external")


@dataclass(frozen=True)
class ManifestCase:
    """One row of a manifest, validated."""

    case_id: str
    series: Path
    label: int  # 1 = Ki-67 >= 5 %
    ki67_index: float | None = None
    series_uid: str | None = None
    mask: Path | None = None
    characteristics: Characteristics = field(default_factory=Characteristics)
    cohort: str = "development"
    clinical: dict[str, float] = field(default_factory=dict)  # age, sex (1 = female)
    bayes_probability: float | None = None


def read_manifest(path: Path) -> list[ManifestCase]:
    """All cases of a manifest CSV; :class:`EvaluationError` names the row and column of a problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise EvaluationError(f"cannot read the manifest {path}: {exc.strerror or exc}") from exc
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise EvaluationError(f"the manifest {path} has no cases")
    columns = set(rows[0])
    for needed in ("case_id", "series"):
        if needed not in columns:
            raise EvaluationError(f"the manifest {path} has no {needed!r} column")
    if not {"ki67_index", "ki67_high"} & columns:
        raise EvaluationError(f"the manifest {path} needs a 'ki67_index' or 'ki67_high' column")
    base = path.parent
    cases: list[ManifestCase] = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=2):
        where = f"{path.name} line {number}"
        try:
            case = _case(row, base)
        except (AiCoreError, ValueError) as exc:
            raise EvaluationError(f"{where}: {exc}") from None
        if case.case_id in seen:
            raise EvaluationError(f"{where}: case_id {case.case_id!r} appears twice")
        seen.add(case.case_id)
        cases.append(case)
    return cases


def read_manifests(paths: Sequence[Path]) -> list[ManifestCase]:
    """Several manifests as one list (e.g. a development and an external cohort)."""
    cases: list[ManifestCase] = []
    seen: dict[str, Path] = {}
    for path in paths:
        for case in read_manifest(Path(path)):
            if case.case_id in seen:
                raise EvaluationError(
                    f"case_id {case.case_id!r} is in both {seen[case.case_id]} and {path}"
                )
            seen[case.case_id] = Path(path)
            cases.append(case)
    return cases


def _case(row: dict[str, str], base: Path) -> ManifestCase:
    case_id = (row.get("case_id") or "").strip()
    if not case_id:
        raise ValueError("case_id is empty")
    series_text = (row.get("series") or "").strip()
    if not series_text:
        raise ValueError("series is empty")
    series = (base / series_text).resolve()
    if not series.is_dir():
        raise ValueError(f"series folder {series} does not exist")
    mask_text = (row.get("mask") or "").strip()
    mask = (base / mask_text).resolve() if mask_text else None
    if mask is not None and not mask.is_file():
        raise ValueError(f"mask {mask} does not exist")
    index = _optional_float(row.get("ki67_index"), "ki67_index")
    high = row.get("ki67_high")
    if high is not None and high.strip():
        flag = parse_bool(high, "ki67_high")
        label = int(bool(flag))
        if index is not None and (index >= KI67_THRESHOLD) != bool(flag):
            raise ValueError(f"ki67_high={high} contradicts ki67_index={index}")
    elif index is not None:
        label = int(index >= KI67_THRESHOLD)
    else:
        raise ValueError("no label: fill ki67_index or ki67_high")
    cohort = (row.get("cohort") or "development").strip().lower() or "development"
    if cohort == "internal":
        cohort = "development"
    if cohort not in COHORTS:
        raise ValueError(f"cohort must be one of {', '.join(COHORTS)}, got {cohort!r}")
    clinical: dict[str, float] = {}
    age = _optional_float(row.get("age"), "age")
    if age is not None:
        clinical["age"] = age
    sex = (row.get("sex") or "").strip().upper()
    if sex:
        if sex not in ("F", "M"):
            raise ValueError(f"sex must be F or M, got {sex!r}")
        clinical["sex_female"] = 1.0 if sex == "F" else 0.0
    return ManifestCase(
        case_id=case_id,
        series=series,
        label=label,
        ki67_index=index,
        series_uid=(row.get("series_uid") or "").strip() or None,
        mask=mask,
        characteristics=Characteristics.from_mapping({n: row.get(n) for n in CHARACTERISTICS}),
        cohort=cohort,
        clinical=clinical,
        bayes_probability=_optional_float(row.get("bayes_probability"), "bayes_probability"),
    )


def _optional_float(value: str | None, name: str) -> float | None:
    if value is None or not value.strip() or value.strip().lower() in ("na", "nan", "unknown"):
        return None
    try:
        out = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def manifest_from_ground_truth(cohort_dir: Path, *, cohort: str = "development") -> Path:
    """Write ``manifest.csv`` for a ``ki67node synth`` cohort (true masks, true characteristics)."""
    cohort_dir = Path(cohort_dir)
    truth = json.loads((cohort_dir / "ground_truth.json").read_text(encoding="utf-8"))
    rows = truth["cases"] if isinstance(truth, dict) else truth
    columns = [
        "case_id",
        "series",
        "series_uid",
        "mask",
        "ki67_index",
        "ki67_high",
        *CHARACTERISTICS,
        "cohort",
        "age",
        "sex",
        "bayes_probability",
    ]
    out = cohort_dir / "manifest.csv"
    tmp = out.with_name(".manifest.csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    "case_id": r["patient_id"],  # unique across seeds, unlike CASE0001
                    "series": f"{r['case_id']}/{r['series_number']}",
                    "series_uid": r["series_uid"],
                    "mask": r.get("mask_file", f"masks/{r['case_id']}.nii.gz"),
                    "ki67_index": r["ki67_index"],
                    "ki67_high": int(bool(r["ki67_high"])),
                    "edema_index": r["edema_index"],
                    "necrosis": _yes_no(r["necrosis"]),
                    "csf_cleft": _yes_no(r["csf_cleft"]),
                    "capsular_enhancement": _yes_no(r["capsular_enhancement"]),
                    "cohort": cohort,
                    "age": r.get("age", ""),
                    "sex": r.get("sex", ""),
                    "bayes_probability": r["bayes_probability"],
                }
            )
    os.replace(tmp, out)
    return out


def _yes_no(value: Any) -> str:
    return "yes" if bool(value) else "no"
