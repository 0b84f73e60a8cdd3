"""Delivery of the outbox: the retrying loop, one thread per destination.

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

The senders (one per destination type: C-STORE, folder, STOW-RS) live in
:mod:`daemon.delivery.senders`.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from daemon.db.audit import audit
from daemon.db.models import OutboxItem, utcnow
from daemon.db.states import AuditKind, AuditLevel, OutboxState
from daemon.delivery.outbox import destinations_of
from daemon.delivery.senders import Sender, SendItem, SendResult, make_sender
from daemon.destinations import Destination
from daemon.errors import SendError
from daemon.settings import DeliverySettings, NodeSettings

log = logging.getLogger(__name__)

JITTER_FRACTION = 0.25  # a retry delay is drawn from [75 %, 100 %] of the backoff
MAX_ERROR_CHARS = 2000


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
    """Delivers the outbox to every destination; ``start`` runs it in threads.

    ``node``: our AE title and PDU size, and the data_dir the staged files are
    under; ``destinations`` as configured (none: the default ``outbox`` folder).
    """

    def __init__(
        self,
        node: NodeSettings,
        delivery: DeliverySettings,
        destinations: Sequence[Destination],
        session_factory: sessionmaker[Session],
        *,
        senders: Mapping[str, Sender] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.node = node
        self.cfg = delivery
        self.session_factory = session_factory
        self.destinations = destinations_of(destinations)
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
                    OutboxItem.state == OutboxState.PENDING,
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
        root = self.node.data_dir.resolve()
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
            self._senders[dest.name] = make_sender(self.node, self.cfg, dest)
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
                if row is None or row.state != OutboxState.PENDING:
                    continue
                result = results.get(c.id)
                if result is None:  # not attempted (stopping): give the claim back
                    row.attempts = max(0, row.attempts - 1)
                    row.next_attempt_at = now
                    report.not_sent += 1
                elif result.delivered:
                    row.state = OutboxState.DELIVERED
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
        row.state = OutboxState.FAILED
        row.last_error = error[:MAX_ERROR_CHARS]
        row.next_attempt_at = now
        age_h = (now - row.created_at).total_seconds() / 3600
        audit(
            session,
            AuditKind.OUTBOX_FAILED,
            (
                f"gave up delivering an object to {destination} after {row.attempts} "
                f"attempt(s) over {age_h:.1f} h: {error}"
            )[:MAX_ERROR_CHARS],
            level=AuditLevel.ERROR,
            at=now,
            sop_instance_uid=row.sop_instance_uid,
            detail={
                "destination": destination,
                "outbox_id": row.id,
                "attempts": row.attempts,
                "path": row.path,
            },
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
                        OutboxItem.state == OutboxState.PENDING,
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
