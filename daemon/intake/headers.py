"""The header summary kept per instance: what the series filter and the
completeness check need, JSON-safe, and free of patient identifiers.

:func:`extract_header` runs in the C-STORE handler for every instance, so it
only reads a fixed list of attributes (a classic MR header costs well under
100 µs). For Enhanced MR it also reads the shared and per-frame functional
groups (PS3.3 C.7.6.16, C.8.13) and summarises the frame geometry; that costs
more but runs once per multi-frame instance. Two private attributes that name
the pulse sequence are read when their private creator is present: GE
(0019,xx9C) "Pulse Sequence Name" in block ``GEMS_ACQU_01`` and Philips
(2001,xx20) "Scanning Technique" in block ``Philips Imaging DD 001``.

Nothing from the patient module is ever copied: the attributes are a fixed
allow-list and person names are dropped.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

# Top-level attributes copied as they are (keywords). No patient module here.
HEADER_KEYWORDS: tuple[str, ...] = (
    "Modality",
    "SOPClassUID",
    "Manufacturer",
    "ManufacturerModelName",
    "SeriesNumber",
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
    "EchoPlanarPulseSequence",
    "InversionRecovery",
    "AcquisitionContrast",
    "ContrastBolusAgent",
    "ContrastBolusRoute",
    "MagneticFieldStrength",
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
    "LossyImageCompression",
)
_HEADER_TAGS: tuple[tuple[str, int, str], ...] = tuple(
    (kw, int(tag_for_keyword(kw) or 0), dictionary_VR(int(tag_for_keyword(kw) or 0)))
    for kw in HEADER_KEYWORDS
)
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UT"}
)
_NUMBER_VRS = frozenset({"DS", "IS"})
_BINARY_VRS = {"US": "H", "UL": "I", "SS": "h", "SL": "i", "FD": "d", "FL": "f"}

# Enhanced MR: (functional group sequence, attribute inside it, key in the summary)
FUNCTIONAL_GROUP_ATTRIBUTES: tuple[tuple[str, str, str], ...] = (
    ("PixelMeasuresSequence", "SliceThickness", "SliceThickness"),
    ("PixelMeasuresSequence", "PixelSpacing", "PixelSpacing"),
    ("PixelMeasuresSequence", "SpacingBetweenSlices", "SpacingBetweenSlices"),
    ("PlaneOrientationSequence", "ImageOrientationPatient", "ImageOrientationPatient"),
    ("PlanePositionSequence", "ImagePositionPatient", "ImagePositionPatient"),
    ("MRTimingAndRelatedParametersSequence", "RepetitionTime", "RepetitionTime"),
    ("MRTimingAndRelatedParametersSequence", "FlipAngle", "FlipAngle"),
    ("MREchoSequence", "EffectiveEchoTime", "EchoTime"),
    ("MRModifierSequence", "InversionRecovery", "InversionRecovery"),
    ("MRModifierSequence", "InversionTimes", "InversionTime"),
    ("MRImageFrameTypeSequence", "FrameType", "FrameType"),
    ("MRImageFrameTypeSequence", "AcquisitionContrast", "AcquisitionContrast"),
)

# summary key -> (group, private creator, element offset in the block)
PRIVATE_ATTRIBUTES: dict[str, tuple[int, str, int]] = {
    "GEPulseSequenceName": (0x0019, "GEMS_ACQU_01", 0x9C),
    "PhilipsScanningTechnique": (0x2001, "Philips Imaging DD 001", 0x20),
}

_SHARED_GROUPS_TAG = 0x52009229
_PER_FRAME_GROUPS_TAG = 0x52009230

MAX_STRING = 256  # longer strings are cut: a header value is never a blob
MAX_VALUES = 32  # longer multi-values are cut
ORIENTATION_DECIMALS = 4
POSITION_DECIMALS = 3


def _jsonable(value: Any) -> Any:
    """A JSON-safe copy of a DICOM value; None when it cannot be one."""
    if value is None or isinstance(value, PersonName | bytes | bytearray | Dataset):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, MultiValue | list | tuple):
        items = [_jsonable(v) for v in list(value)[:MAX_VALUES]]
        return [v for v in items if v is not None]
    if isinstance(value, str):
        return value.strip("\x00 ")[:MAX_STRING]
    try:  # pydicom value types not covered above (Decimal-backed DS, UID...)
        return str(value).strip("\x00 ")[:MAX_STRING]
    except (TypeError, ValueError):
        return None


def _value(ds: Dataset, tag: int) -> Any:
    """The JSON-safe value of ``tag`` in ``ds``; None if absent, empty or unreadable."""
    if tag not in ds:
        return None
    try:
        raw = ds[tag].value
    except (ValueError, TypeError, KeyError, OverflowError, AttributeError):
        return None  # a value pydicom cannot decode is treated as missing
    value = _jsonable(raw)
    return None if value in ("", []) else value


def _decode_raw(raw: RawDataElement, vr: str, encoding: str) -> Any:
    """Decode a not-yet-converted element cheaply (pydicom's conversion costs ~40 µs)."""
    data = raw.value
    if not data or not isinstance(data, bytes):
        return None
    vr = raw.VR or vr
    code = _BINARY_VRS.get(vr)
    if code is not None:
        count = min(len(data) // struct.calcsize(code), MAX_VALUES)
        if count == 0:
            return None
        order = "<" if raw.is_little_endian else ">"
        values: list[Any] = [
            _jsonable(v) for v in struct.unpack_from(f"{order}{count}{code}", data)
        ]
        return values[0] if count == 1 else [v for v in values if v is not None]
    if vr not in _TEXT_VRS:
        return None  # PN, SQ, OB, UN...: never copied
    text = data.decode(encoding, errors="replace").strip("\x00 ")
    if not text:
        return None
    if "\\" not in text:
        return _number(text, vr) if vr in _NUMBER_VRS else text[:MAX_STRING]
    parts = [p.strip("\x00 ") for p in text.split("\\")[:MAX_VALUES]]
    if vr in _NUMBER_VRS:
        values = [n for n in (_number(p, vr) for p in parts) if n is not None]
    else:
        values = [p[:MAX_STRING] for p in parts]
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _number(text: str, vr: str) -> float | int | None:
    try:
        number = float(text)
    except (ValueError, OverflowError):
        return None  # an unreadable number is treated as missing
    if not math.isfinite(number):
        return None
    return int(number) if vr == "IS" else number


def _top_level(elements: Any, tag: int, vr: str, encoding: str) -> Any:
    """The JSON-safe value of a top-level attribute, decoding raw bytes directly."""
    elem = elements.get(tag)
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        return _decode_raw(elem, vr, encoding)
    value = _jsonable(elem.value)
    return None if value in ("", []) else value


def _encoding(ds: Dataset) -> str:
    """Python codec for text values: UTF-8 for ISO_IR 192, else Latin-1 (never fails)."""
    elem = ds.get_item(0x00080005)
    if elem is None:
        return "latin-1"
    raw = elem.value
    text = raw.decode("ascii", errors="replace") if isinstance(raw, bytes) else str(raw)
    return "utf-8" if "192" in text else "latin-1"


def _first_item(ds: Dataset | None, keyword: str) -> Dataset | None:
    if ds is None:
        return None
    try:
        seq = ds.get(keyword)
    except (ValueError, TypeError, KeyError):
        return None
    if not seq or not isinstance(seq, Sequence):
        return None
    item = seq[0]
    return item if isinstance(item, Dataset) else None


def _raw(ds: Dataset | None, keyword: str) -> Any:
    """The raw value of ``keyword``; None if absent or undecodable."""
    if ds is None:
        return None
    try:
        return ds.get(keyword)
    except (ValueError, TypeError, KeyError, OverflowError):
        return None


def _private(elements: Any, group: int, creator: str, offset: int, encoding: str) -> Any:
    """A private attribute found through its creator; blocks 0x10-0x1F are searched."""
    for block in range(0x10, 0x20):
        found = _top_level(elements, (group << 16) | block, "LO", encoding)
        if found is None:
            continue
        if isinstance(found, str) and found.strip() == creator:
            value = _top_level(elements, (group << 16) | (block << 8) | offset, "LO", encoding)
            return value if isinstance(value, str) else None
    return None


def extract_header(ds: Dataset) -> dict[str, Any]:
    """Summarise ``ds`` for the filter; missing or unreadable attributes are left out."""
    out: dict[str, Any] = {}
    encoding = _encoding(ds)
    # the element dict itself: lookups by int tag, without Tag() conversion or decoding
    elements: Mapping[int, Any] = getattr(ds.items(), "mapping", None) or dict(ds.items())
    for keyword, tag, vr in _HEADER_TAGS:
        value = _top_level(elements, tag, vr, encoding)
        if value is not None:
            out[keyword] = value
    for key, (group, creator, offset) in PRIVATE_ATTRIBUTES.items():
        if ((group << 16) | 0x0010) in elements:
            value = _private(elements, group, creator, offset, encoding)
            if value:
                out[key] = value
    if _SHARED_GROUPS_TAG in elements or _PER_FRAME_GROUPS_TAG in elements:
        _enhanced(ds, out)
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax:
        out["TransferSyntaxUID"] = str(syntax)[:64]
    return out


def _enhanced(ds: Dataset, out: dict[str, Any]) -> None:
    """Functional groups and contrast of a multi-frame (Enhanced MR) instance."""
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    try:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    except (ValueError, TypeError, KeyError):
        per_frame = []
    frames = [f for f in per_frame if isinstance(f, Dataset)]
    first = frames[0] if frames else None
    for seq_keyword, keyword, key in FUNCTIONAL_GROUP_ATTRIBUTES:
        for source in (shared, first):
            item = _first_item(source, seq_keyword)
            value = _value(item, int(tag_for_keyword(keyword) or 0)) if item else None
            if value is not None:
                if key == "InversionTime" and isinstance(value, list):
                    value = value[0] if value else None
                if value is not None:
                    out[key] = value  # the functional group wins over a top-level copy
                break
    _frame_geometry(shared, frames, out)
    _enhanced_contrast(ds, shared, frames, out)


def _frame_geometry(shared: Dataset | None, frames: list[Dataset], out: dict[str, Any]) -> None:
    orientations: list[Any] = []
    positions: list[Any] = []
    shared_orientation = _first_item(shared, "PlaneOrientationSequence")
    for frame in frames:
        plane = _first_item(frame, "PlanePositionSequence")
        positions.append(_raw(plane, "ImagePositionPatient"))
        if shared_orientation is None:
            orient = _first_item(frame, "PlaneOrientationSequence")
            orientations.append(_raw(orient, "ImageOrientationPatient"))
    if shared_orientation is not None:
        orientations = [_raw(shared_orientation, "ImageOrientationPatient")]
    out["FrameGeometry"] = slice_geometry(orientations, positions)


def _enhanced_contrast(
    ds: Dataset, shared: Dataset | None, frames: list[Dataset], out: dict[str, Any]
) -> None:
    agent = _first_item(ds, "ContrastBolusAgentSequence")
    if agent is not None and "ContrastBolusAgent" not in out:
        meaning = _value(agent, int(tag_for_keyword("CodeMeaning") or 0))
        out["ContrastBolusAgent"] = meaning or "present (ContrastBolusAgentSequence)"
    answers: set[str] = set()
    sources = [shared] if _first_item(shared, "ContrastBolusUsageSequence") else frames
    for source in sources:
        try:
            usage = source.get("ContrastBolusUsageSequence") if source is not None else None
        except (ValueError, TypeError, KeyError):
            usage = None
        for item in usage or []:
            if isinstance(item, Dataset):
                answer = _value(item, int(tag_for_keyword("ContrastBolusAgentAdministered") or 0))
                if isinstance(answer, str):
                    answers.add(answer.upper())
    if answers:
        out["ContrastBolusAdministered"] = "YES" if "YES" in answers else sorted(answers)[0]


def _vector(value: Any, length: int) -> tuple[float, ...] | None:
    """``value`` as ``length`` finite floats, or None."""
    if isinstance(value, str):
        value = value.replace(",", "\\").split("\\")
    if not isinstance(value, Iterable) or isinstance(value, bytes):
        return None
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(numbers) != length or not all(math.isfinite(v) for v in numbers):
        return None
    return numbers


def slice_geometry(orientations: Iterable[Any], positions: Iterable[Any]) -> dict[str, Any]:
    """Distinct orientations, positions and slice spacing of a stack of slices.

    Used for the frames of an Enhanced MR instance and, by the series filter,
    for the instances of a classic series. Unreadable vectors are counted in
    ``invalid``; spacing is measured along the normal of the first orientation.
    """
    distinct: list[tuple[float, ...]] = []
    invalid = 0
    for raw in orientations:
        vec = _vector(raw, 6)
        if vec is None:
            invalid += 1
            continue
        if not any(max(abs(a - b) for a, b in zip(vec, d, strict=True)) < 0.01 for d in distinct):
            distinct.append(vec)
    points = []
    count = 0
    for raw in positions:
        count += 1
        vec = _vector(raw, 3)
        if vec is None:
            invalid += 1
        else:
            points.append(vec)
    summary: dict[str, Any] = {
        "orientations": [[round(v, ORIENTATION_DECIMALS) for v in d] for d in distinct],
        "positions": count,
        "invalid": invalid,
    }
    if distinct and points:
        r, c = distinct[0][:3], distinct[0][3:]
        normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
        along = sorted(
            {round(sum(p * n for p, n in zip(pt, normal, strict=True)), 3) for pt in points}
        )
        summary["distinct_positions"] = len(along)
        gaps = [b - a for a, b in zip(along, along[1:], strict=False)]
        if gaps:
            summary["spacing_min"] = round(min(gaps), POSITION_DECIMALS)
            summary["spacing_max"] = round(max(gaps), POSITION_DECIMALS)
    return summary
