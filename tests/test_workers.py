"""Worker processes under their supervisor: real jobs, crashes, hangs, SIGTERM, a dead parent.

The job functions below are imported by the spawned workers by name
(``tests.test_workers:...``), exactly as the product's ``daemon.jobs.pipeline:run_job``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from daemon.db.engine import make_engine, make_sessionmaker, migrate
from daemon.db.models import AuditEvent, Instance, Job, Series, Study
from daemon.db.states import JobState
from daemon.intake.spool import Spool
from daemon.jobs.queue import ClaimedJob, JobQueue, JobRunner
from daemon.jobs.worker_process import JobSettings, WorkerOptions, resolve_target
from daemon.jobs.workers import WorkerSupervisor, host_prefix
from daemon.serve import job_settings, queue_factory
from daemon.settings import Settings
from tests.test_volume import COLS, ROWS, write_classic

FAST = WorkerOptions(idle_poll_seconds=0.1, heartbeat_seconds=0.5, restart_backoff_seconds=0.2)
WAIT = 60.0  # generous: two shared cores, each spawn imports SQLAlchemy and pydicom
ROOT = Path(__file__).resolve().parent.parent


# -- job functions run inside the workers ---------------------------------------------
def sleepy_first_attempt(session_factory: Any, cfg: JobSettings, job: ClaimedJob) -> dict:
    if job.attempt == 1:
        time.sleep(120)
    return {"attempt": job.attempt, "timings": {"sleep": 0.0}}


def short(session_factory: Any, cfg: JobSettings, job: ClaimedJob) -> dict:
    time.sleep(1.0)
    return {"timings": {"sleep": 1.0}}


def hang(session_factory: Any, cfg: JobSettings, job: ClaimedJob) -> dict:
    time.sleep(3600)
    return {}


def crash(session_factory: Any, cfg: JobSettings, job: ClaimedJob) -> dict:
    os._exit(13)


# -- fixtures -------------------------------------------------------------------------
@dataclass
class Env:
    settings: Settings
    sm: sessionmaker[Session]
    queue: JobQueue
    spool: Spool
    tmp: Path

    @property
    def job_settings(self) -> JobSettings:
        return job_settings(self.settings)

    def supervisor(self, n_workers: int, **kwargs: Any) -> WorkerSupervisor:
        """A supervisor of the node's queue, as ``serve`` wires it."""
        return WorkerSupervisor(
            self.job_settings, queue_factory(self.settings), n_workers, **kwargs
        )

    def add_series(self, paths: list[Path], uid: str) -> int:
        """Spool the files and record them as one series, as the listener does."""
        with self.sm.begin() as s:
            study = s.scalar(select(Study).where(Study.study_uid == "1.2.826.0.2"))
            if study is None:
                study = Study(study_uid="1.2.826.0.2", patient_name="Canary^Worker")
                s.add(study)
                s.flush()
            series = Series(series_uid=uid, study_id=study.id, modality="MR", state="decided")
            s.add(series)
            s.flush()
            for path in paths:
                data = path.read_bytes()
                ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                stored = self.spool.write([data])
                s.add(
                    Instance(
                        sop_instance_uid=ds.SOPInstanceUID,
                        sop_class_uid=ds.SOPClassUID,
                        series_id=series.id,
                        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                        path=stored.relpath,
                        size_bytes=stored.size_bytes,
                        sha256=stored.sha256,
                    )
                )
            series.instance_count = len(paths)
            return series.id

    def add_empty_series(self, uid: str) -> int:
        return self.add_series([], uid)

    def job(self, job_id: int) -> Job:
        with self.sm() as s:
            job = s.get(Job, job_id)
            assert job is not None
            return job


@pytest.fixture
def make_env(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> Iterator[Callable[..., Env]]:
    engines = []

    def factory(**overrides: Any) -> Env:
        settings = make_settings(**overrides)
        engine = make_engine(settings.database_url)
        migrate(engine)
        engines.append(engine)
        sm = make_sessionmaker(engine)
        queue = queue_factory(settings)()
        return Env(settings, sm, queue, Spool(settings.spool_dir), tmp_path)

    yield factory
    for engine in engines:
        engine.dispose()


@pytest.fixture
def supervisors() -> Iterator[list[WorkerSupervisor]]:
    """Supervisors to stop however the test ends, so no worker outlives it."""
    started: list[WorkerSupervisor] = []
    yield started
    for sup in started:
        sup.stop(timeout=2.0)


def wait_for(
    what: str,
    predicate: Callable[[], bool],
    sup: WorkerSupervisor | None = None,
    timeout: float = WAIT,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sup is not None:
            sup.poll()
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:"):
            out.add(link)
    return out


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in state


# -- tests ----------------------------------------------------------------------------
def test_worker_runs_real_jobs_and_inherits_no_socket(
    make_env: Callable[..., Env], supervisors: list[WorkerSupervisor], tmp_path: Path
) -> None:
    env = make_env(pipeline__job_max_attempts=3, pipeline__job_retry_backoff_seconds=0)
    good = env.add_series(write_classic(tmp_path / "good", n=5), "1.2.826.0.2.1")
    bad_paths = [p for p in write_classic(tmp_path / "bad", n=6) if p.name != "slice002.dcm"]
    bad = env.add_series(bad_paths, "1.2.826.0.2.2")
    empty = env.add_empty_series("1.2.826.0.2.3")
    ids = [env.queue.enqueue(sid, 0) for sid in (good, bad, empty)]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        inode = f"socket:[{os.fstat(listener.fileno()).st_ino}]"
        sup = env.supervisor(1, options=FAST)
        supervisors.append(sup)
        runner: JobRunner = sup
        runner.start()
        wait_for(
            "all jobs to end",
            lambda: env.queue.counts()[JobState.DONE] + env.queue.counts()[JobState.FAILED] == 3,
            sup,
        )
        pid = sup.status()[0]["pid"]
        assert inode not in socket_inodes(pid)
    assert runner.alive()
    job = env.job(ids[0])
    assert job.state == JobState.DONE and job.attempts == 1
    result = job.result or {}
    # a 5-slice toy volume holds no tumour: the full chain runs and reports "not assessable"
    assert result["stages_run"][:3] == ["load", "preprocess", "segmentation"]
    assert result["stages_run"][-2:] == ["build", "stage"]
    assert result["status"] == "not_assessable" and result["prediction"] is None
    assert [o["kind"] for o in result["outputs"]] == ["sr"]  # the PACS still hears why
    assert result["staged"] == 1
    assert result["volume"]["shape_zyx"] == [5, ROWS, COLS]
    assert result["volume"]["spacing_xyz_mm"] == [0.5, 0.6, 2.0]
    assert result["volume"]["axis_codes"] == "LPS"
    assert result["timings"]["load"] > 0
    json.dumps(result)  # JSON-safe
    for job_id, reason in ((ids[1], "missing slices"), (ids[2], "no stored instances")):
        failed = env.job(job_id)
        assert failed.state == JobState.FAILED and failed.attempts == 1  # bad data is not retried
        assert reason in (failed.error or "")


def test_killed_worker_is_restarted_and_its_job_requeued(
    make_env: Callable[..., Env], supervisors: list[WorkerSupervisor]
) -> None:
    env = make_env(pipeline__job_max_attempts=3, pipeline__job_retry_backoff_seconds=0)
    job_id = env.queue.enqueue(env.add_empty_series("1.2.826.0.3.1"), 0)
    sup = env.supervisor(
        1,
        options=FAST,
        job_target="tests.test_workers:sleepy_first_attempt",
    )
    supervisors.append(sup)
    sup.start()
    wait_for("the job to run", lambda: sup.status()[0]["job_id"] == job_id, sup)
    first_pid = sup.status()[0]["pid"]
    os.kill(first_pid, signal.SIGKILL)
    wait_for("the job to finish on attempt 2", lambda: env.job(job_id).state == JobState.DONE, sup)
    status = sup.status()[0]
    assert status["pid"] != first_pid and status["alive"] and status["restarts"] == 1
    assert status["last_exitcode"] == -signal.SIGKILL
    job = env.job(job_id)
    assert job.attempts == 2 and (job.result or {})["attempt"] == 2
    with env.sm() as s:
        retry = s.scalar(select(AuditEvent).where(AuditEvent.kind == "job_retry"))
    assert retry is not None and f"exited with code {-signal.SIGKILL}" in retry.message


def test_hung_job_is_killed_after_the_timeout(
    make_env: Callable[..., Env], supervisors: list[WorkerSupervisor]
) -> None:
    env = make_env(pipeline__job_timeout_seconds=1.0, pipeline__job_max_attempts=1)
    job_id = env.queue.enqueue(env.add_empty_series("1.2.826.0.4.1"), 0)
    sup = env.supervisor(1, options=FAST, job_target="tests.test_workers:hang")
    supervisors.append(sup)
    sup.start()
    wait_for("the job to run", lambda: sup.status()[0]["job_id"] == job_id, sup)
    started = time.monotonic()
    wait_for("the hung job to fail", lambda: env.job(job_id).state == JobState.FAILED, sup)
    assert time.monotonic() - started < 1.0 + 10.0
    job = env.job(job_id)
    assert "timed out after 1 s" in (job.error or "") and job.attempts == 1
    wait_for("the worker to be back", lambda: sup.alive() and sup.status()[0]["restarts"] == 1, sup)


def test_crash_loop_fails_the_job_and_backs_off_restarts(
    make_env: Callable[..., Env], supervisors: list[WorkerSupervisor]
) -> None:
    env = make_env(pipeline__job_max_attempts=2, pipeline__job_retry_backoff_seconds=0)
    job_id = env.queue.enqueue(env.add_empty_series("1.2.826.0.5.1"), 0)
    options = WorkerOptions(
        idle_poll_seconds=0.1, heartbeat_seconds=0.5, restart_backoff_seconds=30
    )
    sup = env.supervisor(1, options=options, job_target="tests.test_workers:crash")
    supervisors.append(sup)
    sup.start()
    wait_for("the job to fail", lambda: env.job(job_id).state == JobState.FAILED, sup)
    job = env.job(job_id)
    assert job.attempts == 2 and "exited with code 13" in (job.error or "")
    status = sup.status()[0]
    assert status["restarts"] == 1 and not status["alive"]  # second crash: restart delayed
    assert 0 < status["restart_in_seconds"] <= 30
    assert not sup.alive()


def test_stop_terminates_idle_workers_and_gives_back_a_running_job(
    make_env: Callable[..., Env], supervisors: list[WorkerSupervisor]
) -> None:
    env = make_env(pipeline__job_max_attempts=3)
    job_id = env.queue.enqueue(env.add_empty_series("1.2.826.0.6.1"), 0)
    sup = env.supervisor(2, options=FAST, job_target="tests.test_workers:hang")
    supervisors.append(sup)
    sup.start()
    wait_for("the job to run", lambda: env.job(job_id).state == JobState.RUNNING, sup)
    wait_for("both workers up", lambda: all(s["alive"] for s in sup.status()), sup)
    pids = [s["pid"] for s in sup.status()]
    started = time.monotonic()
    # the idle worker must leave on SIGTERM within the timeout: generous, because on a busy
    # machine (`make check` runs the test files in parallel) it may wait seconds for a core
    stop_timeout = 5.0
    sup.stop(timeout=stop_timeout)
    assert time.monotonic() - started < stop_timeout + 5.0
    assert all(gone(pid) for pid in pids)
    codes = sorted(s["last_exitcode"] for s in sup.status())
    assert codes == [-signal.SIGKILL, 0]  # the idle one left on SIGTERM, the hung one was killed
    job = env.job(job_id)
    assert (job.state, job.attempts) == (JobState.QUEUED, 0)  # given back, no attempt spent
    assert not sup.alive()


def test_sigterm_lets_the_running_job_finish(
    make_env: Callable[..., Env], supervisors: list[WorkerSupervisor]
) -> None:
    env = make_env()
    job_id = env.queue.enqueue(env.add_empty_series("1.2.826.0.6.2"), 0)
    sup = env.supervisor(1, options=FAST, job_target="tests.test_workers:short")
    supervisors.append(sup)
    sup.start()
    wait_for("the job to run", lambda: env.job(job_id).state == JobState.RUNNING, sup)
    sup.stop(timeout=20.0)
    assert sup.status()[0]["last_exitcode"] == 0
    job = env.job(job_id)
    assert (job.state, job.attempts) == (JobState.DONE, 1)


def test_worker_gives_back_its_job_and_exits_when_the_supervisor_dies(
    make_env: Callable[..., Env], tmp_path: Path
) -> None:
    env = make_env(pipeline__job_max_attempts=3)
    job_id = env.queue.enqueue(env.add_empty_series("1.2.826.0.7.1"), 0)
    script = (
        "import sys, time, json\n"
        "from daemon.settings import load_settings\n"
        "from daemon.jobs.worker_process import WorkerOptions\nfrom daemon.jobs.workers import WorkerSupervisor\n"
        "from daemon.serve import job_settings, queue_factory\n"
        "settings = load_settings(None)\n"
        "sup = WorkerSupervisor(job_settings(settings), queue_factory(settings), n_workers=1,\n"
        "    job_target='tests.test_workers:hang',\n"
        "    options=WorkerOptions(idle_poll_seconds=0.1, heartbeat_seconds=0.5))\n"
        "sup.start()\n"
        "print(json.dumps(sup.status()[0]['pid']), flush=True)\n"
        "while True:\n"
        "    sup.poll(); time.sleep(0.2)\n"
    )
    environ = dict(os.environ)
    environ["KI67NODE_NODE__DATA_DIR"] = json.dumps(str(env.settings.data_dir))
    environ["PYTHONPATH"] = str(ROOT)
    parent = subprocess.Popen(
        [sys.executable, "-c", script], env=environ, stdout=subprocess.PIPE, cwd=ROOT
    )
    try:
        assert parent.stdout is not None
        worker_pid = int(parent.stdout.readline())
        wait_for("the job to run", lambda: env.job(job_id).state == JobState.RUNNING)
        parent.kill()
        parent.wait(10)
        wait_for("the orphaned worker to exit", lambda: gone(worker_pid))
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
    job = env.job(job_id)
    assert (job.state, job.attempts) == (JobState.QUEUED, 0)


def test_resolve_target_finds_the_pipeline() -> None:
    from daemon.jobs.pipeline import run_job

    assert resolve_target("daemon.jobs.pipeline:run_job") is run_job
    with pytest.raises(AttributeError, match="no_such_function"):
        resolve_target("daemon.jobs.pipeline:no_such_function")


def test_start_recovers_jobs_left_running_on_this_host(make_env: Callable[..., Env]) -> None:
    env = make_env(pipeline__job_max_attempts=3, pipeline__job_retry_backoff_seconds=0)
    mine, other = (env.queue.enqueue(env.add_empty_series(f"1.2.826.0.8.{i}"), 0) for i in (1, 2))
    assert env.queue.claim(f"{host_prefix()}999999:w0.1") is not None
    assert env.queue.claim("other-host:1:w0.1") is not None
    sup = env.supervisor(0, options=FAST)  # queue only: no spawn
    sup.start()
    sup.poll()
    assert sup.alive() and sup.status() == []
    with pytest.raises(ValueError, match=r"now=time.monotonic\(\)"):
        sup.poll(time.time())
    sup.stop(timeout=1.0)
    assert (env.job(mine).state, env.job(mine).attempts) == (JobState.QUEUED, 1)
    assert "gone when the node started" in (env.job(mine).error or "")
    assert env.job(other).state == JobState.RUNNING  # another node's worker: not ours to recover


# -- daemon.jobs.pipeline.run_job in-process: how failures are classified ---------------------
def _claimed(env: Env, series_id: int) -> ClaimedJob:
    env.queue.enqueue(series_id, 0)
    job = env.queue.claim("inline")
    assert job is not None
    return job


def _missing_file(env: Env, paths: list[Path]) -> None:
    with env.sm() as s:
        rel = s.scalars(select(Instance.path)).first()
    assert rel is not None
    env.spool.path_of(rel).unlink()


def _escaping_path(env: Env, paths: list[Path]) -> None:
    with env.sm.begin() as s:
        s.scalars(select(Instance)).first().path = "../../etc/passwd"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("damage", "message"),
    [(_missing_file, "a spool file is missing"), (_escaping_path, "outside the spool")],
    ids=["missing-file", "path-outside-spool"],
)
def test_run_job_refuses_damaged_spool_without_retry(
    make_env: Callable[..., Env],
    tmp_path: Path,
    damage: Callable[[Env, list[Path]], None],
    message: str,
) -> None:
    from daemon.errors import JobError
    from daemon.jobs.pipeline import run_job

    env = make_env()
    paths = write_classic(tmp_path / "s", n=4)
    job = _claimed(env, env.add_series(paths, "1.2.826.0.9.1"))
    damage(env, paths)
    with pytest.raises(JobError, match=message) as info:
        run_job(env.sm, env.job_settings, job)
    assert info.value.retryable is False


def test_run_job_retries_io_errors(
    make_env: Callable[..., Env], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import daemon.jobs.pipeline as pipeline
    from daemon.errors import JobError

    def io_error(_paths: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    env = make_env()
    job = _claimed(env, env.add_series(write_classic(tmp_path / "s", n=3), "1.2.826.0.9.2"))
    monkeypatch.setattr(pipeline, "load_series", io_error)
    with pytest.raises(JobError, match="could not read the spool .*Input/output error") as info:
        pipeline.run_job(env.sm, env.job_settings, job)
    assert info.value.retryable is True


def test_run_job_fails_without_retry_when_an_output_cannot_be_built(
    make_env: Callable[..., Env], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import daemon.jobs.chain as chain
    from daemon.errors import JobError
    from daemon.jobs.pipeline import run_job
    from dicom_out.context import OutputError

    def unsupported(*_args: object, **_kwargs: object) -> None:
        raise OutputError("no SEG: the volume mixes single- and multi-frame images")

    env = make_env()
    job = _claimed(env, env.add_series(write_classic(tmp_path / "s", n=3), "1.2.826.0.9.3"))
    monkeypatch.setattr(chain, "run_chain", unsupported)
    with pytest.raises(JobError, match="mixes single- and multi-frame") as info:
        run_job(env.sm, env.job_settings, job)
    assert info.value.retryable is False


def test_run_job_on_a_purged_series_asks_for_it_again(
    make_env: Callable[..., Env], tmp_path: Path
) -> None:
    from sqlalchemy import update

    from daemon.db.models import utcnow
    from daemon.errors import JobError
    from daemon.jobs.pipeline import run_job

    env = make_env()
    job = _claimed(env, env.add_series(write_classic(tmp_path / "s", n=3), "1.2.826.0.9.4"))
    with env.sm.begin() as s:
        s.execute(update(Instance).values(purged_at=utcnow()))
    with pytest.raises(
        JobError, match="removed by spool retention .*send the series again"
    ) as info:
        run_job(env.sm, env.job_settings, job)
    assert info.value.retryable is False
