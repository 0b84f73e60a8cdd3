"""``ki67node serve``: the supervisor process.

Main process: DICOM listener threads, the intake loop (completeness,
decisions), the HTTP status server, the worker supervisor, the delivery
threads that send the outbox to the destinations and the scheduler
(:mod:`daemon.followup.scheduler`: follow-up flagging, overdue check, spool retention). Inference runs
in worker child processes only; torch is never imported here, so a crashing
or out-of-memory worker never stops intake from the PACS.

Signal handlers only set a flag. SIGTERM/SIGINT: stop accepting
associations, let the ones in flight finish their instance, give running jobs
back to the queue (or let them finish within the stop timeout), let each
delivery thread finish the instance it is sending, exit 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pydicom
from sqlalchemy import Engine, select

from ai_core.disclaimer import DISCLAIMER
from daemon import __version__
from daemon.db.engine import make_engine, make_sessionmaker, migrate, ping
from daemon.db.models import Instance, Job, QuarantinedInstance, Series, SeriesDecision
from daemon.db.states import SeriesState
from daemon.delivery.outbox import RESULTS_DIRNAME, remove_stale_parts
from daemon.delivery.service import DeliveryService
from daemon.dicom.listener import Listener
from daemon.followup.scheduler import JobContext, NodeScheduler
from daemon.intake.completeness import CompletenessTracker, receiving_series, sweep
from daemon.intake.decisions import decide, undecided
from daemon.intake.ingest import IngestStore
from daemon.intake.spool import Spool
from daemon.jobs.queue import JobQueue, QueueFactory
from daemon.jobs.worker_process import JobSettings
from daemon.jobs.workers import WorkerSupervisor
from daemon.ops.http import StatusServer
from daemon.ops.notify import SystemdNotifier, Watchdog
from daemon.settings import Settings

log = logging.getLogger(__name__)

STOP_TIMEOUT_SECONDS = 60.0
DELIVERY_STOP_TIMEOUT_SECONDS = 10.0


@dataclass
class StopFlag:
    """Set by signal handlers; everything else polls or waits on it."""

    event: threading.Event = field(default_factory=threading.Event)
    signal_name: str = ""

    def install(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            self.signal_name = signal.Signals(signum).name
            self.event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


# -- the composition root: only here (and in the CLI) is the whole Settings read ----------
def job_settings(settings: Settings) -> JobSettings:
    """What every job of the worker processes reads."""
    return JobSettings(
        pipeline=settings.pipeline,
        followup=settings.followup,
        data_dir=settings.data_dir,
        spool_dir=settings.spool_dir,
        destinations=settings.destinations,
    )


def queue_factory(settings: Settings) -> QueueFactory:
    """The queue each worker process (and the CLI) opens on the node's database."""
    return QueueFactory.from_sections(settings.database_target, settings.pipeline)


def scheduler_context(settings: Settings) -> JobContext:
    """What the periodic jobs get (stored with them in the database)."""
    return JobContext.from_sections(
        settings.database_target, settings.followup, settings.retention, settings.spool_dir
    )


def reconcile_spool(engine: Engine, spool: Spool, ingest: IngestStore) -> int:
    """Index published files without a row (crash between rename and commit)."""
    with engine.connect() as conn:
        known = set(conn.execute(select(Instance.path)).scalars())
        known |= set(conn.execute(select(QuarantinedInstance.path)).scalars())
    recovered = 0
    for relpath in spool.published_files():
        if relpath in known:
            continue
        try:
            outcome = ingest.index_existing(relpath)
        except Exception:  # noqa: BLE001 - one unreadable orphan must not stop start-up
            log.exception("could not re-index spool file %s", relpath)
            continue
        recovered += int(outcome)
    if recovered:
        log.warning("re-indexed %d spool file(s) that had no database row", recovered)
    return recovered


def enqueue_missing_jobs(engine: Engine, queue: JobQueue) -> int:
    """Qualifying decisions whose job was never enqueued (crash in between)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(SeriesDecision.series_id, SeriesDecision.revision)
            .join(Series, Series.id == SeriesDecision.series_id)
            .where(
                SeriesDecision.qualifies.is_(True),
                SeriesDecision.revision == Series.revision,
                Series.state == SeriesState.DECIDED,
            )
            .outerjoin(
                Job,
                (Job.series_id == SeriesDecision.series_id)
                & (Job.revision == SeriesDecision.revision),
            )
            .where(Job.id.is_(None))
        ).all()
    for row in rows:
        queue.enqueue(int(row.series_id), int(row.revision))
    return len(rows)


class Node:
    """All parts of a running node, wired together; used by serve() and tests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(settings.database_url, settings.database.busy_timeout_ms)
        migrate(self.engine)
        self.sessionmaker = make_sessionmaker(self.engine)
        self.spool = Spool(settings.spool_dir)
        self.tracker = CompletenessTracker(settings.ingest.series_stable_seconds)
        self.ingest = IngestStore(self.engine, self.spool, on_stored=self.tracker.touch)
        self.queue = JobQueue(
            self.sessionmaker,
            max_attempts=settings.pipeline.job_max_attempts,
            backoff_seconds=settings.pipeline.job_retry_backoff_seconds,
        )
        self.listener = Listener(settings.node, settings.tls, self.ingest)
        self.supervisor = WorkerSupervisor(
            job_settings(settings), queue_factory(settings), log_level=settings.logging.level
        )
        self.delivery = DeliveryService(
            settings.node, settings.delivery, settings.destinations, self.sessionmaker
        )
        self.scheduler = (
            NodeScheduler(settings.scheduler, scheduler_context(settings), engine=self.engine)
            if settings.scheduler.enabled
            else None
        )
        checks = {"scheduler": self.scheduler.alive} if self.scheduler is not None else {}
        self.http = StatusServer(
            settings.http,
            settings.data_dir,
            settings.database_target,
            health_checks={
                "spool": self.spool.writable,
                "database": lambda: ping(self.engine),
                "listener": self.listener.alive,
                "workers": self.supervisor.alive,
                "delivery": self.delivery.alive,
                **checks,
            },
        )
        self.notifier = SystemdNotifier.from_env()
        self.watchdog = Watchdog(self.notifier, loops=("main", "listener"))
        self.stop_flag = StopFlag()

    # -- start-up ------------------------------------------------------------
    def recover(self) -> None:
        """Bring the database and the spool back in line after any stop."""
        self.spool.clean_temp()
        remove_stale_parts(self.settings.data_dir / RESULTS_DIRNAME)
        reconcile_spool(self.engine, self.spool, self.ingest)
        # Jobs left "running" by a previous process of this host are given
        # back by WorkerSupervisor.start() (it knows this host's worker ids).
        self.tracker.rearm(receiving_series(self.engine))
        for series_id, revision in undecided(self.engine):
            decide(self.engine, self.spool, self.queue, self.settings.filter, series_id, revision)
        enqueue_missing_jobs(self.engine, self.queue)

    def start(self) -> None:
        self.recover()
        self.listener.start()
        self.supervisor.start()
        self.delivery.start()
        if self.scheduler is not None:
            self.scheduler.start()
        self.http.start()
        self.notifier.ready()
        self.notifier.status(f"listening on port {self.listener.port}")
        log.info(
            "ki67node %s serving (AE %s, DICOM port %d, HTTP %s) - %s",
            __version__,
            self.settings.node.ae_title,
            self.listener.port,
            self.http.port if self.settings.http.enabled else "off",
            DISCLAIMER,
        )

    # -- the main loop ---------------------------------------------------------
    def tick(self) -> None:
        """One pass of the intake loop: complete, decide, supervise."""
        for series_id, revision in sweep(self.engine, self.tracker):
            decide(self.engine, self.spool, self.queue, self.settings.filter, series_id, revision)
        self.supervisor.poll()

    def run(self) -> None:
        interval = self.settings.ingest.sweep_interval_seconds
        while not self.stop_flag.event.is_set():
            try:
                self.tick()
                self.watchdog.beat("main")
            except Exception:  # noqa: BLE001 - the loop keeps going; the watchdog sees stalls
                log.exception("intake loop error (will retry)")
            if self.listener.alive() and time.monotonic() - self.listener.last_progress < 5:
                self.watchdog.beat("listener")
            self.watchdog.maybe_ping()
            self.stop_flag.event.wait(interval)

    def stop(self) -> None:
        self.notifier.stopping()
        log.info("stopping: no new associations, finishing work in flight")
        self.delivery.request_stop()  # winds down while the listener and workers stop
        self.listener.stop(timeout=min(30.0, STOP_TIMEOUT_SECONDS / 2))
        self.supervisor.stop(timeout=STOP_TIMEOUT_SECONDS / 2)
        # After the workers: results they staged while stopping stay pending.
        self.delivery.stop(timeout=DELIVERY_STOP_TIMEOUT_SECONDS)
        if self.scheduler is not None:
            self.scheduler.stop(wait=True)  # a job in progress finishes; the schedule stays stored
        self.http.stop()
        self.ingest.close()
        self.engine.dispose()
        log.info("stopped")


def serve(settings: Settings) -> int:
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    node = Node(settings)
    node.stop_flag.install()
    node.start()
    try:
        node.run()
    finally:
        node.stop()
    return 0
