"""What happens to one received instance: validate, publish, record.

Order matters and is the whole point of this module: the bytes are durable
in the spool (fsync, rename, fsync folder) *before* the row is committed,
and the row is committed *before* the caller answers Success. Any failure
answers with a named failure status and leaves neither a file nor a row.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from daemon import metrics
from daemon.dataset_check import check_complete
from daemon.db.models import AuditEvent, Instance, QuarantinedInstance, Series, Study, utcnow
from daemon.dimse_status import Status
from daemon.errors import InvalidInstanceError, SpoolError
from daemon.spool import Spool, SpoolTemp, sha256_file

log = logging.getLogger(__name__)

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def valid_uid(uid: object) -> bool:
    """A UID we accept as an identifier: digits and dots, 1-64 characters.

    Leading zeros in components are tolerated (old modalities write them),
    anything else (letters, '/', '..', NUL, empty components) is not.
    """
    return isinstance(uid, str) and 0 < len(uid) <= 64 and bool(_UID_RE.fullmatch(uid))


@dataclass(frozen=True)
class StoreOutcome:
    status: int
    comment: str = ""
    series_id: int | None = None
    duplicate: bool = False


def _ingest_fields(ds: pydicom.Dataset) -> dict[str, Any]:
    """The few values the intake itself needs (the filter reads the full
    header summary later, off the C-STORE path)."""
    out: dict[str, Any] = {}
    for keyword in ("Modality", "SeriesDescription"):
        value = ds.get(keyword)
        if value not in (None, ""):
            out[keyword] = str(value)
    for keyword in ("InstanceNumber", "ImagesInAcquisition", "NumberOfFrames"):
        value = ds.get(keyword)
        try:
            if value not in (None, ""):
                out[keyword] = int(value)
        except (TypeError, ValueError):
            continue
    return out


def _text(ds: pydicom.Dataset, keyword: str, limit: int) -> str | None:
    try:
        value = ds.get(keyword)
    except (ValueError, TypeError, KeyError):
        return None
    if value is None or value == "":
        return None
    return str(value)[:limit]


_SQL = {
    # Only a series still receiving is touched here; a completed one takes
    # the slow path, which re-opens it as a new revision.
    "touch_series": "UPDATE series SET instance_count = instance_count + 1, "
    "last_received_at = :now WHERE id = :id AND state = 'receiving'",
    "insert_instance": "INSERT INTO instances (sop_instance_uid, sop_class_uid, series_id, "
    "transfer_syntax_uid, path, size_bytes, sha256, instance_number, calling_aet, received_at, "
    "header) VALUES (:sop, :cls, :series, :ts, :path, :size, :sha, :num, :aet, :now, :header)",
}


def _driver_sql(dialect: str) -> dict[str, str]:
    """The hot-path statements in the driver's own parameter style."""
    if dialect == "sqlite":  # sqlite3 takes :name with a dict
        return dict(_SQL)
    if dialect == "postgresql":  # psycopg takes %(name)s
        return {k: re.sub(r":(\w+)", r"%(\1)s", v) for k, v in _SQL.items()}
    raise ValueError(f"unsupported database dialect {dialect!r}")


class IngestStore:
    """Records received instances; used from many association threads."""

    def __init__(
        self,
        engine: Engine,
        spool: Spool,
        on_stored: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.spool = spool
        self.on_stored = on_stored
        # series_uid -> id of series seen by this process (ids never change).
        self._series_ids: dict[str, int] = {}
        self._sql = _driver_sql(engine.dialect.name)

    # -- the C-STORE path -----------------------------------------------------
    def store(
        self,
        temp: SpoolTemp,
        *,
        sop_class: str,
        sop_instance: str,
        calling_aet: str,
    ) -> StoreOutcome:
        """Validate and keep ``temp`` (already flushed); never raises."""
        try:
            ds = self._read_header(temp.path, bytes(temp.head), temp.size)
            header = self._validate(ds, sop_class, sop_instance)
            self._check_structure(temp.path, ds)
        except InvalidInstanceError as exc:
            temp.discard()
            metrics.REJECTIONS.labels(reason=Status(exc.status).name.lower()).inc()
            log.warning("rejected instance %s from %s: %s", sop_instance, calling_aet, exc)
            return StoreOutcome(exc.status, str(exc))
        try:
            stored = temp.commit()
        except SpoolError as exc:
            metrics.REJECTIONS.labels(reason="spool_error").inc()
            log.error("spool write failed for %s: %s", sop_instance, exc)
            return StoreOutcome(Status.OUT_OF_RESOURCES, "spool write failed")
        try:
            return self._record(
                ds, header, stored.relpath, stored.size_bytes, stored.sha256, calling_aet
            )
        except (SQLAlchemyError, OSError) as exc:
            self.spool.delete(stored.relpath)
            metrics.REJECTIONS.labels(reason="database_error").inc()
            log.error("database write failed for %s: %s", sop_instance, exc.__class__.__name__)
            return StoreOutcome(Status.OUT_OF_RESOURCES, "database unavailable")

    def index_existing(self, relpath: str) -> bool:
        """Record a published spool file that has no row (start-up recovery)."""
        path = self.spool.path_of(relpath)
        try:
            ds = self._read_header(path)
            sop_instance = str(ds.get("SOPInstanceUID", ""))
            header = self._validate(ds, str(ds.get("SOPClassUID", "")), sop_instance)
            self._check_structure(path, ds)
        except InvalidInstanceError as exc:
            log.error("spool file %s cannot be indexed (%s); left in place", relpath, exc)
            return False
        source_ae = str(ds.file_meta.get("SourceApplicationEntityTitle", "") or "")
        outcome = self._record(
            ds, header, relpath, path.stat().st_size, sha256_file(path), source_ae
        )
        return not outcome.duplicate

    @staticmethod
    def _check_structure(path: Path, ds: pydicom.Dataset) -> None:
        reason = check_complete(path, str(ds.file_meta.get("TransferSyntaxUID", "")))
        if reason is not None:
            raise InvalidInstanceError(f"data set incomplete: {reason}", Status.CANNOT_UNDERSTAND)

    @staticmethod
    def _read_header(path: Path, head: bytes = b"", size: int = -1) -> pydicom.Dataset:
        if head:
            # The header usually lies within the first 64 KiB: parse it from
            # memory. It is complete when the parse stopped at Pixel Data
            # before the end of the buffer, or (elements are in ascending tag
            # order) once an element past group 0028 was read: everything
            # intake needs is in groups 0002-0028. Otherwise read the file.
            try:
                buffer = io.BytesIO(head)
                ds = pydicom.dcmread(buffer, stop_before_pixels=True)
                last_group = max((int(tag) >> 16 for tag in ds.keys()), default=0)
                stopped_at_pixels = buffer.tell() < len(head)
                if len(head) == size or stopped_at_pixels or last_group > 0x0028:
                    return ds
            except Exception:  # noqa: BLE001, S110 - the file parse below decides
                pass
        try:
            return pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, RecursionError, MemoryError) as exc:
            raise InvalidInstanceError(
                f"dataset cannot be parsed: {exc.__class__.__name__}", Status.CANNOT_UNDERSTAND
            ) from None
        except Exception as exc:  # noqa: BLE001 - any parser failure is the sender's data
            raise InvalidInstanceError(
                f"dataset cannot be parsed: {exc.__class__.__name__}", Status.CANNOT_UNDERSTAND
            ) from None

    @staticmethod
    def _validate(ds: pydicom.Dataset, sop_class: str, sop_instance: str) -> dict[str, Any]:
        try:
            ds_instance = ds.get("SOPInstanceUID")
            ds_class = ds.get("SOPClassUID")
            study = ds.get("StudyInstanceUID")
            series = ds.get("SeriesInstanceUID")
            header = _ingest_fields(ds)
        except Exception as exc:  # noqa: BLE001 - malformed values inside the header
            raise InvalidInstanceError(
                f"dataset cannot be parsed: {exc.__class__.__name__}", Status.CANNOT_UNDERSTAND
            ) from None
        if ds_instance is None or ds_class is None:
            raise InvalidInstanceError("SOP Class/Instance UID missing", Status.MISSING_ATTRIBUTE)
        if str(ds_instance) != sop_instance:
            raise InvalidInstanceError(
                "SOP Instance UID in the dataset differs from the request",
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            )
        if str(ds_class) != sop_class:
            raise InvalidInstanceError(
                "SOP Class UID in the dataset differs from the request",
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            )
        for name, value in (("Study", study), ("Series", series)):
            if value is None:
                raise InvalidInstanceError(f"{name} Instance UID missing", Status.MISSING_ATTRIBUTE)
            if not valid_uid(str(value)):
                raise InvalidInstanceError(f"invalid {name} Instance UID", Status.INVALID_UID)
        return header

    def _record(
        self,
        ds: pydicom.Dataset,
        header: dict[str, Any],
        relpath: str,
        size: int,
        sha256: str,
        calling_aet: str,
    ) -> StoreOutcome:
        sop_uid = str(ds.SOPInstanceUID)
        series_uid = str(ds.SeriesInstanceUID)
        now = utcnow()
        row = {
            "sop": sop_uid,
            "cls": str(ds.SOPClassUID),
            "ts": str(ds.file_meta.TransferSyntaxUID),
            "path": relpath,
            "size": size,
            "sha": sha256,
            "num": header.get("InstanceNumber")
            if isinstance(header.get("InstanceNumber"), int)
            else None,
            "aet": calling_aet[:16],
            "now": now,
            "header": None,
        }
        try:
            with self.engine.begin() as conn:
                # Hot path (every instance of a series after the first): one
                # UPDATE and one INSERT as plain driver SQL; the statement
                # compiler costs more than the database here.
                series_id = self._series_ids.get(series_uid)
                touched = 0
                if series_id is not None:
                    touched = conn.exec_driver_sql(
                        self._sql["touch_series"], {"id": series_id, "now": now}
                    ).rowcount
                if touched != 1:
                    series_id = self._upsert_series(conn, ds, header)
                assert series_id is not None
                row["series"] = series_id
                conn.exec_driver_sql(self._sql["insert_instance"], row)
        except IntegrityError:
            # The same SOP Instance UID is stored already (resent, or another
            # association stored it just now).
            with self.engine.begin() as conn:
                existing = conn.execute(
                    select(Instance.sha256, Instance.series_id).where(
                        Instance.sop_instance_uid == sop_uid
                    )
                ).first()
            if existing is None:
                raise
            return self._duplicate(ds, existing, relpath, size, sha256, calling_aet)
        self._series_ids[series_uid] = series_id
        metrics.INSTANCES_RECEIVED.inc()
        metrics.BYTES_RECEIVED.inc(size)
        if self.on_stored is not None:
            self.on_stored(series_id)
        return StoreOutcome(Status.SUCCESS, series_id=series_id)

    def _duplicate(
        self, ds: pydicom.Dataset, existing: Any, relpath: str, size: int, sha256: str, aet: str
    ) -> StoreOutcome:
        sop_uid = str(ds.SOPInstanceUID)
        if existing.sha256 == sha256:
            self.spool.delete(relpath)
            metrics.DUPLICATES.labels(kind="identical").inc()
            log.info("instance %s received again (identical), kept once", sop_uid)
            return StoreOutcome(Status.SUCCESS, series_id=existing.series_id, duplicate=True)
        quarantined = self.spool.quarantine(relpath)
        with self.engine.begin() as conn:
            conn.execute(
                insert(QuarantinedInstance).values(
                    sop_instance_uid=sop_uid,
                    path=quarantined,
                    sha256=sha256,
                    size_bytes=size,
                    reason="same SOP Instance UID as a stored instance, different bytes",
                    calling_aet=aet[:16],
                    received_at=utcnow(),
                )
            )
            conn.execute(
                insert(AuditEvent).values(
                    at=utcnow(),
                    kind="instance_quarantined",
                    level="warning",
                    sop_instance_uid=sop_uid,
                    calling_aet=aet[:16],
                    message="second copy with different bytes quarantined; first copy kept",
                )
            )
        metrics.DUPLICATES.labels(kind="conflicting").inc()
        log.warning("instance %s received with different bytes: quarantined", sop_uid)
        return StoreOutcome(Status.SUCCESS, series_id=existing.series_id, duplicate=True)

    @staticmethod
    def _upsert_series(conn: Any, ds: pydicom.Dataset, header: dict[str, Any]) -> int:
        study_uid = str(ds.StudyInstanceUID)
        series_uid = str(ds.SeriesInstanceUID)
        now = utcnow()
        study_id = conn.execute(select(Study.id).where(Study.study_uid == study_uid)).scalar()
        if study_id is None:
            study_id = conn.execute(
                insert(Study)
                .values(
                    study_uid=study_uid,
                    patient_id=_text(ds, "PatientID", 64),
                    patient_name=_text(ds, "PatientName", 324),
                    study_date=_text(ds, "StudyDate", 8),
                    accession_number=_text(ds, "AccessionNumber", 16),
                    created_at=now,
                )
                .returning(Study.id)
            ).scalar_one()
        row = conn.execute(
            select(Series.id, Series.state).where(Series.series_uid == series_uid)
        ).first()
        expected = header.get("ImagesInAcquisition")
        if str(ds.SOPClassUID) == ENHANCED_MR and (header.get("NumberOfFrames") or 0) > 1:
            expected = 1  # one multi-frame instance carries the whole volume
        if row is None:
            return int(
                conn.execute(
                    insert(Series)
                    .values(
                        series_uid=series_uid,
                        study_id=study_id,
                        modality=str(header.get("Modality", ""))[:16] or None,
                        description=str(header.get("SeriesDescription", ""))[:64] or None,
                        state="receiving",
                        instance_count=1,
                        expected_count=expected if isinstance(expected, int) else None,
                        revision=0,
                        first_received_at=now,
                        last_received_at=now,
                    )
                    .returning(Series.id)
                ).scalar_one()
            )
        values: dict[str, Any] = {
            "instance_count": Series.instance_count + 1,
            "last_received_at": now,
        }
        if row.state != "receiving":
            # A late instance re-opens a completed series: a new revision.
            values["state"] = "receiving"
            values["revision"] = Series.revision + 1
            values["completed_at"] = None
        conn.execute(update(Series).where(Series.id == row.id).values(**values))
        return int(row.id)
