"""One accepted DICOM association: negotiation, then C-ECHO and C-STORE.

A lean acceptor built for intake: every PDU length is checked against a
cap before anything is allocated, every read has a deadline (a slow or
silent peer is dropped), and a dataset is streamed straight into a spool
temp file as its fragments arrive, so memory stays bounded by one PDU.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from daemon.dicom.dimse import (
    C_ECHO_RQ,
    C_STORE_RQ,
    MAX_COMMAND_BYTES,
    TAG_AFFECTED_SOP_CLASS,
    TAG_AFFECTED_SOP_INSTANCE,
    Command,
    decode_command,
    echo_response,
    generic_failure_response,
    store_response,
)
from daemon.dicom.dimse_status import Status, is_failure
from daemon.dicom.file_meta import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION,
    file_meta,
    safe_ae,
)
from daemon.dicom.negotiation import AcceptorConfig, association_reject, context_results
from daemon.dicom.pdu_io import (
    NodeStopping,
    PeerGone,
    PeerTooSlow,
    peer_began_message,
    recv_exact,
)
from daemon.dicom.storage import (
    InstanceStore,
    ReceivingFile,
    StoreOutcome,
    failure_status,
    rejection_reason,
    valid_uid,
)
from daemon.dicom.ul_pdu import (
    PDU_TYPES,
    AbortReason,
    AbortSource,
    AssociateRequest,
    ContextResult,
    MessageControl,
    PduType,
    ProtocolError,
    encode_abort,
    encode_associate_ac,
    encode_associate_rj,
    encode_pdata,
    encode_release_rp,
    iter_pdvs,
    parse_associate_rq,
    unpack_header,
)
from daemon.errors import InvalidInstanceError
from daemon.ops import metrics

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
MAX_ASSOCIATE_RQ_BYTES = 1_048_576


@dataclass
class _Message:
    context_id: int
    command_bytes: bytearray = field(default_factory=bytearray)
    command: Command | None = None
    temp: ReceivingFile | None = None
    dataset_bytes: int = 0
    reject: tuple[int, str] | None = None


class AcceptorAssociation:
    """Runs one association on an already accepted (and TLS-wrapped) socket."""

    def __init__(
        self,
        sock: socket.socket,
        config: AcceptorConfig,
        storage: InstanceStore[Any],
        peer: str,
    ) -> None:
        self.sock = sock
        self.config = config
        self.storage = storage
        self.peer = peer
        self.calling_ae = ""
        self.contexts: dict[int, tuple[str, str]] = {}  # id -> (abstract, transfer)
        self._message: _Message | None = None
        self.stored = 0
        self.stopping = False
        self._stop_grace = False  # the one message let in after the stop began

    def _while_idle(self) -> None:
        """Between messages: a stopping node ends the association here."""
        if self.stopping and self._message is None:
            if self._stop_grace or not peer_began_message(self.sock):
                raise NodeStopping()
            # The peer's next message reached us as the stop began: finish that one.
            self._stop_grace = True

    # -- socket I/O with deadlines (daemon.dicom.pdu_io) ------------------------
    def _read_pdu(
        self, wait: float, max_body: int, *, whole_deadline: float | None = None
    ) -> tuple[int, memoryview]:
        """The next PDU: it must begin within ``wait`` seconds; once begun, all
        of it must arrive within the network timeout (or by ``whole_deadline``,
        the ACSE deadline of the association request)."""
        started = time.monotonic()
        deadline = started + wait if whole_deadline is None else whole_deadline
        pdu_seconds = (
            self.config.network_timeout if whole_deadline is None else whole_deadline - started
        )
        header = recv_exact(
            self.sock,
            6,
            deadline,
            begun=pdu_seconds,
            limit=whole_deadline or math.inf,
            while_idle=self._while_idle,
        )
        pdu_type, length = unpack_header(bytes(header))
        if pdu_type not in PDU_TYPES:
            raise ProtocolError(f"unknown PDU type 0x{pdu_type:02X}", AbortReason.UNRECOGNIZED_PDU)
        if length > max_body:
            raise ProtocolError(f"PDU of {length} bytes exceeds the limit of {max_body}")
        pdu_deadline = whole_deadline or (time.monotonic() + pdu_seconds)
        body = recv_exact(self.sock, length, pdu_deadline)
        return pdu_type, body

    def _send(self, data: bytes) -> None:
        self.sock.settimeout(self.config.network_timeout)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise PeerGone(str(exc)) from None

    # -- the association --------------------------------------------------------
    def run(self) -> str:
        """Serve until release/abort/timeout; return how it ended."""
        outcome = "closed"
        try:
            # The ACSE timeout bounds the whole request, from the connection on.
            acse_deadline = time.monotonic() + self.config.acse_timeout
            pdu_type, body = self._read_pdu(
                self.config.acse_timeout, MAX_ASSOCIATE_RQ_BYTES, whole_deadline=acse_deadline
            )
            if pdu_type != PduType.ASSOCIATE_RQ:
                raise ProtocolError("expected A-ASSOCIATE-RQ", AbortReason.UNEXPECTED_PDU)
            rq = parse_associate_rq(bytes(body))
            if not self._negotiate(rq):
                return "rejected"
            outcome = self._serve()
        except ProtocolError as exc:
            log.warning("protocol error from %s: %s; aborting", self.peer, exc)
            metrics.REJECTIONS.labels(reason="protocol_error").inc()
            self._try_send(encode_abort(reason=exc.reason))
            outcome = "aborted"
        except PeerTooSlow as exc:
            # A PDU stopped arriving half-way: the network timeout passed.
            log.warning("association with %s aborted: %s", self.peer, exc)
            metrics.REJECTIONS.labels(reason="network_timeout").inc()
            self._try_send(encode_abort())
            outcome = "aborted (network timeout)"
        except PeerGone as exc:
            log.info("association with %s ended: %s", self.peer, exc)
            outcome = "dropped"
        except NodeStopping:
            # Between two messages: every instance answered so far is kept;
            # the sender resends the rest when the node is back.
            self._try_send(encode_abort(source=AbortSource.SERVICE_USER))
            outcome = "aborted (node stopping)"
        finally:
            self._drop_message()
        return outcome

    def _try_send(self, data: bytes) -> None:
        try:
            self._send(data)
        except PeerGone:
            pass

    def _negotiate(self, rq: AssociateRequest) -> bool:
        self.calling_ae = safe_ae(rq.calling_ae)
        reject = association_reject(rq, self.config)
        if reject is not None:
            metrics.ASSOCIATIONS.labels(outcome="rejected").inc()
            metrics.REJECTIONS.labels(reason="association_rejected").inc()
            log.warning("association from %s rejected (reason %s)", self.peer, reject)
            self._try_send(encode_associate_rj(*reject))
            return False
        results = context_results(rq, self.config)
        abstract_of = {pc.context_id: pc.abstract_syntax for pc in rq.contexts}
        for context_id, result, transfer in results:
            if result == ContextResult.ACCEPTANCE:
                self.contexts[context_id] = (abstract_of[context_id], transfer)
        self._send(
            encode_associate_ac(
                rq,
                results,
                max_pdu=self.config.max_pdu,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version=IMPLEMENTATION_VERSION,
            )
        )
        metrics.ASSOCIATIONS.labels(outcome="accepted").inc()
        return True

    def _serve(self) -> str:
        while True:
            pdu_type, body = self._read_pdu(self.config.network_timeout, self.config.max_pdu + 6)
            if pdu_type == PduType.P_DATA_TF:
                self._on_pdata(body)
            elif pdu_type == PduType.RELEASE_RQ:
                self._drop_message()
                self._try_send(encode_release_rp())
                return "released"
            elif pdu_type == PduType.ABORT:
                return "aborted by peer"
            else:
                raise ProtocolError(
                    f"unexpected PDU type 0x{pdu_type:02X} in an association",
                    AbortReason.UNEXPECTED_PDU,
                )

    # -- P-DATA ------------------------------------------------------------
    def _on_pdata(self, body: memoryview) -> None:
        for context_id, control, fragment in iter_pdvs(body):
            if context_id not in self.contexts:
                raise ProtocolError(f"PDV on presentation context {context_id} not accepted")
            is_command = bool(control & MessageControl.COMMAND)
            is_last = bool(control & MessageControl.LAST)
            msg = self._message
            if is_command:
                if msg is None:
                    msg = self._message = _Message(context_id)
                if msg.command is not None or msg.context_id != context_id:
                    raise ProtocolError("command fragment while a dataset was expected")
                if len(msg.command_bytes) + len(fragment) > MAX_COMMAND_BYTES:
                    raise ProtocolError("DIMSE command set too large")
                msg.command_bytes += fragment
                if is_last:
                    msg.command = decode_command(bytes(msg.command_bytes))
                    self._on_command(msg)
            else:
                if msg is None or msg.command is None or msg.context_id != context_id:
                    raise ProtocolError("dataset fragment without its command")
                self._on_dataset_fragment(msg, fragment)
                if is_last:
                    self._finish_store(msg)

    def _on_command(self, msg: _Message) -> None:
        command = msg.command
        assert command is not None
        field_ = command.command_field
        abstract, transfer = self.contexts[msg.context_id]
        if field_ == C_ECHO_RQ and not command.has_dataset:
            self._reply(msg, echo_response(message_id=command.message_id, sop_class=VERIFICATION))
            return
        if field_ != C_STORE_RQ:
            if command.has_dataset:
                msg.reject = (Status.UNRECOGNIZED_OPERATION, "operation not supported")
                return
            self._reply(msg, generic_failure_response(command, Status.UNRECOGNIZED_OPERATION))
            return
        sop_class = command.text(TAG_AFFECTED_SOP_CLASS) or ""
        sop_instance = command.text(TAG_AFFECTED_SOP_INSTANCE) or ""
        if not valid_uid(sop_instance) or not valid_uid(sop_class):
            msg.reject = (Status.INVALID_UID, "invalid Affected SOP Class/Instance UID")
        elif sop_class != abstract:
            msg.reject = (
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "SOP Class differs from the presentation context",
            )
        if not command.has_dataset:
            self._reply_store(msg, *(msg.reject or (Status.MISSING_ATTRIBUTE, "no data set")))
            return
        if msg.reject is None:
            try:
                msg.temp = self.storage.open_temp()
                msg.temp.write(file_meta(sop_class, sop_instance, transfer, self.calling_ae))
            except Exception as exc:  # noqa: BLE001 - the network boundary: a status, not a crash
                log.error("cannot open a spool file: %s", exc)
                self._drop_temp(msg)
                msg.reject = failure_status(exc)

    def _on_dataset_fragment(self, msg: _Message, fragment: memoryview) -> None:
        msg.dataset_bytes += len(fragment)
        if msg.reject is not None:
            return  # keep reading the sender's fragments, keep nothing
        if msg.dataset_bytes > self.config.max_instance_bytes:
            msg.reject = (Status.INSTANCE_TOO_LARGE, "instance exceeds node.max_instance_bytes")
            self._drop_temp(msg)
            return
        assert msg.temp is not None
        try:
            msg.temp.write(fragment)
        except Exception as exc:  # noqa: BLE001 - the network boundary: a status, not a crash
            log.error("spool write failed: %s", exc)
            msg.temp = None
            msg.reject = failure_status(exc)

    def _finish_store(self, msg: _Message) -> None:
        started = time.perf_counter()
        if msg.reject is not None:
            self._drop_temp(msg)
            metrics.REJECTIONS.labels(reason=Status(msg.reject[0]).name.lower()).inc()
            self._reply_store(msg, *msg.reject)
            return
        assert msg.temp is not None and msg.command is not None
        temp, msg.temp = msg.temp, None
        try:
            temp.flush()
        except Exception as exc:  # noqa: BLE001 - the network boundary: a status, not a crash
            log.error("spool flush failed: %s", exc)
            self._reply_store(msg, *failure_status(exc))
            return
        outcome = self._store(temp, msg.command)
        if not is_failure(outcome.status):
            self.stored += 1
        metrics.STORE_SECONDS.observe(time.perf_counter() - started)
        self._reply_store(msg, outcome.status, outcome.comment)

    def _store(self, temp: ReceivingFile, command: Command) -> StoreOutcome:
        """Hand the received file to storage; any error becomes its DIMSE status here."""
        sop_instance = command.text(TAG_AFFECTED_SOP_INSTANCE) or ""
        try:
            return self.storage.store(
                temp,
                sop_class=command.text(TAG_AFFECTED_SOP_CLASS) or "",
                sop_instance=sop_instance,
                calling_aet=self.calling_ae,
            )
        except Exception as exc:  # noqa: BLE001 - the network boundary: a status, not a crash
            status, comment = failure_status(exc)
            metrics.REJECTIONS.labels(reason=rejection_reason(exc)).inc()
            if isinstance(exc, InvalidInstanceError):
                log.warning("rejected instance %s from %s: %s", sop_instance, self.calling_ae, exc)
            else:
                log.error(
                    "storing %s failed: %s",
                    sop_instance,
                    exc,
                    exc_info=status is Status.PROCESSING_FAILURE,
                )
            return StoreOutcome(status, comment)

    def _reply_store(self, msg: _Message, status: int, comment: str = "") -> None:
        assert msg.command is not None
        response = store_response(
            message_id=msg.command.message_id,
            sop_class=msg.command.text(TAG_AFFECTED_SOP_CLASS) or "",
            sop_instance=msg.command.text(TAG_AFFECTED_SOP_INSTANCE) or "",
            status=int(status),
            comment=comment if is_failure(status) else "",
        )
        self._reply(msg, response)

    def _reply(self, msg: _Message, command_bytes: bytes) -> None:
        self._message = None
        self._send(
            encode_pdata(
                msg.context_id, MessageControl.COMMAND | MessageControl.LAST, command_bytes
            )
        )

    def _drop_temp(self, msg: _Message) -> None:
        if msg.temp is not None:
            msg.temp.discard()
            msg.temp = None

    def _drop_message(self) -> None:
        if self._message is not None:
            self._drop_temp(self._message)
            self._message = None
