"""Worker processes and their supervisor (the local :class:`~daemon.jobs.queue.JobRunner`).

Workers are started with the ``spawn`` context: a fresh interpreter that
inherits no listener socket, no database connection and no lock, and may
import torch without the main process ever doing so. Each worker makes its
own engine, then loops: claim → run → finish or fail, with a heartbeat while
it runs (:mod:`daemon.jobs.worker_process`). SIGTERM only sets a flag: the
current job finishes, then the worker exits; if the supervisor dies, the
worker gives its job back and exits.

The supervisor (in ``serve``'s main process) restarts dead workers with
backoff and re-queues their job (the crash counts as an attempt), kills a
worker whose job runs past ``pipeline.job_timeout_seconds`` and retries or
fails that job as "timed out". Time is monotonic throughout.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from daemon.errors import JobError
from daemon.jobs.queue import JobLostError, JobQueue
from daemon.jobs.worker_process import JobSettings, WorkerOptions, WorkerSpec, worker_main

log = logging.getLogger(__name__)

DEFAULT_JOB_TARGET = "daemon.jobs.pipeline:run_job"
EXIT_OK = 0
MAX_CLOCK_SKEW_SECONDS = 86_400.0
_MP = multiprocessing.get_context("spawn")


@dataclass
class _Slot:
    index: int
    process: BaseProcess | None = None
    worker_id: str = ""
    generation: int = 0
    started_at: float = 0.0
    crashes: int = 0  # consecutive
    restarts: int = 0
    next_start_at: float = 0.0
    last_exitcode: int | None = None
    job_id: Any = None  # shared RawValue: the running job's id, 0 when idle
    job_started: Any = None  # shared RawValue: monotonic time the job started


class WorkerSupervisor:
    """Runs ``n_workers`` worker processes; ``poll`` about once a second.

    ``job_settings`` go to every job (``job_target(sessionmaker, job_settings,
    job)``); its ``pipeline`` section also gives the default number of workers
    (``pipeline.workers``) and the job timeout. ``log_level``: the workers'.
    """

    def __init__(
        self,
        job_settings: JobSettings,
        queue_factory: Callable[[], JobQueue],
        n_workers: int | None = None,
        *,
        log_level: str = "INFO",
        options: WorkerOptions | None = None,
        job_target: str = DEFAULT_JOB_TARGET,
    ) -> None:
        pipeline = job_settings.pipeline
        self.job_settings = job_settings
        self.queue_factory = queue_factory
        self.n_workers = pipeline.workers if n_workers is None else n_workers
        self.log_level = log_level
        self.options = options or WorkerOptions()
        self.job_target = job_target
        self.job_timeout = pipeline.job_timeout_seconds
        self._queue: JobQueue | None = None
        self._slots = [_Slot(index=i) for i in range(self.n_workers)]
        self._prefix = f"{host_prefix()}{os.getpid()}:"
        self._started = False
        self._stopping = False

    @property
    def queue(self) -> JobQueue:
        if self._queue is None:
            self._queue = self.queue_factory()
        return self._queue

    @property
    def worker_prefix(self) -> str:
        """Every worker id of this supervisor starts with this (host:pid:)."""
        return self._prefix

    # -- JobRunner ---------------------------------------------------------------
    def start(self) -> None:
        """Recover this host's orphaned jobs (a previous run died), then spawn the workers."""
        if self._started:
            return
        recovered = self.queue.recover_orphans(set(), worker_prefix=host_prefix())
        if recovered:
            log.warning("re-queued %d job(s) left running by a previous run", recovered)
        self._started = True
        self._stopping = False
        atexit.register(self._stop_at_exit)
        now = time.monotonic()
        for slot in self._slots:
            self._spawn(slot, now)
        log.info("started %d worker process(es)", self.n_workers)

    def poll(self, now: float | None = None) -> None:
        """Restart dead workers, kill hung ones; never raises for one bad worker.

        ``now`` is a ``time.monotonic()`` reading (default: read it here).
        """
        if not self._started or self._stopping:
            return
        now = _monotonic(now)
        for slot in self._slots:
            try:
                self._poll_slot(slot, now)
            except (SQLAlchemyError, JobError, OSError) as exc:
                log.error("supervising worker %d failed, will try again: %s", slot.index, exc)

    def stop(self, timeout: float) -> None:
        """SIGTERM every worker, wait up to ``timeout`` s, then SIGKILL and give jobs back."""
        if not self._started:
            return
        self._stopping = True
        deadline = time.monotonic() + max(timeout, 0.0)
        live = [s for s in self._slots if s.process is not None and s.process.is_alive()]
        for slot in live:
            _signal(slot.process, signal.SIGTERM)
        for slot in live:
            assert slot.process is not None
            slot.process.join(max(deadline - time.monotonic(), 0.0))
        for slot in live:
            assert slot.process is not None
            if slot.process.is_alive():
                log.warning("worker %s did not stop in %.0f s; killing it", slot.worker_id, timeout)
                slot.process.kill()
                slot.process.join(5.0)
        for slot in self._slots:
            proc = slot.process
            if proc is not None:
                slot.last_exitcode = proc.exitcode
                if proc.exitcode is not None:
                    proc.close()
                slot.process = None
                slot.job_id.value = 0
            if slot.worker_id:
                try:
                    self.queue.requeue_worker_jobs(
                        slot.worker_id, "the node stopped", count_attempt=False
                    )
                except SQLAlchemyError as exc:
                    log.error("could not give back the jobs of %s: %s", slot.worker_id, exc)
        self._started = False
        atexit.unregister(self._stop_at_exit)
        log.info("worker processes stopped")

    def alive(self) -> bool:
        """True when every worker process is running (vacuously with zero workers)."""
        if not self._started:
            return self.n_workers == 0
        return all(s.process is not None and s.process.is_alive() for s in self._slots)

    def status(self, now: float | None = None) -> list[dict[str, Any]]:
        """One line per worker for /healthz and ``ki67node status``."""
        now = _monotonic(now)
        out = []
        for slot in self._slots:
            proc = slot.process
            job_id = int(slot.job_id.value) if slot.job_id is not None else 0
            running = bool(proc is not None and proc.is_alive())
            out.append(
                {
                    "index": slot.index,
                    "worker_id": slot.worker_id,
                    "pid": proc.pid if proc is not None else None,
                    "alive": running,
                    "job_id": job_id or None,
                    "job_seconds": round(now - slot.job_started.value, 1)
                    if job_id and slot.job_started is not None
                    else None,
                    "restarts": slot.restarts,
                    "last_exitcode": slot.last_exitcode,
                    "restart_in_seconds": round(max(slot.next_start_at - now, 0.0), 1)
                    if not running
                    else None,
                }
            )
        return out

    # -- internals -----------------------------------------------------------------
    def _spawn(self, slot: _Slot, now: float) -> None:
        slot.generation += 1
        slot.worker_id = f"{self._prefix}w{slot.index}.{slot.generation}"
        slot.job_id = _MP.RawValue(ctypes.c_longlong, 0)
        slot.job_started = _MP.RawValue(ctypes.c_double, 0.0)
        spec = WorkerSpec(
            worker_id=slot.worker_id,
            queue_factory=self.queue_factory,
            job_target=self.job_target,
            job_settings=self.job_settings,
            options=self.options,
            log_level=self.log_level,
            parent_pid=os.getpid(),
        )
        proc = _MP.Process(
            target=worker_main,
            args=(spec, slot.job_id, slot.job_started),
            name=f"ki67node-worker-{slot.index}",
        )
        proc.start()
        slot.process = proc
        slot.started_at = now
        log.info("worker %s started (pid %s)", slot.worker_id, proc.pid)

    def _poll_slot(self, slot: _Slot, now: float) -> None:
        proc = slot.process
        if proc is not None and proc.is_alive():
            job_id = int(slot.job_id.value)
            if job_id and now - slot.job_started.value > self.job_timeout:
                self._kill_hung(slot, job_id)
            else:
                if slot.crashes and now - slot.started_at > self.options.stable_after_seconds:
                    slot.crashes = 0
                return
        if proc is not None:
            self._reap(slot, proc, now)
        if now >= slot.next_start_at:
            slot.restarts += 1
            self._spawn(slot, now)

    def _reap(self, slot: _Slot, proc: BaseProcess, now: float) -> None:
        proc.join(1.0)
        slot.last_exitcode = proc.exitcode
        # Re-queue first: if the database is unavailable this raises, the slot
        # keeps its dead process, and the next poll tries again.
        n = self.queue.requeue_worker_jobs(
            slot.worker_id, f"the worker process exited with code {slot.last_exitcode}"
        )
        if proc.exitcode is not None:
            proc.close()
        slot.process = None
        slot.job_id.value = 0
        if slot.last_exitcode == EXIT_OK:
            delay = 0.0  # stopped by a signal from outside (e.g. systemd): not a crash
        else:
            slot.crashes += 1
            delay = 0.0
            if slot.crashes > 1:
                delay = min(
                    self.options.restart_backoff_seconds * 2 ** (slot.crashes - 2),
                    self.options.max_restart_backoff_seconds,
                )
        slot.next_start_at = now + delay
        log.error(
            "worker %s exited with code %s (%d job(s) re-queued); restart in %.0f s",
            slot.worker_id,
            slot.last_exitcode,
            n,
            delay,
        )

    def _kill_hung(self, slot: _Slot, job_id: int) -> None:
        assert slot.process is not None
        log.error(
            "job %d on worker %s exceeded %.0f s; killing the worker",
            job_id,
            slot.worker_id,
            self.job_timeout,
        )
        slot.process.kill()
        slot.process.join(10.0)
        try:
            self.queue.fail(
                job_id,
                slot.worker_id,
                f"timed out after {self.job_timeout:.0f} s (pipeline.job_timeout_seconds)",
                retryable=True,
            )
        except JobLostError:
            log.info("job %d finished just before its worker was killed", job_id)

    def _stop_at_exit(self) -> None:
        if self._started:
            self.stop(timeout=5.0)


def _monotonic(now: float | None) -> float:
    """``now`` must be a ``time.monotonic()`` reading (workers stamp jobs with it)."""
    current = time.monotonic()
    if now is None:
        return current
    if abs(now - current) > MAX_CLOCK_SKEW_SECONDS:
        raise ValueError(
            f"poll/status take now=time.monotonic(), got {now!r}; wall-clock time would "
            "make every running job look hung"
        )
    return now


def host_prefix() -> str:
    """The start of every worker id on this host (``hostname:``)."""
    return f"{socket.gethostname()[:32]}:"


def _signal(proc: BaseProcess | None, signum: int) -> None:
    if proc is not None and proc.pid is not None:
        try:
            os.kill(proc.pid, signum)
        except ProcessLookupError:
            pass
