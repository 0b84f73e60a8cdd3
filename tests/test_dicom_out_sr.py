"""TID 1500 SR: valid by dciodvfy in every state, and everything reads back with highdicom.

States: assessable (every source variant, with the SEG), with the
radiologist's characteristics, amended (a predecessor), assessable without a
SEG, and not assessable. Contexts are built once per module.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import io
from pathlib import Path

import highdicom as hd
import pytest
from highdicom.sr import CodedConcept, ValueTypeValues
from highdicom.sr.utils import find_content_items
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage

from ai_core.model.inputs import Characteristics
from dicom_out import codes
from dicom_out.context import (
    ALGORITHM_NAME,
    MANUFACTURER,
    SERIES_NUMBER_SR,
    OutputContext,
    OutputError,
    Predecessor,
    PriorComparison,
)
from dicom_out.sc import build_heatmap_scs
from dicom_out.seg import build_seg, tracking_uid
from dicom_out.sr import SYNTHETIC_NOTE, build_sr
from tests.dicom_out_cases import VARIANTS, dciodvfy, make_context, variant_context

VARIANT_PARAMS = [pytest.param(v.values, id=v.id) for v in VARIANTS]
CHARACTERISTICS = Characteristics(
    edema_index=2.5, necrosis=True, csf_cleft=False, capsular_enhancement=True
)


@dataclasses.dataclass(frozen=True)
class Case:
    ctx: OutputContext
    seg: Dataset | None
    sr: Dataset
    back: hd.sr.Comprehensive3DSR  # the SR written to bytes and read again


def _case(ctx: OutputContext, with_seg: bool = True) -> Case:
    seg = build_seg(ctx) if with_seg else None
    sr = build_sr(ctx, seg)
    return Case(ctx, seg, sr, _read_back(sr))


def _read_back(ds: Dataset) -> hd.sr.Comprehensive3DSR:
    back = hd.sr.srread(io.BytesIO(_bytes(ds)))
    assert isinstance(back, hd.sr.Comprehensive3DSR)
    return back


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module", params=VARIANT_PARAMS)
def assessed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    vendor, orientation, enhanced = request.param
    return _case(variant_context(tmp_path_factory, vendor, orientation, enhanced))


@pytest.fixture(scope="module")
def with_characteristics(tmp_path_factory: pytest.TempPathFactory) -> Case:
    ctx = make_context(tmp_path_factory.mktemp("chars"), characteristics=CHARACTERISTICS)
    return _case(ctx)


@pytest.fixture(scope="module")
def amended(with_characteristics: Case) -> Case:
    ctx = with_characteristics.ctx
    predecessor = Predecessor(
        study_uid=ctx.study_uid,
        series_uid=str(with_characteristics.sr.SeriesInstanceUID),
        sop_instance_uid=str(with_characteristics.sr.SOPInstanceUID),
        sop_class_uid=Comprehensive3DSRStorage,
    )
    return _case(dataclasses.replace(ctx, job_key="test-series/r1", predecessor=predecessor))


@pytest.fixture(scope="module")
def not_assessable(tmp_path_factory: pytest.TempPathFactory) -> Case:
    ctx = make_context(
        tmp_path_factory.mktemp("na"), assessable=False, n_slices=16, rows=32, cols=32
    )
    return _case(ctx, with_seg=False)


@pytest.fixture(scope="module")
def without_seg(with_characteristics: Case) -> Case:
    return _case(with_characteristics.ctx, with_seg=False)


PRIOR = PriorComparison(
    prior_study_uid="1.2.826.0.1.3680043.10.99.77",
    prior_study_date=dt.date(2024, 1, 15),
    prior_volume_cm3=2.0,
    volume_cm3=2.5,
    interval_days=731,
    change_percent=25.0,
    grown=True,
    threshold_percent=15.0,
    annual_growth_percent=11.8,
    doubling_time_years=6.2,
)


@pytest.fixture(scope="module")
def follow_up(with_characteristics: Case) -> Case:
    return _case(dataclasses.replace(with_characteristics.ctx, prior=PRIOR))


# -- helpers over the read-back content tree ----------------------------------------------
def _report(case: Case) -> hd.sr.MeasurementReport:
    report = case.back.content
    assert isinstance(report, hd.sr.MeasurementReport)
    return report


def _group(
    case: Case,
) -> (
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
):
    report = _report(case)
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    ] = [
        *report.get_volumetric_roi_measurement_groups(),
        *report.get_image_measurement_groups(),
    ]
    assert len(groups) == 1
    return groups[0]


def _value(case: Case, name: CodedConcept) -> float:
    (measurement,) = _group(case).get_measurements(name=name)
    return float(measurement.value)


def _coded(case: Case, name: CodedConcept) -> CodedConcept | None:
    found = _group(case).get_qualitative_evaluations(name=name)
    assert len(found) <= 1
    return found[0][0].value if found else None


def _text(item: Dataset, name: CodedConcept) -> list[str]:
    found = find_content_items(item, name=name, value_type=ValueTypeValues.TEXT, recursive=True)
    return [str(i.TextValue) for i in found]


# -- validity ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "state", ["with_characteristics", "amended", "not_assessable", "without_seg", "follow_up"]
)
def test_every_state_passes_dciodvfy(
    state: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    case: Case = request.getfixturevalue(state)
    assert dciodvfy(case.sr, tmp_path) == []


def test_every_variant_passes_dciodvfy(assessed: Case, tmp_path: Path) -> None:
    assert dciodvfy(assessed.sr, tmp_path) == []


# -- what a receiver reads back ----------------------------------------------------------
def test_header_and_uids_read_back(assessed: Case) -> None:
    ctx, back = assessed.ctx, assessed.back
    assert back.SOPClassUID == Comprehensive3DSRStorage
    assert (back.SeriesInstanceUID, back.SOPInstanceUID) == (ctx.sr_series_uid, ctx.sr_instance_uid)
    assert back.StudyInstanceUID == ctx.study_uid
    assert back.PatientID == ctx.first.PatientID
    assert int(back.SeriesNumber) == SERIES_NUMBER_SR
    assert "research use only" in back.SeriesDescription.lower()
    assert (back.CompletionFlag, back.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    assert (back.Manufacturer, back.SoftwareVersions) == (MANUFACTURER, ctx.software_version)
    evidence = {str(instance) for _, _, instance, _ in back.get_evidence()}
    assert str(assessed.seg.SOPInstanceUID) in evidence  # type: ignore[union-attr]
    assert {str(ds.SOPInstanceUID) for ds in ctx.source} <= evidence
    (scheme,) = back.CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == codes.PRIVATE_SCHEME
    assert scheme.CodingSchemeName == codes.PRIVATE_SCHEME_NAME
    assert scheme.CodingSchemeResponsibleOrganization == codes.PRIVATE_SCHEME_ORGANISATION


def test_observer_and_procedure_read_back(assessed: Case) -> None:
    report = _report(assessed)
    (observer,) = report.get_observer_contexts(observer_type=codes.DEVICE)
    device = observer.observer_identifying_attributes
    assert isinstance(device, hd.sr.DeviceObserverIdentifyingAttributes)
    assert device.name == ALGORITHM_NAME
    assert device.manufacturer_name == MANUFACTURER
    assert device.model_name == f"{ALGORITHM_NAME} {assessed.ctx.software_version}"
    procedures = find_content_items(
        report[0], name=hd.sr.CodedConcept("121058", "DCM", "Procedure reported")
    )
    assert [p.value for p in procedures] == [codes.MRI_OF_HEAD]


def test_group_references_the_seg_segment(assessed: Case) -> None:
    group = _group(assessed)
    assert isinstance(group, hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations)
    assert group.tracking_identifier == "Meningioma"
    assert group.tracking_uid == tracking_uid(assessed.ctx)
    segment = group.referenced_segment
    assert segment is not None
    assert segment[0].referenced_sop_instance_uid == assessed.seg.SOPInstanceUID  # type: ignore[union-attr]
    assert segment[0].referenced_segment_numbers == [1]
    assert segment[1].value == assessed.ctx.source_series_uid
    assert group.finding_type == codes.FINDING_TYPE
    (site,) = group.finding_sites
    assert site.value == codes.FINDING_SITE
    side = assessed.ctx.analysis.measurements.side  # type: ignore[union-attr]
    assert site.laterality == codes.LATERALITY[side]


def test_numbers_read_back(assessed: Case) -> None:
    m, p = assessed.ctx.analysis.measurements, assessed.ctx.prediction
    assert m is not None and p is not None
    assert _value(assessed, codes.VOLUME) == pytest.approx(m.volume_cm3, abs=5e-4)
    assert _value(assessed, codes.MAXIMUM_3D_DIAMETER) == pytest.approx(m.max_diameter_mm, abs=5e-3)
    assert _value(assessed, codes.PROBABILITY_OUTPUT1) == pytest.approx(
        p.probability_output1, abs=5e-5
    )
    assert _value(assessed, codes.PROBABILITY_OUTPUT2) == pytest.approx(
        p.probability_output2, abs=5e-5
    )
    assert _value(assessed, codes.THRESHOLD_VALUE) == pytest.approx(p.threshold, abs=5e-5)
    units = {
        codes.VOLUME.value: "cm3",
        codes.MAXIMUM_3D_DIAMETER.value: "mm",
        codes.PROBABILITY_OUTPUT1.value: "1",
    }
    for measurement in _group(assessed).get_measurements():
        if measurement.name.value in units:
            assert measurement.unit.value == units[measurement.name.value]


def test_each_probability_names_the_model(assessed: Case) -> None:
    p = assessed.ctx.prediction
    assert p is not None
    for name, output in (
        (codes.PROBABILITY_OUTPUT1, "output=1"),
        (codes.PROBABILITY_OUTPUT2, "output=2"),
    ):
        (measurement,) = _group(assessed).get_measurements(name=name)
        item = measurement[0]
        assert _text(item, CodedConcept("111001", "DCM", "Algorithm Name")) == [p.model_name]
        assert _text(item, CodedConcept("111003", "DCM", "Algorithm Version")) == [p.model_version]
        parameters = _text(item, CodedConcept("111002", "DCM", "Algorithm Parameters"))
        assert any(x.startswith(output) for x in parameters)


def test_class_risk_and_inputs_read_back(assessed: Case) -> None:
    p = assessed.ctx.prediction
    assert p is not None
    assert _coded(assessed, codes.PREDICTED_CLASS) == (
        codes.KI67_HIGH if p.ki67_high else codes.KI67_LOW
    )
    assert _coded(assessed, codes.GROWTH_RISK_GROUP) == codes.RISK_GROUPS[p.risk_group]
    assert _coded(assessed, codes.ANALYSIS_STATUS) == codes.ASSESSABLE
    assert _coded(assessed, codes.INPUT_MRI) == codes.YES
    assert _coded(assessed, codes.INPUT_CHARACTERISTICS) == codes.NO
    assert _coded(assessed, codes.INPUT_RADIOMICS) == (
        codes.YES if p.inputs_used["radiomics"] else codes.NO
    )
    for concept in (codes.NECROSIS, codes.CSF_CLEFT, codes.CAPSULAR_ENHANCEMENT):
        assert _coded(assessed, concept) is None  # unknown characteristics are left out
    assert _group(assessed).get_measurements(name=codes.EDEMA_INDEX) == []
    assert _text(_group(assessed)[0], codes.CHARACTERISTICS_SOURCE) == []


def test_disclaimer_is_in_the_report(assessed: Case) -> None:
    (comment,) = _text(assessed.back.content[0], codes.COMMENT)
    assert "research use only" in comment.lower() and "not for diagnostic use" in comment.lower()
    assert assessed.ctx.prediction is not None and assessed.ctx.prediction.synthetic_model
    assert SYNTHETIC_NOTE in comment


def test_characteristics_and_who_gave_them(with_characteristics: Case) -> None:
    case = with_characteristics
    assert _value(case, codes.EDEMA_INDEX) == pytest.approx(2.5)
    (edema,) = _group(case).get_measurements(name=codes.EDEMA_INDEX)
    assert edema.unit == codes.RATIO
    assert _coded(case, codes.NECROSIS) == codes.PRESENT
    assert _coded(case, codes.CSF_CLEFT) == codes.ABSENT
    assert _coded(case, codes.CAPSULAR_ENHANCEMENT) == codes.PRESENT
    assert _coded(case, codes.INPUT_CHARACTERISTICS) == codes.YES
    assert _text(_group(case)[0], codes.CHARACTERISTICS_SOURCE) == ["radiologist"]


def test_location_reads_back_when_known(with_characteristics: Case) -> None:
    location = with_characteristics.ctx.analysis.measurements.location  # type: ignore[union-attr]
    assert location in codes.LOCATIONS  # the double's sphere is placed in a known location
    assert _coded(with_characteristics, codes.LOCATION) == codes.LOCATIONS[location]


def test_amendment_names_its_predecessor(amended: Case, with_characteristics: Case) -> None:
    (series,) = amended.back.PredecessorDocumentsSequence
    assert series.StudyInstanceUID == with_characteristics.ctx.study_uid
    (ref,) = series.ReferencedSeriesSequence
    assert ref.SeriesInstanceUID == with_characteristics.sr.SeriesInstanceUID
    (instance,) = ref.ReferencedSOPSequence
    assert instance.ReferencedSOPInstanceUID == with_characteristics.sr.SOPInstanceUID
    assert instance.ReferencedSOPClassUID == Comprehensive3DSRStorage
    assert amended.sr.SOPInstanceUID != with_characteristics.sr.SOPInstanceUID
    assert "PredecessorDocumentsSequence" not in with_characteristics.sr


def test_predecessor_from_another_study_is_refused(with_characteristics: Case) -> None:
    other = Predecessor("1.2.3", "1.2.3.4", "1.2.3.4.5", Comprehensive3DSRStorage)
    ctx = dataclasses.replace(with_characteristics.ctx, predecessor=other)
    with pytest.raises(OutputError, match="another study"):
        build_sr(ctx, with_characteristics.seg)


def test_not_assessable_says_why_and_invents_no_number(not_assessable: Case) -> None:
    case = not_assessable
    assert case.back.CompletionFlag == "PARTIAL"
    root = case.back.content[0]
    assert find_content_items(root, value_type=ValueTypeValues.NUM, recursive=True) == []
    assert find_content_items(root, value_type=ValueTypeValues.IMAGE, recursive=True) == []
    assert _coded(case, codes.ANALYSIS_STATUS) == codes.NOT_ASSESSABLE
    assert _text(_group(case)[0], codes.NOT_ASSESSABLE_REASON) == [case.ctx.analysis.reason]
    (comment,) = _text(root, codes.COMMENT)
    assert "not for diagnostic use" in comment.lower()


def test_a_seg_with_a_not_assessable_analysis_is_refused(
    not_assessable: Case, assessed: Case
) -> None:
    with pytest.raises(OutputError, match="not assessable"):
        build_sr(not_assessable.ctx, assessed.seg)


def test_without_seg_keeps_the_numbers_in_a_plain_group(without_seg: Case) -> None:
    group = _group(without_seg)
    assert not isinstance(group, hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations)
    assert without_seg.back.CompletionFlag == "PARTIAL"
    assert _value(without_seg, codes.VOLUME) > 0


def test_retry_gives_identical_sr_and_new_job_new_uids(with_characteristics: Case) -> None:
    ctx, seg = with_characteristics.ctx, with_characteristics.seg
    assert _bytes(build_sr(ctx, seg)) == _bytes(with_characteristics.sr)
    other = build_sr(dataclasses.replace(ctx, job_key="test-series/r9"), seg)
    assert other.SeriesInstanceUID != with_characteristics.sr.SeriesInstanceUID
    assert other.SOPInstanceUID != with_characteristics.sr.SOPInstanceUID


def test_private_codes_fit_their_value_representations() -> None:
    private = codes.all_private()
    assert len(private) >= 20
    for concept in private:
        assert len(concept.value) <= 16, concept.value  # SH
        assert len(concept.meaning) <= 64, concept.meaning  # LO
        assert concept.scheme_designator == codes.PRIVATE_SCHEME
    assert len({c.value for c in private}) == len(private)


def test_follow_up_reports_growth_against_the_prior(follow_up: Case) -> None:
    assert _value(follow_up, codes.PRIOR_VOLUME) == pytest.approx(2.0)
    assert _value(follow_up, codes.VOLUME_CHANGE) == pytest.approx(25.0)
    assert _value(follow_up, codes.INTERVAL) == pytest.approx(731)
    assert _value(follow_up, codes.ANNUAL_GROWTH) == pytest.approx(11.8)
    assert _value(follow_up, codes.DOUBLING_TIME) == pytest.approx(6.2)
    assert _coded(follow_up, codes.GROWTH) == codes.YES
    (line,) = _text(follow_up.sr, codes.PRIOR_STUDY)
    assert "2024-01-15" in line and PRIOR.prior_study_uid in line and "+25.0 %" in line


def test_first_study_has_no_growth_items(with_characteristics: Case) -> None:
    assert _coded(with_characteristics, codes.GROWTH) is None
    assert _text(with_characteristics.sr, codes.PRIOR_STUDY) == []


def _lossy_source(ctx: OutputContext) -> OutputContext:
    """The same series as if it had been JPEG-compressed lossily before it reached us."""
    source = copy.deepcopy(ctx.source)
    for ds in source:
        ds.LossyImageCompression = "01"
    return dataclasses.replace(ctx, source=source)


def test_lossy_source_is_stated_in_the_sr_and_flagged_on_the_heatmaps(
    with_characteristics: Case, tmp_path: Path
) -> None:
    assert _text(with_characteristics.sr, codes.LOSSY_SOURCE) == []
    ctx = _lossy_source(with_characteristics.ctx)
    lossy = _case(ctx)
    (line,) = _text(lossy.sr, codes.LOSSY_SOURCE)
    assert line.startswith("Yes (Lossy Image Compression 01)") and "not validated" in line
    assert dciodvfy(lossy.sr, tmp_path) == []
    scs = build_heatmap_scs(ctx)
    assert scs and {sc.LossyImageCompression for sc in scs} == {"01"}
    assert {sc.LossyImageCompression for sc in build_heatmap_scs(with_characteristics.ctx)} == {
        "00"
    }
