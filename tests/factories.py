"""Test data: complete, standard MR series built from the vendor tag profiles.

Stable API for every test module (keep it backwards compatible):

- :func:`make_mr_series` — one series: ``n_slices`` MR Image Storage instances,
  or one Enhanced MR Image Storage multi-frame instance when ``enhanced=True``.
- :func:`make_study` — a T1C series plus distractor series, one Study UID.
- :func:`write_series` — one Part 10 file per dataset (Explicit VR Little Endian).

Acquisition attributes come from :func:`lab.synth.vendors.series_profile`
(``vendor``/``kind``/``variant``/``contrast_evidence`` are passed through);
geometry, pixels, patient and study modules are made here. The localizer is a
3-plane localizer: its slices cycle through sagittal, coronal and axial.
Patient values are canaries (``TEST^PATIENT``/``TEST0001``) so that tests can
grep logs and summaries for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from lab.synth.vendors import (
    ENHANCED_PLACEMENT,
    PRIVATE_TAGS,
    normalize_orientation,
    private_profile,
    series_profile,
)

PixelFn = Callable[[int, int, int], np.ndarray]

# Row direction, column direction (LPS patient coordinates) per orientation.
ORIENTATION_VECTORS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "sag": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
}
LOCALIZER_CYCLE = ("sag", "coronal", "axial")
STUDY_DATE = "20250115"
STUDY_TIME = "101500"
BITS_STORED = 12
MAX_PIXEL = (1 << BITS_STORED) - 1
GADOLINIUM_CODE = ("C-17800", "SRT", "Gadolinium")
INTRAVENOUS_CODE = ("G-D101", "SRT", "Intravenous route")
BRAIN_CODE = ("T-A0100", "SRT", "Brain")

DEFAULT_DISTRACTORS = ("t1_mprage_pre", "t2_tse", "flair_3d", "dwi", "localizer")


def blob_pixels(z: int, rows: int, cols: int, n_slices: int = 16) -> np.ndarray:
    """A smooth bright ellipsoid on a dim background, slice ``z`` (uint16)."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    zc = (z - (n_slices - 1) / 2.0) / max(n_slices / 2.0, 1.0)
    r2 = ((yy - rows / 2.0) / (rows / 3.0)) ** 2 + ((xx - cols / 2.0) / (cols / 3.0)) ** 2 + zc**2
    image = 200.0 + 1500.0 * np.exp(-2.0 * r2)
    return np.clip(image, 0, MAX_PIXEL).astype(np.uint16)


def _code(value: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value
    return item


def _normal(orientation: str) -> np.ndarray:
    row, col = (np.array(v) for v in ORIENTATION_VECTORS[orientation])
    return np.cross(row, col)


def _geometry(
    orientation: str, index: int, n_slices: int, rows: int, cols: int, spacing: Sequence[float]
) -> tuple[list[float], list[float]]:
    """(ImageOrientationPatient, ImagePositionPatient) of slice ``index``, centred at 0."""
    row, col = (np.array(v) for v in ORIENTATION_VECTORS[orientation])
    offset = (index - (n_slices - 1) / 2.0) * spacing[2]
    origin = -(cols / 2.0) * spacing[1] * row - (rows / 2.0) * spacing[0] * col
    position = origin + offset * _normal(orientation)
    iop = [float(v) for v in (*row, *col)]
    return iop, [round(float(v), 4) + 0.0 for v in position]


def _slice_spacing(profile: dict[str, Any], spacing: Sequence[float] | None) -> list[float]:
    if spacing is not None:
        return [float(s) for s in spacing]
    step = profile.get("SpacingBetweenSlices") or profile.get("SliceThickness") or 1.0
    return [1.0, 1.0, float(step)]


def _common(
    ds: Dataset,
    profile: dict[str, Any],
    *,
    study_uid: str,
    series_uid: str,
    series_number: int,
    frame_uid: str,
    patient_name: str,
    patient_id: str,
) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19650412"
    ds.PatientSex = "F"
    ds.PatientAge = "059Y"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = STUDY_DATE
    ds.StudyTime = STUDY_TIME
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = f"{101500 + series_number * 100:06d}"
    ds.AccessionNumber = "ACC0001"
    ds.ReferringPhysicianName = "DOC^REFERRING"
    ds.StudyID = "1"
    ds.StudyDescription = "MRT Schaedel"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "HEAD"
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.InstitutionName = "SYNTHETIC HOSPITAL"
    ds.StationName = "MRC0001"
    ds.DeviceSerialNumber = "10001"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    for keyword, value in profile.get("_private", {}).items():
        group, creator, offset, vr = PRIVATE_TAGS[keyword]
        ds.private_block(group, creator, create=True).add_new(offset, vr, value)


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def make_mr_series(
    vendor: str = "siemens",
    kind: str = "t1c_mprage",
    *,
    orientation: str = "sag",
    n_slices: int = 16,
    rows: int = 32,
    cols: int = 32,
    enhanced: bool = False,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_name: str = "TEST^PATIENT",
    patient_id: str = "TEST0001",
    pixel_fn: PixelFn | None = None,
    spacing: Sequence[float] | None = None,
    variant: int = 0,
    contrast_evidence: str | None = None,
    series_number: int = 1,
    frame_of_reference_uid: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[Dataset]:
    """One complete MR series (a list of datasets, each with ``file_meta``).

    ``spacing`` is (row spacing, column spacing, slice step) in mm; None means
    1 x 1 mm pixels and the profile's slice step (SpacingBetweenSlices, else
    SliceThickness). With an explicit spacing, 3D kinds get SliceThickness =
    slice step. ``pixel_fn(z, rows, cols)`` gives slice ``z`` (default: a smooth
    blob). ``overrides`` (keyword -> value, None deletes) is applied last to
    every classic instance, or to the top level of the Enhanced instance.
    """
    orient = normalize_orientation(orientation)
    profile: dict[str, Any] = dict(
        series_profile(
            vendor,
            kind,
            orientation=orient,
            enhanced=enhanced,
            variant=variant,
            contrast_evidence=contrast_evidence,
        )
    )
    profile["_private"] = private_profile(vendor, kind)
    steps = _slice_spacing(profile, spacing)
    if spacing is not None:
        if profile.get("MRAcquisitionType") == "3D":
            profile["SliceThickness"] = steps[2]
        if "SpacingBetweenSlices" in profile:
            profile["SpacingBetweenSlices"] = steps[2]
    planes = _planes(kind, orient, n_slices)
    pixels = [
        (pixel_fn(z, rows, cols) if pixel_fn else blob_pixels(z, rows, cols, n_slices))
        for z in range(n_slices)
    ]
    ids = {
        "study_uid": study_uid or generate_uid(),
        "series_uid": series_uid or generate_uid(),
        "series_number": series_number,
        "frame_uid": frame_of_reference_uid or generate_uid(),
        "patient_name": patient_name,
        "patient_id": patient_id,
    }
    if enhanced:
        ds = _enhanced(profile, ids, planes, pixels, rows, cols, steps)
        _apply(ds, overrides)
        return [ds]
    out = []
    for z in range(n_slices):
        ds = _classic(profile, ids, planes, z, pixels[z], rows, cols, steps)
        _apply(ds, overrides)
        out.append(ds)
    return out


def _planes(kind: str, orientation: str, n_slices: int) -> list[tuple[str, int, int]]:
    """(orientation, index in its stack, stack size) of every slice."""
    if kind != "localizer":
        return [(orientation, z, n_slices) for z in range(n_slices)]
    names = [LOCALIZER_CYCLE[z * len(LOCALIZER_CYCLE) // n_slices] for z in range(n_slices)]
    return [(name, names[:z].count(name), names.count(name)) for z, name in enumerate(names)]


def _apply(ds: Dataset, overrides: dict[str, Any] | None) -> None:
    for keyword, value in (overrides or {}).items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)


def _profile_items(profile: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in profile.items() if not k.startswith("_")]


def _classic(
    profile: dict[str, Any],
    ids: dict[str, Any],
    planes: list[tuple[str, int, int]],
    z: int,
    pixels: np.ndarray,
    rows: int,
    cols: int,
    steps: list[float],
) -> Dataset:
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = _file_meta(MRImageStorage, sop_uid)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    _common(ds, profile, **ids)
    for keyword, value in _profile_items(profile):
        setattr(ds, keyword, value)
    if "ScanOptions" not in ds:
        ds.ScanOptions = ""  # Type 2
    ds.EchoTrainLength = 1
    ds.NumberOfAverages = 1
    ds.ImagedNucleus = "1H"
    ds.ImagingFrequency = 123.25
    if "ContrastBolusAgent" in ds:
        ds.ContrastBolusRoute = "IV"
    ds.InstanceNumber = z + 1
    ds.AcquisitionNumber = 1
    orientation, index, count = planes[z]
    iop, ipp = _geometry(orientation, index, count, rows, cols, steps)
    ds.ImageOrientationPatient = iop
    ds.ImagePositionPatient = ipp
    ds.SliceLocation = round(float(np.dot(ipp, _normal(orientation))), 4)
    ds.PixelSpacing = [steps[0], steps[1]]
    ds.Rows, ds.Columns = rows, cols
    ds.WindowCenter, ds.WindowWidth = 1000, 2000
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    return ds


def _item(**values: Any) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _enhanced(
    profile: dict[str, Any],
    ids: dict[str, Any],
    planes: list[tuple[str, int, int]],
    pixels: list[np.ndarray],
    rows: int,
    cols: int,
    steps: list[float],
) -> Dataset:
    """One Enhanced MR Image Storage instance holding every slice as a frame."""
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = _file_meta(EnhancedMRImageStorage, sop_uid)
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = sop_uid
    _common(ds, profile, **ids)
    groups: dict[str, Dataset] = {}
    agent = None
    for keyword, value in _profile_items(profile):
        if keyword == "ContrastBolusAgent":
            agent = value
        elif keyword in ENHANCED_PLACEMENT:
            seq_keyword, inner = ENHANCED_PLACEMENT[keyword]
            if inner == "InversionTimes":
                value = [value]
            setattr(groups.setdefault(seq_keyword, Dataset()), inner, value)
        else:
            setattr(ds, keyword, value)
    frame_type = list(profile["ImageType"])
    groups["PixelMeasuresSequence"].PixelSpacing = [steps[0], steps[1]]
    groups["MRTimingAndRelatedParametersSequence"].EchoTrainLength = 1
    groups["MRTimingAndRelatedParametersSequence"].RFEchoTrainLength = 1
    groups["MRTimingAndRelatedParametersSequence"].GradientEchoTrainLength = 1
    modifier = groups.setdefault("MRModifierSequence", Dataset())
    modifier.FlowCompensation = "NONE"
    modifier.T2Preparation = "NO"
    modifier.SpatialPresaturation = "NONE"
    modifier.PartialFourier = "NO"
    modifier.ParallelAcquisition = "NO"
    modifier.SpectrallySelectedExcitation = "NONE"
    timing = groups["MRTimingAndRelatedParametersSequence"]
    timing.SpecificAbsorptionRateSequence = DicomSequence(
        [_item(SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY", SpecificAbsorptionRateValue=0.5)]
    )
    timing.OperatingModeSequence = DicomSequence(
        [
            _item(OperatingModeType=kind, OperatingMode="IEC_NORMAL")
            for kind in ("STATIC FIELD", "RF", "GRADIENT")
        ]
    )
    groups["MRImagingModifierSequence"] = _item(
        MagnetizationTransfer="NONE",
        BloodSignalNulling="NO",
        Tagging="NONE",
        TransmitterFrequency=123.25,
        PixelBandwidth=200.0,
    )
    groups["PixelValueTransformationSequence"] = _item(
        RescaleIntercept=0, RescaleSlope=1, RescaleType="US"
    )
    groups["MRImageFrameTypeSequence"] = _item(
        FrameType=frame_type,
        PixelPresentation="MONOCHROME",
        VolumetricProperties="VOLUME",
        VolumeBasedCalculationTechnique="NONE",
        ComplexImageComponent="MAGNITUDE",
        AcquisitionContrast=profile.get("AcquisitionContrast", "UNKNOWN"),
    )
    groups["MRFOVGeometrySequence"] = _item(
        InPlanePhaseEncodingDirection="ROW",
        MRAcquisitionFrequencyEncodingSteps=cols,
        MRAcquisitionPhaseEncodingStepsInPlane=rows,
        PercentSampling=100,
        PercentPhaseFieldOfView=100,
    )
    groups["MRAveragesSequence"] = _item(NumberOfAverages=1)
    groups["FrameAnatomySequence"] = _item(
        AnatomicRegionSequence=DicomSequence([_code(BRAIN_CODE)]), FrameLaterality="U"
    )
    groups["MRReceiveCoilSequence"] = _item(
        ReceiveCoilName="Head_32",
        ReceiveCoilManufacturerName="",
        ReceiveCoilType="MULTICOIL",
        QuadratureReceiveCoil="NO",
        MultiCoilDefinitionSequence=DicomSequence(
            [_item(MultiCoilElementName="HE1-4", MultiCoilElementUsed="YES")]
        ),
    )
    groups["MRTransmitCoilSequence"] = _item(
        TransmitCoilName="Body", TransmitCoilManufacturerName="", TransmitCoilType="BODY"
    )
    if profile.get("AcquisitionContrast") == "DIFFUSION":
        groups["MRDiffusionSequence"] = _item(
            DiffusionBValue=1000.0, DiffusionDirectionality="ISOTROPIC"
        )
    if agent is not None:
        _enhanced_contrast(ds, groups, str(agent))
    single_orientation = len({p[0] for p in planes}) == 1
    if single_orientation:
        iop, _ = _geometry(planes[0][0], 0, 1, rows, cols, steps)
        groups["PlaneOrientationSequence"] = _item(ImageOrientationPatient=iop)
    shared = Dataset()
    for seq_keyword, item in groups.items():
        setattr(shared, seq_keyword, DicomSequence([item]))
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for z, (orientation, index, count) in enumerate(planes):
        iop, ipp = _geometry(orientation, index, count, rows, cols, steps)
        frame = Dataset()
        frame.FrameContentSequence = DicomSequence(
            [
                _item(
                    StackID="1",
                    InStackPositionNumber=z + 1,
                    DimensionIndexValues=[1, z + 1],
                    FrameAcquisitionDateTime=f"{STUDY_DATE}{STUDY_TIME}.000000",
                    FrameReferenceDateTime=f"{STUDY_DATE}{STUDY_TIME}.000000",
                    FrameAcquisitionDuration=1000.0,
                )
            ]
        )
        frame.PlanePositionSequence = DicomSequence([_item(ImagePositionPatient=ipp)])
        if not single_orientation:
            frame.PlaneOrientationSequence = DicomSequence([_item(ImageOrientationPatient=iop)])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    dim_uid = generate_uid()
    ds.DimensionOrganizationSequence = DicomSequence([_item(DimensionOrganizationUID=dim_uid)])
    ds.DimensionOrganizationType = "3D"
    ds.DimensionIndexSequence = DicomSequence(
        [
            _item(
                DimensionOrganizationUID=dim_uid,
                DimensionIndexPointer=0x00209056,
                FunctionalGroupPointer=0x00209111,
            ),
            _item(
                DimensionOrganizationUID=dim_uid,
                DimensionIndexPointer=0x00209057,
                FunctionalGroupPointer=0x00209111,
            ),
        ]
    )
    ds.AcquisitionContextSequence = DicomSequence([])
    del ds.AcquisitionDate, ds.AcquisitionTime  # not in the Enhanced MR IOD
    ds.InstanceNumber = 1
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = f"{STUDY_DATE}{STUDY_TIME}.000000"
    ds.AcquisitionDuration = 300.0
    ds.ContentQualification = "PRODUCT"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.NumberOfFrames = len(planes)
    ds.Rows, ds.Columns = rows, cols
    stack = np.stack([np.asarray(p, dtype=np.uint16) for p in pixels])
    ds.PixelData = np.ascontiguousarray(stack).tobytes()
    return ds


def _enhanced_contrast(ds: Dataset, groups: dict[str, Dataset], agent: str) -> None:
    """Enhanced Contrast/Bolus module and the per-frame usage (all frames post contrast)."""
    code = _code(GADOLINIUM_CODE)
    code.CodeMeaning = agent[:64]
    code.ContrastBolusAgentNumber = 1
    code.ContrastBolusAdministrationRouteSequence = DicomSequence([_code(INTRAVENOUS_CODE)])
    code.ContrastBolusIngredientCodeSequence = DicomSequence([_code(GADOLINIUM_CODE)])
    code.ContrastBolusVolume = 7.5
    code.ContrastBolusIngredientConcentration = 1.0
    ds.ContrastBolusAgentSequence = DicomSequence([code])
    groups["ContrastBolusUsageSequence"] = _item(
        ContrastBolusAgentNumber=1,
        ContrastBolusAgentAdministered="YES",
        ContrastBolusAgentDetected="NO",
        ContrastBolusAgentPhase="POST_CONTRAST",
    )


def make_study(
    vendor: str = "siemens",
    *,
    orientation: str = "sag",
    n_slices: int = 16,
    distractor_slices: int = 6,
    rows: int = 32,
    cols: int = 32,
    enhanced: bool = False,
    distractors: Sequence[str] = DEFAULT_DISTRACTORS,
    study_uid: str | None = None,
    patient_name: str = "TEST^PATIENT",
    patient_id: str = "TEST0001",
    pixel_fn: PixelFn | None = None,
) -> dict[str, list[Dataset]]:
    """A study: ``{"t1c_mprage": [...], <distractor kind>: [...], ...}``, one Study UID.

    The T1C series is series 1 with ``n_slices``; each distractor gets the
    next series number, ``distractor_slices`` slices and its own Frame of
    Reference. ``enhanced`` applies to the T1C series only.
    """
    study = study_uid or generate_uid()
    out = {
        "t1c_mprage": make_mr_series(
            vendor,
            "t1c_mprage",
            orientation=orientation,
            n_slices=n_slices,
            rows=rows,
            cols=cols,
            enhanced=enhanced,
            pixel_fn=pixel_fn,
            series_number=1,
            study_uid=study,
            patient_name=patient_name,
            patient_id=patient_id,
        )
    }
    for number, kind in enumerate(distractors, start=2):
        out[kind] = make_mr_series(
            vendor,
            kind,
            orientation=orientation,
            n_slices=max(distractor_slices, 3),
            rows=rows,
            cols=cols,
            series_number=number,
            study_uid=study,
            patient_name=patient_name,
            patient_id=patient_id,
        )
    return out


def write_series(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    """Write each dataset as a Part 10 file ``IM00001.dcm``... in ``folder`` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, ds in enumerate(datasets, start=1):
        path = folder / f"IM{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
