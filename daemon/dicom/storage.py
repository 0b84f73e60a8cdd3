"""What an association needs from storage, and the one place an error becomes a status.

The association streams a C-STORE data set into a :class:`ReceivingFile` it
gets from an :class:`InstanceStore`, then hands it back with
:meth:`InstanceStore.store`. The intake implements the interface
(:class:`daemon.intake.ingest.IngestStore`); this package never imports it.
Whatever the store raises is mapped to a named DIMSE status here, by
:func:`failure_status`, as pynetdicom's service classes do, so the sender
always gets an answer and the association goes on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, TypeVar

from daemon.dicom.dimse_status import Status
from daemon.errors import DatabaseError, InvalidInstanceError, SpoolError

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def valid_uid(uid: object) -> bool:
    """A UID we accept as an identifier: digits and dots, 1-64 characters.

    Leading zeros in components are tolerated (old modalities write them),
    anything else (letters, '/', '..', NUL, empty components) is not.
    """
    return isinstance(uid, str) and 0 < len(uid) <= 64 and bool(_UID_RE.fullmatch(uid))


@dataclass(frozen=True)
class StoreOutcome:
    """The answer to one C-STORE: the status, and what became of the instance."""

    status: int
    comment: str = ""
    series_id: int | None = None
    duplicate: bool = False


class ReceivingFile(Protocol):
    """A data set being received: written in fragments, then kept or dropped."""

    def write(self, data: bytes | memoryview) -> None: ...

    def flush(self) -> None: ...

    def discard(self) -> None: ...


F = TypeVar("F", bound=ReceivingFile)


class InstanceStore(Protocol[F]):
    """Where received instances go (the intake). Both calls may raise: see :func:`failure_status`."""

    def open_temp(self) -> F:
        """A new, empty file for one data set."""
        ...

    def store(
        self, temp: F, *, sop_class: str, sop_instance: str, calling_aet: str
    ) -> StoreOutcome:
        """Validate and keep ``temp`` (already flushed): durable bytes, then the row."""
        ...


def failure_status(exc: BaseException) -> tuple[Status, str]:
    """The DIMSE status and error comment for an exception raised while storing."""
    if isinstance(exc, InvalidInstanceError):
        return Status(exc.status), str(exc)
    if isinstance(exc, SpoolError):
        return Status.OUT_OF_RESOURCES, "spool write failed"
    if isinstance(exc, DatabaseError):
        return Status.OUT_OF_RESOURCES, "database unavailable"
    return Status.PROCESSING_FAILURE, "processing failure"


def rejection_reason(exc: BaseException) -> str:
    """The ``reason`` label of the rejections counter for that exception."""
    if isinstance(exc, InvalidInstanceError):
        return Status(exc.status).name.lower()
    if isinstance(exc, SpoolError):
        return "spool_error"
    if isinstance(exc, DatabaseError):
        return "database_error"
    return "processing_failure"
