"""Enhanced MR Image Storage: one multi-frame instance with functional groups.

Shared groups carry what every frame has in common (pixel measures, plane
orientation, timing, contrast usage, rescale); each frame has its own Frame
Content (stack position) and Plane Position. The vendor profile's Enhanced
keys are placed where :data:`lab.synth.vendors.ENHANCED_PLACEMENT` says.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from lab.synth.dicom_writer import (
    AGENT_CODES,
    ENHANCED_MR_IMAGE_STORAGE,
    SeriesSpec,
    StudyInfo,
    _add_private,
    _pixel_module,
    _time,
    common_modules,
    synth_uid,
)
from lab.synth.vendors import ENHANCED_PLACEMENT

_TOP_LEVEL_SKIP = {
    "SeriesDescription",
    "ProtocolName",
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "ImageType",
    "ContrastBolusAgent",
    "AcquisitionContrast",
    "InversionRecovery",
}


def _item(**values: object) -> Dataset:
    ds = Dataset()
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return _item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def build_enhanced(
    study: StudyInfo, spec: SeriesSpec, stack: np.ndarray, profile: dict[str, object]
) -> Dataset:
    """The whole series as one Enhanced MR Image Storage instance."""
    grid = spec.grids[0]
    ds = Dataset()
    ds.SOPClassUID = ENHANCED_MR_IMAGE_STORAGE
    series_uid = spec.uid(study)
    ds.SOPInstanceUID = synth_uid(study.seed, study.case_id, series_uid, 1)
    common_modules(ds, study, spec, profile)
    ds.InstanceNumber = 1
    ds.ContentDate = study.study_date
    ds.ContentTime = _time(study.study_time, spec.time_offset_s + 60)
    acq_dt = study.study_date + _time(study.study_time, spec.time_offset_s)
    ds.AcquisitionDateTime = acq_dt
    ds.AcquisitionDuration = 320.0
    ds.AcquisitionNumber = 1
    ds.NumberOfFrames = int(stack.shape[0])
    ds.ImageType = profile["ImageType"]
    ds.ContentQualification = "RESEARCH"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.AcquisitionContrast = profile["AcquisitionContrast"]
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionContextSequence = Sequence()
    placed: dict[str, dict[str, object]] = {}
    for key, value in profile.items():
        if key in ENHANCED_PLACEMENT:
            group, name = ENHANCED_PLACEMENT[key]
            placed.setdefault(group, {})[name] = value
        elif key not in _TOP_LEVEL_SKIP:
            setattr(ds, key, value)
    _dimensions(ds, study, series_uid)
    ds.SharedFunctionalGroupsSequence = Sequence([_shared(spec, profile, placed)])
    frames = []
    for k in range(stack.shape[0]):
        frames.append(
            _item(
                FrameContentSequence=Sequence(
                    [
                        _item(
                            StackID="1",
                            InStackPositionNumber=k + 1,
                            DimensionIndexValues=[1, k + 1],
                            FrameAcquisitionDateTime=acq_dt,
                            FrameReferenceDateTime=acq_dt,
                            FrameAcquisitionDuration=320000.0,
                        )
                    ]
                ),
                PlanePositionSequence=Sequence([_item(ImagePositionPatient=grid.position(k))]),
            )
        )
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    if "ContrastBolusAgent" in profile:
        _contrast(ds, str(profile["ContrastBolusAgent"]))
    _pixel_module(ds, stack, spec.quant)
    _add_private(ds, study.vendor, spec.kind)
    ds.add_new(0x7FE00010, "OW", np.ascontiguousarray(stack).tobytes())
    return ds


def _dimensions(ds: Dataset, study: StudyInfo, series_uid: str) -> None:
    dim_uid = synth_uid(study.seed, study.case_id, series_uid, "dimensions")
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=dim_uid)])
    ds.DimensionOrganizationType = "3D"
    ds.DimensionIndexSequence = Sequence(
        [
            _item(
                DimensionOrganizationUID=dim_uid,
                DimensionIndexPointer=0x00209056,  # StackID
                FunctionalGroupPointer=0x00209111,  # FrameContentSequence
                DimensionDescriptionLabel="Stack ID",
            ),
            _item(
                DimensionOrganizationUID=dim_uid,
                DimensionIndexPointer=0x00209057,  # InStackPositionNumber
                FunctionalGroupPointer=0x00209111,
                DimensionDescriptionLabel="In-Stack Position Number",
            ),
        ]
    )


def _shared(spec: SeriesSpec, profile: dict[str, object], placed: dict) -> Dataset:
    """The Shared Functional Groups item: what every frame of the series has in common."""
    grid = spec.grids[0]
    shared = _item(
        PixelMeasuresSequence=Sequence(
            [
                _item(
                    PixelSpacing=[grid.row_spacing, grid.col_spacing],
                    SliceThickness=round(grid.thickness, 4),
                    SpacingBetweenSlices=round(grid.slice_step, 4),
                )
            ]
        ),
        PlaneOrientationSequence=Sequence([_item(ImageOrientationPatient=grid.iop)]),
        MRImageFrameTypeSequence=Sequence([_frame_type(profile)]),
        MRTimingAndRelatedParametersSequence=Sequence(
            [_timing(placed.get("MRTimingAndRelatedParametersSequence", {}))]
        ),
        MRFOVGeometrySequence=Sequence(
            [
                _item(
                    InPlanePhaseEncodingDirection="ROW",
                    MRAcquisitionFrequencyEncodingSteps=grid.rows,
                    MRAcquisitionPhaseEncodingStepsInPlane=grid.cols,
                    MRAcquisitionPhaseEncodingStepsOutOfPlane=grid.slices,
                    PercentSampling=100.0,
                    PercentPhaseFieldOfView=100.0,
                )
            ]
        ),
        MREchoSequence=Sequence(
            [
                _item(
                    EffectiveEchoTime=placed.get("MREchoSequence", {}).get("EffectiveEchoTime", 2.3)
                )
            ]
        ),
        MRModifierSequence=Sequence([_modifier(profile, placed.get("MRModifierSequence", {}))]),
        MRImagingModifierSequence=Sequence(
            [
                _item(
                    MagnetizationTransfer="NONE",
                    BloodSignalNulling="NO",
                    Tagging="NONE",
                    TransmitterFrequency=123.2,
                    PixelBandwidth=200.0,
                )
            ]
        ),
        MRReceiveCoilSequence=Sequence([_receive_coil(profile)]),
        MRTransmitCoilSequence=Sequence(
            [
                _item(
                    TransmitCoilName="Body",
                    TransmitCoilManufacturerName=profile["Manufacturer"],
                    TransmitCoilType="BODY",
                )
            ]
        ),
        MRAveragesSequence=Sequence([_item(NumberOfAverages=1.0)]),
        **_pixel_groups(spec),
    )
    if "ContrastBolusAgent" in profile:
        shared.ContrastBolusUsageSequence = Sequence(
            [
                _item(
                    ContrastBolusAgentNumber=1,
                    ContrastBolusAgentAdministered="YES",
                    ContrastBolusAgentDetected="YES",
                    ContrastBolusAgentPhase="POST_CONTRAST",
                )
            ]
        )
    return shared


def _frame_type(profile: dict[str, object]) -> Dataset:
    return _item(
        FrameType=profile["ImageType"],
        PixelPresentation="MONOCHROME",
        VolumetricProperties="VOLUME",
        VolumeBasedCalculationTechnique="NONE",
        ComplexImageComponent="MAGNITUDE",
        AcquisitionContrast=profile["AcquisitionContrast"],
    )


def _timing(timing: dict) -> Dataset:
    """MR Timing and Related Parameters, with the IEC normal operating mode and SAR."""
    return _item(
        RepetitionTime=timing.get("RepetitionTime", 2300.0),
        FlipAngle=timing.get("FlipAngle", 8.0),
        EchoTrainLength=1,
        RFEchoTrainLength=1,
        GradientEchoTrainLength=1,
        SpecificAbsorptionRateSequence=Sequence(
            [
                _item(
                    SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY",
                    SpecificAbsorptionRateValue=0.4,
                )
            ]
        ),
        OperatingModeSequence=Sequence(
            [
                _item(OperatingModeType=kind, OperatingMode="IEC_NORMAL")
                for kind in ("STATIC FIELD", "RF", "GRADIENT")
            ]
        ),
    )


def _modifier(profile: dict[str, object], modifier: dict) -> Dataset:
    """MR Modifier: InversionTimes present exactly when InversionRecovery is YES."""
    inversion = profile.get("InversionRecovery", "NO")
    mod = _item(
        InversionRecovery=inversion,
        FlowCompensation="NONE",
        T2Preparation="NO",
        SpectrallySelectedExcitation="NONE",
        SpatialPresaturation="NONE",
        PartialFourier="NO",
        ParallelAcquisition="NO",
    )
    if inversion == "YES":
        ti = modifier.get("InversionTimes", profile.get("InversionTime", 1000.0))
        mod.InversionTimes = [float(ti)]
    return mod


def _receive_coil(profile: dict[str, object]) -> Dataset:
    return _item(
        ReceiveCoilName="HeadNeck_20",
        ReceiveCoilManufacturerName=profile["Manufacturer"],
        ReceiveCoilType="MULTICOIL",
        QuadratureReceiveCoil="NO",
        MultiCoilConfiguration="HeadNeck_20",
        MultiCoilDefinitionSequence=Sequence(
            [_item(MultiCoilElementName="HE1-4;NE1", MultiCoilElementUsed="YES")]
        ),
    )


def _pixel_groups(spec: SeriesSpec) -> dict[str, Sequence]:
    """Rescale, anatomy and window of the stored values, the same for every frame."""
    return {
        "PixelValueTransformationSequence": Sequence(
            [
                _item(
                    RescaleIntercept=f"{spec.quant.intercept:.8g}",
                    RescaleSlope=f"{spec.quant.slope:.8g}",
                    RescaleType="US",
                )
            ]
        ),
        "FrameAnatomySequence": Sequence(
            [
                _item(
                    AnatomicRegionSequence=Sequence([_code("12738006", "SCT", "Brain")]),
                    FrameLaterality="U",
                )
            ]
        ),
        "FrameVOILUTSequence": Sequence(
            [_item(WindowCenter=spec.quant.window()[0], WindowWidth=spec.quant.window()[1])]
        ),
    }


def _contrast(ds: Dataset, agent: str) -> None:
    code, meaning = AGENT_CODES.get(agent, ("58281002", "Gadolinium"))
    item = _code(code, "SCT", meaning)
    item.ContrastBolusAgentNumber = 1
    item.ContrastBolusAdministrationRouteSequence = Sequence(
        [_code("47625008", "SCT", "Intravenous route")]
    )
    item.ContrastBolusIngredientCodeSequence = Sequence([_code("58281002", "SCT", "Gadolinium")])
    item.ContrastBolusVolume = 7.5
    item.ContrastBolusIngredientConcentration = 604.72
    ds.ContrastBolusAgentSequence = Sequence([item])
