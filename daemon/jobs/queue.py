"""The job queue: rows in the ``jobs`` table, claimed atomically by workers.

A job moves ``queued → running → done | failed``. Claiming takes the oldest
queued job whose ``not_before`` has passed, in one transaction: SQLite
serialises writers (every transaction starts with BEGIN IMMEDIATE) and
PostgreSQL skips rows another worker has locked (``FOR UPDATE SKIP LOCKED``),
so one job is never handed out twice. Every claim counts as an attempt; a
failed, crashed or timed-out attempt is retried with exponential backoff until
``max_attempts``, then the job is failed and its reason kept. Time is passed
in (``now=``, naive UTC like the rest of the schema) so tests need no sleeping.

The runner that executes jobs sits behind :class:`JobRunner`, so a
distributed engine (Celery workers on a shared database and spool) can replace
the local worker processes later.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import and_, func, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from daemon.db.audit import audit
from daemon.db.engine import make_engine, make_sessionmaker
from daemon.db.models import Job, Series, utcnow
from daemon.db.states import AuditKind, AuditLevel, JobState
from daemon.errors import JobError
from daemon.settings import DatabaseTarget, PipelineSettings

log = logging.getLogger(__name__)

KIND_ANALYSE_SERIES = "analyse_series"
MAX_BACKOFF_SECONDS = 3600.0
MAX_ERROR_CHARS = 2000


class JobLostError(JobError):
    """The job is no longer held by this worker (timed out, or recovered elsewhere)."""

    def __init__(self, job_id: int, worker_id: str) -> None:
        super().__init__(
            f"job {job_id} is no longer running on worker {worker_id} (it timed out or was "
            "recovered); its result was discarded, the job runs again from the queue",
            retryable=False,
        )


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to run one attempt of a job."""

    id: int
    kind: str
    series_id: int
    revision: int
    attempt: int  # 1-based: this claim's attempt number
    max_attempts: int
    worker_id: str


class JobRunner(Protocol):
    """Whatever executes queued jobs: local worker processes now, Celery later."""

    def start(self) -> None: ...

    def poll(self, now: float | None = None) -> None: ...

    def stop(self, timeout: float) -> None: ...

    def alive(self) -> bool: ...


class JobQueue:
    """The database-backed queue; safe to share between threads and processes."""

    def __init__(
        self, sessionmaker: sessionmaker[Session], *, max_attempts: int, backoff_seconds: float
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if backoff_seconds < 0:
            raise ValueError(f"backoff_seconds must be >= 0, got {backoff_seconds}")
        self.sessionmaker = sessionmaker
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds

    # -- producer -------------------------------------------------------------
    def enqueue(
        self,
        series_id: int,
        revision: int,
        kind: str = KIND_ANALYSE_SERIES,
        now: dt.datetime | None = None,
    ) -> int:
        """Queue a job for this series revision; an existing one is returned as is."""
        now = now or utcnow()
        for _ in range(2):
            try:
                with self.sessionmaker.begin() as session:
                    existing = self._find(session, series_id, revision, kind)
                    if existing is not None:
                        return existing
                    job = Job(
                        kind=kind,
                        series_id=series_id,
                        revision=revision,
                        state=JobState.QUEUED,
                        attempts=0,
                        max_attempts=self.max_attempts,
                        not_before=now,
                        created_at=now,
                    )
                    session.add(job)
                    session.flush()
                    log.info(
                        "queued job %d (%s) for series %d r%d", job.id, kind, series_id, revision
                    )
                    return job.id
            except IntegrityError:
                continue  # another process inserted it between our check and insert
        with self.sessionmaker() as session:
            found = self._find(session, series_id, revision, kind)
        if found is None:  # pragma: no cover - the unique constraint makes this unreachable
            raise JobError(f"could not queue a job for series {series_id}", retryable=True)
        return found

    @staticmethod
    def _find(session: Session, series_id: int, revision: int, kind: str) -> int | None:
        return session.scalar(
            select(Job.id).where(
                Job.series_id == series_id, Job.revision == revision, Job.kind == kind
            )
        )

    # -- worker side ------------------------------------------------------------
    def claim(self, worker_id: str, now: dt.datetime | None = None) -> ClaimedJob | None:
        """Atomically take the oldest due queued job, or None when there is none."""
        now = now or utcnow()
        if not self._maybe_queued():
            return None
        with self.sessionmaker.begin() as session:
            job = session.scalar(
                select(Job)
                .where(Job.state == JobState.QUEUED, Job.not_before <= now)
                .order_by(Job.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if job is None:
                return None
            job.state = JobState.RUNNING
            job.attempts += 1
            job.claimed_by = worker_id
            job.claimed_at = now
            job.heartbeat_at = now
            return ClaimedJob(
                id=job.id,
                kind=job.kind,
                series_id=job.series_id,
                revision=job.revision,
                attempt=job.attempts,
                max_attempts=job.max_attempts,
                worker_id=worker_id,
            )

    def _maybe_queued(self) -> bool:
        """False only when SQLite has no queued job, checked without a write lock.

        Every SQLite transaction here starts with BEGIN IMMEDIATE; idle workers
        polling twice a second must not take the lock the listener writes under.
        A plain autocommit read in WAL mode never blocks a writer.
        """
        engine = self.sessionmaker.kw.get("bind")
        if engine is None or engine.dialect.name != "sqlite":
            return True
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("SELECT 1 FROM jobs WHERE state = ? LIMIT 1", (JobState.QUEUED,))
            found = cursor.fetchone() is not None
            cursor.close()
        finally:
            raw.close()
        return found

    def heartbeat(self, job_id: int, worker_id: str, now: dt.datetime | None = None) -> None:
        """Record that the worker still runs the job; :class:`JobLostError` if it does not."""
        with self.sessionmaker.begin() as session:
            done = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.claimed_by == worker_id)
                .values(heartbeat_at=now or utcnow())
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                raise JobLostError(job_id, worker_id)

    def finish(
        self, job_id: int, worker_id: str, result: dict[str, Any], now: dt.datetime | None = None
    ) -> None:
        """Mark the job done with its JSON-safe ``result``."""
        now = now or utcnow()
        with self.sessionmaker.begin() as session:
            job = self._held(session, job_id, worker_id)
            job.state = JobState.DONE
            job.result = result
            job.error = None
            job.finished_at = now
            job.heartbeat_at = now
        log.info("job %d done", job_id)

    def fail(
        self,
        job_id: int,
        worker_id: str,
        error: str,
        *,
        retryable: bool,
        now: dt.datetime | None = None,
    ) -> str:
        """Record a failed attempt; return the new state, ``queued`` (retry) or ``failed``."""
        with self.sessionmaker.begin() as session:
            job = self._held(session, job_id, worker_id)
            return self._after_failure(session, job, error, retryable, now or utcnow())

    def release(self, job_id: int, worker_id: str, now: dt.datetime | None = None) -> bool:
        """Give a job back without counting the attempt (graceful shutdown)."""
        with self.sessionmaker.begin() as session:
            job = session.scalar(
                select(Job)
                .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.claimed_by == worker_id)
                .with_for_update()
            )
            released = job is not None
            if job is not None:
                job.state = JobState.QUEUED
                job.attempts = max(job.attempts - 1, 0)
                job.not_before = now or utcnow()
        if released:
            log.info("job %d given back to the queue by %s", job_id, worker_id)
        return released

    # -- supervisor side ---------------------------------------------------------
    def requeue_worker_jobs(
        self,
        worker_id: str,
        reason: str,
        now: dt.datetime | None = None,
        *,
        count_attempt: bool = True,
    ) -> int:
        """The worker is gone: retry (or fail) the jobs it was running; return how many."""
        return self._recover(lambda: Job.claimed_by == worker_id, reason, now, count_attempt)

    def recover_orphans(
        self,
        live_worker_ids: set[str],
        now: dt.datetime | None = None,
        *,
        worker_prefix: str = "",
    ) -> int:
        """At start-up: running jobs whose worker is not alive are retried or failed.

        ``worker_prefix`` limits recovery to this node's workers when several
        nodes share one database.
        """

        def orphaned() -> Any:
            cond = Job.claimed_by.not_in(sorted(live_worker_ids)) if live_worker_ids else true()
            if worker_prefix:
                return and_(Job.claimed_by.startswith(worker_prefix, autoescape=True), cond)
            return cond

        reason = "the worker running it was gone when the node started (crash or kill)"
        return self._recover(orphaned, reason, now, True)

    def _recover(
        self, where: Callable[[], Any], reason: str, now: dt.datetime | None, count: bool
    ) -> int:
        now = now or utcnow()
        with self.sessionmaker.begin() as session:
            jobs = session.scalars(
                select(Job)
                .where(Job.state == JobState.RUNNING, where())
                .order_by(Job.id)
                .with_for_update(skip_locked=True)
            ).all()
            for job in jobs:
                if count:
                    self._after_failure(session, job, reason, True, now)
                else:
                    job.state = JobState.QUEUED
                    job.attempts = max(job.attempts - 1, 0)
                    job.not_before = now
        return len(jobs)

    # -- reporting ---------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Jobs by state, every state present (zero when none)."""
        out: dict[str, int] = {state.value: 0 for state in JobState}
        with self.sessionmaker() as session:
            for state, n in session.execute(select(Job.state, func.count()).group_by(Job.state)):
                out[state] = int(n)
        return out

    # -- internals ---------------------------------------------------------------
    @staticmethod
    def _held(session: Session, job_id: int, worker_id: str) -> Job:
        job = session.scalar(
            select(Job)
            .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.claimed_by == worker_id)
            .with_for_update()
        )
        if job is None:
            raise JobLostError(job_id, worker_id)
        return job

    def _after_failure(
        self, session: Session, job: Job, error: str, retryable: bool, now: dt.datetime
    ) -> str:
        error = error[:MAX_ERROR_CHARS]
        job.error = error
        series_uid = session.scalar(select(Series.series_uid).where(Series.id == job.series_id))
        detail: dict[str, Any] = {
            "job_id": job.id,
            "kind": job.kind,
            "attempt": job.attempts,
            "max_attempts": job.max_attempts,
            "retryable": retryable,
        }
        if retryable and job.attempts < job.max_attempts:
            delay = min(self.backoff_seconds * 2 ** max(job.attempts - 1, 0), MAX_BACKOFF_SECONDS)
            job.state = JobState.QUEUED
            job.not_before = now + dt.timedelta(seconds=delay)
            detail["retry_in_seconds"] = delay
            kind, level = AuditKind.JOB_RETRY, AuditLevel.WARNING
            log.warning(
                "job %d attempt %d/%d failed, retry in %.0f s: %s",
                job.id,
                job.attempts,
                job.max_attempts,
                delay,
                error,
            )
        else:
            job.state = JobState.FAILED
            job.finished_at = now
            kind, level = AuditKind.JOB_FAILED, AuditLevel.ERROR
            log.error("job %d failed after %d attempt(s): %s", job.id, job.attempts, error)
        audit(
            session,
            kind,
            f"job {job.id} ({job.kind}) attempt {job.attempts}: {error}",
            level=level,
            at=now,
            series_uid=series_uid,
            detail=detail,
        )
        return job.state


@dataclass(frozen=True)
class QueueFactory:
    """Builds a :class:`JobQueue` with its own engine; picklable, so each worker
    process (``spawn``) makes its own connections."""

    database_url: str
    max_attempts: int
    backoff_seconds: float
    busy_timeout_ms: int = 30_000

    @classmethod
    def from_sections(cls, database: DatabaseTarget, pipeline: PipelineSettings) -> QueueFactory:
        return cls(
            database_url=database.url,
            max_attempts=pipeline.job_max_attempts,
            backoff_seconds=pipeline.job_retry_backoff_seconds,
            busy_timeout_ms=database.busy_timeout_ms,
        )

    def __call__(self) -> JobQueue:
        engine = make_engine(self.database_url, busy_timeout_ms=self.busy_timeout_ms)
        return JobQueue(
            make_sessionmaker(engine),
            max_attempts=self.max_attempts,
            backoff_seconds=self.backoff_seconds,
        )
