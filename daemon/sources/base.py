"""The :class:`Source` interface, the records its queries return, and what every client shares.

A source answers four questions about an archive — which studies a patient
has (:meth:`Source.find_studies`), which series a study has, what the headers
of a series' instances say (enough for the series filter, without pixels) —
and retrieves one series into a folder, all of it or nothing
(:meth:`Source.retrieve_series`). Every failure is a
:class:`~daemon.errors.SourceError` whose message names the source and says
what to check; no patient data goes into INFO logs or error messages.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset

from daemon.errors import SourceError
from daemon.sources.config import SourceConfig

_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")
DEFAULT_HEADER_LIMIT = 3  # instances whose headers find_instance_headers reads by default


@dataclass(frozen=True)
class StudyRecord:
    """One study the archive holds (study level of a C-FIND or QIDO-RS answer)."""

    study_uid: str
    study_date: dt.date | None
    modalities: tuple[str, ...] = ()
    accession_number: str = ""
    study_description: str = ""
    number_of_series: int | None = None
    patient_id: str = field(default="", repr=False)
    issuer: str = field(default="", repr=False)


@dataclass(frozen=True)
class SeriesRecord:
    """One series of a study (series level of a C-FIND or QIDO-RS answer)."""

    series_uid: str
    modality: str = ""
    series_description: str = ""
    series_number: int | None = None
    number_of_instances: int | None = None


class Source(Protocol):
    """An archive to query and retrieve from; every method raises :class:`SourceError`."""

    config: SourceConfig

    def echo(self) -> None:
        """Returns when the archive answers (C-ECHO, or a QIDO-RS request)."""
        ...

    def find_studies(
        self,
        patient_id: str,
        issuer: str | None = None,
        since: dt.date | None = None,
        modality: str | None = "MR",
    ) -> list[StudyRecord]:
        """The patient's studies (with ``modality`` in them, on or after ``since``), newest first."""
        ...

    def find_series(self, study_uid: str) -> list[SeriesRecord]:
        """The study's series, in series-number order."""
        ...

    def find_instance_headers(
        self, study_uid: str, series_uid: str, limit: int = DEFAULT_HEADER_LIMIT
    ) -> list[Dataset]:
        """Header attributes (no pixels) of at most ``limit`` instances of the series,
        in instance-number order: what :func:`daemon.intake.headers.extract_header` reads."""
        ...

    def retrieve_series(self, study_uid: str, series_uid: str, dest_folder: Path) -> list[Path]:
        """Every instance of the series as a Part 10 file in ``dest_folder``; all or nothing."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class MoveArrivals(Protocol):
    """Where the instances of a C-MOVE arrive (the move destination: the node's own AE).

    :meth:`expect` is called before the C-MOVE request (so the receiver can tell
    requested instances from new arrivals), :meth:`collect` after a successful
    one, :meth:`discard` after a failed or incomplete one.
    """

    def expect(self, study_uid: str, series_uid: str) -> None: ...

    def collect(self, study_uid: str, series_uid: str, dest_folder: Path) -> list[Path]: ...

    def discard(self, study_uid: str, series_uid: str) -> None: ...


def check_uid(value: str, what: str) -> str:
    """``value`` when it is a valid UID (it goes into queries and URL paths), else SourceError."""
    if not isinstance(value, str) or len(value) > 64 or not _UID_RE.fullmatch(value):
        raise SourceError(f"{what} {value!r} is not a DICOM UID (digits and dots, at most 64)")
    return value


def parse_date(value: object) -> dt.date | None:
    """A DICOM DA value (YYYYMMDD) as a date; None when empty or invalid."""
    text = str(value or "").strip()
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _int(value: object) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _multi(ds: Dataset, keyword: str) -> tuple[str, ...]:
    value = ds.get(keyword)
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split("\\") if v.strip())
    return tuple(str(v).strip() for v in value if str(v).strip())


def study_query_keys() -> tuple[str, ...]:
    """The study-level attributes every query asks for."""
    return (
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "ModalitiesInStudy",
        "AccessionNumber",
        "StudyDescription",
        "NumberOfStudyRelatedSeries",
        "PatientID",
        "IssuerOfPatientID",
    )


def series_query_keys() -> tuple[str, ...]:
    """The series-level attributes every query asks for."""
    return (
        "SeriesInstanceUID",
        "Modality",
        "SeriesDescription",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
    )


def select_studies(
    answers: Iterable[Dataset],
    patient_id: str,
    issuer: str | None,
    since: dt.date | None,
    modality: str | None,
) -> list[StudyRecord]:
    """The matches as records, checked again here (an archive may ignore a key), newest first."""
    out: dict[str, StudyRecord] = {}
    for ds in answers:
        uid = _text(ds, "StudyInstanceUID")
        if not _UID_RE.fullmatch(uid):
            continue
        record = StudyRecord(
            study_uid=uid,
            study_date=parse_date(ds.get("StudyDate")),
            modalities=_multi(ds, "ModalitiesInStudy"),
            accession_number=_text(ds, "AccessionNumber"),
            study_description=_text(ds, "StudyDescription"),
            number_of_series=_int(ds.get("NumberOfStudyRelatedSeries")),
            patient_id=_text(ds, "PatientID") or patient_id,
            issuer=_text(ds, "IssuerOfPatientID"),
        )
        if record.patient_id != patient_id:
            continue
        if issuer and record.issuer and record.issuer != issuer:
            continue
        if since and (record.study_date is None or record.study_date < since):
            continue
        if modality and record.modalities and modality not in record.modalities:
            continue
        out[uid] = record
    return sorted(out.values(), key=lambda r: r.study_date or dt.date.min, reverse=True)


def select_series(answers: Iterable[Dataset]) -> list[SeriesRecord]:
    """The matches as records, in series-number order (unnumbered last)."""
    out: dict[str, SeriesRecord] = {}
    for ds in answers:
        uid = _text(ds, "SeriesInstanceUID")
        if not _UID_RE.fullmatch(uid):
            continue
        out[uid] = SeriesRecord(
            series_uid=uid,
            modality=_text(ds, "Modality"),
            series_description=_text(ds, "SeriesDescription"),
            series_number=_int(ds.get("SeriesNumber")),
            number_of_instances=_int(ds.get("NumberOfSeriesRelatedInstances")),
        )
    return sorted(out.values(), key=lambda r: (r.series_number is None, r.series_number or 0))


def by_instance_number(headers: list[Dataset], limit: int) -> list[Dataset]:
    """The first ``limit`` headers in instance-number order."""
    headers.sort(
        key=lambda ds: (_int(ds.get("InstanceNumber")) is None, _int(ds.get("InstanceNumber")) or 0)
    )
    return headers[:limit]


class SeriesFolder:
    """Writes one retrieval's instances durably into ``dest_folder``; :meth:`remove` undoes it.

    File names are made here (a hash of the SOP Instance UID), never taken
    from received text; each file is written to a temporary name, fsynced and
    renamed, so a crash leaves no partial ``.dcm`` file.
    """

    def __init__(self, dest_folder: Path) -> None:
        self.folder = Path(dest_folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, Path] = {}

    def write(self, sop_instance_uid: str, data: bytes) -> Path:
        name = hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:40] + ".dcm"
        path = self.folder / name
        tmp = self.folder / f".{name}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.files[sop_instance_uid] = path
        return path

    def sync(self) -> None:
        """Make the renames durable (fsync the folder)."""
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def remove(self) -> None:
        for path in self.files.values():
            path.unlink(missing_ok=True)
        self.files.clear()


def check_count(peer: str, written: int, expected: int | None, what: str) -> None:
    """A partial retrieval is an error: ``written`` must equal the archive's count."""
    if expected is not None and written != expected:
        raise SourceError(
            f"{peer}: {what} returned {written} of {expected} instances; the partial "
            "retrieval was discarded (check the archive's log, then retry)"
        )
    if written == 0:
        raise SourceError(f"{peer}: {what} returned no instance (check the archive's log)")
