"""What every synthetic cohort writes besides its studies: masks, ground truth, cohort.json.

Shared by :mod:`lab.synth.cohort` (cross-sectional),
:mod:`lab.synth.longitudinal` (surveillance patients) and
:mod:`lab.synth.pairs` (growth-measurement pairs): argument checks, the
progress bar, atomic writes (a cohort is byte-identical for the same seed),
``ground_truth.csv``/``.json``, ``cohort.json`` and the manifest.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lab.model.cases import manifest_from_ground_truth
from lab.synth.anatomy import SynthError
from lab.synth.clinical import auc, population_bayes_auc
from lab.synth.plan import SIZES, CohortOptions
from lab.synth.profiles import PROFILES, SiteProfile

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1"
CSV_COLUMNS = (
    "case_id",
    "patient_id",
    "study_uid",
    "series_uid",
    "series_number",
    "ki67_high",
    "ki67_index",
    "bayes_probability",
    "edema_index",
    "necrosis",
    "csf_cleft",
    "capsular_enhancement",
    "volume_cm3",
    "max_diameter_mm",
    "mask_volume_cm3",
    "location",
    "side",
    "subgroup",
    "vendor",
    "orientation",
    "enhanced",
    "transfer_syntax",
    "rescale",
    "oblique",
    "reverse_slice_order",
    "pixel_spacing_mm",
    "slice_thickness_mm",
    "head",  # distinct head index (0: the template head)
    "has_tumour",
)
MAX_CASES = 100_000


@dataclass(frozen=True)
class CohortSummary:
    """What ``generate_cohort`` wrote."""

    out_dir: Path
    cases: int
    seed: int
    profile: str
    size: str
    ki67_high: int
    bayes_auc_cohort: float  # AUC of the Bayes probabilities against this cohort's labels
    bayes_auc_population: float  # the ceiling, Monte Carlo over the label model
    ground_truth_csv: Path
    ground_truth_json: Path
    cohort_json: Path
    manifest_csv: Path  # the training/evaluation manifest (ki67node train / evaluate)


def check_args(out_dir: Path, cases: int, seed: int, profile: str | SiteProfile, size: str) -> None:
    if not isinstance(profile, SiteProfile) and profile not in PROFILES:
        raise SynthError(f"unknown profile {profile!r}; use one of: {', '.join(PROFILES)}")
    if size not in SIZES:
        raise SynthError(f"unknown size {size!r}; use one of: {', '.join(SIZES)}")
    if not 1 <= cases <= MAX_CASES:
        raise SynthError(f"--cases must be between 1 and {MAX_CASES}, got {cases}")
    if not 0 <= seed < 2**63:
        raise SynthError(f"--seed must be a non-negative integer below 2**63, got {seed}")
    if out_dir.exists() and not out_dir.is_dir():
        raise SynthError(f"{out_dir} exists and is not a folder; choose another OUT_DIR")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise SynthError(
            f"{out_dir} is not empty; choose a new OUT_DIR (synth never overwrites a cohort)"
        )


def progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="synth", unit="case", file=sys.stderr)


def write_mask(path: Path, rendered: Any) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(rendered.mask.astype(np.uint8), rendered.mask_affine)
    img.header.set_sform(rendered.mask_affine, code=1)
    img.header.set_qform(rendered.mask_affine, code=1)
    img.header["descrip"] = b"ki67node synth tumour mask (synthetic)"
    img.header.set_xyzt_units("mm")
    # nibabel writes gzip with mtime 0, so the same mask gives the same bytes
    tmp = path.with_name(path.name + ".tmp.nii.gz")
    nib.save(img, str(tmp))
    os.replace(tmp, path)


def atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def csv_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """CSV of ``rows`` (only ``columns``), booleans written as 1/0, ``\\n`` line ends."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("1" if v is True else "0" if v is False else v) for k, v in r.items()})
    return buf.getvalue()


def write_summary(
    out_dir: Path,
    records: list[dict[str, Any]],
    seed: int,
    site: Any,
    size: str,
    options: CohortOptions | None = None,
    extra: dict[str, Any] | None = None,
) -> CohortSummary:
    """Write the ground truth, ``cohort.json`` and the manifest of a written cohort."""
    csv_path, json_path = _write_ground_truth(out_dir, records)
    labels = np.array([r["ki67_high"] for r in records], dtype=bool)
    probs = np.array([r["bayes_probability"] for r in records], dtype=float)
    cohort_auc = auc(probs, labels)
    population_auc = population_bayes_auc(
        site.label_model, asymptomatic_fraction=site.asymptomatic_fraction, seed=seed
    )
    cohort = {
        "generator": "ki67node synth",
        "generator_version": GENERATOR_VERSION,
        "synthetic": True,
        "notice": "synthetic data, no real patient; research use only, not for diagnostic use",
        "seed": seed,
        "profile": site.name,
        "size": size,
        "asymptomatic_fraction": site.asymptomatic_fraction,
        "counts": _cohort_counts(records, labels),
        "ki67_high_rate": round(float(labels.mean()), 4),
        "bayes_auc_cohort": _round(cohort_auc),
        "bayes_auc_population": _round(population_auc),
        "label_model": _label_model_json(site.label_model),
    }
    if options is not None and not options.is_default:  # default cohorts: file as before
        cohort["segmentation_benchmark"] = _benchmark_json(options, records)
    cohort.update(extra or {})
    cohort_path = out_dir / "cohort.json"
    atomic_text(cohort_path, json.dumps(cohort, indent=1, sort_keys=True) + "\n")
    manifest = manifest_from_ground_truth(
        out_dir, cohort="external" if site.name == "external" else "development"
    )
    log.info(
        "synthetic cohort written: %d cases, %d Ki-67 high, Bayes AUC %.3f (population %.3f)",
        len(records),
        int(labels.sum()),
        cohort_auc,
        population_auc,
    )
    return CohortSummary(
        out_dir=out_dir,
        cases=len(records),
        seed=seed,
        profile=site.name,
        size=size,
        ki67_high=int(labels.sum()),
        bayes_auc_cohort=cohort_auc,
        bayes_auc_population=population_auc,
        ground_truth_csv=csv_path,
        ground_truth_json=json_path,
        cohort_json=cohort_path,
        manifest_csv=manifest,
    )


def _write_ground_truth(out_dir: Path, records: list[dict[str, Any]]) -> tuple[Path, Path]:
    """``ground_truth.csv`` (the :data:`CSV_COLUMNS`) and ``ground_truth.json`` (everything)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: _csv_value(r[k]) for k in CSV_COLUMNS})
    csv_path = out_dir / "ground_truth.csv"
    json_path = out_dir / "ground_truth.json"
    atomic_text(csv_path, buf.getvalue())
    atomic_text(json_path, json.dumps(records, indent=1, sort_keys=True) + "\n")
    return csv_path, json_path


def _cohort_counts(records: list[dict[str, Any]], labels: np.ndarray) -> dict[str, Any]:
    return {
        "cases": len(records),
        "ki67_high": int(labels.sum()),
        "necrosis": sum(bool(r["necrosis"]) for r in records),
        "by_location": _counts(records, "location"),
        "by_vendor": _counts(records, "vendor"),
        "by_orientation": _counts(records, "orientation"),
        "by_subgroup": _counts(records, "subgroup"),
        "enhanced": sum(bool(r["enhanced"]) for r in records),
        "compressed": sum(r["transfer_syntax"] != "explicit" for r in records),
    }


def _benchmark_json(options: CohortOptions, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The segmentation-benchmark options of a non-default cohort, with what they gave."""
    return {
        "heads": list(options.heads),
        "volume_range_cm3": None if options.volume_range is None else list(options.volume_range),
        "tumour_free_fraction": options.tumour_free_fraction,
        "t1c_only": options.t1c_only,
        "tumour_free_cases": sum(not r["has_tumour"] for r in records),
        "by_head": _counts(records, "head"),
    }


def _round(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 4)


def _counts(records: list[dict[str, Any]], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        out[str(r[key])] = out.get(str(r[key]), 0) + 1
    return dict(sorted(out.items()))


def _csv_value(v: Any) -> Any:
    if isinstance(v, bool):
        return "1" if v else "0"
    return v


def _label_model_json(model: Any) -> dict[str, Any]:
    def cls(cm: Any) -> dict[str, Any]:
        return {
            "mean_volume_cm3": cm.mean_volume_cm3,
            "p_necrosis": cm.p_necrosis,
            "p_edema": cm.p_edema,
            "edema_log_mu": round(cm.edema_log_mu, 6),
            "p_cleft": cm.p_cleft,
            "p_capsule": cm.p_capsule,
            "texture_mu": cm.texture_mu,
            "location": dict(zip(("convexity", "falx", "skull_base"), cm.location, strict=True)),
        }

    return {
        "prevalence": model.prevalence,
        "volume_sigma": model.volume_sigma,
        "volume_range_cm3": list(model.volume_range_cm3),
        "edema_sigma": model.edema_sigma,
        "edema_index_max": model.edema_index_max,
        "ki67_low": cls(model.low),
        "ki67_high": cls(model.high),
    }
