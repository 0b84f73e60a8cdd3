"""The DB-backed job queue on SQLite (tests/test_jobs_postgres.py reruns them on PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from daemon.db.engine import make_engine, make_sessionmaker, migrate
from daemon.db.models import AuditEvent, Job, Series, Study
from daemon.db.states import AuditKind, JobState
from daemon.jobs.queue import (
    JobLostError,
    JobQueue,
)

T0 = dt.datetime(2026, 3, 1, 12, 0, 0)
CANARY_NAME = "Canary^Patient"
CANARY_ID = "PHI-CANARY-0042"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sm(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture
def make_queue(sm: sessionmaker[Session]) -> Callable[..., JobQueue]:
    def factory(max_attempts: int = 3, backoff: float = 10.0) -> JobQueue:
        return JobQueue(sm, max_attempts=max_attempts, backoff_seconds=backoff)

    return factory


@pytest.fixture
def series_ids(sm: sessionmaker[Session]) -> list[int]:
    """Five series of one study whose patient is a PHI canary."""
    with sm.begin() as s:
        study = Study(study_uid="1.2.826.0.1.7", patient_name=CANARY_NAME, patient_id=CANARY_ID)
        s.add(study)
        s.flush()
        rows = [
            Series(series_uid=f"1.2.826.0.1.7.{i}", study_id=study.id, modality="MR")
            for i in range(5)
        ]
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def job_row(sm: sessionmaker[Session], job_id: int) -> Job:
    with sm() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def test_enqueue_is_idempotent_per_series_revision_kind(
    make_queue: Callable[..., JobQueue], series_ids: list[int]
) -> None:
    q = make_queue()
    first = q.enqueue(series_ids[0], 0, now=T0)
    assert q.enqueue(series_ids[0], 0, now=at(5)) == first
    assert q.enqueue(series_ids[0], 1, now=T0) != first
    assert q.enqueue(series_ids[0], 0, kind="other", now=T0) != first
    assert q.counts() == {
        JobState.QUEUED: 3,
        JobState.RUNNING: 0,
        JobState.DONE: 0,
        JobState.FAILED: 0,
    }


def test_claim_takes_the_oldest_due_job_once(
    make_queue: Callable[..., JobQueue], series_ids: list[int], sm: sessionmaker[Session]
) -> None:
    q = make_queue()
    ids = [q.enqueue(sid, 0, now=T0) for sid in series_ids[:3]]
    claimed = [q.claim("w1", now=at(1)) for _ in range(3)]
    assert [c.id for c in claimed if c is not None] == ids
    assert q.claim("w1", now=at(1)) is None
    first = claimed[0]
    assert first is not None
    assert (first.attempt, first.max_attempts, first.worker_id) == (1, 3, "w1")
    row = job_row(sm, ids[0])
    assert (row.state, row.claimed_by, row.claimed_at, row.attempts) == (
        JobState.RUNNING,
        "w1",
        at(1),
        1,
    )


def test_not_before_is_respected(
    make_queue: Callable[..., JobQueue], series_ids: list[int]
) -> None:
    q = make_queue()
    job_id = q.enqueue(series_ids[0], 0, now=at(60))
    assert q.claim("w1", now=at(59)) is None
    claimed = q.claim("w1", now=at(60))
    assert claimed is not None and claimed.id == job_id


def test_retries_back_off_exponentially_until_the_attempt_bound(
    make_queue: Callable[..., JobQueue], series_ids: list[int], sm: sessionmaker[Session]
) -> None:
    q = make_queue(max_attempts=3, backoff=10.0)
    job_id = q.enqueue(series_ids[0], 0, now=T0)
    now = T0
    for attempt, delay in ((1, 10), (2, 20)):
        job = q.claim("w1", now=now)
        assert job is not None and job.attempt == attempt
        assert q.fail(job_id, "w1", f"boom {attempt}", retryable=True, now=now) == JobState.QUEUED
        assert job_row(sm, job_id).not_before == now + dt.timedelta(seconds=delay)
        assert q.claim("w1", now=now + dt.timedelta(seconds=delay - 1)) is None
        now = now + dt.timedelta(seconds=delay)
    job = q.claim("w1", now=now)
    assert job is not None and job.attempt == 3
    assert q.fail(job_id, "w1", "boom 3", retryable=True, now=now) == JobState.FAILED
    row = job_row(sm, job_id)
    assert (row.state, row.attempts, row.error, row.finished_at) == (
        JobState.FAILED,
        3,
        "boom 3",
        now,
    )
    assert q.claim("w1", now=at(10_000)) is None
    with sm() as s:
        events = s.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    assert [e.kind for e in events] == [
        AuditKind.JOB_RETRY,
        AuditKind.JOB_RETRY,
        AuditKind.JOB_FAILED,
    ]
    assert events[-1].series_uid == "1.2.826.0.1.7.0"
    assert events[-1].detail is not None and events[-1].detail["attempt"] == 3
    for event in events:
        text = f"{event.message} {event.detail}"
        assert CANARY_NAME not in text and CANARY_ID not in text


def test_non_retryable_failure_fails_at_once(
    make_queue: Callable[..., JobQueue], series_ids: list[int], sm: sessionmaker[Session]
) -> None:
    q = make_queue(max_attempts=5)
    job_id = q.enqueue(series_ids[0], 0, now=T0)
    assert q.claim("w1", now=T0) is not None
    assert (
        q.fail(job_id, "w1", "bad data: missing slices", retryable=False, now=T0) == JobState.FAILED
    )
    row = job_row(sm, job_id)
    assert (row.state, row.attempts, row.error) == (JobState.FAILED, 1, "bad data: missing slices")


def test_finish_and_heartbeat_need_the_holding_worker(
    make_queue: Callable[..., JobQueue], series_ids: list[int], sm: sessionmaker[Session]
) -> None:
    q = make_queue()
    job_id = q.enqueue(series_ids[0], 0, now=T0)
    assert q.claim("w1", now=T0) is not None
    q.heartbeat(job_id, "w1", now=at(7))
    assert job_row(sm, job_id).heartbeat_at == at(7)
    with pytest.raises(JobLostError, match=f"job {job_id} is no longer running on worker w2"):
        q.heartbeat(job_id, "w2", now=at(8))
    with pytest.raises(JobLostError, match="result was discarded"):
        q.finish(job_id, "w2", {"x": 1}, now=at(8))
    q.finish(job_id, "w1", {"timings": {"load": 0.5}}, now=at(9))
    row = job_row(sm, job_id)
    assert (row.state, row.result, row.finished_at) == (
        JobState.DONE,
        {"timings": {"load": 0.5}},
        at(9),
    )
    with pytest.raises(JobLostError, match="no longer running"):
        q.fail(job_id, "w1", "late", retryable=True, now=at(10))


def test_release_gives_the_job_back_without_an_attempt(
    make_queue: Callable[..., JobQueue], series_ids: list[int], sm: sessionmaker[Session]
) -> None:
    q = make_queue()
    job_id = q.enqueue(series_ids[0], 0, now=T0)
    assert q.claim("w1", now=T0) is not None
    assert q.release(job_id, "w1", now=at(3)) is True
    assert q.release(job_id, "w1", now=at(3)) is False
    row = job_row(sm, job_id)
    assert (row.state, row.attempts, row.not_before) == (JobState.QUEUED, 0, at(3))


def test_requeue_worker_jobs_counts_an_attempt(
    make_queue: Callable[..., JobQueue], series_ids: list[int], sm: sessionmaker[Session]
) -> None:
    q = make_queue(max_attempts=2, backoff=5.0)
    a, b = (q.enqueue(sid, 0, now=T0) for sid in series_ids[:2])
    assert q.claim("dead", now=T0) is not None
    assert q.claim("alive", now=T0) is not None
    assert q.requeue_worker_jobs("dead", "worker exited with code -9", now=at(1)) == 1
    row = job_row(sm, a)
    assert (row.state, row.attempts, row.error) == (
        JobState.QUEUED,
        1,
        "worker exited with code -9",
    )
    assert row.not_before == at(6)
    assert job_row(sm, b).state == JobState.RUNNING
    assert q.claim("dead2", now=at(6)) is not None
    assert q.requeue_worker_jobs("dead2", "exited again", now=at(7)) == 1
    assert job_row(sm, a).state == JobState.FAILED


def test_requeue_without_counting_is_a_give_back(
    make_queue: Callable[..., JobQueue], series_ids: list[int], sm: sessionmaker[Session]
) -> None:
    q = make_queue(max_attempts=1)
    job_id = q.enqueue(series_ids[0], 0, now=T0)
    assert q.claim("w1", now=T0) is not None
    assert q.requeue_worker_jobs("w1", "stopping", now=at(1), count_attempt=False) == 1
    row = job_row(sm, job_id)
    assert (row.state, row.attempts) == (JobState.QUEUED, 0)


def test_recover_orphans_requeues_jobs_of_dead_workers_only(
    make_queue: Callable[..., JobQueue], series_ids: list[int], sm: sessionmaker[Session]
) -> None:
    q = make_queue(backoff=0.0)
    ids = [q.enqueue(sid, 0, now=T0) for sid in series_ids[:4]]
    for worker in ("hostA:1:w0.1", "hostA:1:w1.1", "hostA:2:w0.1", "hostB:9:w0.1"):
        assert q.claim(worker, now=T0) is not None
    assert q.recover_orphans({"hostA:2:w0.1"}, now=at(1), worker_prefix="hostA:") == 2
    states = [job_row(sm, i).state for i in ids]
    assert states == [JobState.QUEUED, JobState.QUEUED, JobState.RUNNING, JobState.RUNNING]
    assert q.recover_orphans(set(), now=at(2)) == 2
    assert q.counts() == {
        JobState.QUEUED: 4,
        JobState.RUNNING: 0,
        JobState.DONE: 0,
        JobState.FAILED: 0,
    }
    assert "gone when the node started" in (job_row(sm, ids[3]).error or "")


@pytest.mark.parametrize(
    ("max_attempts", "backoff"), [(0, 1.0), (3, -1.0)], ids=["attempts", "backoff"]
)
def test_queue_parameters_are_validated(
    sm: sessionmaker[Session], max_attempts: int, backoff: float
) -> None:
    with pytest.raises(ValueError, match="must be >= 0|must be >= 1"):
        JobQueue(sm, max_attempts=max_attempts, backoff_seconds=backoff)


def test_concurrent_claims_never_hand_out_a_job_twice(
    db_url: str, make_queue: Callable[..., JobQueue], sm: sessionmaker[Session]
) -> None:
    with sm.begin() as s:
        study = Study(study_uid="1.2.826.0.1.8")
        s.add(study)
        s.flush()
        rows = [Series(series_uid=f"1.2.826.0.1.8.{i}", study_id=study.id) for i in range(60)]
        s.add_all(rows)
        s.flush()
        sids = [r.id for r in rows]
    q = make_queue()
    for sid in sids:
        q.enqueue(sid, 0, now=T0)
    claimed: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def worker(name: str) -> None:
        engine = make_engine(db_url)  # its own connections, like a worker process
        own = JobQueue(make_sessionmaker(engine), max_attempts=3, backoff_seconds=0)
        mine: list[int] = []
        try:
            barrier.wait()
            while (job := own.claim(name, now=at(1))) is not None:
                mine.append(job.id)
                own.finish(job.id, name, {"by": name}, now=at(1))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            claimed[name] = mine
            engine.dispose()

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    all_ids = [i for ids in claimed.values() for i in ids]
    assert len(all_ids) == 60 and len(set(all_ids)) == 60
    assert q.counts()[JobState.DONE] == 60
    with sm() as s:
        by = {j.id: (j.result or {}).get("by") for j in s.scalars(select(Job))}
    assert all(by[i] == name for name, ids in claimed.items() for i in ids)


def test_idle_claim_on_sqlite_takes_no_write_lock(
    db_url: str, make_queue: Callable[..., JobQueue], series_ids: list[int]
) -> None:
    import sqlite3
    import time

    q = make_queue()
    blocker = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the listener is writing
        started = time.monotonic()
        assert q.claim("w1", now=T0) is None
        assert time.monotonic() - started < 2.0  # did not wait for the lock (busy timeout 30 s)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    job_id = q.enqueue(series_ids[0], 0, now=T0)
    claimed = q.claim("w1", now=T0)
    assert claimed is not None and claimed.id == job_id
