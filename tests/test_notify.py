"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.ops.notify import SystemdNotifier, Watchdog, watchdog_interval


class FakeSystemd:
    """The receiving end of ``$NOTIFY_SOCKET``."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.settimeout(2)

    def messages(self) -> list[str]:
        """Everything received so far (non-blocking after the first wait)."""
        out = []
        self.sock.settimeout(0.2)
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except (BlockingIOError, TimeoutError):
            pass
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"], ids=["path-socket", "abstract-socket"])
def systemd(request: pytest.FixtureRequest) -> Iterator[FakeSystemd]:
    if request.param == "path":
        folder = Path(tempfile.mkdtemp(prefix="ki67n-"))  # short: sun_path is 108 bytes
        address = str(folder / "notify")
    else:
        folder = None
        address = f"@ki67node-test-{uuid.uuid4().hex}"
    fake = FakeSystemd(address)
    yield fake
    fake.close()
    if folder is not None:
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()


def test_messages_reach_systemd(systemd: FakeSystemd) -> None:
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": systemd.address})
    assert notifier.enabled

    assert notifier.ready("listening on 11112")
    assert notifier.status("3 jobs queued\nand a second line")
    assert notifier.watchdog()
    assert notifier.extend_timeout(30)
    assert notifier.stopping()
    notifier.close()

    assert systemd.messages() == [
        "READY=1\nSTATUS=listening on 11112",
        "STATUS=3 jobs queued and a second line",
        "WATCHDOG=1",
        "EXTEND_TIMEOUT_USEC=30000000",
        "STOPPING=1",
    ]


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = SystemdNotifier.from_env({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False


def test_vanished_socket_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    folder = Path(tempfile.mkdtemp(prefix="ki67n-"))
    address = str(folder / "gone")
    fake = FakeSystemd(address)
    notifier = SystemdNotifier(address)
    assert notifier.ready()
    fake.close()
    os.unlink(address)
    folder.rmdir()

    with caplog.at_level(logging.DEBUG, logger="daemon.ops.notify"):
        assert notifier.watchdog() is False
        assert notifier.stopping() is False
    assert "sd_notify to" in caplog.text
    notifier.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "60000000"}, 60.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "4242"}, 60.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "sixty"}, None),
    ],
    ids=["unset", "set", "for-our-pid", "for-another-pid", "zero", "garbage"],
)
def test_watchdog_interval_from_env(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env, pid=4242) == expected


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def test_watchdog_pings_at_half_interval_while_loops_progress(systemd: FakeSystemd) -> None:
    clock = Clock()
    env = {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    wd = Watchdog(SystemdNotifier(systemd.address), loops=("main", "listener"), now=clock, env=env)
    assert wd.enabled and wd.ping_every == 5.0

    sent = []
    for _ in range(20):  # 20 s, main loop ticking once a second
        wd.beat("main")
        wd.beat("listener")
        sent.append(wd.maybe_ping())
        clock.advance(1)

    assert sent.count(True) == 4  # t = 0, 5, 10, 15
    assert systemd.messages() == ["WATCHDOG=1"] * 4


def test_a_stalled_loop_stops_the_pings(
    systemd: FakeSystemd, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    wd = Watchdog(
        SystemdNotifier(systemd.address), loops=("main", "listener"), now=clock, interval=10
    )
    wd.beat("main")
    wd.beat("listener")
    assert wd.maybe_ping()
    systemd.messages()

    with caplog.at_level(logging.WARNING, logger="daemon.ops.notify"):
        for _ in range(30):  # the listener hangs; main keeps going
            clock.advance(1)
            wd.beat("main")
            wd.maybe_ping()
    assert systemd.messages() == ["WATCHDOG=1"]  # at t=5 only: listener was 5 s old, not stale
    assert wd.stalled() == ("listener",)
    assert not wd.healthy()
    assert caplog.text.count("listener made no progress") == 1  # logged once, not every second

    wd.beat("listener")  # it recovers before systemd gave up
    assert wd.maybe_ping()
    assert systemd.messages() == ["WATCHDOG=1"]


def test_loops_get_start_up_grace(systemd: FakeSystemd) -> None:
    clock = Clock()
    wd = Watchdog(SystemdNotifier(systemd.address), loops=("main",), now=clock, interval=10)
    assert wd.maybe_ping()  # nobody beat yet, but we just started
    clock.advance(6)
    assert not wd.maybe_ping()  # ...and the grace is over


def test_watchdog_without_systemd_is_inert_but_still_reports_stalls() -> None:
    clock = Clock()
    wd = Watchdog(SystemdNotifier(None), loops=("main",), now=clock, env={}, stale_after=30)
    assert not wd.enabled
    assert wd.maybe_ping() is False
    clock.advance(31)
    assert wd.stalled() == ("main",)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loops": ()}, "at least one loop"),
        ({"loops": ("main",), "interval": -1}, "must be > 0"),
    ],
    ids=["no-loops", "negative-interval"],
)
def test_watchdog_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Watchdog(SystemdNotifier(None), **kwargs)


def test_beat_of_unknown_loop_names_the_known_ones() -> None:
    wd = Watchdog(SystemdNotifier(None), loops=("main", "listener"), env={})
    with pytest.raises(ValueError, match="unknown watchdog loop 'sender'.*main, listener"):
        wd.beat("sender")
