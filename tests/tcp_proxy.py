"""A TCP proxy for listener tests that splits each DICOM PDU header in two.

What a lossy WAN or VPN link does to a sender: a TCP retransmission holds the
second part of a PDU header back for a while. :class:`SplittingProxy` sits
between any client (DCMTK storescu, pynetdicom, a raw socket) and the node,
parses the client-to-node stream into PDUs, and sends the first
``split_at`` bytes of each 6-byte PDU header, waits ``pause`` seconds, then
the rest of the PDU. Node-to-client bytes pass through unchanged.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator

HOST = "127.0.0.1"
PDU_HEADER = 6


class SplittingProxy:
    """Listens on a free loopback port; every connection goes on to ``target_port``."""

    def __init__(self, target_port: int, *, pause: float, split_at: int = 2) -> None:
        if not 0 < split_at < PDU_HEADER:
            raise ValueError("split_at must fall inside the 6-byte PDU header")
        self.target_port = target_port
        self.pause = pause
        self.split_at = split_at
        self.pdus_split = 0
        self._server = socket.create_server((HOST, 0))
        self._server.settimeout(0.2)
        self.port = int(self._server.getsockname()[1])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        accept = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)
        accept.start()
        self._threads.append(accept)

    def __enter__(self) -> SplittingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
        self._server.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        with self._lock:
            self._threads.append(thread)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection((HOST, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(self._client_to_node, client, upstream)
            self._spawn(self._pipe, upstream, client)

    def _pdus(self, source: socket.socket) -> Iterator[bytes]:
        """Whole PDUs as the client sent them, until it closes."""
        buffer = b""
        while True:
            while len(buffer) >= PDU_HEADER:
                (length,) = struct.unpack_from(">L", buffer, 2)
                if len(buffer) < PDU_HEADER + length:
                    break
                yield buffer[: PDU_HEADER + length]
                buffer = buffer[PDU_HEADER + length :]
            try:
                chunk = source.recv(65_536)
            except OSError:
                return
            if not chunk:
                if buffer:
                    yield buffer  # a partial PDU: pass it on as it is
                return
            buffer += chunk

    def _client_to_node(self, client: socket.socket, node: socket.socket) -> None:
        try:
            for pdu in self._pdus(client):
                node.sendall(pdu[: self.split_at])
                time.sleep(self.pause)  # the held-back TCP segment
                node.sendall(pdu[self.split_at :])
                self.pdus_split += 1
            node.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65_536):
                sink.sendall(chunk)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass
