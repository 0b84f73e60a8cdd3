"""The DICOM listener: accept loop, association limits, optional TLS.

Threads are bounded: one per association up to ``max_associations``, a few
more that only answer "busy" (A-ASSOCIATE-RJ, local limit exceeded), and the
accept thread. Connections beyond that are closed at once. The TLS handshake
runs in the connection's own thread under a deadline, never on the accept
thread, so a client that connects and says nothing blocks nobody.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from contextlib import suppress
from typing import Any

from pydicom.uid import (
    EnhancedMRImageStorage,
    MRImageStorage,
    SegmentationStorage,
)
from pynetdicom.presentation import AllStoragePresentationContexts

from daemon.dicom.association import (
    MAX_ASSOCIATE_RQ_BYTES,
    VERIFICATION,
    AcceptorAssociation,
)
from daemon.dicom.negotiation import AcceptorConfig
from daemon.dicom.pdu_io import PeerGone
from daemon.dicom.storage import InstanceStore
from daemon.dicom.transfer_syntaxes import decodable_transfer_syntaxes
from daemon.dicom.ul_pdu import (
    PduType,
    PresentationRejectReason,
    ProtocolError,
    RejectResult,
    RejectSource,
    encode_associate_rj,
    unpack_header,
)
from daemon.ops import metrics
from daemon.settings import NodeSettings, TlsSettings

log = logging.getLogger(__name__)

PROCESSED_SOP_CLASSES = frozenset({MRImageStorage, EnhancedMRImageStorage, SegmentationStorage})
EXTRA_REJECTORS = 4


def abstract_syntaxes(other_storage: str) -> frozenset[str]:
    if other_storage == "refuse":
        return frozenset({VERIFICATION, *PROCESSED_SOP_CLASSES})
    storage = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    return frozenset({VERIFICATION, *storage, *PROCESSED_SOP_CLASSES})


def acceptor_config(n: NodeSettings) -> AcceptorConfig:
    return AcceptorConfig(
        ae_title=n.ae_title,
        abstract_syntaxes=abstract_syntaxes(n.other_storage),
        transfer_syntaxes=decodable_transfer_syntaxes(),
        allowed_calling_aets=frozenset(n.allowed_calling_aets),
        require_called_aet=n.require_called_aet,
        max_pdu=n.max_pdu_bytes,
        max_instance_bytes=n.max_instance_bytes,
        acse_timeout=n.acse_timeout_seconds,
        network_timeout=n.network_timeout_seconds,
    )


def make_tls_context(t: TlsSettings) -> ssl.SSLContext:
    """Server context: TLS ≥ 1.2 and a client certificate signed by ca_file."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(t.cert_file, t.key_file)
    ctx.load_verify_locations(cafile=t.ca_file)
    return ctx


class Listener:
    """Accepts associations on (bind, port) until :meth:`stop`."""

    def __init__(self, node: NodeSettings, tls: TlsSettings, storage: InstanceStore[Any]) -> None:
        self.node = node
        self.handshake_timeout = tls.handshake_timeout_seconds
        self.storage = storage
        self.config = acceptor_config(node)
        self.tls = make_tls_context(tls) if tls.enabled else None
        self.max_associations = node.max_associations
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._active: dict[int, socket.socket] = {}
        self._assocs: dict[int, AcceptorAssociation] = {}
        self._rejectors = 0
        self._threads: set[threading.Thread] = set()
        self.last_progress = time.monotonic()
        self.port = 0

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        n = self.node
        family = socket.AF_INET6 if ":" in n.bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((n.bind, n.port))
        sock.listen(128)
        sock.settimeout(0.5)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="dicom-accept", daemon=True)
        self._thread.start()
        log.info(
            "DICOM listener %s on %s:%d (TLS %s, max %d associations)",
            n.ae_title,
            n.bind,
            self.port,
            "on" if self.tls else "off",
            self.max_associations,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting; let running associations finish their instance.

        Each association ends (A-ABORT) as soon as its current instance is
        answered; one still mid-transfer after ``timeout`` is cut off (its
        partial instance was never acknowledged, so nothing is lost).
        """
        self._stop.set()
        with self._lock:
            for assoc in self._assocs.values():
                assoc.stopping = True
        if self._sock is not None:
            with suppress(OSError):  # wakes the accept() at once
                self._sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            remaining = list(self._active.values())
        for conn in remaining:  # still talking after the grace period
            _close(conn)
        for thread in list(self._threads):
            thread.join(timeout=2)

    @property
    def active_associations(self) -> int:
        with self._lock:
            return len(self._active)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- accept loop -----------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            self.last_progress = time.monotonic()
            try:
                conn, addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    break
                log.error("accept failed: %s", exc)
                time.sleep(0.1)
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = f"{addr[0]}:{addr[1]}"
            with self._lock:
                busy = len(self._active) >= self.max_associations
                if busy and self._rejectors >= EXTRA_REJECTORS:
                    metrics.REJECTIONS.labels(reason="connection_limit").inc()
                    _close(conn)
                    continue
                if busy:
                    self._rejectors += 1
                else:
                    self._active[id(conn)] = conn
                    metrics.ACTIVE_ASSOCIATIONS.set(len(self._active))
            target = self._reject_busy if busy else self._serve
            thread = threading.Thread(target=target, args=(conn, peer), daemon=True)
            thread.name = f"dicom-{'busy' if busy else 'assoc'}-{peer}"
            self._threads.add(thread)
            thread.start()

    def _handshake(self, conn: socket.socket) -> socket.socket | None:
        if self.tls is None:
            return conn
        conn.settimeout(self.handshake_timeout)
        try:
            tls_conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            tls_conn.do_handshake()
            return tls_conn
        except (ssl.SSLError, OSError) as exc:
            metrics.REJECTIONS.labels(reason="tls_handshake").inc()
            log.warning("TLS handshake failed: %s", exc.__class__.__name__)
            return None

    def _serve(self, conn: socket.socket, peer: str) -> None:
        key = id(conn)
        try:
            wrapped = self._handshake(conn)
            if wrapped is None:
                return
            assoc = AcceptorAssociation(wrapped, self.config, self.storage, peer)
            assoc.stopping = self._stop.is_set()
            with self._lock:
                self._active[key] = wrapped
                self._assocs[key] = assoc
            outcome = assoc.run()
            log.info(
                "association from %s (%s) %s after %d instance(s)",
                peer,
                assoc.calling_ae or "?",
                outcome,
                assoc.stored,
            )
            _close(wrapped)
        except Exception:  # noqa: BLE001 - one bad association must never stop the listener
            log.exception("association from %s failed", peer)
        finally:
            _close(conn)
            with self._lock:
                self._active.pop(key, None)
                self._assocs.pop(key, None)
                metrics.ACTIVE_ASSOCIATIONS.set(len(self._active))
            self._threads.discard(threading.current_thread())

    def _reject_busy(self, conn: socket.socket, peer: str) -> None:
        """Read the request briefly, answer 'local limit exceeded', close."""
        try:
            metrics.REJECTIONS.labels(reason="association_limit").inc()
            metrics.ASSOCIATIONS.labels(outcome="rejected_busy").inc()
            if self.tls is None:
                conn.settimeout(2.0)
                header = conn.recv(6, socket.MSG_WAITALL)
                if len(header) == 6:
                    pdu_type, length = unpack_header(header)
                    if pdu_type == PduType.ASSOCIATE_RQ and length <= MAX_ASSOCIATE_RQ_BYTES:
                        # Read the whole request so the peer sees the reject,
                        # not a reset; bounded by the 2 s timeout and the cap.
                        while length > 0:
                            chunk = conn.recv(min(length, 65_536))
                            if not chunk:
                                break
                            length -= len(chunk)
                        conn.sendall(
                            encode_associate_rj(
                                RejectResult.TRANSIENT,
                                RejectSource.SERVICE_PROVIDER_PRESENTATION,
                                PresentationRejectReason.LOCAL_LIMIT_EXCEEDED,
                            )
                        )
                        conn.shutdown(socket.SHUT_WR)
                        conn.recv(1)  # wait (≤ 2 s) for the peer to close
        except (OSError, ProtocolError, PeerGone):
            pass
        finally:
            _close(conn)
            with self._lock:
                self._rejectors -= 1
            self._threads.discard(threading.current_thread())


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass
