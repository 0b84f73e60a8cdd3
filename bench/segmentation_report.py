"""The report of ``bench/segmentation``: per-study rows, bins, aggregates, targets, tables.

Pure functions on rows and arrays (no model, no files), so that the tests
can check them on hand-made rows. Thresholds are the segmentation issue's
targets, named once here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

#: True-volume bins (label, low inclusive, high exclusive) in cm³.
BINS = (
    ("<0.5", 0.0, 0.5),
    ("0.5–1.5", 0.5, 1.5),
    ("1.5–3", 1.5, 3.0),
    ("3–6", 3.0, 6.0),
    ("6–15", 6.0, 15.0),
    ("15–50", 15.0, 50.0),
    (">50", 50.0, math.inf),
)
BIN_LABELS = tuple(label for label, _, _ in BINS)
SMALL_BIN = "0.5–1.5"  # the smallest bin with a Dice target (a lower one)
WRONG_STRUCTURE_MM = 10.0  # lesion centroid farther than this from every true tumour voxel
GROWTH_PERCENT = 15.0  # growth verdict: follow-up volume ≥ baseline + 15 %
MIN_DICE_SMALL = 0.70  # median Dice in SMALL_BIN
MIN_DICE = 0.85  # median Dice in every bin from 1.5 cm³ up
MAX_ABS_VOLUME_ERROR = 10.0  # median |volume error| %
MAX_MEAN_SIGNED_ERROR = 5.0  # |mean signed volume error| %
MAX_SR_VS_SEG = 1.0  # max |SR − SEG volume| %
ABSTENTION_FROM_CM3 = 1.5
MAX_ABSTENTION_RATE = 0.05  # on tumours ≥ ABSTENTION_FROM_CM3
MAX_PAIR_ERROR_PP = 10.0  # median |measured − true change| in percentage points
MIN_VERDICT_AGREEMENT = 0.90
MAX_SEGMENTATION_S = 20.0  # per study
MAX_RSS_MB = 4096.0


@dataclass(frozen=True)
class StudyRow:
    """One study segmented by one model."""

    cohort: str
    case_id: str
    model: str
    has_tumour: bool
    true_volume_cm3: float
    location: str
    vendor: str
    head: str
    status: str  # "ok" or "not_assessable"
    reason: str
    dice: float  # on the working grid; 0 for an abstention on a tumour
    predicted_volume_cm3: float | None  # the SR's volume; None when not assessable
    seg_volume_cm3: float | None  # voxels of the SEG's mask × source voxel volume
    distance_mm: float | None  # lesion centroid → nearest true tumour voxel (None: no lesion)
    segmentation_s: float
    peak_rss_mb: float  # of the whole process, after this study

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def wrong_structure(self) -> bool:
        """A reported lesion away from the true tumour (any lesion on a tumour-free study)."""
        if not self.ok:
            return False
        return self.distance_mm is None or self.distance_mm > WRONG_STRUCTURE_MM

    @property
    def volume_error_percent(self) -> float | None:
        """Signed: (SR volume − true volume) / true volume."""
        if self.predicted_volume_cm3 is None or not self.has_tumour:
            return None
        return 100.0 * (self.predicted_volume_cm3 - self.true_volume_cm3) / self.true_volume_cm3

    @property
    def sr_vs_seg_percent(self) -> float | None:
        if self.predicted_volume_cm3 is None or not self.seg_volume_cm3:
            return None
        return 100.0 * (self.predicted_volume_cm3 - self.seg_volume_cm3) / self.seg_volume_cm3

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "wrong_structure": self.wrong_structure,
            "volume_error_percent": self.volume_error_percent,
            "sr_vs_seg_percent": self.sr_vs_seg_percent,
        }


@dataclass(frozen=True)
class PairRow:
    """A baseline/follow-up pair measured by one model from the two SR volumes."""

    cohort: str
    pair_id: str
    model: str
    true_change_percent: float
    measured_change_percent: float | None  # None when either study was not assessable
    same_lesion: bool  # both ok and neither lesion a wrong structure

    @property
    def error_pp(self) -> float | None:
        if self.measured_change_percent is None:
            return None
        return abs(self.measured_change_percent - self.true_change_percent)

    @property
    def verdict_right(self) -> bool:
        """The growth verdict (≥ GROWTH_PERCENT) agrees with the truth; False when unmeasured."""
        if self.measured_change_percent is None:
            return False
        grew = self.measured_change_percent >= GROWTH_PERCENT
        return grew == (self.true_change_percent >= GROWTH_PERCENT)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "error_pp": self.error_pp, "verdict_right": self.verdict_right}


def volume_bin(volume_cm3: float) -> str:
    for label, low, high in BINS:
        if low <= volume_cm3 < high:
            return label
    raise ValueError(f"volume_cm3 must be a number ≥ 0, got {volume_cm3}")


def change_percent(baseline_cm3: float, followup_cm3: float) -> float:
    """Volume change from baseline to follow-up, % of the baseline."""
    if baseline_cm3 <= 0:
        raise ValueError(f"baseline volume must be > 0 cm3, got {baseline_cm3}")
    return 100.0 * (followup_cm3 - baseline_cm3) / baseline_cm3


def pair_row(
    cohort: str, pair_id: str, true_change: float, baseline: StudyRow, followup: StudyRow
) -> PairRow:
    """The pair as one model measured it (its two studies' rows)."""
    measured = None
    if baseline.predicted_volume_cm3 is not None and followup.predicted_volume_cm3 is not None:
        measured = change_percent(baseline.predicted_volume_cm3, followup.predicted_volume_cm3)
    same = all(r.ok and not r.wrong_structure for r in (baseline, followup))
    return PairRow(cohort, pair_id, baseline.model, true_change, measured, same)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    denominator = int(a.sum()) + int(b.sum())
    return 1.0 if denominator == 0 else 2.0 * float(np.logical_and(a, b).sum()) / denominator


def distance_map_mm(truth_zyx: np.ndarray, spacing_xyz: Sequence[float]) -> np.ndarray | None:
    """Distance (mm) of every voxel to the nearest true tumour voxel; None without a tumour."""
    from scipy import ndimage

    if not truth_zyx.any():
        return None
    sampling = tuple(float(s) for s in spacing_xyz)[::-1]
    return np.asarray(ndimage.distance_transform_edt(truth_zyx == 0, sampling=sampling))


def distance_at(
    distances: np.ndarray | None,
    point_lps: Sequence[float],
    affine: np.ndarray,
) -> float | None:
    """The distance map at the voxel nearest ``point_lps`` (``affine``: index xyz → LPS mm).

    None without a true tumour; inf for a point off the grid.
    """
    if distances is None:
        return None
    xyz = np.linalg.solve(affine[:3, :3], np.asarray(point_lps, float) - affine[:3, 3])
    zyx = tuple(int(v) for v in np.rint(xyz)[::-1])
    if any(not 0 <= i < n for i, n in zip(zyx, distances.shape, strict=True)):
        return math.inf
    return float(distances[zyx])


def median(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def aggregate(rows: Sequence[StudyRow]) -> dict[str, Any]:
    """One model's numbers over ``rows`` (a bin, a site, ...); None where nothing to measure."""
    ok = [r for r in rows if r.ok]
    errors = [e for r in ok if (e := r.volume_error_percent) is not None]
    return {
        "n": len(rows),
        "median_dice": median(r.dice for r in ok),
        "median_dice_incl_abstentions": median(r.dice for r in rows),
        "median_abs_volume_error_percent": median(abs(e) for e in errors),
        "mean_signed_volume_error_percent": statistics.fmean(errors) if errors else None,
        "abstentions": len(rows) - len(ok),
        "wrong_structures": sum(r.wrong_structure for r in rows),
    }


def grouped(
    rows: Sequence[StudyRow], key: Callable[[StudyRow], str], order: Sequence[str] = ()
) -> dict[str, dict[str, dict[str, Any]]]:
    """group → model → :func:`aggregate`; the groups in ``order`` first, then the others sorted."""
    keys = list(order) + sorted({key(r) for r in rows} - set(order))
    models = list(dict.fromkeys(r.model for r in rows))
    return {
        k: {m: aggregate([r for r in rows if key(r) == k and r.model == m]) for m in models}
        for k in keys
    }


def by_bin(rows: Sequence[StudyRow]) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`grouped` by true-volume bin, tumour studies only, every bin listed."""
    tumours = [r for r in rows if r.has_tumour]
    return grouped(tumours, lambda r: volume_bin(r.true_volume_cm3), BIN_LABELS)


def pair_summary(pairs: Sequence[PairRow]) -> dict[str, Any]:
    return {
        "n": len(pairs),
        "measured": sum(p.measured_change_percent is not None for p in pairs),
        "median_abs_error_pp": median(p.error_pp for p in pairs),
        "verdict_agreement": sum(p.verdict_right for p in pairs) / len(pairs) if pairs else None,
        "same_lesion": sum(p.same_lesion for p in pairs),
    }


def tumour_free_summary(rows: Sequence[StudyRow]) -> dict[str, int]:
    free = [r for r in rows if not r.has_tumour]
    return {
        "n": len(free),
        "lesions_reported": sum(r.ok for r in free),
        "none_reported": sum(not r.ok for r in free),
    }


class Target(NamedTuple):
    name: str
    value: float | None  # measured
    passed: bool | None  # None: no studies to judge it on


def evaluate_targets(
    rows: Sequence[StudyRow], pairs: Sequence[PairRow], peak_rss_mb: float
) -> list[Target]:
    """Every target of the issue for ONE model's rows and pairs."""
    models = {r.model for r in rows} | {p.model for p in pairs}
    if len(models) > 1:
        raise ValueError(f"evaluate_targets takes one model's rows, got {sorted(models)}")
    bins = by_bin(rows)
    out = []
    for label in BIN_LABELS[BIN_LABELS.index(SMALL_BIN) :]:
        cell = next(iter(bins[label].values()), None)
        goal = MIN_DICE_SMALL if label == SMALL_BIN else MIN_DICE
        name = f"median Dice incl. abstentions, {label} cm³ ≥ {goal}"
        out.append(_at_least(name, cell["median_dice_incl_abstentions"] if cell else None, goal))
    every = aggregate([r for r in rows if r.has_tumour])
    signed = every["mean_signed_volume_error_percent"]
    big = [r for r in rows if r.has_tumour and r.true_volume_cm3 >= ABSTENTION_FROM_CM3]
    free = tumour_free_summary(rows)
    p = pair_summary(pairs)
    return [
        *out,
        _at_most(
            f"median abs. volume error ≤ {MAX_ABS_VOLUME_ERROR:g} %",
            every["median_abs_volume_error_percent"],
            MAX_ABS_VOLUME_ERROR,
        ),
        _at_most(
            f"abs. mean signed volume error ≤ {MAX_MEAN_SIGNED_ERROR:g} %",
            None if signed is None else abs(signed),
            MAX_MEAN_SIGNED_ERROR,
        ),
        _at_most(
            f"max abs. SR − SEG volume difference ≤ {MAX_SR_VS_SEG:g} %",
            max_sr_vs_seg(rows),
            MAX_SR_VS_SEG,
        ),
        _at_most(
            "wrong structures = 0 (all studies)",
            float(sum(r.wrong_structure for r in rows)) if rows else None,
            0.0,
        ),
        _at_most(
            "lesions on tumour-free studies = 0",
            float(free["lesions_reported"]) if free["n"] else None,
            0.0,
        ),
        _at_most(
            f"abstention rate on tumours ≥ {ABSTENTION_FROM_CM3:g} cm³ ≤ {MAX_ABSTENTION_RATE:g}",
            sum(not r.ok for r in big) / len(big) if big else None,
            MAX_ABSTENTION_RATE,
        ),
        _at_most(
            f"pairs: median abs. change error ≤ {MAX_PAIR_ERROR_PP:g} pp",
            p["median_abs_error_pp"],
            MAX_PAIR_ERROR_PP,
        ),
        _at_least(
            f"pairs: growth verdict agreement ≥ {MIN_VERDICT_AGREEMENT:g}",
            p["verdict_agreement"],
            MIN_VERDICT_AGREEMENT,
        ),
        _at_least(
            "pairs: same lesion in every pair (fraction = 1)",
            p["same_lesion"] / p["n"] if pairs else None,
            1.0,
        ),
        _at_most(
            f"max segmentation ≤ {MAX_SEGMENTATION_S:g} s",
            max((r.segmentation_s for r in rows), default=None),
            MAX_SEGMENTATION_S,
        ),
        _at_most(f"peak RSS ≤ {MAX_RSS_MB:.0f} MB", peak_rss_mb, MAX_RSS_MB),
    ]


def _at_most(name: str, value: float | None, limit: float) -> Target:
    return Target(name, value, None if value is None else value <= limit)


def _at_least(name: str, value: float | None, limit: float) -> Target:
    return Target(name, value, None if value is None else value >= limit)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


COLUMNS = (  # (aggregate key, column title, digits)
    ("median_dice", "Dice", 3),
    ("median_dice_incl_abstentions", "Dice incl. abst", 3),
    ("median_abs_volume_error_percent", "abs vol err %", 1),
    ("mean_signed_volume_error_percent", "signed err %", 1),
    ("abstentions", "abst", 0),
    ("wrong_structures", "wrong", 0),
)


def group_table(
    title: str, groups: dict[str, dict[str, dict[str, Any]]], models: list[str]
) -> list[str]:
    """A markdown table: one row per group, the models' columns side by side."""
    head = [title, "n"] + [f"{m} {name}" for m in models for _, name, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for group, cells in groups.items():
        n = next(iter(cells.values()))["n"] if cells else 0
        values = [
            _fmt(cells[m][k], d) if m in cells else "—" for m in models for k, _, d in COLUMNS
        ]
        lines.append("| " + " | ".join([group, str(n), *values]) + " |")
    return [*lines, ""]


def model_table(title: str, per_model: dict[str, dict[str, Any]], digits: int = 1) -> list[str]:
    """A markdown table: one row per number, one column per model."""
    models = list(per_model)
    keys = list(dict.fromkeys(k for v in per_model.values() for k in v))
    lines = [f"| {title} | " + " | ".join(models) + " |", "|" + " --- |" * (len(models) + 1)]
    for k in keys:
        cells = [k.replace("_", " "), *(_fmt(per_model[m].get(k), digits) for m in models)]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def target_table(targets: dict[str, list[dict[str, Any]]]) -> list[str]:
    """PASS/FAIL/n/a and the measured value, one row per target, one column per model."""
    models = list(targets)
    lines = ["| target | " + " | ".join(models) + " |", "|" + " --- |" * (len(models) + 1)]
    for i, first in enumerate(next(iter(targets.values()))):
        cells = []
        for m in models:
            value, passed = targets[m][i]["value"], targets[m][i]["passed"]
            verdict = "n/a" if passed is None else "PASS" if passed else "FAIL"
            digits = 3 if value is None or abs(value) < 10 else 1
            cells.append(f"{verdict} ({_fmt(value, digits)})")
        lines.append(f"| {first['name']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def summaries(
    rows: Sequence[StudyRow], pairs: Sequence[PairRow], peak_rss_mb: float
) -> dict[str, Any]:
    """Every aggregate of the report, JSON-safe."""
    models = list(dict.fromkeys(r.model for r in rows))
    mine = {m: [r for r in rows if r.model == m] for m in models}
    theirs = {m: [p for p in pairs if p.model == m] for m in models}
    tumours = [r for r in rows if r.has_tumour]
    return {
        "by_volume_bin": by_bin(rows),
        "by_location": grouped(tumours, lambda r: r.location),
        "by_vendor": grouped(tumours, lambda r: r.vendor),
        "by_head": grouped(tumours, lambda r: r.head),
        "all_tumours": {m: aggregate([r for r in mine[m] if r.has_tumour]) for m in models},
        "tumour_free": {m: tumour_free_summary(mine[m]) for m in models},
        "sr_vs_seg": {m: {"max_abs_difference_percent": max_sr_vs_seg(mine[m])} for m in models},
        "pairs": {m: pair_summary(theirs[m]) for m in models},
        "timing": {
            m: {
                "median_segmentation_s": median(r.segmentation_s for r in mine[m]),
                "max_segmentation_s": max(r.segmentation_s for r in mine[m]),
                "peak_rss_mb (process)": peak_rss_mb,
            }
            for m in models
        },
        "targets": {
            m: [t._asdict() for t in evaluate_targets(mine[m], theirs[m], peak_rss_mb)]
            for m in models
        },
    }


def max_sr_vs_seg(rows: Sequence[StudyRow]) -> float | None:
    differences = [abs(d) for r in rows if (d := r.sr_vs_seg_percent) is not None]
    return max(differences, default=None)


def report_lines(summary: dict[str, Any], header: list[str]) -> list[str]:
    models = list(summary["tumour_free"])
    lines = [*header, "## By true volume (cm³), tumour studies", ""]
    lines += group_table("volume cm³", summary["by_volume_bin"], models)
    for key, title in (("by_location", "site"), ("by_vendor", "vendor"), ("by_head", "head")):
        lines += [f"## By {title}, tumour studies", "", *group_table(title, summary[key], models)]
    for key, title, digits in (
        ("all_tumours", "All tumour studies", 3),
        ("tumour_free", "Tumour-free studies", 0),
        ("sr_vs_seg", "SR vs SEG volume", 3),
        ("pairs", "Growth pairs", 3),
        ("timing", "Timing", 2),
    ):
        lines += [f"## {title}", "", *model_table("number", summary[key], digits)]
    return [*lines, "## Targets", "", *target_table(summary["targets"])]
