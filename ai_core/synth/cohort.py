"""``ki67node synth``: write a synthetic cohort (DICOM studies, ground truth, masks).

Layout under OUT_DIR (nothing is written anywhere else)::

    CASE0001/<series number>/IM00001.dcm ...   one folder per series
    masks/CASE0001.nii.gz                      tumour mask on the T1C grid
    ground_truth.csv, ground_truth.json        one row / object per case
    manifest.csv                               for ki67node train / evaluate
    cohort.json                                seed, profile, counts, Bayes AUC

The same ``seed`` (and arguments) writes byte-identical files.
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

from ai_core.synth.anatomy import SynthError
from ai_core.synth.clinical import auc, population_bayes_auc
from ai_core.synth.plan import SIZES, CohortOptions, plan_case
from ai_core.synth.profiles import PROFILES, SiteProfile
from ai_core.synth.render import render_case

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


def _check_args(
    out_dir: Path, cases: int, seed: int, profile: str | SiteProfile, size: str
) -> None:
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


def generate_cohort(
    out_dir: Path,
    *,
    cases: int,
    seed: int,
    profile: str | SiteProfile = "internal",
    longitudinal: bool = False,
    size: str = "full",
    progress: bool = True,
    asymptomatic_fraction: float | None = None,
    heads: tuple[int, ...] = (0,),
    volume_range: tuple[float, float] | None = None,
    tumour_free_fraction: float = 0.0,
    t1c_only: bool = False,
) -> CohortSummary:
    """Write ``cases`` synthetic studies into ``out_dir`` (which must be new or empty).

    ``profile`` is a site name (``"internal"``, ``"external"``) or a
    :class:`SiteProfile` (benchmarks and tests tune the variant rates that way).
    ``asymptomatic_fraction`` overrides the profile's share of small
    asymptomatic meningiomas (issue 6). ``longitudinal=True`` writes
    surveillance patients with follow-up studies instead
    (:func:`ai_core.synth.longitudinal.generate_longitudinal`).

    Segmentation benchmarks (opt-in; the defaults write exactly the cohort of
    before): ``heads`` the distinct heads to draw from
    (:mod:`ai_core.synth.heads`), ``volume_range`` tumour volumes (cm3,
    log-uniform) at uniformly drawn locations, ``tumour_free_fraction`` the
    share of cases without a tumour (empty mask, volume 0, location "none"),
    ``t1c_only`` no distractor series (see :class:`CohortOptions`).
    """
    out_dir = Path(out_dir)
    _check_args(out_dir, cases, seed, profile, size)
    options = CohortOptions(
        heads=tuple(heads),
        volume_range=None if volume_range is None else (volume_range[0], volume_range[1]),
        tumour_free_fraction=tumour_free_fraction,
        t1c_only=t1c_only,
    )
    if longitudinal and not options.is_default:
        raise SynthError(
            "longitudinal cohorts take none of heads, volume_range, tumour_free_fraction, "
            "t1c_only; use ai_core.synth.pairs.generate_pairs for growth-measurement pairs"
        )
    if longitudinal:  # surveillance patients with follow-up studies (issue 6)
        from ai_core.synth.longitudinal import generate_longitudinal

        return generate_longitudinal(
            out_dir, cases=cases, seed=seed, profile=profile, size=size, progress=progress
        ).cohort
    site = profile if isinstance(profile, SiteProfile) else PROFILES[profile]
    if asymptomatic_fraction is not None:
        if not 0.0 <= asymptomatic_fraction <= 1.0:
            raise SynthError(
                f"asymptomatic_fraction must be between 0 and 1, got {asymptomatic_fraction}"
            )
        from dataclasses import replace

        site = replace(site, asymptomatic_fraction=asymptomatic_fraction)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(exist_ok=True)
    log.info(
        "writing %d synthetic cases (seed %d, profile %s, size %s)", cases, seed, site.name, size
    )
    bar = _progress(cases, progress)
    records: list[dict[str, Any]] = []
    try:
        for index in range(cases):
            plan = plan_case(seed, index, site, size, options)
            rendered = render_case(plan, out_dir)
            _write_mask(out_dir / "masks" / f"{plan.case_id}.nii.gz", rendered)
            rendered.record["mask_file"] = f"masks/{plan.case_id}.nii.gz"
            records.append(rendered.record)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return _write_summary(out_dir, records, seed, site, size, options)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="synth", unit="case", file=sys.stderr)


def _write_mask(path: Path, rendered: Any) -> None:
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


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_summary(
    out_dir: Path,
    records: list[dict[str, Any]],
    seed: int,
    site: Any,
    size: str,
    options: CohortOptions | None = None,
    extra: dict[str, Any] | None = None,
) -> CohortSummary:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: _csv_value(r[k]) for k in CSV_COLUMNS})
    csv_path = out_dir / "ground_truth.csv"
    json_path = out_dir / "ground_truth.json"
    _atomic_text(csv_path, buf.getvalue())
    _atomic_text(json_path, json.dumps(records, indent=1, sort_keys=True) + "\n")
    labels = np.array([r["ki67_high"] for r in records], dtype=bool)
    probs = np.array([r["bayes_probability"] for r in records], dtype=float)
    cohort_auc = auc(probs, labels)
    population_auc = population_bayes_auc(
        site.label_model, asymptomatic_fraction=site.asymptomatic_fraction, seed=seed
    )
    count = {
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
    cohort = {
        "generator": "ki67node synth",
        "generator_version": GENERATOR_VERSION,
        "synthetic": True,
        "notice": "synthetic data, no real patient; research use only, not for diagnostic use",
        "seed": seed,
        "profile": site.name,
        "size": size,
        "asymptomatic_fraction": site.asymptomatic_fraction,
        "counts": count,
        "ki67_high_rate": round(float(labels.mean()), 4),
        "bayes_auc_cohort": _round(cohort_auc),
        "bayes_auc_population": _round(population_auc),
        "label_model": _label_model_json(site.label_model),
    }
    if options is not None and not options.is_default:  # default cohorts: file as before
        cohort["segmentation_benchmark"] = {
            "heads": list(options.heads),
            "volume_range_cm3": None
            if options.volume_range is None
            else list(options.volume_range),
            "tumour_free_fraction": options.tumour_free_fraction,
            "t1c_only": options.t1c_only,
            "tumour_free_cases": sum(not r["has_tumour"] for r in records),
            "by_head": _counts(records, "head"),
        }
    cohort.update(extra or {})
    cohort_path = out_dir / "cohort.json"
    _atomic_text(cohort_path, json.dumps(cohort, indent=1, sort_keys=True) + "\n")
    from ai_core.model.cases import manifest_from_ground_truth

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
