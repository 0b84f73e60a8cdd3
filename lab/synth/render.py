"""Render one planned case: world volumes per contrast, every series, the mask.

Which series a study has and where their slices lie is
:mod:`lab.synth.series_layout`; this module fills them with pixels and
writes them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lab.synth.acquisition import (
    Grid,
    add_rician_noise,
    apply_bias_field,
    point_spread,
    sample,
)
from lab.synth.anatomy import HeadModel, paint_pituitary
from lab.synth.contrast import brain_curve, build_labels, compose, label_table, paint_veins
from lab.synth.dicom_enhanced import build_enhanced
from lab.synth.dicom_files import write_classic, write_single
from lab.synth.dicom_writer import SeriesSpec, StudyInfo, build_classic, synth_uid
from lab.synth.head_build import head_model
from lab.synth.heads import HeadVariant, head_variant
from lab.synth.lesion import LesionMaps, apply_mass_effect, build_lesion, composite
from lab.synth.plan import SIZES, STREAM_ANATOMY, STREAM_NOISE, STREAM_TUMOUR, CasePlan, stream
from lab.synth.series_layout import (
    ACQUISITION_ORDER,
    CONTRAST_OF,
    head_points,
    orientation_name,
    series_grids,
    series_number,
)
from lab.synth.truth import (
    centroid_patient,
    mask_on_grid,
    max_diameter_mm,
    tumour_volume_cm3,
)
from lab.synth.tumour import TumourGeometry, place_tumour

log = logging.getLogger(__name__)

NOISE_FACTOR = {"dwi": 2.5, "localizer": 2.0, "t2_tse": 1.2, "flair_2d": 1.3, "flair_3d": 1.5}


@dataclass
class RenderedCase:
    """What the cohort writer needs after a case has been written."""

    record: dict[str, Any]
    mask: np.ndarray  # uint8 [column, row, slice] on the T1C grid
    mask_affine: np.ndarray  # RAS
    volume_cm3: float = 0.0  # exact true tumour volume (the record holds it rounded)


def _session_stream(plan: CasePlan, stream_id: int, *extra: int) -> np.random.Generator:
    """Noise and contrast jitter: new for every imaging session of the same case."""
    if plan.session:
        return stream(plan.seed, plan.index, stream_id, *extra, 10_000 + plan.session)
    return stream(plan.seed, plan.index, stream_id, *extra)


@dataclass
class _Scene:
    """The case's world: label map and T1 template after warp and tumour, and the tumour."""

    model: HeadModel
    warp: HeadVariant | None
    lab: np.ndarray
    t1: np.ndarray
    geo: TumourGeometry | None
    maps: LesionMaps | None


def render_case(plan: CasePlan, out_dir: Path) -> RenderedCase:
    """Build the case's anatomy and tumour, write its study, return truth and mask."""
    model = head_model(SIZES[plan.size].world_mm)
    variant = head_variant(plan.head)
    warp = None if variant.is_identity else variant
    head_pts = head_points(model, warp)
    scene = _scene(plan, model, warp)
    study = _study(plan)
    kinds = [k for k in ACQUISITION_ORDER if k == "t1c_mprage" or k in plan.distractors]
    worlds: dict[str, np.ndarray] = {}
    jit = _session_stream(plan, STREAM_ANATOMY, 2)
    series_records = []
    t1c_grid: Grid | None = None
    for pos, kind in enumerate(kinds, start=1):
        contrast = CONTRAST_OF[kind]
        if contrast not in worlds:
            worlds[contrast] = _world(plan, scene, contrast, jit)
        grids = series_grids(plan, kind, model, head_pts)
        spec = _series_spec(plan, kind, pos, kinds, grids)
        stack = _pixels(plan, kind, spec.number, worlds[contrast], model, grids, warp)
        series_records.append(_write_series(plan, study, spec, stack, out_dir))
        if kind == "t1c_mprage":
            t1c_grid = grids[0]
            t1c_spec = spec
        if contrast not in [CONTRAST_OF[k] for k in kinds[pos:]]:
            worlds.pop(contrast, None)
    assert t1c_grid is not None
    return _rendered(plan, scene, study, t1c_spec, t1c_grid, series_records)


def _scene(plan: CasePlan, model: HeadModel, warp: HeadVariant | None) -> _Scene:
    """Labels, veins, the head's warp and atrophy, then the tumour with its lesion maps."""
    anat = stream(plan.seed, plan.index, STREAM_ANATOMY, 1)
    lab = build_labels(model, plan.layers)
    paint_veins(lab, model, anat, plan.vein_fraction)
    t1 = model.t1.copy()
    if warp is not None:
        t1 = warp.apply_atrophy(t1, model.brain, model.spacing)
        warp.apply_labels(lab, model)
        paint_pituitary(lab, model)
    geo = maps = None
    if plan.has_tumour:
        tum = stream(plan.seed, plan.index, STREAM_TUMOUR, 1)
        geo = place_tumour(model, plan.shape, plan.layers.csf, tum)
        apply_mass_effect(model, geo, t1, lab, plan.lesion.mass_effect)
        maps = build_lesion(model, geo, plan.lesion, t1, lab, plan.layers.csf, tum)
    return _Scene(model=model, warp=warp, lab=lab, t1=t1, geo=geo, maps=maps)


def _world(plan: CasePlan, scene: _Scene, contrast: str, jit: np.random.Generator) -> np.ndarray:
    """One contrast of the world volume (jittered tissue table, tumour, point spread)."""
    table = label_table(contrast, 1 + jit.normal(0, 0.04, 32).clip(-0.12, 0.12))
    if scene.warp is not None and contrast == "t1c":
        for code, factor in scene.warp.table_overrides().items():
            table[code] *= factor
    curve = brain_curve(contrast, float(jit.uniform(0.9, 1.1)))
    vol = compose(scene.lab, scene.t1, contrast, table, curve)
    if scene.geo is not None and scene.maps is not None:
        composite(vol, scene.geo, scene.maps, plan.lesion, contrast)
    return point_spread(vol, scene.model, plan.t1c_pixel)


def _series_spec(
    plan: CasePlan, kind: str, pos: int, kinds: list[str], grids: tuple[Grid, ...]
) -> SeriesSpec:
    """Series ``pos`` of the study: number, orientation, storage, acquisition time."""
    number = series_number(plan.vendor, pos)
    enhanced = plan.enhanced and kind == "t1c_mprage"
    orient = "sag" if kind == "localizer" else orientation_name(grids[0])
    return SeriesSpec(
        kind=kind,
        number=number,
        orientation=orient,
        grids=grids,
        quant=plan.quant,
        transfer_syntax=plan.transfer_syntax,
        enhanced=enhanced,
        variant=plan.description_variant,
        contrast_evidence=plan.contrast_evidence,
        time_offset_s=120 * pos + (600 if pos >= kinds.index("t1c_mprage") + 1 else 0),
    )


def _write_series(
    plan: CasePlan, study: StudyInfo, spec: SeriesSpec, stack: np.ndarray, out_dir: Path
) -> dict[str, Any]:
    """Write one series (classic or Enhanced MR) and return its record."""
    profile = spec.profile(plan.vendor)
    folder = out_dir / plan.case_id / str(spec.number)
    if spec.enhanced:
        write_single(build_enhanced(study, spec, stack, profile), folder, plan.transfer_syntax)
        n_files = 1
    else:
        classic = build_classic(study, spec, stack, profile)
        n_files = len(write_classic(classic, folder, plan.transfer_syntax))
    return {
        "series_number": spec.number,
        "kind": spec.kind,
        "series_uid": str(spec.uid(study)),
        "description": profile["SeriesDescription"],
        "folder": f"{plan.case_id}/{spec.number}",
        "instances": n_files,
        "enhanced": spec.enhanced,
    }


def _rendered(
    plan: CasePlan,
    scene: _Scene,
    study: StudyInfo,
    t1c_spec: SeriesSpec,
    t1c_grid: Grid,
    series_records: list[dict[str, Any]],
) -> RenderedCase:
    """The mask on the T1C grid, the true volume and the case's ground-truth record."""
    model, geo, warp = scene.model, scene.geo, scene.warp
    if geo is not None:
        mask = mask_on_grid(geo, model, plan.pose, t1c_grid, warp)
    else:
        mask = np.zeros((t1c_grid.slices, t1c_grid.rows, t1c_grid.cols), dtype=np.uint8)
    voxel_cm3 = t1c_grid.row_spacing * t1c_grid.col_spacing * t1c_grid.slice_step / 1000.0
    volume = tumour_volume_cm3(geo, model, plan.pose, warp) if geo is not None else 0.0
    record = _record(plan, study, t1c_spec, t1c_grid, geo, scene.maps, model, series_records, warp)
    record["mask_volume_cm3"] = round(float(mask.sum()) * voxel_cm3, 4)
    return RenderedCase(
        record=record,
        mask=np.ascontiguousarray(mask.transpose(2, 1, 0)),
        mask_affine=t1c_grid.nifti_affine(),
        volume_cm3=volume,
    )


def _pixels(
    plan: CasePlan,
    kind: str,
    number: int,
    world: np.ndarray,
    model: HeadModel,
    grids: tuple,
    warp: HeadVariant | None = None,
) -> np.ndarray:
    rng = _session_stream(plan, STREAM_NOISE, number)
    parts = [sample(world, model, plan.pose, g, warp) for g in grids]
    img = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    apply_bias_field(img, plan.bias, rng)
    img = add_rician_noise(img, plan.noise * NOISE_FACTOR.get(kind, 1.0), rng)
    return plan.quant.apply(img)


def _study(plan: CasePlan) -> StudyInfo:
    by = int(plan.study_date[:4]) - plan.age
    return StudyInfo(
        seed=plan.seed,
        case_id=plan.case_id,
        patient_name=f"SYNTH^{plan.case_id}",
        patient_id=f"SYN{plan.seed}-{plan.index + 1:04d}",
        birth_date=f"{by:04d}{plan.study_date[4:]}",
        sex=plan.sex,
        age=plan.age,
        study_uid=synth_uid(plan.seed, plan.case_id, "study"),
        frame_of_reference_uid=synth_uid(plan.seed, plan.case_id, "frame-of-reference"),
        study_date=plan.study_date,
        study_time=plan.study_time,
        accession=f"SYN{plan.seed % 100000:05d}{plan.index + 1:05d}",
        institution=plan.institution,
        vendor=plan.vendor,
    )


def _record(plan, study, spec, grid, geo, maps, model, series, warp=None) -> dict[str, Any]:
    f = plan.features
    if geo is None or maps is None:  # a tumour-free case
        vol = diameter = necrosis_cm3 = 0.0
        edema_index = 1.0
        centroid: list[float] | None = None
        location = side = "none"
    else:
        vol = tumour_volume_cm3(geo, model, plan.pose, warp)
        diameter = max_diameter_mm(geo, model, plan.pose, warp)
        edema_index = 1.0 + maps.edema_voxels / max(geo.voxels, 1)
        centroid = [round(float(v), 2) for v in centroid_patient(geo, model, plan.pose, warp)]
        location, side = geo.location, geo.side
        necrosis_cm3 = maps.necrosis_voxels * model.spacing**3 * plan.pose.volume_scale / 1000
        if warp is not None:  # scaled like the tumour (the warp's local volume change)
            necrosis_cm3 *= vol / tumour_volume_cm3(geo, model, plan.pose)
    return {
        "case_id": plan.case_id,
        "patient_id": study.patient_id,
        "study_uid": str(study.study_uid),
        "series_uid": str(spec.uid(study)),
        "series_number": spec.number,
        "frame_of_reference_uid": str(study.frame_of_reference_uid),
        "ki67_high": f.ki67_high,
        "ki67_index": f.ki67_index,
        "bayes_probability": round(f.bayes_probability, 6),
        "edema_index": round(edema_index, 4),
        "necrosis": f.necrosis,
        "csf_cleft": f.csf_cleft,
        "capsular_enhancement": f.capsular_enhancement,
        "volume_cm3": round(vol, 4),
        "max_diameter_mm": round(diameter, 3),
        "location": location,
        "side": side,
        "subgroup": f.subgroup,
        "vendor": plan.vendor,
        "orientation": plan.orientation,
        "enhanced": plan.enhanced,
        "transfer_syntax": plan.transfer_syntax,
        "rescale": plan.rescale,
        "oblique": plan.oblique,
        "reverse_slice_order": plan.reverse,
        "pixel_spacing_mm": grid.row_spacing,
        "slice_thickness_mm": grid.thickness,
        "matrix": [grid.rows, grid.cols, grid.slices],
        "necrosis_volume_cm3": round(necrosis_cm3, 4),
        "centroid_lps_mm": centroid,
        "dural_tail": plan.lesion.dural_tail,
        "drawn": {
            "volume_cm3": round(f.volume_cm3, 4),
            "edema_index": round(f.edema_index, 4),
            "texture_score": round(f.texture_score, 4),
        },
        "age": plan.age,
        "sex": plan.sex,
        "study_date": plan.study_date,
        "series": series,
        "head": plan.head,
        "has_tumour": plan.has_tumour,
    }
