"""The node's periodic jobs: follow-up flagging, the overdue check, spool retention.

APScheduler 3.x ``BackgroundScheduler`` with a ``SQLAlchemyJobStore`` in the
node's own database (table ``apscheduler_jobs``, created by migration 0003),
so a restart of the daemon keeps the schedule: a job already in the store
keeps its next run time unless its interval changed in the config; jobs are
replaced by id (``replace_existing``) so new arguments apply. Missed runs
(the daemon was down) run once on start (``coalesce``) within
``misfire_grace_time`` = the job's interval.

The completeness sweep and the outbox delivery do NOT run here: they need a
sub-second cadence and run in their own loops (``Node.run`` in
:mod:`daemon.serve`, the delivery threads in :mod:`daemon.delivery.service`).

The job store pickles each job's function reference and arguments, so the
functions are module-level and take one picklable :class:`JobContext`. Each
takes ``now=`` (naive UTC) for tests; the scheduler never passes it. The
clock of :class:`NodeScheduler` (first run times) is injectable too.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine, exists, func, select
from sqlalchemy.orm import Session

from daemon.db.audit import audit
from daemon.db.engine import make_engine
from daemon.db.models import FollowupEntry, Instance, Job, OutboxItem, Series, utcnow
from daemon.db.states import (
    AuditKind,
    AuditLevel,
    FollowupStatus,
    JobState,
    OutboxState,
    SeriesState,
)
from daemon.followup.rules import status_at
from daemon.intake.spool import Spool
from daemon.settings import (
    DatabaseTarget,
    FollowupSettings,
    RetentionSettings,
    SchedulerSettings,
)

log = logging.getLogger(__name__)

JOB_FOLLOWUP_DUE = "followup-flagging"
JOB_FOLLOWUP_OVERDUE = "followup-overdue-check"
JOB_RETENTION = "spool-retention"
JOBSTORE_TABLE = "apscheduler_jobs"
FIRST_RUN_DELAY = dt.timedelta(seconds=60)  # let the node finish starting first


def _aware_utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class JobContext:
    """Everything a job needs, picklable (stored with the job in the database)."""

    database_url: str
    busy_timeout_ms: int
    followup: FollowupSettings
    spool_dir: str
    spool_days: int

    @classmethod
    def from_sections(
        cls,
        database: DatabaseTarget,
        followup: FollowupSettings,
        retention: RetentionSettings,
        spool_dir: Path,
    ) -> JobContext:
        return cls(
            database_url=database.url,
            busy_timeout_ms=database.busy_timeout_ms,
            followup=followup,
            spool_dir=str(spool_dir),
            spool_days=retention.spool_days,
        )


# -- the jobs (module-level: the job store pickles references to them) ------------------------
def followup_flagging_job(ctx: JobContext, now: dt.datetime | None = None) -> int:
    """Scheduled entries whose due date has come become "due"; how many."""
    engine = make_engine(ctx.database_url, ctx.busy_timeout_ms)
    try:
        with Session(engine) as session, session.begin():
            return len(flag_due(session, ctx.followup, now=now or utcnow()))
    finally:
        engine.dispose()


def overdue_check_job(ctx: JobContext, now: dt.datetime | None = None) -> int:
    """Entries past due + grace without a follow-up study become "overdue"; how many."""
    engine = make_engine(ctx.database_url, ctx.busy_timeout_ms)
    try:
        with Session(engine) as session, session.begin():
            return len(flag_overdue(session, ctx.followup, now=now or utcnow()))
    finally:
        engine.dispose()


def retention_job(ctx: JobContext, now: dt.datetime | None = None) -> int:
    """Spool retention (``retention.spool_days``; 0 = keep forever); files deleted."""
    if ctx.spool_days <= 0:
        return 0
    engine = make_engine(ctx.database_url, ctx.busy_timeout_ms)
    try:
        result = purge_spool(
            engine, Spool(Path(ctx.spool_dir)), ctx.spool_days, now=now or utcnow()
        )
    finally:
        engine.dispose()
    return result.files


# -- follow-up flagging: the stored status follows surveillance.status_at ----------------------
def flag_due(session: Session, cfg: FollowupSettings, *, now: dt.datetime) -> list[int]:
    """Scheduled entries whose due date has come become "due"; their ids."""
    return _flag(session, cfg, (FollowupStatus.SCHEDULED,), FollowupStatus.DUE, now)


def flag_overdue(session: Session, cfg: FollowupSettings, *, now: dt.datetime) -> list[int]:
    """Entries past due + grace without a follow-up study become "overdue" (audited); their ids."""
    ids = _flag(
        session, cfg, (FollowupStatus.SCHEDULED, FollowupStatus.DUE), FollowupStatus.OVERDUE, now
    )
    if ids:
        audit(
            session,
            AuditKind.FOLLOWUP_OVERDUE,
            f"{len(ids)} follow-up entr{'y' if len(ids) == 1 else 'ies'} overdue "
            f"(no follow-up study {cfg.overdue_grace_days} days after the due date)",
            level=AuditLevel.WARNING,
            at=now,
            detail={"followup_ids": ids},
        )
        log.warning("%d follow-up entries became overdue", len(ids))
    return ids


def _flag(
    session: Session, cfg: FollowupSettings, current: tuple[str, ...], target: str, now: dt.datetime
) -> list[int]:
    ids = []
    rows = session.scalars(
        select(FollowupEntry)
        .where(FollowupEntry.status.in_(current), FollowupEntry.due_date <= now.date())
        .order_by(FollowupEntry.id)
    )
    for entry in rows:
        status = status_at(entry.due_date, now, cfg.overdue_grace_days)
        # scheduled -> due also when already past the grace: the overdue check follows.
        if status == target or (target == FollowupStatus.DUE and status == FollowupStatus.OVERDUE):
            entry.status, entry.status_changed_at = target, now
            ids.append(entry.id)
    session.flush()
    return ids


# -- spool retention -----------------------------------------------------------------------
@dataclass(frozen=True)
class PurgeResult:
    series: int  # series whose received files were deleted
    files: int
    kept: int  # old enough but not deletable (job not done or results not all delivered)


def purge_spool(engine: Engine, spool: Spool, days: int, *, now: dt.datetime) -> PurgeResult:
    """Delete the received files of series last received more than ``days`` ago, once done.

    A series qualifies when it is decided, all its jobs are done (its current
    revision has one when it qualified) and every outbox row of those jobs is
    delivered; a series that did not qualify has nothing to deliver. Instance
    rows stay, with ``purged_at`` set. Nothing undelivered is ever deleted.
    """
    if days <= 0:
        raise ValueError("purge_spool: days must be > 0 (retention.spool_days = 0 keeps forever)")
    cutoff = now - dt.timedelta(days=days)
    unpurged = exists().where(Instance.series_id == Series.id, Instance.purged_at.is_(None))
    with Session(engine) as session:
        candidates = list(
            session.scalars(
                select(Series.id)
                .where(
                    Series.state == SeriesState.DECIDED, Series.last_received_at < cutoff, unpurged
                )
                .order_by(Series.id)
            )
        )
    purged = files = kept = 0
    for series_id in candidates:
        with Session(engine) as session, session.begin():
            series = session.get(Series, series_id)
            if (
                series is None
                or series.last_received_at >= cutoff
                or not _finished(session, series)
            ):
                kept += 1
                continue
            instances = session.scalars(
                select(Instance).where(
                    Instance.series_id == series_id, Instance.purged_at.is_(None)
                )
            )
            for inst in instances:
                spool.delete(inst.path)
                if not spool.path_of(inst.path).exists():
                    inst.purged_at = now
                    files += 1
            purged += 1
    if files:
        with Session(engine) as session, session.begin():
            audit(
                session,
                AuditKind.SPOOL_PURGED,
                f"spool retention: deleted {files} received file(s) of {purged} "
                f"series older than {days} days (results delivered)",
                at=now,
                detail={"series": purged, "files": files, "kept": kept},
            )
        log.info("spool retention: deleted %d file(s) of %d series", files, purged)
    return PurgeResult(purged, files, kept)


def _finished(session: Session, series: Series) -> bool:
    """All jobs of the series done and all their results delivered."""
    if series.state != SeriesState.DECIDED or series.qualifies is None:
        return False
    jobs = list(session.scalars(select(Job).where(Job.series_id == series.id)))
    if series.qualifies and not any(j.revision == series.revision for j in jobs):
        return False
    if any(j.state != JobState.DONE for j in jobs):
        return False
    if not jobs:
        return True
    undelivered = session.scalar(
        select(func.count())
        .select_from(OutboxItem)
        .where(
            OutboxItem.job_id.in_([j.id for j in jobs]), OutboxItem.state != OutboxState.DELIVERED
        )
    )
    return not undelivered


# -- the scheduler -----------------------------------------------------------------------
class NodeScheduler:
    """The APScheduler instance of a running node (started and stopped by ``serve``).

    ``cfg``: the intervals; ``context``: what the jobs get (stored with them);
    ``engine``: the node's engine (the job store's table lives in its
    database; default: one on ``context.database_url``); ``clock``: aware UTC
    now, for the first run time of a new job.
    """

    def __init__(
        self,
        cfg: SchedulerSettings,
        context: JobContext,
        *,
        engine: Engine | None = None,
        clock: Callable[[], dt.datetime] = _aware_utcnow,
    ) -> None:
        self.cfg = cfg
        self.context = context
        self._own_engine = engine is None
        self.engine = engine or make_engine(context.database_url, context.busy_timeout_ms)
        self._clock = clock
        self._scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.engine, tablename=JOBSTORE_TABLE)},
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone=dt.UTC,
        )

    @property
    def apscheduler(self) -> BackgroundScheduler:
        """The underlying scheduler (tests: listeners, ``modify_job``)."""
        return self._scheduler

    def start(self) -> None:
        """Start, install (or keep) the jobs, then let them run."""
        self._scheduler.start(paused=True)
        self._install_jobs()
        self._scheduler.resume()
        log.info("scheduler started: %s", ", ".join(sorted(self.next_run_times())))

    def stop(self, wait: bool = True) -> None:
        """Stop; with ``wait`` a job in progress finishes first. The schedule stays stored."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)
        if self._own_engine:
            self.engine.dispose()

    def alive(self) -> bool:
        return bool(self._scheduler.running)

    def next_run_times(self) -> dict[str, dt.datetime | None]:
        """Job id → next run time (aware UTC) of every stored job."""
        return {job.id: job.next_run_time for job in self._scheduler.get_jobs()}

    def _install_jobs(self) -> None:
        cfg, ctx = self.cfg, self.context
        followup_s = cfg.followup_check_minutes * 60
        specs: list[tuple[str, Callable[..., int], int]] = [
            (JOB_FOLLOWUP_DUE, followup_flagging_job, followup_s),
            (JOB_FOLLOWUP_OVERDUE, overdue_check_job, followup_s),
        ]
        if ctx.spool_days > 0:
            specs.append((JOB_RETENTION, retention_job, cfg.retention_check_hours * 3600))
        elif self._stored_job(JOB_RETENTION) is not None:  # unrestorable ones are dropped
            self._scheduler.remove_job(JOB_RETENTION)
        for job_id, function, seconds in specs:
            existing = self._stored_job(job_id)
            next_run = self._clock() + FIRST_RUN_DELAY
            if (
                existing is not None
                and existing.next_run_time is not None
                and getattr(existing.trigger, "interval", None) == dt.timedelta(seconds=seconds)
            ):
                next_run = existing.next_run_time  # a restart keeps the schedule
            self._scheduler.add_job(
                function,
                IntervalTrigger(seconds=seconds, timezone=dt.UTC),
                args=(ctx,),
                id=job_id,
                name=job_id,
                replace_existing=True,
                next_run_time=next_run,
                misfire_grace_time=seconds,
                coalesce=True,
                max_instances=1,
            )

    def _stored_job(self, job_id: str) -> Any:
        """The stored job, or None; a job stored by an incompatible version is dropped."""
        try:
            return self._scheduler.get_job(job_id)
        except Exception:  # noqa: BLE001 - unpicklable state (renamed code): start afresh
            log.warning("scheduler: stored job %s cannot be restored; replacing it", job_id)
            self._scheduler.remove_job(job_id)
            return None
