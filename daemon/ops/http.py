"""The HTTP status server: ``/healthz``, ``/metrics``, ``/api/status``, ``/api/followups``.

Standard library only (``http.server``), one short-lived thread per request,
bounded three ways so that a misbehaving client can never pin the daemon:
at most :data:`MAX_CONCURRENT_REQUESTS` requests at once (extras get a 503 and
are closed), a socket timeout per read, and a hard deadline per connection
enforced by the serving loop. Responses carry counts and reasons, never
patient data, except ``/api/followups`` (the follow-up list, read-only: it
names patients, which is why ``http.bind`` defaults to 127.0.0.1). Database reads go through a separate read engine
(:func:`daemon.db.read.make_read_engine`), so a scrape never takes SQLite's
write lock and a broken database only turns ``ki67node_database_up`` to 0.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from daemon import __version__
from daemon.db.read import database_missing, make_read_engine
from daemon.errors import DatabaseError
from daemon.followup.queries import followup_report
from daemon.ops.metrics import REGISTRY, DatabaseCollector
from daemon.ops.status import collect_status
from daemon.settings import DatabaseTarget, HttpSettings

log = logging.getLogger(__name__)

HealthCheck = Callable[[], object]

MAX_CONCURRENT_REQUESTS = 16
SOCKET_TIMEOUT_SECONDS = 10.0  # one read or write on a client socket
REQUEST_DEADLINE_SECONDS = 30.0  # a whole connection, however slowly it trickles
HEALTH_CHECK_TIMEOUT_SECONDS = 5.0
POLL_INTERVAL_SECONDS = 0.5
ROUTES = ("/healthz", "/metrics", "/api/status", "/api/followups")
JSON_TYPE = "application/json"
_BUSY_BODY = b'{"error": "too many concurrent requests, retry shortly"}'
_BUSY_RESPONSE = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nRetry-After: 1\r\nContent-Length: "
    + str(len(_BUSY_BODY)).encode()
    + b"\r\n\r\n"
    + _BUSY_BODY
)


class StatusServer:
    """Serves the status endpoints from a background thread.

    ``health_checks`` maps a name to a callable returning truthy when healthy;
    a check that returns falsy, raises or takes longer than
    :data:`HEALTH_CHECK_TIMEOUT_SECONDS` fails ``/healthz``. ``http`` is where
    it listens; ``data_dir`` and ``database`` are the node it reports on. Reads
    have their own engine (see the module docstring); tests may inject
    ``read_engine``.
    """

    def __init__(
        self,
        http: HttpSettings,
        data_dir: Path,
        database: DatabaseTarget,
        health_checks: Mapping[str, HealthCheck] | None = None,
        *,
        registry: CollectorRegistry = REGISTRY,
        read_engine: Engine | None = None,
    ) -> None:
        self.http = http
        self.data_dir = data_dir
        self.database = database
        self.health_checks = dict(health_checks or {})
        self._registry = registry
        self._engine = read_engine
        self._own_engine = read_engine is None
        self._db_registry = CollectorRegistry(auto_describe=False)
        self._db_registry.register(DatabaseCollector(self.status_report))
        self._checks_pool: ThreadPoolExecutor | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Bind and serve in a daemon thread; no-op when ``http.enabled`` is false."""
        if not self.http.enabled:
            log.info("HTTP status server disabled (http.enabled = false)")
            return
        if self._server is not None:
            return
        if self._engine is None:
            self._engine = self._read_engine()
        cfg = self.http
        server_cls = _Server6 if ":" in cfg.bind else _Server
        try:
            self._server = server_cls((cfg.bind, cfg.port), _Handler, self)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot listen for HTTP on {cfg.bind}:{cfg.port}: {exc.strerror}; "
                "free the port or change http.port / http.bind",
            ) from exc
        self._checks_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ki67node-health")
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL_SECONDS},
            name="ki67node-http",
            daemon=True,
        )
        self._thread.start()
        log.info("HTTP status server on http://%s:%d (/healthz /metrics)", cfg.bind, self.port)

    def stop(self) -> None:
        """Stop serving and release the port, the threads and the read engine."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._checks_pool is not None:
            self._checks_pool.shutdown(wait=False, cancel_futures=True)
            self._checks_pool = None
        if self._engine is not None and self._own_engine:
            self._engine.dispose()
            self._engine = None

    @property
    def port(self) -> int:
        """The bound port (``http.port`` may be 0: pick a free one)."""
        if self._server is None:
            raise RuntimeError("StatusServer.port: call start() first (is http.enabled true?)")
        return int(self._server.server_address[1])

    # -- what the endpoints return -------------------------------------------------
    def health(self) -> tuple[bool, dict[str, Any]]:
        """Run every check with a deadline; ``(all passed, JSON body)``."""
        results: dict[str, dict[str, Any]] = {}
        pool = self._checks_pool or ThreadPoolExecutor(max_workers=1)
        futures = {name: pool.submit(check) for name, check in self.health_checks.items()}
        deadline = time.monotonic() + HEALTH_CHECK_TIMEOUT_SECONDS
        for name, future in futures.items():
            try:
                ok = bool(future.result(timeout=max(0.0, deadline - time.monotonic())))
                results[name] = {"ok": ok} if ok else {"ok": False, "error": "check failed"}
            except FutureTimeout:
                future.cancel()
                results[name] = {
                    "ok": False,
                    "error": f"no answer within {HEALTH_CHECK_TIMEOUT_SECONDS:g} s",
                }
            except Exception as exc:  # a check that raises has failed; report it
                log.warning("health check %s raised", name, exc_info=True)
                results[name] = {"ok": False, "error": f"{exc.__class__.__name__}: {exc}"}
        if pool is not self._checks_pool:
            pool.shutdown(wait=False)
        healthy = all(r["ok"] for r in results.values())
        body = {"status": "ok" if healthy else "fail", "version": __version__, "checks": results}
        return healthy, body

    def status_report(self) -> dict[str, Any]:
        """``collect_status`` on the shared read engine (raises DatabaseError)."""
        if self._engine is None:
            self._engine = self._read_engine()
        return collect_status(self.data_dir, self.database, self._engine)

    def followups_report(self, due_before: dt.date | None) -> dict[str, Any]:
        """The follow-up list (:func:`daemon.followup.queries.followup_report`) on the read engine."""
        if database_missing(self.database.url):
            return followup_report(None, due_before=due_before)  # never create it here
        if self._engine is None:
            self._engine = self._read_engine()
        return followup_report(self._engine, due_before=due_before)

    def _read_engine(self) -> Engine:
        return make_read_engine(self.database.url, self.database.busy_timeout_ms)

    def metrics_text(self) -> bytes:
        """The process counters plus the database gauges, Prometheus text format."""
        return generate_latest(self._registry) + generate_latest(self._db_registry)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, app: StatusServer) -> None:
        self.app = app
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)
        self._deadlines: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("HTTP: %d requests in progress, refusing one", MAX_CONCURRENT_REQUESTS)
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        with self._lock:
            self._deadlines[request] = time.monotonic() + REQUEST_DEADLINE_SECONDS
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(request, None)
        self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that vanished or timed out is routine: log, never print."""
        log.debug("HTTP: request from %s ended with an error", client_address, exc_info=True)

    def service_actions(self) -> None:
        """Called by serve_forever every poll: cut connections past their deadline."""
        now = time.monotonic()
        with self._lock:
            overdue = [s for s, deadline in self._deadlines.items() if deadline < now]
        for sock in overdue:
            log.info("HTTP: closing a connection open for more than %g s", REQUEST_DEADLINE_SECONDS)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                log.debug("HTTP: connection already closed")


class _Server6(_Server):
    address_family = socket.AF_INET6


def _refuse_busy(request: socket.socket) -> None:
    try:
        request.settimeout(1.0)
        request.sendall(_BUSY_RESPONSE)
    except OSError:
        log.debug("HTTP: could not send the busy answer")


class _Handler(BaseHTTPRequestHandler):
    timeout = SOCKET_TIMEOUT_SECONDS
    server_version = f"ki67node/{__version__}"
    sys_version = ""

    @property
    def app(self) -> StatusServer:
        return cast(_Server, self.server).app

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        try:
            if path == "/healthz":
                healthy, body = self.app.health()
                self._send_json(HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE, body)
            elif path == "/metrics":
                self._send(HTTPStatus.OK, CONTENT_TYPE_LATEST, self.app.metrics_text())
            elif path == "/api/status":
                self._api_status()
            elif path == "/api/followups":
                self._api_followups(parse_qs(urlsplit(self.path).query))
            else:
                self._send_json(
                    HTTPStatus.NOT_FOUND, {"error": f"no such path {path!r}", "endpoints": ROUTES}
                )
        except Exception:
            log.error("HTTP: GET %s failed", path, exc_info=True)
            self._send_json(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                {"error": "internal error; the daemon log has the details"},
            )

    def _api_status(self) -> None:
        try:
            report = self.app.status_report()
        except DatabaseError as exc:
            self._send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
            return
        self._send_json(HTTPStatus.OK, report)

    def _api_followups(self, query: dict[str, list[str]]) -> None:
        due_before = None
        if query.get("due_before"):
            try:
                due_before = dt.date.fromisoformat(query["due_before"][0])
            except ValueError:
                self._send_json(
                    HTTPStatus.BAD_REQUEST, {"error": "due_before must be a date, YYYY-MM-DD"}
                )
                return
        try:
            report = self.app.followups_report(due_before)
        except SQLAlchemyError as exc:
            log.warning("HTTP: the follow-up list could not be read: %s", exc.__class__.__name__)
            self._send_json(
                HTTPStatus.SERVICE_UNAVAILABLE,
                {"error": "the database could not be read; the daemon log has the details"},
            )
            return
        self._send_json(HTTPStatus.OK, report)

    def _method_not_allowed(self) -> None:
        self._send_json(
            HTTPStatus.METHOD_NOT_ALLOWED,
            {"error": f"method {self.command} not allowed; use GET"},
            extra_headers={"Allow": "GET"},
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _method_not_allowed
    do_OPTIONS = do_TRACE = do_CONNECT = _method_not_allowed

    def _send_json(
        self,
        status: HTTPStatus,
        body: Mapping[str, Any],
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        data = json.dumps(body, indent=1, default=str).encode() + b"\n"
        self._send(status, JSON_TYPE, data, extra_headers)

    def _send(
        self,
        status: HTTPStatus,
        content_type: str,
        data: bytes,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("HTTP %s " + format, self.client_address[0], *args)
