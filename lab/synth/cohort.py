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

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from lab.synth.anatomy import SynthError
from lab.synth.longitudinal import generate_longitudinal
from lab.synth.output import (
    CSV_COLUMNS,
    MAX_CASES,
    CohortSummary,
    check_args,
    progress_bar,
    write_mask,
    write_summary,
)
from lab.synth.plan import CohortOptions, plan_case
from lab.synth.profiles import PROFILES, SiteProfile
from lab.synth.render import render_case

log = logging.getLogger(__name__)


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
    (:func:`lab.synth.longitudinal.generate_longitudinal`).

    Segmentation benchmarks (opt-in; the defaults write exactly the cohort of
    before): ``heads`` the distinct heads to draw from
    (:mod:`lab.synth.heads`), ``volume_range`` tumour volumes (cm3,
    log-uniform) at uniformly drawn locations, ``tumour_free_fraction`` the
    share of cases without a tumour (empty mask, volume 0, location "none"),
    ``t1c_only`` no distractor series (see :class:`CohortOptions`).
    """
    out_dir = Path(out_dir)
    check_args(out_dir, cases, seed, profile, size)
    options = CohortOptions(
        heads=tuple(heads),
        volume_range=None if volume_range is None else (volume_range[0], volume_range[1]),
        tumour_free_fraction=tumour_free_fraction,
        t1c_only=t1c_only,
    )
    if longitudinal and not options.is_default:
        raise SynthError(
            "longitudinal cohorts take none of heads, volume_range, tumour_free_fraction, "
            "t1c_only; use lab.synth.pairs.generate_pairs for growth-measurement pairs"
        )
    if longitudinal:  # surveillance patients with follow-up studies (issue 6)
        return generate_longitudinal(
            out_dir, cases=cases, seed=seed, profile=profile, size=size, progress=progress
        ).cohort
    site = profile if isinstance(profile, SiteProfile) else PROFILES[profile]
    if asymptomatic_fraction is not None:
        if not 0.0 <= asymptomatic_fraction <= 1.0:
            raise SynthError(
                f"asymptomatic_fraction must be between 0 and 1, got {asymptomatic_fraction}"
            )
        site = replace(site, asymptomatic_fraction=asymptomatic_fraction)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(exist_ok=True)
    log.info(
        "writing %d synthetic cases (seed %d, profile %s, size %s)", cases, seed, site.name, size
    )
    bar = progress_bar(cases, progress)
    records: list[dict[str, Any]] = []
    try:
        for index in range(cases):
            plan = plan_case(seed, index, site, size, options)
            rendered = render_case(plan, out_dir)
            write_mask(out_dir / "masks" / f"{plan.case_id}.nii.gz", rendered)
            rendered.record["mask_file"] = f"masks/{plan.case_id}.nii.gz"
            records.append(rendered.record)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return write_summary(out_dir, records, seed, site, size, options)


__all__ = ["CSV_COLUMNS", "MAX_CASES", "CohortSummary", "generate_cohort"]
