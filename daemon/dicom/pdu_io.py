"""Reading PDU bytes from a peer's socket, with deadlines that networks can live with.

Every read has a deadline, so a silent or slow peer is dropped; but the
network decides how the bytes of one PDU are split into TCP segments, and a
retransmission on a lossy link can hold part of a PDU header back for a
second. So the only deadline once a PDU has begun is the network timeout;
the short poll interval applies only while waiting for the *first* byte of
the next PDU (so that a stopping node can end the association between
messages).
"""

from __future__ import annotations

import math
import select
import socket
import time
from collections.abc import Callable

STOP_POLL_SECONDS = 0.25  # how often an idle association checks for a stop


class PeerGone(Exception):
    """The connection closed or timed out."""


class PeerTooSlow(PeerGone):
    """A PDU began but did not arrive in full within the timeout."""


class NodeStopping(Exception):
    """The node is shutting down; the association ends between messages."""


def peer_began_message(sock: socket.socket) -> bool:
    """Bytes of the peer's next message already wait on the socket (sent before we looked)."""
    pending = getattr(sock, "pending", None)  # TLS: bytes decrypted already
    if callable(pending) and pending() > 0:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(readable)


def recv_exact(
    sock: socket.socket,
    size: int,
    deadline: float,
    *,
    begun: float | None = None,
    limit: float = math.inf,
    while_idle: Callable[[], None] | None = None,
) -> memoryview:
    """Read exactly ``size`` bytes before ``deadline``.

    ``begun`` marks the wait for the next PDU: until its first byte arrives,
    the read polls every STOP_POLL_SECONDS and calls ``while_idle`` (which
    may raise :class:`NodeStopping`); once a byte has arrived, the PDU has
    begun and the rest of it must arrive within ``begun`` seconds (the
    network timeout) and before ``limit``, however the bytes are split into
    TCP segments. The poll interval is never a read deadline.
    """
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    seconds = begun if begun is not None else max(0.0, deadline - time.monotonic())
    while got < size:
        waiting = begun is not None and got == 0
        if waiting and while_idle is not None:
            while_idle()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if waiting:
                raise PeerGone("no PDU within the timeout")
            raise PeerTooSlow(f"a PDU was not complete within {seconds:g} s")
        sock.settimeout(min(remaining, STOP_POLL_SECONDS) if waiting else remaining)
        try:
            n = sock.recv_into(view[got:], size - got)
        except TimeoutError:
            continue  # the deadline check above decides
        except OSError as exc:
            raise PeerGone(str(exc)) from None
        if n == 0:
            raise PeerGone("connection closed by peer")
        if waiting and begun is not None:
            deadline = min(time.monotonic() + begun, limit)
        got += n
    return view
