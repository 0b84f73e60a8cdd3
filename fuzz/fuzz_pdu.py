"""Fuzz target: what the acceptor parses from a peer's bytes (PS3.8 PDUs, PS3.7 command sets).

An input is what a peer sends on the socket (a seed is one recorded PDU or
one recorded client stream). It goes two ways:

* PDU by PDU through the parse functions the association calls:
  :func:`unpack_header`, then :func:`parse_associate_rq` (with the negotiation
  and the A-ASSOCIATE-AC built on its result) or :func:`iter_pdvs`, whose
  command fragments are joined and decoded by :func:`decode_command`. Only
  :class:`ProtocolError` may leave them. An error ends its PDU, not the
  input, so that one bad PDU does not hide the next.
* Whole, through :meth:`AcceptorAssociation.run` on an in-memory socket
  and a storage that keeps nothing (or fails as the input's last byte says,
  :class:`Fault`): it returns how the association ended and raises nothing,
  and what it sends back is well-formed PDUs.

Memory: the parse path may allocate a fixed slack plus a multiple of the
input, never from a length the peer claims; the association no more than
its PDU caps (a body buffer is allocated once its length passed the cap).
Checked with tracemalloc on one input in eight (``engine.measured``), on all
of them when the tests replay the corpus; libFuzzer's ``-rss_limit_mb`` and
``-timeout`` bound the rest.
"""

from __future__ import annotations

import socket
import sys
from enum import IntEnum
from typing import cast

from daemon.dicom.association import MAX_ASSOCIATE_RQ_BYTES, AcceptorAssociation
from daemon.dicom.dimse import (
    MAX_COMMAND_BYTES,
    TAG_AFFECTED_SOP_CLASS,
    TAG_AFFECTED_SOP_INSTANCE,
    Command,
    decode_command,
)
from daemon.dicom.dimse_status import Status
from daemon.dicom.file_meta import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from daemon.dicom.listener import abstract_syntaxes
from daemon.dicom.negotiation import AcceptorConfig, association_reject, context_results
from daemon.dicom.storage import StoreOutcome
from daemon.dicom.transfer_syntaxes import decodable_transfer_syntaxes
from daemon.dicom.ul_pdu import (
    PDU_TYPES,
    AssociateRequest,
    MessageControl,
    PduType,
    ProtocolError,
    encode_associate_ac,
    iter_pdvs,
    parse_associate_rq,
    unpack_header,
)
from daemon.errors import DatabaseError, InvalidInstanceError, SpoolError
from fuzz.engine import allocation_peak, fuzz_main, measured, require

HEADER_BYTES = 6
CONFIG = AcceptorConfig(  # what the listener negotiates (other_storage = "ignore")
    ae_title="KI67NODE",  # the seeds' called AE title
    abstract_syntaxes=abstract_syntaxes("ignore"),
    transfer_syntaxes=decodable_transfer_syntaxes(),
    require_called_aet=True,
    max_pdu=65_536,  # the node's floor is 16 KiB; small keeps the body buffers cheap
    max_instance_bytes=8_192,  # so that the larger seeds reach "instance too large"
)
PARSE_SLACK_BYTES = 256 * 1024
PARSE_BYTES_PER_INPUT_BYTE = 64  # Python objects per parsed byte (contexts, UIDs)
ASSOCIATION_CAP_BYTES = max(MAX_ASSOCIATE_RQ_BYTES, CONFIG.max_pdu + HEADER_BYTES)


# -- path 1: the parse functions, PDU by PDU ---------------------------------------------
def parse_pdus(data: bytes) -> None:
    """Parse ``data`` as consecutive PDUs the way the association does."""
    command = bytearray()
    pos = 0
    while len(data) - pos >= HEADER_BYTES:
        pdu_type, length = unpack_header(data[pos : pos + HEADER_BYTES])
        body = data[pos + HEADER_BYTES : pos + HEADER_BYTES + length]  # short if cut
        pos += HEADER_BYTES + length
        try:
            if pdu_type == PduType.ASSOCIATE_RQ:
                _negotiate(parse_associate_rq(body))
            elif pdu_type == PduType.P_DATA_TF:
                _pdata(body, command)
        except ProtocolError:
            command.clear()


def _negotiate(rq: AssociateRequest) -> None:
    for ae in (rq.called_ae, rq.calling_ae):
        require(len(ae) <= 16 and ae.isprintable(), f"AE title {ae!r} not ≤ 16 printable")
    require(len(rq.called_ae_raw) == len(rq.calling_ae_raw) == 16, "raw AE titles not 16 bytes")
    require(bool(rq.application_context), "request without application context parsed")
    for pc in rq.contexts:
        require(0 <= pc.context_id <= 255, f"presentation context id {pc.context_id}")
    if association_reject(rq, CONFIG) is not None:
        return
    results = context_results(rq, CONFIG)
    require(len(results) == len(rq.contexts), "a context without a result")
    ac = encode_associate_ac(
        rq,
        results,
        max_pdu=CONFIG.max_pdu,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version=IMPLEMENTATION_VERSION,
    )
    check_sent_pdu(ac)


def _pdata(body: bytes, command: bytearray) -> None:
    for context_id, control, fragment in iter_pdvs(body):
        require(0 <= context_id <= 255 and 0 <= control <= 255, "PDV header out of range")
        require(len(fragment) <= len(body) - 6, "PDV fragment larger than its PDU")
        if not control & MessageControl.COMMAND:
            continue
        if len(command) + len(fragment) > MAX_COMMAND_BYTES:
            raise ProtocolError("DIMSE command set too large")  # as the association does
        command += fragment
        if control & MessageControl.LAST:
            data = bytes(command)
            command.clear()
            _command(decode_command(data), len(data))


def _command(cmd: Command, size: int) -> None:
    require(sum(len(v) for v in cmd.elements.values()) <= size, "command values exceed input")
    field = cmd.command_field  # None when not 2 bytes: answered as an unknown operation
    require(field is None or 0 <= field <= 0xFFFF, f"command field {field!r}")
    require(0 <= cmd.message_id <= 0xFFFF, f"message id {cmd.message_id}")
    require(isinstance(cmd.has_dataset, bool), "has_dataset is not a bool")
    for tag in (TAG_AFFECTED_SOP_CLASS, TAG_AFFECTED_SOP_INSTANCE):
        text = cmd.text(tag)
        require(text is None or text.isascii(), f"non-ASCII text of {tag:08X}")


# -- path 2: the whole association on an in-memory socket -------------------------------
class _PeerSocket:
    """The socket calls an association makes, served from the input."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def settimeout(self, _seconds: float | None) -> None:
        return None

    def recv_into(self, buffer: memoryview, nbytes: int = 0) -> int:
        n = min(nbytes or len(buffer), len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n

    def sendall(self, data: bytes) -> None:
        check_sent_pdu(bytes(data))


class Fault(IntEnum):
    """What the fake storage does, picked by the input's last byte (modulo 8)."""

    NONE = 0
    ALSO_NONE = 1
    DATABASE_DOWN = 2  # store raises DatabaseError
    SPOOL_OPEN = 3  # open_temp raises SpoolError
    SPOOL_WRITE = 4  # write raises OSError (after the file meta: on the data set)
    SPOOL_FLUSH = 5  # flush raises SpoolError
    INVALID_INSTANCE = 6  # store raises InvalidInstanceError
    BUG = 7  # store raises something unexpected


class _ReceivingFile:
    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        if self.fault is Fault.SPOOL_WRITE and self.size:
            raise OSError("disk full (injected)")
        self.size += len(data)

    def flush(self) -> None:
        if self.fault is Fault.SPOOL_FLUSH:
            raise SpoolError("fsync failed (injected)")

    def discard(self) -> None:
        return None


class _Storage:
    """An InstanceStore that keeps nothing: Success, or the injected fault."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault

    def open_temp(self) -> _ReceivingFile:
        if self.fault is Fault.SPOOL_OPEN:
            raise SpoolError("spool not writable (injected)")
        return _ReceivingFile(self.fault)

    def store(
        self, temp: _ReceivingFile, *, sop_class: str, sop_instance: str, calling_aet: str
    ) -> StoreOutcome:
        if self.fault is Fault.DATABASE_DOWN:
            raise DatabaseError("database unreachable (injected)")
        if self.fault is Fault.INVALID_INSTANCE:
            raise InvalidInstanceError("data set incomplete (injected)", Status.CANNOT_UNDERSTAND)
        if self.fault is Fault.BUG:
            raise KeyError("a bug in the store (injected)")
        return StoreOutcome(Status.SUCCESS)


def run_association(data: bytes) -> None:
    """One association fed ``data``; it must end with an outcome, not an exception."""
    sock = cast(socket.socket, _PeerSocket(data))
    storage = _Storage(Fault(data[-1] % len(Fault)) if data else Fault.NONE)
    outcome = AcceptorAssociation(sock, CONFIG, storage, "fuzz").run()
    require(isinstance(outcome, str) and bool(outcome), f"association outcome {outcome!r}")


def check_sent_pdu(data: bytes) -> None:
    """What the acceptor sends is one complete PDU; P-DATA carries a valid command."""
    require(len(data) >= HEADER_BYTES, "sent PDU shorter than its header")
    pdu_type, length = unpack_header(data[:HEADER_BYTES])
    require(pdu_type in PDU_TYPES, f"sent PDU of unknown type 0x{pdu_type:02X}")
    require(length == len(data) - HEADER_BYTES, "sent PDU length ≠ its body")
    if pdu_type == PduType.P_DATA_TF:
        for _, control, fragment in iter_pdvs(data[HEADER_BYTES:]):
            require(control == MessageControl.COMMAND | MessageControl.LAST, "sent PDV control")
            decode_command(bytes(fragment))
    elif pdu_type in (PduType.ASSOCIATE_RJ, PduType.RELEASE_RP, PduType.ABORT):
        require(length == 4, f"sent PDU 0x{pdu_type:02X} body of {length} bytes")


# -- the contract -------------------------------------------------------------------------
def check(data: bytes, *, measure: bool | None = None) -> None:
    """The whole contract for one input; raises on a finding.

    ``measure`` (default: :func:`measured`) also bounds what each path allocates.
    """
    if not (measured(data) if measure is None else measure):
        parse_pdus(data)
        run_association(data)
        return
    peak = allocation_peak(parse_pdus, data)
    bound = PARSE_SLACK_BYTES + PARSE_BYTES_PER_INPUT_BYTE * len(data)
    require(peak <= bound, f"parsing {len(data)} bytes allocated {peak} bytes (bound {bound})")
    peak = allocation_peak(run_association, data)
    bound = PARSE_SLACK_BYTES + ASSOCIATION_CAP_BYTES + PARSE_BYTES_PER_INPUT_BYTE * len(data)
    require(peak <= bound, f"an association fed {len(data)} bytes allocated {peak} bytes")


if __name__ == "__main__":
    fuzz_main(check, ("daemon.dicom",))
    sys.exit(0)
