"""The few values intake needs from a received file, read in one strict pass.

:func:`read_intake_header` checks the file's structure (:mod:`daemon.intake.dataset_check`)
and decodes identifiers, the study's patient fields (in the file's character
set) and what completeness needs. A file that cannot be read this way raises
:class:`InvalidInstanceError` with the DIMSE status to answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom.charset import convert_encodings, decode_bytes

from daemon.dicom.dimse_status import Status
from daemon.errors import InvalidInstanceError
from daemon.intake.dataset_check import ScanResult, scan_file

# Top-level elements intake reads (groups 0008-0028): identifiers, the
# study's patient fields for follow-up matching, and what completeness needs.
_TAGS = {
    "SpecificCharacterSet": 0x00080005,
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "StudyDate": 0x00080020,
    "AccessionNumber": 0x00080050,
    "Modality": 0x00080060,
    "SeriesDescription": 0x0008103E,
    "PatientName": 0x00100010,
    "PatientID": 0x00100020,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "InstanceNumber": 0x00200013,
    "ImagesInAcquisition": 0x00201002,
    "NumberOfFrames": 0x00280008,
}
_WANTED = frozenset(_TAGS.values())


@dataclass(frozen=True)
class IntakeHeader:
    """The values intake needs, decoded from the strict scan of the file."""

    transfer_syntax: str
    sop_class: str | None
    sop_instance: str | None
    study_uid: str | None
    series_uid: str | None
    modality: str | None = None
    series_description: str | None = None
    instance_number: int | None = None
    images_in_acquisition: int | None = None
    number_of_frames: int | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    study_date: str | None = None
    accession_number: str | None = None

    @classmethod
    def from_scan(cls, scan: ScanResult) -> IntakeHeader:
        raw = {name: scan.values.get(tag) for name, tag in _TAGS.items()}
        charsets = _ascii(raw["SpecificCharacterSet"]) or ""
        encodings = convert_encodings([c.strip() for c in charsets.split("\\")] or [""])

        def text(name: str, limit: int, delimiters: frozenset[int] = frozenset()) -> str | None:
            value = raw[name]
            if not value:
                return None
            decoded = decode_bytes(value, encodings, set(delimiters)).strip(" \x00")
            return decoded[:limit] or None

        return cls(
            transfer_syntax=scan.transfer_syntax,
            sop_class=_ascii(raw["SOPClassUID"]),
            sop_instance=_ascii(raw["SOPInstanceUID"]),
            study_uid=_ascii(raw["StudyInstanceUID"]),
            series_uid=_ascii(raw["SeriesInstanceUID"]),
            modality=(_ascii(raw["Modality"]) or "")[:16] or None,
            series_description=text("SeriesDescription", 64),
            instance_number=_int(raw["InstanceNumber"]),
            images_in_acquisition=_int(raw["ImagesInAcquisition"]),
            number_of_frames=_int(raw["NumberOfFrames"]),
            patient_id=text("PatientID", 64),
            patient_name=text("PatientName", 324, _PN_DELIMITERS),
            study_date=(_ascii(raw["StudyDate"]) or "")[:8] or None,
            accession_number=text("AccessionNumber", 16),
        )


_PN_DELIMITERS = frozenset({0x5E, 0x3D})  # '^' and '='


def _ascii(value: bytes | None) -> str | None:
    """A UI/CS/DA/IS value as text; None if absent, empty or not ASCII."""
    if not value:
        return None
    try:
        text = value.decode("ascii").strip(" \x00")
    except UnicodeDecodeError:
        return "\ufffd"  # never a valid UID: the validation below rejects it
    return text or None


def _int(value: bytes | None) -> int | None:
    text = _ascii(value)
    if text is None:
        return None
    try:
        return int(text.split("\\")[0])
    except ValueError:
        return None


def read_intake_header(path: Path) -> IntakeHeader:
    """One strict pass over the file: complete structure and intake values."""
    try:
        scan = scan_file(path, _WANTED)
        if scan.problem is not None:
            raise InvalidInstanceError(
                f"data set incomplete: {scan.problem}", Status.CANNOT_UNDERSTAND
            )
        return IntakeHeader.from_scan(scan)
    except (OSError, LookupError, ValueError) as exc:
        raise InvalidInstanceError(
            f"dataset cannot be parsed: {exc.__class__.__name__}", Status.CANNOT_UNDERSTAND
        ) from None
