"""Study pairs for growth measurement: the same tumour twice, with a known true change.

Each pair is a baseline study and a follow-up of the same patient and the
same tumour (same dural anchor and shape, volume times ``1 + change``), on
a new table position about a year later, sometimes on another vendor's
scanner, with new noise and contrast jitter. Both studies are written like a
cohort (:mod:`lab.synth.cohort`: one folder per study, ``masks/``,
``ground_truth.csv`` with one row per study) plus ``pairs.csv``::

    pair_id, baseline_case, followup_case, baseline_volume_cm3,
    followup_volume_cm3, true_change_percent, same_vendor, head

``true_change_percent`` comes from the two exact truth volumes (after the
head warp and the poses), not from the drawn change.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lab.synth.anatomy import SynthError
from lab.synth.growth import DAYS_PER_YEAR, Visit
from lab.synth.longitudinal import followup_plan, restamp_identity
from lab.synth.output import (
    atomic_text,
    check_args,
    csv_text,
    progress_bar,
    write_mask,
    write_summary,
)
from lab.synth.plan import (
    STREAM_SEGBENCH,
    CasePlan,
    CohortOptions,
    _quantisation,
    plan_case,
    stream,
)
from lab.synth.profiles import PROFILES, SiteProfile

log = logging.getLogger(__name__)

PAIRS_COLUMNS = (
    "pair_id",
    "baseline_case",
    "followup_case",
    "baseline_volume_cm3",
    "followup_volume_cm3",
    "true_change_percent",
    "same_vendor",
    "head",
)
DEFAULT_PAIR_HEADS = tuple(range(1, 9))


@dataclass(frozen=True)
class PairsSummary:
    """What ``generate_pairs`` wrote."""

    cohort: Any  # the CohortSummary of both studies of every pair
    pairs: int
    pairs_csv: Path


def _check_pair_args(
    pairs: int,
    volume_range: tuple[float, float],
    change_range: tuple[float, float],
    p_other_vendor: float,
) -> None:
    if not 1 <= pairs <= 50_000:
        raise SynthError(f"--pairs must be between 1 and 50000, got {pairs}")
    lo, hi = change_range
    if not -0.9 < lo <= hi <= 5.0:
        raise SynthError(
            f"change_range must be (low, high) with -0.9 < low <= high <= 5 "
            f"(a fraction: 0.25 is +25 %), got {change_range}"
        )
    if volume_range[1] * (1 + hi) > 500:
        raise SynthError(
            f"volume_range {volume_range} with change up to {hi} gives tumours over 500 cm3; "
            "lower one of them"
        )
    if not 0.0 <= p_other_vendor <= 1.0:
        raise SynthError(f"p_other_vendor must be between 0 and 1, got {p_other_vendor}")


def pair_followup_plan(
    base: CasePlan,
    site: SiteProfile,
    change: float,
    rng: np.random.Generator,
    p_other_vendor: float,
) -> tuple[CasePlan, Visit]:
    """The follow-up of ``base``: volume x (1 + change), ~1 year later, maybe another vendor."""
    b = base.study_date
    bdate = dt.date(int(b[:4]), int(b[4:6]), int(b[6:]))
    days = int(rng.integers(300, 431))
    date = bdate + dt.timedelta(days=days)
    visit = Visit(
        number=1,
        date=date.strftime("%Y%m%d"),
        years=round(days / DAYS_PER_YEAR, 4),
        volume_cm3=base.features.volume_cm3 * (1.0 + change),
        grown=change >= 0.15,
    )
    fu = replace(followup_plan(base, visit, rng), session=1)
    others = tuple((v, w) for v, w in site.vendors if v != base.vendor)
    if others and rng.random() < p_other_vendor:
        names = [v for v, _ in others]
        p = np.array([w for _, w in others], dtype=float)
        vendor = names[int(rng.choice(len(names), p=p / p.sum()))]
        rescale, quant = _quantisation(vendor, site, rng)
        fu = replace(fu, vendor=vendor, rescale=rescale, quant=quant)
    return fu, visit


def generate_pairs(
    out_dir: Path,
    *,
    pairs: int,
    seed: int,
    heads: tuple[int, ...] = DEFAULT_PAIR_HEADS,
    profile: str | SiteProfile = "internal",
    size: str = "full",
    volume_range: tuple[float, float] = (0.5, 15.0),
    change_range: tuple[float, float] = (-0.05, 0.60),
    p_other_vendor: float = 0.3,
    t1c_only: bool = True,
    progress: bool = True,
) -> PairsSummary:
    """Write ``pairs`` baseline/follow-up study pairs into ``out_dir`` (new or empty)."""
    from lab.synth.render import render_case

    out_dir = Path(out_dir)
    _check_pair_args(pairs, volume_range, change_range, p_other_vendor)
    check_args(out_dir, pairs, seed, profile, size)
    options = CohortOptions(
        heads=tuple(heads), volume_range=(volume_range[0], volume_range[1]), t1c_only=t1c_only
    )
    site = profile if isinstance(profile, SiteProfile) else PROFILES[profile]
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    log.info("writing %d synthetic study pairs (seed %d, size %s)", pairs, seed, size)
    bar = progress_bar(2 * pairs, progress)
    records: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    try:
        for index in range(pairs):
            base = plan_case(seed, index, site, size, options)
            rng = stream(seed, index, STREAM_SEGBENCH, 1)
            change = float(rng.uniform(*change_range))
            fu, visit = pair_followup_plan(base, site, change, rng, p_other_vendor)
            done = []
            for plan in (base, fu):
                rendered = render_case(plan, out_dir)
                write_mask(out_dir / "masks" / f"{plan.case_id}.nii.gz", rendered)
                rendered.record["mask_file"] = f"masks/{plan.case_id}.nii.gz"
                records.append(rendered.record)
                done.append(rendered)
                if bar is not None:
                    bar.update(1)
            restamp_identity(out_dir / fu.case_id, base, visit)
            v0, v1 = done[0].volume_cm3, done[1].volume_cm3
            rows.append(
                {
                    "pair_id": f"PAIR{index + 1:04d}",
                    "baseline_case": base.case_id,
                    "followup_case": fu.case_id,
                    "baseline_volume_cm3": round(v0, 6),
                    "followup_volume_cm3": round(v1, 6),
                    "true_change_percent": round(100.0 * (v1 / v0 - 1.0), 6),
                    "same_vendor": fu.vendor == base.vendor,
                    "head": base.head,
                }
            )
    finally:
        if bar is not None:
            bar.close()
    extra = {
        "pairs": {
            "pairs": pairs,
            "change_range": list(change_range),
            "p_other_vendor": p_other_vendor,
            "pairs_csv": "pairs.csv",
        }
    }
    summary = write_summary(out_dir, records, seed, site, size, options, extra)
    pairs_csv = out_dir / "pairs.csv"
    atomic_text(pairs_csv, csv_text(list(PAIRS_COLUMNS), rows))
    return PairsSummary(cohort=summary, pairs=pairs, pairs_csv=pairs_csv)
