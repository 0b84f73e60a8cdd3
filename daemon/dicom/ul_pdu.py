"""DICOM Upper Layer PDUs (PS3.8 §9.3): the few the acceptor needs, with
strict bounds on every length so that malformed input is a ProtocolError,
never an oversized allocation or an exception deeper down.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

PDU_ASSOCIATE_RQ = 0x01
PDU_ASSOCIATE_AC = 0x02
PDU_ASSOCIATE_RJ = 0x03
PDU_P_DATA = 0x04
PDU_RELEASE_RQ = 0x05
PDU_RELEASE_RP = 0x06
PDU_ABORT = 0x07
PDU_TYPES = frozenset(range(1, 8))

# A-ASSOCIATE-RJ (PS3.8 §9.3.4)
RJ_PERMANENT = 1
RJ_TRANSIENT = 2
RJ_SOURCE_USER = 1
RJ_SOURCE_ACSE = 2
RJ_SOURCE_PRESENTATION = 3
RJ_USER_NO_REASON = 1
RJ_USER_APP_CONTEXT = 2
RJ_USER_CALLING_AE = 3
RJ_USER_CALLED_AE = 7
RJ_ACSE_PROTOCOL_VERSION = 2
RJ_PRESENTATION_CONGESTION = 1
RJ_PRESENTATION_LIMIT = 2

# Presentation context results (PS3.8 §9.3.3.2)
PC_ACCEPT = 0
PC_ABSTRACT_NOT_SUPPORTED = 3
PC_TRANSFER_NOT_SUPPORTED = 4

# A-ABORT sources and reasons (PS3.8 §9.3.8)
ABORT_SOURCE_USER = 0
ABORT_SOURCE_PROVIDER = 2
ABORT_REASON_NOT_SPECIFIED = 0
ABORT_REASON_UNEXPECTED_PDU = 2
ABORT_REASON_INVALID_PARAMETER = 6

_HEADER = struct.Struct(">BBL")
_ITEM = struct.Struct(">BBH")


class ProtocolError(Exception):
    """The peer sent something that is not valid Upper Layer protocol."""


@dataclass(frozen=True)
class PresentationContextRQ:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass
class AssociateRequest:
    protocol_version: int
    called_ae: str
    calling_ae: str
    called_ae_raw: bytes
    calling_ae_raw: bytes
    application_context: str
    contexts: list[PresentationContextRQ] = field(default_factory=list)
    max_pdu: int = 0  # 0 = unlimited
    implementation_class_uid: str = ""
    implementation_version: str = ""


def _uid(raw: bytes) -> str:
    try:
        return raw.rstrip(b"\x00 ").decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("non-ASCII UID in association request") from None


def _items(data: bytes | memoryview, what: str) -> Iterator[tuple[int, memoryview]]:
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        if len(view) - pos < _ITEM.size:
            raise ProtocolError(f"truncated item header in {what}")
        item_type, _, length = _ITEM.unpack_from(view, pos)
        pos += _ITEM.size
        if pos + length > len(view):
            raise ProtocolError(f"item 0x{item_type:02X} in {what} overruns its parent")
        yield item_type, view[pos : pos + length]
        pos += length


def parse_associate_rq(body: bytes) -> AssociateRequest:
    """Decode the variable part of an A-ASSOCIATE-RQ (after the 6-byte header)."""
    if len(body) < 68:
        raise ProtocolError("A-ASSOCIATE-RQ shorter than its fixed fields")
    (version,) = struct.unpack_from(">H", body, 0)
    called_raw, calling_raw = bytes(body[4:20]), bytes(body[20:36])
    rq = AssociateRequest(
        protocol_version=version,
        called_ae=_ae_text(called_raw),
        calling_ae=_ae_text(calling_raw),
        called_ae_raw=called_raw,
        calling_ae_raw=calling_raw,
        application_context="",
    )
    for item_type, value in _items(body[68:], "A-ASSOCIATE-RQ"):
        if item_type == 0x10:
            rq.application_context = _uid(bytes(value))
        elif item_type == 0x20:
            rq.contexts.append(_parse_context(value))
        elif item_type == 0x50:
            _parse_user_info(value, rq)
        # Unknown items are ignored (PS3.8 §9.3.1: shall be ignored).
    if not rq.application_context:
        raise ProtocolError("A-ASSOCIATE-RQ without an application context")
    return rq


def _ae_text(raw: bytes) -> str:
    """The AE title as printable text; non-printable bytes become '?'."""
    text = "".join(chr(b) if 0x20 <= b < 0x7F else "?" for b in raw)
    return text.strip()


def _parse_context(value: memoryview) -> PresentationContextRQ:
    if len(value) < 4:
        raise ProtocolError("presentation context item too short")
    context_id = value[0]
    abstract = ""
    transfers: list[str] = []
    for sub_type, sub in _items(value[4:], "presentation context"):
        if sub_type == 0x30:
            abstract = _uid(bytes(sub))
        elif sub_type == 0x40:
            transfers.append(_uid(bytes(sub)))
    if context_id % 2 == 0 or not abstract or not transfers:
        raise ProtocolError(f"invalid presentation context {context_id}")
    return PresentationContextRQ(context_id, abstract, tuple(transfers))


def _parse_user_info(value: memoryview, rq: AssociateRequest) -> None:
    for sub_type, sub in _items(value, "user information"):
        if sub_type == 0x51:
            if len(sub) != 4:
                raise ProtocolError("maximum length sub-item is not 4 bytes")
            (rq.max_pdu,) = struct.unpack(">L", sub)
        elif sub_type == 0x52:
            rq.implementation_class_uid = _uid(bytes(sub))
        elif sub_type == 0x55:
            rq.implementation_version = _ae_text(bytes(sub))


def _item(item_type: int, payload: bytes) -> bytes:
    if len(payload) > 0xFFFF:
        raise ValueError("item payload too long")
    return _ITEM.pack(item_type, 0, len(payload)) + payload


def _pad_uid(uid: str) -> bytes:
    return uid.encode("ascii")


def pdu(pdu_type: int, body: bytes) -> bytes:
    return _HEADER.pack(pdu_type, 0, len(body)) + body


def encode_associate_ac(
    rq: AssociateRequest,
    results: list[tuple[int, int, str]],
    *,
    max_pdu: int,
    implementation_class_uid: str,
    implementation_version: str,
) -> bytes:
    """A-ASSOCIATE-AC answering ``rq``; ``results`` = (context id, result, transfer syntax)."""
    items = [_item(0x10, _pad_uid(APPLICATION_CONTEXT))]
    for context_id, result, transfer in results:
        sub = _item(0x40, _pad_uid(transfer)) if transfer else b""
        items.append(_item(0x21, bytes([context_id, 0, result, 0]) + sub))
    user = (
        _item(0x51, struct.pack(">L", max_pdu))
        + _item(0x52, _pad_uid(implementation_class_uid))
        + _item(0x55, implementation_version.encode("ascii")[:16])
    )
    items.append(_item(0x50, user))
    fixed = struct.pack(">HH", 1, 0) + rq.called_ae_raw + rq.calling_ae_raw + b"\x00" * 32
    return pdu(PDU_ASSOCIATE_AC, fixed + b"".join(items))


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    return pdu(PDU_ASSOCIATE_RJ, bytes([0, result, source, reason]))


def encode_release_rp() -> bytes:
    return pdu(PDU_RELEASE_RP, b"\x00" * 4)


def encode_abort(source: int = ABORT_SOURCE_PROVIDER, reason: int = 0) -> bytes:
    return pdu(PDU_ABORT, bytes([0, 0, source, reason]))


def iter_pdvs(body: bytes | memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """Yield (context id, message control header, fragment) of a P-DATA-TF body."""
    view = memoryview(body)
    pos = 0
    while pos < len(view):
        if len(view) - pos < 6:
            raise ProtocolError("truncated PDV item")
        (length,) = struct.unpack_from(">L", view, pos)
        if length < 2 or pos + 4 + length > len(view):
            raise ProtocolError("PDV item length inconsistent with its PDU")
        context_id, control = view[pos + 4], view[pos + 5]
        yield context_id, control, view[pos + 6 : pos + 4 + length]
        pos += 4 + length


def encode_pdata(context_id: int, control: int, fragment: bytes) -> bytes:
    item = struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment
    return pdu(PDU_P_DATA, item)


def unpack_header(header: bytes) -> tuple[int, int]:
    pdu_type, _, length = _HEADER.unpack(header)
    return pdu_type, length
