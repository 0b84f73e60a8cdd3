"""The report: a Comprehensive 3D SR with a TID 1500 Measurement Report.

Content tree (codes in :mod:`dicom_out.codes`)::

    Imaging Measurement Report (TID 1500)
    ├─ language, observer context: device ki67node (name, model + version, manufacturer)
    ├─ procedure reported: MRI of head
    ├─ Imaging Measurements
    │  └─ Measurement Group (TID 1411 with a SEG, else TID 1501), tracking "Meningioma"
    │     ├─ finding category / finding / finding site Meninges (+ laterality)
    │     ├─ algorithm: ki67node <version>, segmentation backend as parameter
    │     ├─ referenced segment (SEG, segment, source series)          [with a SEG]
    │     ├─ volume (cm3), maximum 3D diameter (mm)                   [assessable]
    │     ├─ probability Output 1 / Output 2 (1), each with the model's TID 4019
    │     ├─ threshold value, edema index (when known)
    │     ├─ class, growth-risk group, inputs used (yes/no each), analysis status,
    │     │  necrosis / CSF cleft / capsular enhancement (when known), location
    │     ├─ prior volume, volume change (%), interval, annual growth, doubling
    │     │  time, growth yes/no                                     [follow-up study]
    │     └─ TEXT: who gave the characteristics; the prior compared with; or why
    │        not assessable
    └─ Qualitative Evaluations: TEXT comment = the disclaimer

A not-assessable analysis still yields a valid SR: a TID 1501 group with the
status "Not assessable" and the reason, no numbers. An amendment lists its
predecessor in PredecessorDocumentsSequence. No number is ever invented: a
value the pipeline did not produce is left out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    ContainerContentItem,
    ContentSequence,
    FindingSite,
    Measurement,
    QualitativeEvaluation,
    RelationshipTypeValues,
    TextContentItem,
)
from pydicom.dataset import Dataset

from ai_core.disclaimer import DISCLAIMER_SENTENCE
from ai_core.model.predict import Prediction
from dicom_out import codes
from dicom_out.context import (
    ALGORITHM_NAME,
    MANUFACTURER,
    SERIES_NUMBER_SR,
    OutputContext,
    OutputError,
    PriorComparison,
    derived_uid,
)
from dicom_out.lossy import source_lossy
from dicom_out.seg import SEGMENT_LABEL, pin_creation_times, tracking_uid

log = logging.getLogger(__name__)

SERIES_DESCRIPTION = "Ki-67 AI report - research use only, not for diagnostic use"
SYNTHETIC_NOTE = "The model was trained on synthetic data only; its probabilities are not clinical."
INSTANCE_NUMBER = 1
ROUNDING = {"volume": 3, "diameter": 2, "probability": 4, "edema": 3}


def build_sr(ctx: OutputContext, seg: Dataset | None) -> Dataset:
    """The TID 1500 SR for ``ctx``; ``seg`` (ours or the radiologist's) is referenced if given.

    Raises :class:`OutputError` when ``seg`` is given but the analysis is not
    assessable (a SEG of nothing cannot be measured).
    """
    if seg is not None and not ctx.analysis.ok:
        raise OutputError(
            "build_sr: a SEG was given but the analysis is not assessable; pass seg=None"
        )
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(ctx),
        procedure_reported=codes.MRI_OF_HEAD,
        imaging_measurements=[_measurement_group(ctx, seg)],
        title=codes.IMAGING_MEASUREMENT_REPORT,
    )
    report[0].ContentSequence.append(_disclaimer_container(ctx.prediction))
    evidence = [*ctx.source, *([seg] if seg is not None else [])]
    created = ctx.created
    complete = ctx.prediction is not None and ctx.analysis.ok and seg is not None
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=ctx.sr_series_uid,
        series_number=SERIES_NUMBER_SR,
        sop_instance_uid=ctx.sr_instance_uid,
        instance_number=INSTANCE_NUMBER,
        manufacturer=MANUFACTURER,
        is_complete=complete,
        is_final=False,
        is_verified=False,
        previous_versions=_predecessors(ctx),
        coding_schemes=[codes.PRIVATE_SCHEME_IDENTIFICATION],
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=ctx.software_version,
        content_date=created.date(),
        content_time=created.time(),
        series_date=created.date(),
        series_time=created.time(),
    )
    pin_creation_times(sr, created)
    log.info(
        "SR built: %s, %s",
        "complete" if complete else "partial",
        "amends an earlier SR" if ctx.predecessor else "first version",
    )
    return sr


# -- header parts -------------------------------------------------------------------
def device_uid(software_version: str) -> str:
    """The device observer's UID: one per ki67node version."""
    return derived_uid("device", ALGORITHM_NAME, software_version)


def _observation_context(ctx: OutputContext) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(ctx.software_version),
        name=ALGORITHM_NAME,
        manufacturer_name=MANUFACTURER,
        model_name=f"{ALGORITHM_NAME} {ctx.software_version}",
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DEVICE, observer_identifying_attributes=device
    )
    return hd.sr.ObservationContext(observer_device_context=observer)


def _predecessors(ctx: OutputContext) -> list[Dataset] | None:
    pre = ctx.predecessor
    if pre is None:
        return None
    if pre.study_uid != ctx.study_uid:
        raise OutputError(
            "predecessor: the earlier SR belongs to another study; an amendment stays in its study"
        )
    item = Dataset()
    item.StudyInstanceUID = pre.study_uid
    item.SeriesInstanceUID = pre.series_uid
    item.SOPInstanceUID = pre.sop_instance_uid
    item.SOPClassUID = pre.sop_class_uid
    return [item]


def disclaimer_text(prediction: Prediction | None) -> str:
    """What the SR's comment says: research use only (and synthetic training, if so)."""
    parts = [DISCLAIMER_SENTENCE]
    if prediction is not None and prediction.synthetic_model:
        parts.append(SYNTHETIC_NOTE)
    return " ".join(parts)


def _disclaimer_container(prediction: Prediction | None) -> ContainerContentItem:
    container = ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = ContentSequence([_text(codes.COMMENT, disclaimer_text(prediction))])
    return container


# -- the measurement group ----------------------------------------------------------
def _measurement_group(
    ctx: OutputContext, seg: Dataset | None
) -> (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
):
    tracking = hd.sr.TrackingIdentifier(uid=tracking_uid(ctx), identifier=SEGMENT_LABEL)
    group: (
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    )
    if seg is not None:
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_segment=_referenced_segment(ctx, seg),
            finding_category=codes.FINDING_CATEGORY,
            finding_type=codes.FINDING_TYPE,
            finding_sites=[_finding_site(ctx)],
            algorithm_id=_pipeline_algorithm(ctx),
            measurements=_measurements(ctx),
            qualitative_evaluations=_evaluations(ctx),
        )
    else:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_category=codes.FINDING_CATEGORY,
            finding_type=codes.FINDING_TYPE,
            finding_sites=[_finding_site(ctx)],
            algorithm_id=_pipeline_algorithm(ctx),
            measurements=_measurements(ctx),
            qualitative_evaluations=_evaluations(ctx),
        )
    group[0].ContentSequence.extend(_texts(ctx))
    return group


def _referenced_segment(ctx: OutputContext, seg: Dataset) -> hd.sr.ReferencedSegment:
    from ai_core.segmentation.received_seg import choose_segment

    return hd.sr.ReferencedSegment(
        sop_class_uid=str(seg.SOPClassUID),
        sop_instance_uid=str(seg.SOPInstanceUID),
        segment_number=choose_segment(seg),
        source_series=hd.sr.SourceSeriesForSegmentation(ctx.source_series_uid),
    )


def _finding_site(ctx: OutputContext) -> FindingSite:
    side = ctx.analysis.measurements.side if ctx.analysis.measurements else "unknown"
    return FindingSite(anatomic_location=codes.FINDING_SITE, laterality=codes.LATERALITY.get(side))


def _pipeline_algorithm(ctx: OutputContext) -> AlgorithmIdentification:
    segmentation = ctx.analysis.segmentation
    return AlgorithmIdentification(
        name=ALGORITHM_NAME,
        version=ctx.software_version,
        parameters=[f"segmentation={segmentation.backend} {segmentation.version}".strip()],
    )


def _model_algorithm(prediction: Prediction, output: int) -> AlgorithmIdentification:
    inputs = "MRI + radiological characteristics" if output == 1 else "+ radiomics"
    parameters = [f"output={output} ({inputs})", f"threshold={prediction.threshold:.4f}"]
    if output == 1 and prediction.risk_threshold is not None:
        parameters.append(f"growth-risk threshold={prediction.risk_threshold:.4f}")
    if prediction.synthetic_model:
        parameters.append("trained on synthetic data")
    return AlgorithmIdentification(
        name=prediction.model_name, version=prediction.model_version, parameters=parameters
    )


def _measurements(ctx: OutputContext) -> list[Measurement]:
    out: list[Measurement] = []
    m = ctx.analysis.measurements if ctx.analysis.ok else None
    if m is not None:
        out.append(
            Measurement(
                codes.VOLUME, round(m.volume_cm3, ROUNDING["volume"]), codes.CUBIC_CENTIMETER
            )
        )
        out.append(
            Measurement(
                codes.MAXIMUM_3D_DIAMETER,
                round(m.max_diameter_mm, ROUNDING["diameter"]),
                codes.MILLIMETER,
            )
        )
    p = ctx.prediction
    if p is None:
        return out
    digits = ROUNDING["probability"]
    out.append(
        Measurement(
            codes.PROBABILITY_OUTPUT1,
            round(p.probability_output1, digits),
            codes.NO_UNITS,
            algorithm_id=_model_algorithm(p, 1),
        )
    )
    out.append(
        Measurement(
            codes.PROBABILITY_OUTPUT2,
            round(p.probability_output2, digits),
            codes.NO_UNITS,
            algorithm_id=_model_algorithm(p, 2),
        )
    )
    out.append(Measurement(codes.THRESHOLD_VALUE, round(p.threshold, digits), codes.NO_UNITS))
    edema = p.characteristics.get("edema_index")
    if edema is not None:
        out.append(
            Measurement(codes.EDEMA_INDEX, round(float(edema), ROUNDING["edema"]), codes.RATIO)
        )
    return out + _growth_measurements(ctx)


def _growth_measurements(ctx: OutputContext) -> list[Measurement]:
    c = ctx.prior
    if c is None or not ctx.analysis.ok:
        return []
    out = [
        Measurement(
            codes.PRIOR_VOLUME,
            round(c.prior_volume_cm3, ROUNDING["volume"]),
            codes.CUBIC_CENTIMETER,
        ),
        Measurement(codes.VOLUME_CHANGE, round(c.change_percent, 2), codes.PERCENT),
    ]
    if c.interval_days is not None:
        out.append(Measurement(codes.INTERVAL, float(c.interval_days), codes.DAY))
    if c.annual_growth_percent is not None:
        out.append(
            Measurement(
                codes.ANNUAL_GROWTH, round(c.annual_growth_percent, 2), codes.PERCENT_PER_YEAR
            )
        )
    if c.doubling_time_years is not None:
        out.append(Measurement(codes.DOUBLING_TIME, round(c.doubling_time_years, 2), codes.YEAR))
    return out


def _evaluations(ctx: OutputContext) -> list[QualitativeEvaluation]:
    p = ctx.prediction
    status = codes.ASSESSABLE if p is not None else codes.NOT_ASSESSABLE
    out = [QualitativeEvaluation(codes.ANALYSIS_STATUS, status)]
    if p is not None:
        out.append(
            QualitativeEvaluation(
                codes.PREDICTED_CLASS, codes.KI67_HIGH if p.ki67_high else codes.KI67_LOW
            )
        )
        out.append(QualitativeEvaluation(codes.GROWTH_RISK_GROUP, codes.RISK_GROUPS[p.risk_group]))
        for key, concept in codes.INPUTS.items():
            used = bool(p.inputs_used.get(key, False))
            out.append(QualitativeEvaluation(concept, codes.YES if used else codes.NO))
        for key, concept in codes.CHARACTERISTIC_SIGNS.items():
            if key in p.characteristics:
                present = bool(p.characteristics[key])
                out.append(
                    QualitativeEvaluation(concept, codes.PRESENT if present else codes.ABSENT)
                )
    m = ctx.analysis.measurements if ctx.analysis.ok else None
    if m is not None and m.location in codes.LOCATIONS:
        out.append(QualitativeEvaluation(codes.LOCATION, codes.LOCATIONS[m.location]))
    if ctx.prior is not None and ctx.analysis.ok:
        out.append(QualitativeEvaluation(codes.GROWTH, codes.YES if ctx.prior.grown else codes.NO))
    return out


def _texts(ctx: OutputContext) -> Sequence[TextContentItem]:
    p = ctx.prediction
    lossy = source_lossy(ctx.source)
    lossy_items = [] if lossy is None else [_text(codes.LOSSY_SOURCE, lossy_text(lossy))]
    if p is None:
        reason = ctx.analysis.reason if not ctx.analysis.ok else "the model gave no prediction"
        return [_text(codes.NOT_ASSESSABLE_REASON, reason or "not given"), *lossy_items]
    out = lossy_items
    if p.characteristics:
        out.append(_text(codes.CHARACTERISTICS_SOURCE, ctx.characteristics_source))
    if ctx.prior is not None and ctx.analysis.ok:
        out.append(_text(codes.PRIOR_STUDY, prior_text(ctx.prior)))
    return out


def lossy_text(reason: str) -> str:
    """The SR's statement about lossy-compressed source images."""
    return (
        f"Yes ({reason}): the volume, the radiomics features and the prediction were "
        "computed from lossy-compressed images, which the model was not validated on"
    )


def prior_text(c: PriorComparison) -> str:
    """One readable line: the prior study, its volume and the change."""
    when = c.prior_study_date.isoformat() if c.prior_study_date else "date unknown"
    verdict = "growth" if c.grown else "no growth"
    return (
        f"Compared with the study of {when} (Study Instance UID {c.prior_study_uid}): "
        f"{c.prior_volume_cm3:.2f} -> {c.volume_cm3:.2f} cm3, {c.change_percent:+.1f} % "
        f"({verdict}; threshold {c.threshold_percent:.0f} %)"
    )


def _text(name: CodedConcept, value: str) -> TextContentItem:
    return TextContentItem(
        name=name, value=value, relationship_type=RelationshipTypeValues.CONTAINS
    )
