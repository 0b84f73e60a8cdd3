"""The HTTP status server on a real loopback socket."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.ops import http as http_mod
from daemon.ops.http import StatusServer
from daemon.settings import HttpSettings, Settings
from tests.test_status import CANARY_ID, CANARY_NAME, populate_db

Response = tuple[int, dict[str, str], bytes]


def request(port: int, path: str, method: str = "GET", timeout: float = 10) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def status_server(
    settings: Settings, health_checks: Mapping[str, Any] | None = None, **kwargs: Any
) -> StatusServer:
    """The status server as ``serve`` wires it."""
    return StatusServer(
        settings.http, settings.data_dir, settings.database_target, health_checks, **kwargs
    )


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., StatusServer]]:
    monkeypatch.setattr(http_mod, "POLL_INTERVAL_SECONDS", 0.05)  # fast stop()
    started: list[StatusServer] = []

    def factory(settings: Settings, checks: Mapping[str, Any] | None = None) -> StatusServer:
        server = status_server(settings, checks or {"ok": lambda: True})
        server.start()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def populated(settings: Settings) -> Settings:
    populate_db(settings)
    return settings


def test_healthz_ok_when_every_check_passes(populated: Settings, serve) -> None:
    server = serve(populated, {"spool": lambda: True, "database": lambda: 1})
    status, headers, body = request(server.port, "/healthz")

    assert status == 200
    assert headers["content-type"] == "application/json"
    data = json.loads(body)
    assert data["status"] == "ok"
    assert data["checks"] == {"spool": {"ok": True}, "database": {"ok": True}}


def _boom() -> bool:
    raise RuntimeError("spool folder vanished")


@pytest.mark.parametrize(
    ("check", "error"),
    [
        (lambda: False, "check failed"),
        (_boom, "RuntimeError: spool folder vanished"),
        (lambda: time.sleep(5), "no answer within 0.3 s"),
    ],
    ids=["returns-false", "raises", "hangs"],
)
def test_healthz_503_names_the_failing_check(
    populated: Settings, serve, monkeypatch: pytest.MonkeyPatch, check: Any, error: str
) -> None:
    monkeypatch.setattr(http_mod, "HEALTH_CHECK_TIMEOUT_SECONDS", 0.3)
    server = serve(populated, {"database": lambda: True, "workers": check})
    started = time.monotonic()
    status, _, body = request(server.port, "/healthz")

    assert status == 503
    assert time.monotonic() - started < 3
    data = json.loads(body)
    assert data["status"] == "fail"
    assert data["checks"]["database"] == {"ok": True}
    assert data["checks"]["workers"] == {"ok": False, "error": error}


def test_metrics_exposes_process_and_database_gauges(populated: Settings, serve) -> None:
    server = serve(populated)
    status, headers, body = request(server.port, "/metrics")

    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=")
    got = samples(body)  # parses: the page is valid Prometheus text format
    assert got[("ki67node_database_up", ())] == 1
    assert got[("ki67node_jobs", (("state", "done"),))] == 2
    assert got[("ki67node_jobs", (("state", "running"),))] == 0
    assert got[("ki67node_series", (("state", "decided"),))] == 3
    assert got[("ki67node_series_by_decision", (("decision", "rejected"),))] == 2
    assert (
        got[("ki67node_series_decision_reasons", (("qualifies", "false"), ("reason", "not 3D")))]
        == 2
    )
    assert got[("ki67node_outbox_items", (("destination", "pacs"), ("state", "pending")))] == 2
    assert got[("ki67node_outbox_backlog", ())] == 2
    assert got[("ki67node_instances_stored", ())] == 3
    assert got[("ki67node_stored_bytes", ())] == 6000
    assert got[("ki67node_quarantined_instances", ())] == 1
    assert got[("ki67node_stage_latency_seconds", (("quantile", "0.9"), ("stage", "segment")))] == 4
    assert got[("ki67node_stage_latency_jobs", (("stage", "segment"),))] == 2
    # counters of the listener (registered in daemon.ops.metrics) and the process
    assert ("ki67node_instances_received_total", ()) in got
    assert ("ki67node_build_info", (("version", "0.1.0"),)) in got
    assert any(name == "process_resident_memory_bytes" for name, _ in got)
    assert CANARY_NAME.encode() not in body and CANARY_ID.encode() not in body


def test_broken_database_keeps_metrics_up(settings: Settings, serve) -> None:
    settings.data_dir.mkdir(parents=True)
    (settings.data_dir / "ki67node.db").write_bytes(b"garbage, not SQLite" * 200)
    server = serve(settings)

    status, _, body = request(server.port, "/metrics")
    assert status == 200
    got = samples(body)
    assert got[("ki67node_database_up", ())] == 0
    assert not any(name == "ki67node_jobs" for name, _ in got)
    assert any(name == "process_open_fds" for name, _ in got)  # the rest still served

    status, _, body = request(server.port, "/api/status")
    assert status == 503
    assert "could not read the database" in json.loads(body)["error"]


def test_api_status_is_the_status_report(populated: Settings, serve) -> None:
    server = serve(populated)
    status, headers, body = request(server.port, "/api/status?verbose=1")

    assert status == 200
    report = json.loads(body)
    assert report["jobs"]["by_state"] == {"queued": 1, "running": 0, "done": 2, "failed": 1}
    assert report["outbox"]["backlog"] == 2
    assert headers["cache-control"] == "no-store"


def test_api_status_without_database(settings: Settings, serve) -> None:
    server = serve(settings)
    status, _, body = request(server.port, "/api/status")
    assert status == 200
    assert json.loads(body)["database"]["state"] == "missing"
    assert not (settings.data_dir / "ki67node.db").exists()


@pytest.mark.parametrize(
    "path", ["/", "/healthz/extra", "/../etc/passwd"], ids=["root", "sub", "dots"]
)
def test_unknown_path_is_404_json(settings: Settings, serve, path: str) -> None:
    status, _, body = request(serve(settings).port, path)
    assert status == 404
    assert json.loads(body)["endpoints"] == [
        "/healthz",
        "/metrics",
        "/api/status",
        "/api/followups",
    ]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD"], ids=str.lower)
def test_other_methods_are_405(settings: Settings, serve, method: str) -> None:
    status, headers, body = request(serve(settings).port, "/healthz", method=method)
    assert status == 405
    assert headers["allow"] == "GET"
    if method != "HEAD":
        assert "not allowed" in json.loads(body)["error"]


def test_slow_client_does_not_block_others(populated: Settings, serve) -> None:
    server = serve(populated)
    slow = socket.create_connection(("127.0.0.1", server.port))
    try:
        slow.sendall(b"GET /hea")  # and never finishes the request line
        started = time.monotonic()
        for _ in range(3):
            assert request(server.port, "/healthz", timeout=5)[0] == 200
        assert time.monotonic() - started < 3
    finally:
        slow.close()


def test_trickling_client_is_cut_at_the_deadline(
    settings: Settings, serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_mod, "REQUEST_DEADLINE_SECONDS", 0.5)
    monkeypatch.setattr(http_mod, "POLL_INTERVAL_SECONDS", 0.1)
    server = serve(settings)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    started = time.monotonic()
    closed = False
    try:
        for byte in b"GET /healthz HTTP/1.0\r\nX-Slow: " + b"a" * 100:
            sock.sendall(bytes([byte]))  # each byte well within the socket timeout
            time.sleep(0.05)
            if time.monotonic() - started > 4:
                break
    except OSError:
        closed = True
    if not closed:
        sock.settimeout(2)
        closed = sock.recv(1024) == b""
    sock.close()
    assert closed
    assert time.monotonic() - started < 4


def test_too_many_concurrent_requests_get_503(
    settings: Settings, serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_mod, "MAX_CONCURRENT_REQUESTS", 2)
    server = serve(settings)
    hogs = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
    try:
        statuses = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the server accepts the hogs asynchronously
            statuses.append(request(server.port, "/healthz", timeout=5)[0])
            if statuses[-1] == 503:
                break
            time.sleep(0.05)
        assert statuses[-1] == 503
    finally:
        for hog in hogs:
            hog.close()
    # slots come back once the hogs are gone
    deadline = time.monotonic() + 5
    while request(server.port, "/healthz", timeout=5)[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_stop_releases_port_and_threads(
    populated: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_mod, "POLL_INTERVAL_SECONDS", 0.05)
    before = threading.active_count()
    server = status_server(populated, {"ok": lambda: True})
    server.start()
    port = server.port
    assert request(port, "/healthz")[0] == 200
    assert request(port, "/metrics")[0] == 200
    server.stop()

    again = StatusServer(
        HttpSettings(bind="127.0.0.1", port=port), populated.data_dir, populated.database_target
    )
    again.start()  # a restarted daemon gets the same port back at once
    assert again.port == port
    again.stop()
    deadline = time.monotonic() + 5
    while threading.active_count() > before:
        assert time.monotonic() < deadline, threading.enumerate()
        time.sleep(0.05)


def test_disabled_server_does_not_listen(make_settings) -> None:
    server = status_server(make_settings(http__enabled=False))
    server.start()
    with pytest.raises(RuntimeError, match="call start\\(\\) first"):
        _ = server.port
    server.stop()


def test_port_in_use_says_what_to_change(settings: Settings) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        s = StatusServer(
            HttpSettings(bind="127.0.0.1", port=port), settings.data_dir, settings.database_target
        )
        with pytest.raises(OSError, match="change http.port"):
            s.start()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_bind(make_settings, serve) -> None:
    server = serve(make_settings(http__bind="::1"))
    conn = http.client.HTTPConnection("::1", server.port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
