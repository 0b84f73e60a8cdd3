"""Delivery of the outbox: senders per destination type and the retrying loop.

:class:`DeliveryService` runs in the serve process, one thread per
destination, so a PACS that is down or slow never delays another destination.
Each round takes the destination's due ``pending`` rows (at most
``delivery.batch_size``), claims them with a short lease (``attempts`` + 1,
``next_attempt_at`` moved past the send; a crash mid-send only delays them),
sends the staged files, and then marks each row ``delivered`` or schedules its
retry with exponential backoff and jitter, up to ``retry_max_seconds``. A row
still not delivered ``give_up_after_hours`` after it was queued is marked
``failed`` with its last error and an ``outbox_failed`` audit event.

The same file (same UIDs) is sent on every retry, so a PACS that stored an
instance whose acknowledgement was lost simply receives it again: it holds
each SOP Instance UID once. Time is injected (``deliver_due(now=...)``) so
tests need no sleeping.

Senders (one per destination type) share one small protocol, :class:`Sender`:
:class:`DicomSender` (C-STORE), :class:`FolderSender` (atomic copies) and
:class:`StowSender` (DICOMweb STOW-RS).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pydicom
import requests
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from daemon.db.models import AuditEvent, OutboxItem, utcnow
from daemon.errors import SendError
from daemon.outbox import DELIVERED, FAILED, PENDING, destinations_of, publish_bytes, uid_path
from daemon.settings import Destination, Settings

log = logging.getLogger(__name__)

AUDIT_OUTBOX_FAILED = "outbox_failed"
JITTER_FRACTION = 0.25  # a retry delay is drawn from [75 %, 100 %] of the backoff
MAX_ERROR_CHARS = 2000
MAX_CONTEXTS = 128  # presentation contexts one association can propose
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
STOW_MAX_REQUEST_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class SendItem:
    """One staged file to send for one outbox row."""

    outbox_id: int
    sop_instance_uid: str
    path: Path


@dataclass(frozen=True)
class SendResult:
    """The outcome for one row; ``permanent``: retrying cannot help (fail at once)."""

    outbox_id: int
    delivered: bool
    error: str = ""
    permanent: bool = False


class Sender(Protocol):
    """Sends a batch; returns a result per attempted item (an item left out was not sent).

    ``stop()`` turning true asks to return after the instance in flight.
    Raises :class:`SendError` when nothing could be sent.
    """

    def send(self, items: Sequence[SendItem], stop: Callable[[], bool]) -> list[SendResult]: ...

    def close(self) -> None: ...


def make_sender(settings: Settings, dest: Destination) -> Sender:
    """The sender for a destination's type."""
    if dest.type == "dicom":
        return DicomSender(settings, dest)
    if dest.type == "folder":
        return FolderSender(settings, dest)
    if dest.type == "dicomweb":
        return StowSender(settings, dest)
    raise SendError(f"destination {dest.name}: unknown type {dest.type!r} (fix [[destinations]])")


def _retry_all(items: Sequence[SendItem], error: str) -> list[SendResult]:
    return [SendResult(i.outbox_id, False, error) for i in items]


class DicomSender:
    """C-STORE SCU: one association per batch, each instance's status checked.

    Presentation contexts come from the files' SOP classes and transfer
    syntaxes (uncompressed files also offer the other uncompressed syntaxes);
    Success and Warning statuses count as delivered, every other status, a
    rejected, aborted or refused association and a timeout mean retry.
    """

    def __init__(self, settings: Settings, dest: Destination) -> None:
        self.dest = dest
        self.peer = f"{dest.ae_title}@{dest.host}:{dest.port}"
        cfg = settings.delivery
        self.ae = AE(ae_title=settings.node.ae_title)
        self.ae.acse_timeout = cfg.association_timeout_seconds
        self.ae.connection_timeout = cfg.association_timeout_seconds
        self.ae.dimse_timeout = cfg.dimse_timeout_seconds
        self.ae.network_timeout = cfg.dimse_timeout_seconds
        self.ae.maximum_pdu_size = settings.node.max_pdu_bytes

    def send(self, items: Sequence[SendItem], stop: Callable[[], bool]) -> list[SendResult]:
        results: list[SendResult] = []
        headers: list[tuple[SendItem, str, str]] = []
        for item in items:
            try:
                meta = pydicom.dcmread(item.path, stop_before_pixels=True).file_meta
                headers.append(
                    (item, str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
                )
            except (OSError, InvalidDicomError, AttributeError) as exc:
                error = f"the staged file {item.path.name} cannot be read as DICOM: {exc}"
                results.append(SendResult(item.outbox_id, False, error, permanent=True))
        for group, contexts in _context_groups(headers):
            if stop():
                break
            results += self._send_group(group, contexts, stop)
        return results

    def _send_group(
        self,
        group: Sequence[SendItem],
        contexts: list[PresentationContext],
        stop: Callable[[], bool],
    ) -> list[SendResult]:
        connected: list[bool] = []
        assoc = self.ae.associate(
            self.dest.host,
            self.dest.port,
            contexts=contexts,
            ae_title=self.dest.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, lambda _event: connected.append(True))],
        )
        if not assoc.is_established:
            if not connected:
                why = "could not be reached (connection refused or timed out)"
            elif assoc.is_rejected:
                why = "rejected the association (check its AE title configuration for us)"
            elif assoc.rejected_contexts and not assoc.accepted_contexts:
                offered = sorted({str(cx.abstract_syntax.name) for cx in contexts})  # type: ignore[union-attr]
                why = f"did not accept this object: none of {', '.join(offered)} is accepted"
            else:
                why = "aborted the association or did not answer in time"
            return _retry_all(group, f"{self.peer} {why}; will retry")
        results: list[SendResult] = []
        try:
            for item in group:
                if stop():
                    break
                if not assoc.is_established:
                    results += _retry_all(
                        group[len(results) :], f"{self.peer} dropped the association; will retry"
                    )
                    break
                results.append(self._store(assoc, item))
        finally:
            if assoc.is_established:
                assoc.release()
        return results

    def _store(self, assoc: Association, item: SendItem) -> SendResult:
        try:
            ds = pydicom.dcmread(item.path)
            status = assoc.send_c_store(ds)
        except (OSError, InvalidDicomError) as exc:
            return SendResult(item.outbox_id, False, f"cannot read {item.path.name}: {exc}", True)
        except ValueError as exc:  # no accepted presentation context for this file
            return SendResult(
                item.outbox_id, False, f"{self.peer} did not accept this object: {exc}"
            )
        if "Status" not in status:
            return SendResult(
                item.outbox_id, False, f"no C-STORE response from {self.peer} (timeout or abort)"
            )
        code = int(status.Status)
        category = code_to_category(code)
        if category in (STATUS_SUCCESS, STATUS_WARNING):
            if category == STATUS_WARNING:
                log.info("C-STORE to %s: warning status 0x%04X (stored)", self.peer, code)
            return SendResult(item.outbox_id, True)
        comment = str(status.get("ErrorComment", "")).strip()
        return SendResult(
            item.outbox_id,
            False,
            f"{self.peer} answered C-STORE status 0x{code:04X} ({category})"
            + (f": {comment}" if comment else ""),
        )

    def close(self) -> None:
        self.ae.shutdown()


def _context_groups(
    headers: Sequence[tuple[SendItem, str, str]],
) -> list[tuple[list[SendItem], list[PresentationContext]]]:
    """Split items into groups that fit one association's 128 presentation contexts."""
    groups: list[tuple[list[SendItem], dict[tuple[str, str], PresentationContext]]] = []
    for item, sop_class, syntax in headers:
        key = (sop_class, syntax)
        if not groups or (key not in groups[-1][1] and len(groups[-1][1]) >= MAX_CONTEXTS):
            groups.append(([], {}))
        items, contexts = groups[-1]
        if key not in contexts:
            offered = [syntax]
            if syntax in UNCOMPRESSED:
                offered += [s for s in UNCOMPRESSED if s != syntax]
            contexts[key] = build_context(sop_class, offered)
        items.append(item)
    return [(items, list(contexts.values())) for items, contexts in groups]


class FolderSender:
    """Copies each file atomically to ``<root>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``.

    A relative ``path`` is under data_dir (and may not leave it); only an
    absolute path writes elsewhere.
    """

    def __init__(self, settings: Settings, dest: Destination) -> None:
        data_dir = settings.data_dir.resolve()
        if not dest.path:
            raise SendError(f"destination {dest.name}: no folder path configured (set path)")
        root = Path(dest.path)
        if not root.is_absolute():
            root = (data_dir / root).resolve()
            if not root.is_relative_to(data_dir):
                raise SendError(
                    f"destination {dest.name}: path {dest.path!r} leaves data_dir; use a path "
                    "under data_dir or an absolute one"
                )
        self.root = root

    def send(self, items: Sequence[SendItem], stop: Callable[[], bool]) -> list[SendResult]:
        results = []
        for item in items:
            if stop():
                break
            results.append(self._copy(item))
        return results

    def _copy(self, item: SendItem) -> SendResult:
        try:
            ds = pydicom.dcmread(
                item.path,
                stop_before_pixels=True,
                specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
            )
            rel = uid_path(
                ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID"), item.sop_instance_uid
            )
            publish_bytes(self.root / rel, item.path.read_bytes(), replace=True)
        except (ValueError, InvalidDicomError) as exc:
            return SendResult(item.outbox_id, False, f"{item.path.name}: {exc}", permanent=True)
        except OSError as exc:
            return SendResult(
                item.outbox_id,
                False,
                f"could not write to {self.root} ({exc.strerror or exc}); check the folder's "
                "free space and permissions",
            )
        return SendResult(item.outbox_id, True)

    def close(self) -> None:
        """Nothing to release."""


class StowSender:
    """DICOMweb STOW-RS (``POST <url>/studies``) with ``dicomweb-client``.

    One request per batch (split at :data:`STOW_MAX_REQUEST_BYTES`); the
    response's Referenced SOP Sequence marks instances delivered, its Failed
    SOP Sequence and any HTTP or connection error mean retry.
    """

    def __init__(self, settings: Settings, dest: Destination) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.dest = dest
        cfg = settings.delivery
        self.session = requests.Session()
        if dest.username:
            self.session.auth = (dest.username, dest.password)
        self.client = DICOMwebClient(
            dest.url,
            session=self.session,
            timeout=(cfg.association_timeout_seconds, cfg.dimse_timeout_seconds),
        )
        self.client.set_http_retry_params(retry=False)  # the outbox retries, with backoff

    def send(self, items: Sequence[SendItem], stop: Callable[[], bool]) -> list[SendResult]:
        results: list[SendResult] = []
        batch: list[tuple[SendItem, Dataset]] = []
        size = 0
        for item in items:
            try:
                ds = pydicom.dcmread(item.path)
            except (OSError, InvalidDicomError) as exc:
                error = f"cannot read {item.path.name}: {exc}"
                results.append(SendResult(item.outbox_id, False, error, permanent=True))
                continue
            item_size = item.path.stat().st_size
            if batch and size + item_size > STOW_MAX_REQUEST_BYTES:
                results += self._post(batch)
                batch, size = [], 0
                if stop():
                    return results
            batch.append((item, ds))
            size += item_size
        if batch:
            results += self._post(batch)
        return results

    def _post(self, batch: Sequence[tuple[SendItem, Dataset]]) -> list[SendResult]:
        items = [item for item, _ in batch]
        where = f"STOW-RS to {self.dest.url}"
        try:
            answer: Dataset | None = self.client.store_instances([ds for _, ds in batch])
            unlisted = ""
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            unlisted = f"{where} answered HTTP {code}"
            answer = _json_dataset(exc.response)  # e.g. 409 with per-instance results
        except requests.RequestException as exc:
            return _retry_all(items, f"{where} failed: {exc.__class__.__name__}: {exc}")
        if answer is None:
            return _retry_all(items, unlisted)
        if (
            not unlisted
            and "ReferencedSOPSequence" not in answer
            and "FailedSOPSequence" not in answer
        ):
            return [SendResult(item.outbox_id, True) for item in items]  # 200 without a body
        stored = {
            str(i.get("ReferencedSOPInstanceUID", ""))
            for i in answer.get("ReferencedSOPSequence", [])
        }
        failed = {
            str(i.get("ReferencedSOPInstanceUID", "")): int(i.get("FailureReason", 0) or 0)
            for i in answer.get("FailedSOPSequence", [])
        }
        results = []
        for item in items:
            uid = item.sop_instance_uid
            if uid in failed:
                error = f"{where}: failure reason 0x{failed[uid]:04X}"
                results.append(SendResult(item.outbox_id, False, error))
            elif uid in stored:
                results.append(SendResult(item.outbox_id, True))
            else:
                error = unlisted or f"{where}: the response does not list this instance"
                results.append(SendResult(item.outbox_id, False, error))
        return results

    def close(self) -> None:
        self.session.close()


def _json_dataset(response: requests.Response | None) -> Dataset | None:
    """The DICOM JSON body of an error response (e.g. 409 with per-instance results)."""
    if response is None or "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        return Dataset.from_json(response.json())
    except ValueError:
        return None


@dataclass
class RoundReport:
    """What one delivery round did for one destination."""

    delivered: int = 0
    retried: int = 0
    failed: int = 0
    not_sent: int = 0
    error: str = ""  # a database or sender problem that stopped the round

    @property
    def claimed(self) -> int:
        return self.delivered + self.retried + self.failed + self.not_sent


@dataclass(frozen=True)
class _Claimed:
    id: int
    sop_instance_uid: str
    path: str
    attempts: int
    created_at: dt.datetime


@dataclass
class _Thread:
    destination: Destination
    thread: threading.Thread
    last_round: RoundReport = field(default_factory=RoundReport)


class DeliveryService:
    """Delivers the outbox to every destination; ``start`` runs it in threads."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        *,
        senders: Mapping[str, Sender] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = settings.delivery
        self.session_factory = session_factory
        self.destinations = destinations_of(settings)
        self._senders: dict[str, Sender] = dict(senders or {})
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._threads: list[_Thread] = []
        # A claim outlives one association set-up and two DIMSE waits; after a
        # crash mid-send the rows are due again once it has passed.
        self.lease = dt.timedelta(
            seconds=self.cfg.association_timeout_seconds + 2 * self.cfg.dimse_timeout_seconds
        )

    # -- one round, synchronously (tests call these) ------------------------------
    def deliver_due(self, now: dt.datetime | None = None) -> dict[str, RoundReport]:
        """One round for every destination, in turn; returns a report per destination."""
        now = now or utcnow()
        reports = {dest.name: self.deliver_destination(dest, now) for dest in self.destinations}
        self.give_up_orphans(now)
        return reports

    def deliver_destination(self, dest: Destination, now: dt.datetime | None = None) -> RoundReport:
        """Send the destination's due rows once; never raises."""
        now = now or utcnow()
        report = RoundReport()
        try:
            claimed = self._claim(dest.name, now)
        except SQLAlchemyError as exc:
            report.error = f"database unavailable ({exc.__class__.__name__}); will retry"
            log.warning("delivery to %s: %s", dest.name, report.error)
            return report
        if not claimed:
            return report
        items, results = self._prepare(claimed)
        if items:
            results.update(self._send(dest, items))
        try:
            self._apply(dest.name, claimed, results, now, report)
        except SQLAlchemyError as exc:
            report.error = (
                f"could not record the delivery results ({exc.__class__.__name__}); the "
                f"objects are sent again after {self.lease.total_seconds():.0f} s"
            )
            log.error("delivery to %s: %s", dest.name, report.error)
        return report

    def _claim(self, destination: str, now: dt.datetime) -> list[_Claimed]:
        with self.session_factory.begin() as session:
            rows = session.scalars(
                select(OutboxItem)
                .where(
                    OutboxItem.destination == destination,
                    OutboxItem.state == PENDING,
                    OutboxItem.next_attempt_at <= now,
                )
                .order_by(OutboxItem.next_attempt_at, OutboxItem.id)
                .limit(self.cfg.batch_size)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                row.attempts += 1
                row.next_attempt_at = now + self.lease
            return [
                _Claimed(r.id, r.sop_instance_uid, r.path, r.attempts, r.created_at) for r in rows
            ]

    def _prepare(self, claimed: Sequence[_Claimed]) -> tuple[list[SendItem], dict[int, SendResult]]:
        """The files to send; a missing staged file can never be delivered (permanent)."""
        root = self.settings.data_dir.resolve()
        items: list[SendItem] = []
        results: dict[int, SendResult] = {}
        for c in claimed:
            path = (root / c.path).resolve()
            if not path.is_relative_to(root) or not path.is_file():
                results[c.id] = SendResult(
                    c.id,
                    delivered=False,
                    error=f"the staged file {c.path} is missing under {root}; it cannot be sent",
                    permanent=True,
                )
            else:
                items.append(SendItem(c.id, c.sop_instance_uid, path))
        return items, results

    def _send(self, dest: Destination, items: Sequence[SendItem]) -> dict[int, SendResult]:
        try:
            sender = self._sender(dest)
            results = sender.send(items, stop=self._stop.is_set)
        except SendError as exc:
            return {i.outbox_id: SendResult(i.outbox_id, False, str(exc)) for i in items}
        except Exception as exc:  # noqa: BLE001 - one broken sender must not stop delivery
            log.exception("delivery to %s: unexpected sender error", dest.name)
            error = f"unexpected error in the {dest.type} sender: {exc.__class__.__name__}: {exc}"
            return {i.outbox_id: SendResult(i.outbox_id, False, error) for i in items}
        return {r.outbox_id: r for r in results}

    def _sender(self, dest: Destination) -> Sender:
        if dest.name not in self._senders:
            self._senders[dest.name] = make_sender(self.settings, dest)
        return self._senders[dest.name]

    def _apply(
        self,
        destination: str,
        claimed: Sequence[_Claimed],
        results: Mapping[int, SendResult],
        now: dt.datetime,
        report: RoundReport,
    ) -> None:
        give_up_at = dt.timedelta(hours=self.cfg.give_up_after_hours)
        with self.session_factory.begin() as session:
            for c in claimed:
                row = session.get(OutboxItem, c.id)
                if row is None or row.state != PENDING:
                    continue
                result = results.get(c.id)
                if result is None:  # not attempted (stopping): give the claim back
                    row.attempts = max(0, row.attempts - 1)
                    row.next_attempt_at = now
                    report.not_sent += 1
                elif result.delivered:
                    row.state = DELIVERED
                    row.delivered_at = now
                    row.next_attempt_at = now
                    report.delivered += 1
                elif result.permanent or now - c.created_at >= give_up_at:
                    self._fail(session, row, destination, result.error, now)
                    report.failed += 1
                else:
                    row.last_error = result.error[:MAX_ERROR_CHARS]
                    row.next_attempt_at = now + self.backoff(row.attempts)
                    report.retried += 1
        if report.retried or report.failed:
            first = next((r.error for r in results.values() if not r.delivered), "")
            log.warning(
                "delivery to %s: %d delivered, %d to retry, %d failed (%s)",
                destination,
                report.delivered,
                report.retried,
                report.failed,
                first,
            )
        elif report.delivered:
            log.info("delivered %d object(s) to %s", report.delivered, destination)

    def _fail(
        self, session: Session, row: OutboxItem, destination: str, error: str, now: dt.datetime
    ) -> None:
        row.state = FAILED
        row.last_error = error[:MAX_ERROR_CHARS]
        row.next_attempt_at = now
        age_h = (now - row.created_at).total_seconds() / 3600
        session.add(
            AuditEvent(
                at=now,
                kind=AUDIT_OUTBOX_FAILED,
                level="error",
                sop_instance_uid=row.sop_instance_uid,
                message=(
                    f"gave up delivering an object to {destination} after {row.attempts} "
                    f"attempt(s) over {age_h:.1f} h: {error}"
                )[:MAX_ERROR_CHARS],
                detail={
                    "destination": destination,
                    "outbox_id": row.id,
                    "attempts": row.attempts,
                    "path": row.path,
                },
            )
        )

    def backoff(self, attempts: int) -> dt.timedelta:
        """Delay before the next attempt after ``attempts`` failed ones (with jitter)."""
        exponent = min(max(attempts, 1) - 1, 32)
        base = min(self.cfg.retry_max_seconds, self.cfg.retry_initial_seconds * 2.0**exponent)
        return dt.timedelta(seconds=base * (1.0 - JITTER_FRACTION * self._rng.random()))

    def give_up_orphans(self, now: dt.datetime | None = None) -> int:
        """Fail old pending rows of destinations no longer configured; return how many."""
        now = now or utcnow()
        names = [d.name for d in self.destinations]
        cutoff = now - dt.timedelta(hours=self.cfg.give_up_after_hours)
        try:
            with self.session_factory.begin() as session:
                rows = session.scalars(
                    select(OutboxItem)
                    .where(
                        OutboxItem.state == PENDING,
                        OutboxItem.destination.not_in(names),
                        OutboxItem.created_at <= cutoff,
                    )
                    .limit(self.cfg.batch_size)
                ).all()
                for row in rows:
                    self._fail(
                        session,
                        row,
                        row.destination,
                        "the destination is no longer configured ([[destinations]])",
                        now,
                    )
        except SQLAlchemyError as exc:
            log.warning("outbox clean-up: database unavailable (%s)", exc.__class__.__name__)
            return 0
        return len(rows)

    # -- threads in the serve process ----------------------------------------------------
    def start(self) -> None:
        """One thread per destination, each polling every ``delivery.poll_seconds``."""
        self._stop.clear()
        for dest in self.destinations:
            thread = threading.Thread(
                target=self._loop, args=(dest,), name=f"delivery-{dest.name}", daemon=True
            )
            self._threads.append(_Thread(dest, thread))
            thread.start()
        log.info("delivering results to %s", ", ".join(d.name for d in self.destinations))

    def _loop(self, dest: Destination) -> None:
        slot = next(t for t in self._threads if t.destination is dest)
        while not self._stop.is_set():
            try:
                report = self.deliver_destination(dest)
                slot.last_round = report
                if dest is self.destinations[0]:
                    self.give_up_orphans()
            except Exception:  # noqa: BLE001 - the loop survives anything; next poll retries
                log.exception("delivery loop for %s failed (will retry)", dest.name)
                report = RoundReport(error="unexpected error")
            busy = report.claimed >= self.cfg.batch_size and not report.error
            if not busy:
                self._stop.wait(self.cfg.poll_seconds)

    def request_stop(self) -> None:
        """Ask every thread to stop after the instance in flight (returns at once)."""
        self._stop.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Let each thread finish the instance in flight (at most ``timeout`` s each), then return."""
        self._stop.set()
        for slot in self._threads:
            slot.thread.join(timeout)
            if slot.thread.is_alive():
                log.warning(
                    "delivery to %s did not stop within %.0f s", slot.destination.name, timeout
                )
        self._threads.clear()
        for sender in self._senders.values():
            sender.close()

    def alive(self) -> bool:
        """True while every destination thread runs (health check)."""
        return bool(self._threads) and all(t.thread.is_alive() for t in self._threads)
