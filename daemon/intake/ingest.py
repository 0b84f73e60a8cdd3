"""What happens to one received instance: validate, publish, record.

Order matters and is the whole point of this module: the bytes are durable
in the spool (fsync, rename, fsync folder) *before* the row is committed,
and the row is committed *before* the caller answers Success. Any failure
raises (the association turns it into a named failure status,
:func:`daemon.dicom.storage.failure_status`) and leaves neither a file nor a
row. Rows are written one way, with SQLAlchemy Core on both databases.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pydicom
from sqlalchemy import Connection, Engine, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from daemon.db.audit import audit
from daemon.db.models import Instance, QuarantinedInstance, Series, Study, utcnow
from daemon.db.states import AuditKind, AuditLevel, SeriesState
from daemon.dicom.dimse_status import Status
from daemon.dicom.storage import StoreOutcome, valid_uid
from daemon.errors import DatabaseError, InvalidInstanceError
from daemon.intake.intake_header import IntakeHeader, read_intake_header
from daemon.intake.same_content import same_content
from daemon.intake.spool import Spool, SpoolTemp, sha256_file
from daemon.ops import metrics

log = logging.getLogger(__name__)

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


# The per-instance statements, built once (SQLAlchemy caches their compiled form).
# Only a series still receiving is touched; a completed one is re-opened as a
# new revision by _upsert_series.
_TOUCH_SERIES = (
    update(Series)
    .where(Series.id == bindparam("series_id"), Series.state == SeriesState.RECEIVING)
    .values(instance_count=Series.instance_count + 1, last_received_at=bindparam("now"))
)
_INSERT_INSTANCE = insert(Instance)


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
        # SQLite has one writer at a time and its busy handler sleeps in
        # steps of up to 100 ms; queueing the association threads on a lock
        # here hands the write lock over at once instead.
        self._sqlite_lock = threading.Lock() if engine.dialect.name == "sqlite" else None
        self._conn: Connection | None = None  # SQLite: the one writing connection, kept

    def close(self) -> None:
        """Return the kept SQLite writing connection (shutdown, tests)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction. On SQLite, serialised in-process on one kept
        connection: queueing the association threads on a lock hands SQLite's
        single write lock over at once, and skipping the pool checkout per
        instance keeps the C-STORE path short."""
        if self._sqlite_lock is None:
            with self.engine.begin() as conn:
                yield conn
            return
        with self._sqlite_lock:
            if self._conn is None or self._conn.closed:
                self._conn = self.engine.connect()
            with self._conn.begin():
                yield self._conn

    # -- the C-STORE path -----------------------------------------------------
    def store(
        self,
        temp: SpoolTemp,
        *,
        sop_class: str,
        sop_instance: str,
        calling_aet: str,
    ) -> StoreOutcome:
        """Validate and keep ``temp`` (already flushed).

        Raises :class:`InvalidInstanceError` (nothing kept), :class:`SpoolError`
        or :class:`DatabaseError` (the published file is removed again); the
        association maps each to its DIMSE status
        (:func:`daemon.dicom.storage.failure_status`).
        """
        try:
            header = read_intake_header(temp.path)
            self._validate(header, sop_class, sop_instance)
        except InvalidInstanceError:
            temp.discard()
            raise
        stored = temp.commit()
        try:
            return self._record(
                header, stored.relpath, stored.size_bytes, stored.sha256, calling_aet
            )
        except (SQLAlchemyError, OSError) as exc:
            self.spool.delete(stored.relpath)
            raise DatabaseError(
                f"database write failed ({exc.__class__.__name__}); check the database "
                "(disk space, permissions, a lock held elsewhere)"
            ) from exc

    def open_temp(self) -> SpoolTemp:
        """A spool file for one data set being received (:class:`InstanceStore`)."""
        return self.spool.open_temp()

    def index_existing(self, relpath: str) -> bool:
        """Record a published spool file that has no row (start-up recovery)."""
        path = self.spool.path_of(relpath)
        try:
            header = read_intake_header(path)
            self._validate(header, header.sop_class or "", header.sop_instance or "")
        except InvalidInstanceError as exc:
            log.error("spool file %s cannot be indexed (%s); left in place", relpath, exc)
            return False
        try:
            meta = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[]).file_meta
            source_ae = str(meta.get("SourceApplicationEntityTitle", "") or "")
        except Exception:  # noqa: BLE001 - the AE title is only informative here
            source_ae = ""
        outcome = self._record(header, relpath, path.stat().st_size, sha256_file(path), source_ae)
        return not outcome.duplicate

    @staticmethod
    def _validate(header: IntakeHeader, sop_class: str, sop_instance: str) -> None:
        if header.sop_instance is None or header.sop_class is None:
            raise InvalidInstanceError("SOP Class/Instance UID missing", Status.MISSING_ATTRIBUTE)
        if header.sop_instance != sop_instance:
            raise InvalidInstanceError(
                "SOP Instance UID in the dataset differs from the request",
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            )
        if header.sop_class != sop_class:
            raise InvalidInstanceError(
                "SOP Class UID in the dataset differs from the request",
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            )
        if not valid_uid(sop_instance) or not valid_uid(sop_class):
            raise InvalidInstanceError("invalid SOP Class/Instance UID", Status.INVALID_UID)
        for name, value in (("Study", header.study_uid), ("Series", header.series_uid)):
            if value is None:
                raise InvalidInstanceError(f"{name} Instance UID missing", Status.MISSING_ATTRIBUTE)
            if not valid_uid(value):
                raise InvalidInstanceError(f"invalid {name} Instance UID", Status.INVALID_UID)

    def _record(
        self,
        header: IntakeHeader,
        relpath: str,
        size: int,
        sha256: str,
        calling_aet: str,
    ) -> StoreOutcome:
        sop_uid = str(header.sop_instance)
        series_uid = str(header.series_uid)
        now = utcnow()
        row = {
            "sop_instance_uid": sop_uid,
            "sop_class_uid": header.sop_class,
            "transfer_syntax_uid": header.transfer_syntax,
            "path": relpath,
            "size_bytes": size,
            "sha256": sha256,
            "instance_number": header.instance_number,
            "calling_aet": calling_aet[:16],
            "received_at": now,
        }
        series_id = self._series_ids.get(series_uid)
        try:
            # The one write path: touch the series (or create / re-open it), then
            # insert the instance row, in one transaction.
            with self._writing() as conn:
                touched = 0
                if series_id is not None:
                    params = {"series_id": series_id, "now": now}
                    touched = conn.execute(_TOUCH_SERIES, params).rowcount
                if series_id is None or touched != 1:
                    series_id = self._upsert_series(conn, header)
                conn.execute(_INSERT_INSTANCE, {**row, "series_id": series_id})
        except IntegrityError:
            # The same SOP Instance UID is stored already (resent, or another
            # association stored it just now).
            with self._writing() as conn:
                existing = conn.execute(
                    select(
                        Instance.id,
                        Instance.path,
                        Instance.sha256,
                        Instance.series_id,
                        Instance.purged_at,
                    ).where(Instance.sop_instance_uid == sop_uid)
                ).first()
            if existing is None:
                raise
            return self._duplicate(sop_uid, existing, relpath, size, sha256, calling_aet)
        self._series_ids[series_uid] = series_id
        metrics.INSTANCES_RECEIVED.inc()
        metrics.BYTES_RECEIVED.inc(size)
        if self.on_stored is not None:
            self.on_stored(series_id)
        return StoreOutcome(Status.SUCCESS, series_id=series_id)

    def _duplicate(
        self, sop_uid: str, existing: Any, relpath: str, size: int, sha256: str, aet: str
    ) -> StoreOutcome:
        if existing.sha256 == sha256 and existing.purged_at is not None:
            # Spool retention deleted the first copy: this one takes its place.
            with self._writing() as conn:
                conn.execute(
                    update(Instance)
                    .where(Instance.id == existing.id)
                    .values(path=relpath, purged_at=None)
                )
            log.info("instance %s received again after retention purged it: restored", sop_uid)
            return StoreOutcome(Status.SUCCESS, series_id=existing.series_id, duplicate=True)
        if existing.sha256 == sha256:
            self.spool.delete(relpath)
            metrics.DUPLICATES.labels(kind="identical").inc()
            log.info("instance %s received again (identical), kept once", sop_uid)
            return StoreOutcome(Status.SUCCESS, series_id=existing.series_id, duplicate=True)
        if existing.purged_at is None and same_content(
            self.spool.path_of(existing.path), self.spool.path_of(relpath)
        ):
            # Another sender, transfer syntax or sequence encoding; the same data set.
            self.spool.delete(relpath)
            metrics.DUPLICATES.labels(kind="same_content").inc()
            log.info("instance %s received again (same data set), kept once", sop_uid)
            return StoreOutcome(Status.SUCCESS, series_id=existing.series_id, duplicate=True)
        quarantined = self.spool.quarantine(relpath)
        with self._writing() as conn:
            conn.execute(
                insert(QuarantinedInstance).values(
                    sop_instance_uid=sop_uid,
                    path=quarantined,
                    sha256=sha256,
                    size_bytes=size,
                    reason="same SOP Instance UID as a stored instance, different data set",
                    calling_aet=aet[:16],
                    received_at=utcnow(),
                )
            )
            audit(
                conn,
                AuditKind.INSTANCE_QUARANTINED,
                "second copy with a different data set quarantined; first copy kept",
                level=AuditLevel.WARNING,
                sop_instance_uid=sop_uid,
                calling_aet=aet[:16],
            )
        metrics.DUPLICATES.labels(kind="conflicting").inc()
        log.warning("instance %s received with a different data set: quarantined", sop_uid)
        return StoreOutcome(Status.SUCCESS, series_id=existing.series_id, duplicate=True)

    @staticmethod
    def _upsert_series(conn: Any, header: IntakeHeader) -> int:
        study_uid = str(header.study_uid)
        series_uid = str(header.series_uid)
        now = utcnow()
        study_id = conn.execute(select(Study.id).where(Study.study_uid == study_uid)).scalar()
        if study_id is None:
            study_id = conn.execute(
                insert(Study)
                .values(
                    study_uid=study_uid,
                    patient_id=header.patient_id,
                    patient_name=header.patient_name,
                    study_date=header.study_date,
                    accession_number=header.accession_number,
                    created_at=now,
                )
                .returning(Study.id)
            ).scalar_one()
        row = conn.execute(
            select(Series.id, Series.state).where(Series.series_uid == series_uid)
        ).first()
        expected = header.images_in_acquisition
        if header.sop_class == ENHANCED_MR and (header.number_of_frames or 0) > 1:
            expected = 1  # one multi-frame instance carries the whole volume
        if row is None:
            return int(
                conn.execute(
                    insert(Series)
                    .values(
                        series_uid=series_uid,
                        study_id=study_id,
                        modality=header.modality,
                        description=header.series_description,
                        state=SeriesState.RECEIVING,
                        instance_count=1,
                        expected_count=expected if expected and expected > 0 else None,
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
        if row.state != SeriesState.RECEIVING:
            # A late instance re-opens a completed series: a new revision.
            values["state"] = SeriesState.RECEIVING
            values["revision"] = Series.revision + 1
            values["completed_at"] = None
        conn.execute(update(Series).where(Series.id == row.id).values(**values))
        return int(row.id)
