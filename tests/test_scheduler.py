"""The persisted scheduler (APScheduler 3, SQLAlchemy job store) and its jobs, on SQLite and PG."""

from __future__ import annotations

import dataclasses
import datetime as dt
import pickle
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from daemon.db.engine import make_engine, migrate
from daemon.db.models import AuditEvent, FollowupEntry, Instance, Job, OutboxItem, Series, Study
from daemon.followup.scheduler import (
    FIRST_RUN_DELAY,
    JOB_FOLLOWUP_DUE,
    JOB_FOLLOWUP_OVERDUE,
    JOB_RETENTION,
    NodeScheduler,
    followup_flagging_job,
    overdue_check_job,
    purge_spool,
    retention_job,
)
from daemon.followup.surveillance import record_finding
from daemon.intake.spool import Spool
from daemon.serve import scheduler_context
from daemon.settings import Settings
from tests.test_surveillance import BASE, CFG

T0 = dt.datetime(2030, 1, 1, 8, 0, tzinfo=dt.UTC)


@pytest.fixture
def node_settings(make_settings: Callable[..., Settings], database_url: str) -> Iterator[Settings]:
    settings = make_settings(database__url=database_url)
    engine = make_engine(settings.database_url)
    migrate(engine)
    engine.dispose()
    yield settings


def started(settings: Settings, clock: dt.datetime) -> NodeScheduler:
    scheduler = NodeScheduler(settings.scheduler, scheduler_context(settings), clock=lambda: clock)
    scheduler.start()
    return scheduler


def test_restart_keeps_the_schedule(node_settings: Settings) -> None:
    first = started(node_settings, T0)
    before = first.next_run_times()
    first.stop()
    assert before == {
        JOB_FOLLOWUP_DUE: T0 + FIRST_RUN_DELAY,
        JOB_FOLLOWUP_OVERDUE: T0 + FIRST_RUN_DELAY,
    }
    # a new scheduler (a restarted daemon) on the same database, 30 minutes later
    second = started(node_settings, T0 + dt.timedelta(minutes=30))
    try:
        assert second.next_run_times() == before
        job = second.apscheduler.get_job(JOB_FOLLOWUP_DUE)
        assert (job.coalesce, job.misfire_grace_time) == (True, 3600)
        assert job.func_ref == "daemon.followup.scheduler:followup_flagging_job"
    finally:
        second.stop()


def test_changed_interval_or_retention_replaces_the_job(node_settings: Settings) -> None:
    started(node_settings, T0).stop()
    changed = dataclasses.replace(
        node_settings,
        scheduler=dataclasses.replace(node_settings.scheduler, followup_check_minutes=15),
        retention=dataclasses.replace(node_settings.retention, spool_days=30),
    )
    later = T0 + dt.timedelta(hours=2)
    scheduler = started(changed, later)
    times = scheduler.next_run_times()
    scheduler.stop()
    assert times[JOB_FOLLOWUP_DUE] == later + FIRST_RUN_DELAY
    assert times[JOB_RETENTION] == later + FIRST_RUN_DELAY
    scheduler = started(node_settings, later)  # spool_days back to 0: the job goes
    assert JOB_RETENTION not in scheduler.next_run_times()
    scheduler.stop()


def test_job_arguments_survive_pickling(settings: Settings) -> None:
    ctx = scheduler_context(settings)
    assert pickle.loads(pickle.dumps(ctx)) == ctx


def test_a_stored_job_runs_and_flags_the_due_entry(node_settings: Settings) -> None:
    engine = make_engine(node_settings.database_url)
    with Session(engine) as session, session.begin():
        old = dataclasses.replace(BASE, study_date=dt.date(2020, 1, 10))  # due 2021-01-10
        record_finding(session, CFG, old, now=dt.datetime(2020, 1, 11))
    done = threading.Event()
    events: list[JobExecutionEvent] = []

    def listener(event: JobExecutionEvent) -> None:
        events.append(event)
        done.set()

    scheduler = NodeScheduler(
        node_settings.scheduler, scheduler_context(node_settings), engine=engine
    )
    scheduler.apscheduler.add_listener(listener, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    scheduler.start()
    try:
        scheduler.apscheduler.modify_job(JOB_FOLLOWUP_DUE, next_run_time=dt.datetime.now(dt.UTC))
        assert done.wait(20), "the follow-up flagging job did not run"
    finally:
        scheduler.stop()
    assert [(e.job_id, e.exception, e.retval) for e in events] == [(JOB_FOLLOWUP_DUE, None, 1)]
    with Session(engine) as session:
        assert session.scalars(select(FollowupEntry.status)).all() == ["due"]
    engine.dispose()


def test_job_functions_take_an_injected_now(node_settings: Settings) -> None:
    engine = make_engine(node_settings.database_url)
    with Session(engine) as session, session.begin():
        record_finding(session, CFG, BASE, now=dt.datetime(2026, 1, 11))
    engine.dispose()
    ctx = scheduler_context(node_settings)
    assert followup_flagging_job(ctx, now=dt.datetime(2027, 1, 9)) == 0
    assert followup_flagging_job(ctx, now=dt.datetime(2027, 1, 10)) == 1
    assert overdue_check_job(ctx, now=dt.datetime(2027, 2, 9)) == 0
    assert overdue_check_job(ctx, now=dt.datetime(2027, 2, 10)) == 1
    assert retention_job(ctx, now=dt.datetime(2027, 2, 10)) == 0  # spool_days = 0: keep forever


# -- spool retention --------------------------------------------------------------------------
OLD = dt.datetime(2026, 1, 1)
NOW = dt.datetime(2026, 3, 1)


def add_series(
    session: Session,
    spool: Spool,
    n: int,
    *,
    qualifies: bool = True,
    job_state: str | None = "done",
    outbox_states: tuple[str, ...] = ("delivered",),
    received: dt.datetime = OLD,
) -> list[str]:
    """A decided series with two spooled instances, its job and outbox rows; the relpaths."""
    study = Study(study_uid=f"1.2.3.{n}")
    session.add(study)
    session.flush()
    series = Series(
        series_uid=f"1.2.3.{n}.1", study_id=study.id, state="decided", qualifies=qualifies,
        revision=0, last_received_at=received,
    )  # fmt: skip
    session.add(series)
    session.flush()
    paths = []
    for i in range(2):
        stored = spool.write([f"series {n} instance {i}".encode()])
        session.add(
            Instance(
                sop_instance_uid=f"1.2.3.{n}.1.{i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                series_id=series.id, transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=stored.relpath, size_bytes=stored.size_bytes, sha256=stored.sha256,
            )
        )  # fmt: skip
        paths.append(stored.relpath)
    if job_state is not None:
        job = Job(series_id=series.id, revision=0, state=job_state)
        session.add(job)
        session.flush()
        for i, state in enumerate(outbox_states):
            session.add(
                OutboxItem(
                    job_id=job.id, destination="pacs", sop_instance_uid=f"1.2.3.{n}.9.{i}",
                    path=f"results/{n}/{i}.dcm", state=state,
                )
            )  # fmt: skip
    return paths


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def test_retention_deletes_only_delivered_series_older_than_the_limit(
    db: Engine, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    with Session(db) as session, session.begin():
        cases = {
            "delivered": add_series(session, spool, 1),
            "not-qualifying": add_series(session, spool, 2, qualifies=False, job_state=None),
            "pending": add_series(session, spool, 3, outbox_states=("delivered", "pending")),
            "failed-delivery": add_series(session, spool, 4, outbox_states=("failed",)),
            "job-running": add_series(session, spool, 5, job_state="running"),
            "job-failed": add_series(session, spool, 6, job_state="failed"),
            "no-job-yet": add_series(session, spool, 7, job_state=None),
            "too-recent": add_series(session, spool, 8, received=NOW - dt.timedelta(days=29)),
        }
    result = purge_spool(db, spool, 30, now=NOW)
    gone = {name for name, paths in cases.items() if not spool.path_of(paths[0]).exists()}
    assert gone == {"delivered", "not-qualifying"}
    assert (result.series, result.files, result.kept) == (2, 4, 5)  # too-recent: not a candidate
    with Session(db) as session:
        purged = session.scalars(select(Instance.sop_instance_uid).where(Instance.purged_at == NOW))
        assert sorted(purged) == ["1.2.3.1.1.0", "1.2.3.1.1.1", "1.2.3.2.1.0", "1.2.3.2.1.1"]
        [event] = session.scalars(select(AuditEvent).where(AuditEvent.kind == "spool_purged"))
        assert event.detail == {"series": 2, "files": 4, "kept": 5}
    assert purge_spool(db, spool, 30, now=NOW).files == 0  # nothing left to do


def test_retention_refuses_zero_days(db: Engine, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="days must be > 0"):
        purge_spool(db, Spool(tmp_path / "spool"), 0, now=NOW)


def test_the_daemon_runs_the_scheduler_and_a_restart_keeps_its_schedule(
    make_settings: Callable[..., Settings],
) -> None:
    from daemon.serve import Node

    settings = make_settings(pipeline__workers=0)
    node = Node(settings)
    node.start()
    try:
        assert node.scheduler is not None and node.scheduler.alive()
        healthy, body = node.http.health()
        assert healthy and body["checks"]["scheduler"] == {"ok": True}
        before = node.scheduler.next_run_times()
    finally:
        node.stop()
    assert not node.scheduler.alive()
    restarted = Node(settings)
    restarted.start()
    try:
        assert restarted.scheduler is not None
        assert restarted.scheduler.next_run_times() == before
    finally:
        restarted.stop()
    off = Node(make_settings(pipeline__workers=0, scheduler__enabled=False))
    assert off.scheduler is None
    off.engine.dispose()


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"KI67NODE_SCHEDULER__FOLLOWUP_CHECK_MINUTES": "0"}, "scheduler.followup_check_minutes"),
        ({"KI67NODE_RETENTION__SPOOL_DAYS": "-1"}, "retention.spool_days"),
        ({"KI67NODE_FOLLOWUP__INTERVAL_MONTHS_HIGH": "0"}, "followup.interval_months_high"),
        ({"KI67NODE_FOLLOWUP__DEFAULT_ASYMPTOMATIC": '"maybe"'}, "followup.default_asymptomatic"),
    ],
    ids=["check-minutes", "spool-days", "interval", "not-a-bool"],
)
def test_bad_surveillance_settings_name_their_key(env: dict[str, str], key: str) -> None:
    from daemon.errors import ConfigError
    from daemon.settings import load_settings

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        load_settings(None, env=env)
    assert [k for k, _ in info.value.problems] == [key]


def test_a_stored_job_that_cannot_be_restored_is_replaced(node_settings: Settings) -> None:
    from sqlalchemy import update

    from daemon.db.models import SchedulerJobRow

    started(node_settings, T0).stop()
    engine = make_engine(node_settings.database_url)
    with engine.begin() as conn:
        conn.execute(
            update(SchedulerJobRow)
            .where(SchedulerJobRow.id == JOB_FOLLOWUP_DUE)
            .values(job_state=b"not a pickle")
        )
    engine.dispose()
    later = T0 + dt.timedelta(days=1)
    scheduler = started(node_settings, later)
    times = scheduler.next_run_times()
    scheduler.stop()
    assert times[JOB_FOLLOWUP_DUE] == later + FIRST_RUN_DELAY
    assert times[JOB_FOLLOWUP_OVERDUE] == T0 + FIRST_RUN_DELAY


def test_an_unrestorable_retention_job_is_dropped_when_retention_is_off(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    """Code moved since the job was stored (daemon.scheduler → daemon.followup.scheduler)."""
    from sqlalchemy import update

    from daemon.db.models import SchedulerJobRow

    with_retention = make_settings(database__url=database_url, retention__spool_days=30)
    engine = make_engine(with_retention.database_url)
    migrate(engine)
    started(with_retention, T0).stop()
    with engine.begin() as conn:
        conn.execute(
            update(SchedulerJobRow)
            .where(SchedulerJobRow.id == JOB_RETENTION)
            .values(job_state=b"not a pickle")
        )
    engine.dispose()
    without = dataclasses.replace(
        with_retention, retention=dataclasses.replace(with_retention.retention, spool_days=0)
    )
    scheduler = started(without, T0)
    times = scheduler.next_run_times()
    scheduler.stop()
    assert sorted(times) == [JOB_FOLLOWUP_DUE, JOB_FOLLOWUP_OVERDUE]
