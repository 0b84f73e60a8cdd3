"""The job queue tests of tests/test_jobs.py, run again on a real PostgreSQL server.

Each test gets its own throw-away database (created from ``pg_url``, dropped
afterwards), so reruns and parallel runs never see each other's rows. Claims
there go through ``SELECT ... FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.db.states import JobState
from tests.test_jobs import (  # noqa: F401 - fixtures and tests collected again here
    engine,
    make_queue,
    series_ids,
    sm,
    test_claim_takes_the_oldest_due_job_once,
    test_concurrent_claims_never_hand_out_a_job_twice,
    test_enqueue_is_idempotent_per_series_revision_kind,
    test_finish_and_heartbeat_need_the_holding_worker,
    test_non_retryable_failure_fails_at_once,
    test_not_before_is_respected,
    test_recover_orphans_requeues_jobs_of_dead_workers_only,
    test_release_gives_the_job_back_without_an_attempt,
    test_requeue_without_counting_is_a_give_back,
    test_requeue_worker_jobs_counts_an_attempt,
    test_retries_back_off_exponentially_until_the_attempt_bound,
)
from tests.test_volume import write_classic
from tests.test_workers import FAST, Env, make_env, wait_for  # noqa: F401 - fixture reused

pytestmark = pytest.mark.postgres


@pytest.fixture
def db_url(fresh_pg_url: str) -> str:
    """A fresh database on the server behind ``pg_url`` (see tests/conftest.py)."""
    return fresh_pg_url


def test_database_is_postgresql(request: pytest.FixtureRequest) -> None:
    assert request.getfixturevalue("engine").dialect.name == "postgresql"


def test_worker_processes_run_real_jobs_on_postgresql(
    request: pytest.FixtureRequest, db_url: str, tmp_path: Path
) -> None:
    make: Callable[..., Env] = request.getfixturevalue("make_env")
    env = make(database__url=db_url, pipeline__job_retry_backoff_seconds=0)
    ids = [
        env.queue.enqueue(env.add_series(write_classic(tmp_path / f"s{i}", n=4), f"1.2.9.{i}"), 0)
        for i in range(4)
    ]
    sup = env.supervisor(2, options=FAST)
    sup.start()
    try:
        # each worker loads the models once, then runs the whole chain (toy volumes: "not
        # assessable", an SR each); two shared cores
        wait_for(
            "the jobs to finish", lambda: env.queue.counts()[JobState.DONE] == 4, sup, timeout=300
        )
    finally:
        sup.stop(timeout=5.0)
    assert {env.job(i).attempts for i in ids} == {1}
    assert env.queue.sessionmaker.kw["bind"].dialect.name == "postgresql"
