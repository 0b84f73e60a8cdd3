"""One worker process (started with ``spawn`` by :mod:`daemon.jobs.workers`).

It makes its own engine, then loops: claim → run → finish or fail, with a
heartbeat thread while a job runs. SIGTERM only sets a flag: the current job
finishes, then the worker exits; if the supervisor dies, the worker gives its
job back and exits. One failing job never stops the loop.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from daemon.destinations import Destination
from daemon.errors import JobError
from daemon.jobs.queue import ClaimedJob, JobLostError, JobQueue
from daemon.log_repeats import quiet_repeats
from daemon.settings import FollowupSettings, PipelineSettings

log = logging.getLogger(__name__)

EXIT_PARENT_GONE = 3
EXIT_DB_ERROR = 4
RECORD_TRIES = 5
RECORD_RETRY_SECONDS = 2.0


@dataclass(frozen=True)
class WorkerOptions:
    """Timings of the worker loop and of the supervisor's restarts."""

    idle_poll_seconds: float = 0.5
    heartbeat_seconds: float = 5.0
    restart_backoff_seconds: float = 1.0
    max_restart_backoff_seconds: float = 300.0
    stable_after_seconds: float = 60.0  # a worker up this long resets its crash count


@dataclass(frozen=True)
class JobSettings:
    """The configuration a job reads (picklable: each worker process gets a copy).

    ``pipeline``: the chain and its retries; ``followup``: the surveillance
    rules; ``spool_dir``: the received instances; ``data_dir`` and
    ``destinations`` (as configured): where results are staged and for whom.
    """

    pipeline: PipelineSettings
    followup: FollowupSettings
    data_dir: Path
    spool_dir: Path
    destinations: tuple[Destination, ...] = ()


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs; pickled to the child."""

    worker_id: str
    queue_factory: Callable[[], JobQueue]
    job_target: str
    job_settings: JobSettings
    options: WorkerOptions
    log_level: str
    parent_pid: int


def resolve_target(target: str) -> Callable[..., dict[str, Any]]:
    """``"package.module:function"`` → the function."""
    module_name, _, attr = target.partition(":")
    func: Callable[..., dict[str, Any]] = getattr(importlib.import_module(module_name), attr)
    if not callable(func):
        raise TypeError(f"{target} is not callable")
    return func


def worker_main(spec: WorkerSpec, shared_job_id: Any, shared_started: Any) -> None:
    """Entry point of a worker process (``spawn``)."""
    logging.basicConfig(
        level=getattr(logging, spec.log_level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s worker[{spec.worker_id}] %(name)s: %(message)s",
    )
    quiet_repeats("pydicom")
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    queue = spec.queue_factory()
    target = resolve_target(spec.job_target)
    current: dict[str, ClaimedJob | None] = {"job": None}
    watcher = threading.Thread(
        target=_watch, args=(spec, queue, current, stop), name="heartbeat", daemon=True
    )
    watcher.start()
    log.info("worker ready")
    while not stop.is_set():
        try:
            job = queue.claim(spec.worker_id)
        except SQLAlchemyError as exc:
            log.error("could not claim a job (database problem), retrying: %s", exc)
            stop.wait(max(spec.options.idle_poll_seconds, 1.0))
            continue
        if job is None:
            stop.wait(spec.options.idle_poll_seconds)
            continue
        shared_started.value = time.monotonic()
        shared_job_id.value = job.id
        current["job"] = job
        try:
            _run_one(queue, target, spec.job_settings, job)
        finally:
            current["job"] = None
            shared_job_id.value = 0
    log.info("worker stopping")


def _run_one(
    queue: JobQueue, target: Callable[..., dict[str, Any]], cfg: JobSettings, job: ClaimedJob
) -> None:
    log.info("job %d (%s) attempt %d/%d started", job.id, job.kind, job.attempt, job.max_attempts)
    result: dict[str, Any] | None = None
    error, retryable = "", True
    try:
        result = target(queue.sessionmaker, cfg, job)
        if not isinstance(result, dict):
            raise TypeError(f"{job.kind} returned {type(result).__name__}, not a dict")
        json.dumps(result)  # a result the database cannot store is a bug: fail the attempt
    except JobError as exc:
        result, error, retryable = None, str(exc), exc.retryable
    except Exception as exc:  # noqa: BLE001 - one failing job never stops the worker
        log.exception("job %d raised an unexpected error", job.id)
        result, error = None, f"{type(exc).__name__}: {exc}"
    for attempt in range(1, RECORD_TRIES + 1):
        try:
            if result is not None:
                queue.finish(job.id, job.worker_id, result)
            else:
                queue.fail(job.id, job.worker_id, error, retryable=retryable)
            return
        except JobLostError as exc:
            log.warning("%s", exc)
            return
        except SQLAlchemyError as exc:
            log.error("could not record the outcome of job %d (try %d): %s", job.id, attempt, exc)
            time.sleep(RECORD_RETRY_SECONDS)
    # Exiting hands the job to the supervisor, which re-queues it once the database is back.
    raise SystemExit(EXIT_DB_ERROR)


def _watch(
    spec: WorkerSpec, queue: JobQueue, current: dict[str, ClaimedJob | None], stop: threading.Event
) -> None:
    """Heartbeat the running job; give it back and exit if the supervisor died."""
    tick = min(spec.options.heartbeat_seconds, 1.0)
    last_beat = time.monotonic()
    while True:
        time.sleep(tick)
        job = current["job"]
        if os.getppid() != spec.parent_pid:
            stop.set()
            if job is not None:
                try:
                    queue.release(job.id, spec.worker_id)
                except SQLAlchemyError as exc:
                    log.error("could not give back job %d: %s", job.id, exc)
            log.warning("the supervisor is gone; worker exits")
            logging.shutdown()
            os._exit(EXIT_PARENT_GONE)
        if job is not None and time.monotonic() - last_beat >= spec.options.heartbeat_seconds:
            last_beat = time.monotonic()
            try:
                queue.heartbeat(job.id, spec.worker_id)
            except (JobLostError, SQLAlchemyError) as exc:
                log.warning("heartbeat for job %d failed: %s", job.id, exc)
