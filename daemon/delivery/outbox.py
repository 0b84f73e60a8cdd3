"""The outbox: results written once under ``<data_dir>/results``, one row per destination.

A job's DICOM objects are staged by :func:`stage_results`: each dataset is
written once, atomically (temp file, fsync, rename, fsync folder), to
``results/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``, and one
:class:`~daemon.db.models.OutboxItem` per destination is inserted. The UIDs are
checked before they become path parts. A file under a given SOP Instance UID
never changes once written: staging the same UID again keeps the first file
(whatever the new bytes), so every destination and every retry receives the
same object, and the unique (destination, SOP Instance UID) constraint makes a
retried job insert nothing new. :mod:`daemon.delivery.service` sends the rows.

With no ``[[destinations]]`` configured, results go to the folder destination
:data:`DEFAULT_DESTINATION` (``<data_dir>/outbox``).
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import io
import logging
import os
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from daemon.db.models import OutboxItem, utcnow
from daemon.db.states import OutboxState
from daemon.destinations import Destination
from daemon.errors import JobError

log = logging.getLogger(__name__)

# Outbox row states: pending → delivered, or pending → failed (given up).

RESULTS_DIRNAME = "results"
DEFAULT_DESTINATION = Destination(name="outbox", type="folder", path="outbox")
PART_SUFFIX = ".part"
STALE_PART_SECONDS = 3600.0
_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_IN_CHUNK = 500


@dataclass(frozen=True)
class StagedObject:
    """One staged result: where its bytes are and which outbox rows were queued now."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    relpath: str  # relative to data_dir, POSIX separators
    written: bool  # False: an earlier file with this SOP Instance UID was kept
    queued: tuple[str, ...]  # destinations that got a new row (empty on a retried job)


def destinations_of(configured: Sequence[Destination]) -> tuple[Destination, ...]:
    """The configured destinations, or the default ``outbox`` folder when none are."""
    return tuple(configured) or (DEFAULT_DESTINATION,)


def checked_uid(value: object, what: str) -> str:
    """``value`` as a UID safe to use as a file name; ValueError naming ``what`` otherwise."""
    text = str(value or "").strip("\0 ")
    if not text or len(text) > 64 or not _UID_RE.fullmatch(text):
        raise ValueError(
            f"{what} {text[:80]!r} is not a valid UID (digits and dots, at most 64 characters)"
        )
    return text


def uid_path(study_uid: str, series_uid: str, sop_uid: str) -> Path:
    """``<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` with every part checked."""
    return Path(
        checked_uid(study_uid, "Study Instance UID"),
        checked_uid(series_uid, "Series Instance UID"),
        checked_uid(sop_uid, "SOP Instance UID") + ".dcm",
    )


def publish_bytes(target: Path, data: bytes, *, replace: bool = False) -> bool:
    """Write ``data`` to ``target`` atomically; return False when the file was kept.

    The bytes go to a temp file beside ``target``, are fsynced and renamed into
    place, then the folder is fsynced. An existing file with the same bytes is
    always kept; one with different bytes is kept unless ``replace``.
    """
    if target.is_file() and (not replace or _same_bytes(target, data)):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}{PART_SUFFIX}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(temp, target)
        else:
            try:
                os.link(temp, target)  # atomic, and never over a file another writer published
            except FileExistsError:
                return False
            except OSError as exc:  # no hard links on this file system
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                    raise
                if target.exists():
                    return False
                os.replace(temp, target)
        _fsync_dir(target.parent)
    finally:
        temp.unlink(missing_ok=True)
    return True


def remove_stale_parts(root: Path, older_than_seconds: float = STALE_PART_SECONDS) -> int:
    """Remove temp files a crash left under ``root`` (old ones only: others may be writing)."""
    if not root.is_dir():
        return 0
    cutoff = time.time() - older_than_seconds
    removed = 0
    for path in root.rglob(f".*{PART_SUFFIX}"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except OSError as exc:
            log.warning("could not remove the temp file %s: %s", path, exc)
    if removed:
        log.warning("removed %d incomplete temp file(s) under %s", removed, root)
    return removed


def stage_results(
    data_dir: Path,
    destinations: Sequence[Destination],
    session_factory: sessionmaker[Session],
    job_id: int | None,
    datasets: Sequence[Dataset],
    *,
    now: dt.datetime | None = None,
) -> list[StagedObject]:
    """Write each dataset once under ``<data_dir>/results`` and queue it for every destination
    (``destinations`` as configured: none means the default ``outbox`` folder).

    Idempotent: the same UIDs staged again write no file and insert no row.
    Raises :class:`JobError` — not retryable for a dataset with bad UIDs or
    that cannot be encoded, retryable for disk or database trouble.
    """
    now = now or utcnow()
    files = [_encode(ds) for ds in datasets]
    sops = [f.sop_instance_uid for f in files]
    if len(set(sops)) != len(sops):
        raise JobError("the results contain the same SOP Instance UID twice", retryable=False)
    written: list[bool] = []
    for f in files:
        target = data_dir / f.relpath
        try:
            written.append(publish_bytes(target, f.data))
        except OSError as exc:
            raise JobError(
                f"could not write the result {f.relpath} ({exc.strerror or exc}); free disk "
                "space or fix the folder's permissions, the job will retry",
                retryable=True,
            ) from exc
        if not written[-1] and not _same_bytes(target, f.data):
            # e.g. an unchanged SEG of an earlier revision (its UIDs follow the mask):
            # the staged version is the one the destinations have, or will, receive
            log.info("result %s was staged before; the staged version is kept", f.relpath)
    queued = _queue(session_factory, job_id, files, destinations_of(destinations), now)
    return [
        StagedObject(
            sop_instance_uid=f.sop_instance_uid,
            sop_class_uid=f.sop_class_uid,
            study_uid=f.study_uid,
            series_uid=f.series_uid,
            relpath=f.relpath,
            written=w,
            queued=tuple(sorted(queued.get(f.sop_instance_uid, ()))),
        )
        for f, w in zip(files, written, strict=True)
    ]


@dataclass(frozen=True)
class _Encoded:
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    relpath: str
    data: bytes


def _encode(ds: Dataset) -> _Encoded:
    try:
        rel = Path(RESULTS_DIRNAME) / uid_path(
            ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID"), ds.get("SOPInstanceUID")
        )
        sop_class = checked_uid(ds.get("SOPClassUID"), "SOP Class UID")
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    except (ValueError, AttributeError, TypeError) as exc:
        raise JobError(f"a result object cannot be written: {exc}", retryable=False) from exc
    return _Encoded(
        sop_instance_uid=rel.stem,
        sop_class_uid=sop_class,
        study_uid=rel.parts[1],
        series_uid=rel.parts[2],
        relpath=rel.as_posix(),
        data=buffer.getvalue(),
    )


def _queue(
    session_factory: sessionmaker[Session],
    job_id: int | None,
    files: Sequence[_Encoded],
    destinations: Sequence[Destination],
    now: dt.datetime,
) -> dict[str, list[str]]:
    """Insert the missing (destination, SOP) rows; return SOP UID → destinations queued now."""
    for attempt in range(2):
        try:
            with session_factory.begin() as session:
                return _insert_missing(session, job_id, files, destinations, now)
        except IntegrityError:
            if attempt:
                raise JobError(
                    "could not queue the results (a concurrent writer kept conflicting); "
                    "the job will retry",
                    retryable=True,
                ) from None
        except SQLAlchemyError as exc:
            raise JobError(
                f"could not queue the results: database unavailable ({exc.__class__.__name__}); "
                "the job will retry",
                retryable=True,
            ) from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _insert_missing(
    session: Session,
    job_id: int | None,
    files: Sequence[_Encoded],
    destinations: Sequence[Destination],
    now: dt.datetime,
) -> dict[str, list[str]]:
    sops = [f.sop_instance_uid for f in files]
    existing: set[tuple[str, str]] = set()
    for i in range(0, len(sops), _IN_CHUNK):
        found = session.execute(
            select(OutboxItem.destination, OutboxItem.sop_instance_uid).where(
                OutboxItem.sop_instance_uid.in_(sops[i : i + _IN_CHUNK])
            )
        )
        existing.update((str(dest), str(sop)) for dest, sop in found)
    queued: dict[str, list[str]] = {}
    for f in files:
        for dest in destinations:
            if (dest.name, f.sop_instance_uid) in existing:
                continue
            session.add(
                OutboxItem(
                    job_id=job_id,
                    destination=dest.name,
                    sop_instance_uid=f.sop_instance_uid,
                    path=f.relpath,
                    state=OutboxState.PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
            queued.setdefault(f.sop_instance_uid, []).append(dest.name)
    if queued:
        log.info(
            "queued %d result object(s) for %s",
            len(queued),
            ", ".join(d.name for d in destinations),
        )
    return queued


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        if path.stat().st_size != len(data):
            return False
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return False
    return digest.digest() == hashlib.sha256(data).digest()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some network file systems cannot fsync a folder
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)
