"""Every random choice of one case, drawn up front from independent streams.

Streams are keyed by (seed, case index, stream id), so a case never depends
on the cases before it, and adding a stream later (issue 6: growth between
studies of the same patient) leaves every existing case unchanged.
Only the ``clinical`` stream sees the label; every image parameter comes from
the features or from streams that know nothing of the label.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lab.synth.acquisition import Pose, Quantisation
from lab.synth.anatomy import SynthError
from lab.synth.clinical import Features, draw_features
from lab.synth.contrast import HeadLayers
from lab.synth.heads import MAX_HEAD_INDEX, head_variant
from lab.synth.lesion import LesionSpec
from lab.synth.profiles import SiteProfile
from lab.synth.tumour import LOCATIONS, TumourShape

STREAM_CLINICAL = 1
STREAM_ANATOMY = 2
STREAM_TUMOUR = 3
STREAM_ACQUISITION = 4
STREAM_NOISE = 5
STREAM_GROWTH = 6  # reserved for longitudinal follow-up studies (issue 6)
STREAM_HEAD = 7  # which distinct head a case shows (CohortOptions.heads)
STREAM_SEGBENCH = 8  # segmentation benchmark draws: volume, location, tumour-free, pairs


def stream(seed: int, index: int, stream_id: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, stream_id, *extra])


@dataclass(frozen=True)
class SizeSpec:
    """Resolution of one cohort size."""

    world_mm: float
    t1c_choices: tuple[tuple[float, int], ...]  # (pixel mm, matrix)
    thickness: tuple[float, ...]
    slices: tuple[int, int]
    coverage_mm: tuple[float, float]  # slab length wanted (sagittal, axial)
    distractor_scale: float  # pixel multiplier for the cheap series


SIZES = {
    "full": SizeSpec(
        world_mm=1.0,
        t1c_choices=((1.0, 256), (0.9375, 256), (0.9, 256), (1.0, 240), (1.1, 224), (1.2, 208)),
        thickness=(0.9, 1.0, 1.0, 1.0, 1.1, 1.2),
        slices=(160, 192),
        coverage_mm=(176.0, 186.0),
        distractor_scale=1.0,
    ),
    "small": SizeSpec(
        world_mm=2.0,
        t1c_choices=((2.0, 128), (2.0, 120), (2.2, 112)),
        thickness=(2.0, 2.0, 2.2),
        slices=(80, 96),
        coverage_mm=(176.0, 186.0),
        distractor_scale=2.0,
    ),
}


@dataclass(frozen=True)
class CohortOptions:
    """Opt-in variations for segmentation benchmarks; the defaults change nothing.

    ``heads``: the distinct heads cases are drawn from (0 = the template head,
    :mod:`lab.synth.heads`); ``volume_range``: tumour volume (cm3)
    log-uniform in the range, location uniform over the three sites (Ki-67
    label and other features as drawn); ``tumour_free_fraction``: share of
    cases without a tumour; ``t1c_only``: no distractor series.
    """

    heads: tuple[int, ...] = (0,)
    volume_range: tuple[float, float] | None = None
    tumour_free_fraction: float = 0.0
    t1c_only: bool = False

    def __post_init__(self) -> None:
        if not self.heads:
            raise SynthError("heads must name at least one head index, e.g. (0,) or (1, 2, 3)")
        for h in self.heads:
            if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h <= MAX_HEAD_INDEX:
                raise SynthError(
                    f"heads: {h!r} is not a head index; use integers 0..{MAX_HEAD_INDEX}"
                )
        if self.volume_range is not None:
            lo, hi = self.volume_range
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi <= 500):
                raise SynthError(
                    f"volume_range must be (low, high) cm3 with 0 < low <= high <= 500, "
                    f"got {self.volume_range}"
                )
        if not 0.0 <= self.tumour_free_fraction <= 1.0:
            raise SynthError(
                f"tumour_free_fraction must be between 0 and 1, got {self.tumour_free_fraction}"
            )

    @property
    def is_default(self) -> bool:
        return self == CohortOptions()


@dataclass(frozen=True)
class CasePlan:
    """All parameters of one case; rendering it needs no further label information."""

    seed: int
    index: int
    case_id: str
    profile: str
    institution: str
    size: str
    features: Features
    age: int
    sex: str
    study_date: str
    study_time: str
    layers: HeadLayers
    vein_fraction: float
    pose: Pose
    shape: TumourShape
    lesion: LesionSpec
    vendor: str
    orientation: str
    oblique: bool
    reverse: bool
    enhanced: bool
    transfer_syntax: str
    rescale: str
    quant: Quantisation
    t1c_pixel: float
    t1c_matrix: int
    t1c_thickness: float
    t1c_slices: int
    noise: float
    bias: float
    description_variant: int
    contrast_evidence: str | None
    distractors: tuple[str, ...]
    head: int = 0  # distinct head index (0: the template head)
    has_tumour: bool = True
    session: int = 0  # > 0: another imaging session of the case (new noise and jitter)


def _pick(rng: np.random.Generator, options: tuple[tuple[str, float], ...]) -> str:
    names = [n for n, _ in options]
    p = np.array([w for _, w in options], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def plan_case(
    seed: int, index: int, site: SiteProfile, size: str, options: CohortOptions | None = None
) -> CasePlan:
    """Draw every parameter of case ``index`` of the cohort ``seed``.

    ``options`` draw from their own streams (``STREAM_HEAD``,
    ``STREAM_SEGBENCH``), so without them every case is exactly as before.
    """
    opts = options or CohortOptions()
    clin = stream(seed, index, STREAM_CLINICAL)
    subgroup = "asymptomatic" if clin.random() < site.asymptomatic_fraction else "surgical"
    feats = draw_features(clin, site.label_model, subgroup)
    head, has_tumour, feats = _draw_options(seed, index, opts, feats)
    age, sex, study_date, study_time = _draw_patient(clin, site)
    layers, vein_fraction, pose = _draw_anatomy(stream(seed, index, STREAM_ANATOMY), head)
    shape, lesion = _draw_tumour(stream(seed, index, STREAM_TUMOUR), feats, pose, site)
    acquisition = _draw_acquisition(stream(seed, index, STREAM_ACQUISITION), site, size, opts)
    return CasePlan(
        seed=seed,
        index=index,
        case_id=f"CASE{index + 1:04d}",
        profile=site.name,
        institution=site.institution,
        size=size,
        features=feats,
        age=age,
        sex=sex,
        study_date=study_date,
        study_time=study_time,
        layers=layers,
        vein_fraction=vein_fraction,
        pose=pose,
        shape=shape,
        lesion=lesion,
        **acquisition,
        head=head,
        has_tumour=has_tumour,
    )


def _draw_options(
    seed: int, index: int, opts: CohortOptions, feats: Features
) -> tuple[int, bool, Features]:
    """Head index, tumour or not, and benchmark volume/location (own streams)."""
    head = 0
    if opts.heads != (0,):
        head = opts.heads[int(stream(seed, index, STREAM_HEAD).integers(len(opts.heads)))]
    has_tumour = True
    if opts.volume_range is not None or opts.tumour_free_fraction > 0:
        bench = stream(seed, index, STREAM_SEGBENCH)
        has_tumour = bool(bench.random() >= opts.tumour_free_fraction)
        if opts.volume_range is not None:
            lo, hi = opts.volume_range
            volume = float(math.exp(bench.uniform(math.log(lo), math.log(hi))))
            location = LOCATIONS[int(bench.integers(len(LOCATIONS)))]
            feats = replace(feats, volume_cm3=volume, location=location)
    return head, has_tumour, feats


def _draw_patient(clin: np.random.Generator, site: SiteProfile) -> tuple[int, str, str, str]:
    """Age, sex, study date (YYYYMMDD) and study time (HHMMSS), after the features."""
    age = int(np.clip(round(clin.normal(57, 12)), 22, 88))
    sex = "F" if clin.random() < 0.72 else "M"
    y, m, d = site.first_study_date
    date = dt.date(y, m, d) + dt.timedelta(days=int(clin.integers(0, 4 * 365)))
    study_time = f"{int(clin.integers(7, 19)):02d}{int(clin.integers(0, 60)):02d}{int(clin.integers(0, 60)):02d}"
    return age, sex, date.strftime("%Y%m%d"), study_time


def _draw_anatomy(anat: np.random.Generator, head: int) -> tuple[HeadLayers, float, Pose]:
    """Tissue layers, vein density and head pose, folded into a distinct head's."""
    layers = HeadLayers.draw(anat)
    vein_fraction = float(anat.uniform(0.4, 0.9))
    pose = Pose.draw(anat)
    if head:
        variant = head_variant(head)
        pose = variant.fold_pose(pose)  # before the tumour: its patient volume stays as drawn
        layers = variant.adjust_layers(layers)
    return layers, vein_fraction, pose


def _draw_tumour(
    tum: np.random.Generator, feats: Features, pose: Pose, site: SiteProfile
) -> tuple[TumourShape, LesionSpec]:
    """The tumour's shape in the world and the look of it and its surroundings."""
    side = "right" if tum.random() < 0.5 else "left"
    falx = feats.location == "falx"
    volume_world = feats.volume_cm3 * 1000.0 / pose.volume_scale
    edema_mm3 = (feats.edema_index - 1.0) * volume_world
    radius = (3 * volume_world / (4 * math.pi)) ** (1 / 3)
    shell = (3 * (volume_world + edema_mm3) / (4 * math.pi)) ** (1 / 3) - radius
    tail_mm = float(tum.uniform(8, 22))
    margin = max(2.2 * shell + 8, tail_mm + 4, 0.9 * radius)
    shape = TumourShape(
        location=feats.location,
        side=side,
        volume_mm3=volume_world,
        embed=float(tum.uniform(0.45, 0.9) if falx else tum.uniform(0.05, 0.5)),
        lobes=int(tum.choice([1, 2, 3, 4], p=[0.3, 0.35, 0.25, 0.1])),
        lobulation=float(tum.uniform(0.2, 1.0)),
        elongation=(
            float(tum.uniform(0.85, 1.1) if falx else tum.uniform(0.7, 1.0)),
            float(tum.uniform(0.75, 1.3)),
        ),
        margin_mm=margin,
    )
    lesion = LesionSpec(
        edema_mm3=edema_mm3,
        necrosis=feats.necrosis,
        necrosis_fraction=float(tum.uniform(0.06, 0.22)),
        csf_cleft=feats.csf_cleft,
        cleft_mm=float(tum.uniform(1.0, 2.2)),
        capsule=feats.capsular_enhancement,
        dural_tail=bool(tum.random() < 0.65),
        tail_mm=tail_mm,
        heterogeneity=0.05 * math.exp(0.35 * feats.texture_score),
        texture_mm=float(tum.uniform(1.0, 2.2)),
        enhancement=float(tum.uniform(0.95, 1.15)) * site.enhancement_factor,
        mass_effect=float(tum.uniform(0.55, 0.95)),
    )
    return shape, lesion


def _draw_acquisition(
    acq: np.random.Generator, site: SiteProfile, size: str, opts: CohortOptions
) -> dict[str, Any]:
    """The :class:`CasePlan` fields of the scanner, the T1C and the distractor series."""
    spec = SIZES[size]
    vendor = _pick(acq, site.vendors)
    orientation = "sag" if acq.random() < site.p_sagittal else "axial"
    pixel, matrix = spec.t1c_choices[int(acq.integers(len(spec.t1c_choices)))]
    thickness = float(spec.thickness[int(acq.integers(len(spec.thickness)))])
    coverage = spec.coverage_mm[0 if orientation == "sag" else 1] + float(acq.uniform(-10, 10))
    slices = int(np.clip(round(coverage / thickness), *spec.slices))
    enhanced = bool(acq.random() < site.p_enhanced)
    compressed = bool(acq.random() < site.p_compressed)
    syntax = str(acq.choice(["jpeg2000", "rle"])) if compressed else "explicit"
    rescale, quant = _quantisation(vendor, site, acq)
    distractors = ["localizer", "t2_tse", "flair_2d" if acq.random() < 0.85 else "flair_3d", "dwi"]
    distractors.append("t1_mprage_pre")
    if acq.random() < 0.3:
        distractors.append("mpr_derived")
    if acq.random() < 0.25:
        distractors.append("t1c_thick_2d")
    evidence = None if acq.random() < 0.85 else str(acq.choice(["agent", "description"]))
    if opts.t1c_only:
        distractors = []
    return {
        "vendor": vendor,
        "orientation": orientation,
        "oblique": bool(acq.random() < site.p_oblique),
        "reverse": bool(acq.random() < site.p_reverse),
        "enhanced": enhanced,
        "transfer_syntax": syntax,
        "rescale": rescale,
        "quant": quant,
        "t1c_pixel": pixel,
        "t1c_matrix": matrix,
        "t1c_thickness": thickness,
        "t1c_slices": slices,
        "noise": float(acq.uniform(*site.noise)),
        "bias": float(acq.uniform(*site.bias)),
        "description_variant": int(acq.integers(0, 4)),
        "contrast_evidence": evidence,
        "distractors": tuple(distractors),
    }


def _quantisation(
    vendor: str, site: SiteProfile, rng: np.random.Generator
) -> tuple[str, Quantisation]:
    """Stored-value conventions: Siemens 12 bit, GE signed 16 bit, Philips rescaled."""
    scale = float(rng.uniform(*site.scale))
    roll = rng.random()
    if vendor == "philips":
        rescale = "slope" if roll < 0.85 else "none"
    elif vendor == "siemens":
        rescale = "none" if roll < 0.85 else "slope_intercept"
    else:
        rescale = "none" if roll < 0.85 else "slope"
    signed = vendor == "ge"
    bits = 16 if signed else 12
    top = (2 ** (bits - (1 if signed else 0)) - 1) / 1.9  # headroom for fat and bias
    slope, intercept = 1.0, 0.0
    if rescale == "slope":
        slope = round(float(rng.uniform(1.2, 4.5)), 6)
    elif rescale == "slope_intercept":
        slope, intercept = 2.0, -1000.0
    scale = min(scale, top * slope + intercept)
    return rescale, Quantisation(
        scale=round(scale, 3), slope=slope, intercept=intercept, signed=signed, bits_stored=bits
    )
