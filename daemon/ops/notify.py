"""systemd integration: the sd_notify protocol and a progress-gated watchdog.

The protocol is small enough to implement directly (no libsystemd binding):
newline-separated ``KEY=VALUE`` lines in one datagram to the ``AF_UNIX``
socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract
namespace). Outside systemd the variable is unset and every call is a no-op.
Sending never raises: a vanished socket is logged at DEBUG and ignored, so
notification can never stop the daemon.

:class:`Watchdog` sends ``WATCHDOG=1`` only while *every* registered loop has
recently reported progress (:meth:`Watchdog.beat`). A loop that hangs stops
the pings, and systemd (``WatchdogSec=``) kills and restarts the service;
a process that is alive but stuck is worse than a restart.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"
_MAX_STATUS_CHARS = 200
_USEC = 1_000_000


class SystemdNotifier:
    """Sends sd_notify messages to ``address``; disabled when it is None."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SystemdNotifier:
        """A notifier for ``$NOTIFY_SOCKET`` (no-op when unset)."""
        env = os.environ if env is None else env
        return cls(env.get(NOTIFY_SOCKET_ENV))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def _target(self) -> str | bytes:
        assert self.address is not None
        if self.address.startswith("@"):
            return b"\0" + self.address[1:].encode()
        return self.address

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` as one message; True when it was handed to the socket."""
        if self.address is None:
            return False
        payload = "\n".join(lines).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                self._sock.sendto(payload, self._target())
                return True
            except OSError as exc:
                log.debug("sd_notify to %s failed (%s): %s", self.address, exc, lines)
                self._close_locked()
                return False

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up finished (systemd then considers us started)."""
        lines = ["READY=1"]
        if status:
            lines.append(_status_line(status))
        return self.notify(*lines)

    def status(self, text: str) -> bool:
        """``STATUS=``: one line shown by ``systemctl status``."""
        return self.notify(_status_line(text))

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: a graceful stop has begun."""
        lines = ["STOPPING=1"] + ([_status_line(status)] if status else [])
        return self.notify(*lines)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the keep-alive ping (use :class:`Watchdog` to gate it)."""
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC``: ask for more time to start or stop."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * _USEC)}")

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status_line(text: str) -> str:
    """One line, bounded: STATUS= must not contain a newline."""
    return "STATUS=" + " ".join(text.split())[:_MAX_STATUS_CHARS]


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """``$WATCHDOG_USEC`` in seconds, or None when no watchdog is set for this process."""
    env = os.environ if env is None else env
    raw = env.get(WATCHDOG_USEC_ENV)
    if not raw:
        return None
    owner = env.get(WATCHDOG_PID_ENV)
    if owner and owner.strip() != str(os.getpid() if pid is None else pid):
        log.debug("watchdog is set for pid %s, not for us", owner)
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring %s=%r: not an integer", WATCHDOG_USEC_ENV, raw)
        return None
    return usec / _USEC if usec > 0 else None


class Watchdog:
    """Pings systemd at half the watchdog interval while every loop makes progress.

    ``loops`` names the loops that must beat; each starts as "just beaten"
    (start-up grace). A loop is stale when it has not beaten for
    ``stale_after`` seconds (default: half the interval, so systemd restarts
    us at most ~1.5 intervals after a loop hung). ``interval`` defaults to
    :func:`watchdog_interval`; ``now`` is a monotonic clock (injectable).
    """

    def __init__(
        self,
        notifier: SystemdNotifier,
        loops: Iterable[str],
        now: Callable[[], float] = time.monotonic,
        *,
        interval: float | None = None,
        stale_after: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.notifier = notifier
        self._now = now
        self.interval = watchdog_interval(env) if interval is None else interval
        if self.interval is not None and self.interval <= 0:
            raise ValueError(f"Watchdog interval must be > 0 seconds, got {self.interval}")
        half = self.interval / 2 if self.interval else 0.0
        self.ping_every = half
        self.stale_after = half if stale_after is None else stale_after
        start = now()
        self._beats: dict[str, float] = dict.fromkeys(loops, start)
        if not self._beats:
            raise ValueError("Watchdog needs at least one loop name, e.g. loops=('main',)")
        self._last_ping: float | None = None
        self._reported: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.interval is not None and self.notifier.enabled

    def beat(self, loop: str) -> None:
        """Record that ``loop`` made progress now."""
        t = self._now()
        with self._lock:
            if loop not in self._beats:
                raise ValueError(
                    f"unknown watchdog loop {loop!r}; register it in Watchdog(loops=...) "
                    f"(known: {', '.join(self._beats)})"
                )
            self._beats[loop] = t

    def stalled(self) -> tuple[str, ...]:
        """Loops that have not beaten within ``stale_after`` (works without systemd too)."""
        limit = self.stale_after or float("inf")
        t = self._now()
        with self._lock:
            return tuple(name for name, beat in self._beats.items() if t - beat > limit)

    def healthy(self) -> bool:
        """True when no loop is stalled (usable as a /healthz check)."""
        return not self.stalled()

    def maybe_ping(self) -> bool:
        """Send ``WATCHDOG=1`` if due and every loop is fresh; True when sent."""
        if not self.enabled:
            return False
        t = self._now()
        if self._last_ping is not None and t - self._last_ping < self.ping_every:
            return False
        stalled = frozenset(self.stalled())
        if stalled != self._reported:
            if stalled:
                log.warning(
                    "loop(s) %s made no progress for more than %.0f s: withholding the "
                    "systemd watchdog ping so that the service is restarted",
                    ", ".join(sorted(stalled)),
                    self.stale_after,
                )
            else:
                log.info("all loops make progress again; watchdog pings resumed")
            self._reported = stalled
        if stalled:
            return False
        self._last_ping = t
        return self.notifier.watchdog()
