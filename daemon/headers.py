"""The header summary kept per instance: what the series filter and the
completeness check need, JSON-safe, and free of patient identifiers.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import IS, DSfloat, PersonName

# Top-level attributes copied as they are (keywords). No patient module here.
HEADER_KEYWORDS: tuple[str, ...] = (
    "Modality",
    "SOPClassUID",
    "Manufacturer",
    "ManufacturerModelName",
    "SeriesDescription",
    "ProtocolName",
    "ImageType",
    "MRAcquisitionType",
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "SequenceName",
    "PulseSequenceName",
    "EchoPulseSequence",
    "InversionRecovery",
    "ContrastBolusAgent",
    "ContrastBolusRoute",
    "SliceThickness",
    "SpacingBetweenSlices",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "InstanceNumber",
    "AcquisitionNumber",
    "ImagesInAcquisition",
    "BitsAllocated",
    "SamplesPerPixel",
    "FrameOfReferenceUID",
)

# Enhanced MR keeps many of these inside functional group sequences.
_GROUP_SEQUENCES: tuple[str, ...] = (
    "MRTimingAndRelatedParametersSequence",
    "PixelMeasuresSequence",
    "PlaneOrientationSequence",
    "MRImageFrameTypeSequence",
    "MRModifierSequence",
    "MRFOVGeometrySequence",
    "MREchoSequence",
)


def _jsonable(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, PersonName):
        return None  # never copied
    if isinstance(value, MultiValue | list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, DSfloat | float):
        return float(value)
    if isinstance(value, IS | int):
        return int(value)
    if isinstance(value, bytes):
        return None
    return str(value)


def extract_header(ds: Dataset) -> dict[str, Any]:
    """Summarise ``ds`` for the filter; missing attributes are left out."""
    out: dict[str, Any] = {}
    for keyword in HEADER_KEYWORDS:
        try:
            elem = ds.get(keyword)
        except (ValueError, TypeError, KeyError):
            continue
        if elem is None or elem == "":
            continue
        value = _jsonable(elem)
        if value not in (None, "", []):
            out[keyword] = value
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        group = shared[0]
        for seq_kw in _GROUP_SEQUENCES:
            seq = group.get(seq_kw)
            if not seq:
                continue
            for elem in seq[0]:
                if elem.VR == "SQ" or not elem.keyword:
                    continue
                value = _jsonable(elem.value)
                if value not in (None, "", []) and elem.keyword not in out:
                    out[elem.keyword] = value
    usage = ds.get("ContrastBolusUsageSequence")
    if usage:
        out.setdefault("ContrastBolusAgent", "present (ContrastBolusUsageSequence)")
    return out
