"""DICOM Upper Layer PDUs (PS3.8 §9.3): the few the acceptor needs, with
strict bounds on every length so that malformed input is a ProtocolError,
never an oversized allocation or an exception deeper down.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


class PduType(IntEnum):
    """PDU types (PS3.8 §9.3.1)."""

    ASSOCIATE_RQ = 0x01
    ASSOCIATE_AC = 0x02
    ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    RELEASE_RQ = 0x05
    RELEASE_RP = 0x06
    ABORT = 0x07


PDU_TYPES = frozenset(PduType)


class ItemType(IntEnum):
    """Item and sub-item types of A-ASSOCIATE-RQ/AC (PS3.8 §9.3.2, §9.3.3, Annex D)."""

    APPLICATION_CONTEXT = 0x10
    PRESENTATION_CONTEXT_RQ = 0x20
    PRESENTATION_CONTEXT_AC = 0x21
    ABSTRACT_SYNTAX = 0x30
    TRANSFER_SYNTAX = 0x40
    USER_INFORMATION = 0x50
    MAXIMUM_LENGTH = 0x51
    IMPLEMENTATION_CLASS_UID = 0x52
    IMPLEMENTATION_VERSION_NAME = 0x55


class RejectResult(IntEnum):
    """A-ASSOCIATE-RJ result (PS3.8 §9.3.4)."""

    PERMANENT = 1
    TRANSIENT = 2


class RejectSource(IntEnum):
    """A-ASSOCIATE-RJ source (PS3.8 §9.3.4); each source has its own reasons below."""

    SERVICE_USER = 1
    SERVICE_PROVIDER_ACSE = 2
    SERVICE_PROVIDER_PRESENTATION = 3


class UserRejectReason(IntEnum):
    """A-ASSOCIATE-RJ reasons of source 1, service user."""

    NO_REASON_GIVEN = 1
    APPLICATION_CONTEXT_NOT_SUPPORTED = 2
    CALLING_AE_NOT_RECOGNIZED = 3
    CALLED_AE_NOT_RECOGNIZED = 7


class AcseRejectReason(IntEnum):
    """A-ASSOCIATE-RJ reasons of source 2, service provider (ACSE)."""

    NO_REASON_GIVEN = 1
    PROTOCOL_VERSION_NOT_SUPPORTED = 2


class PresentationRejectReason(IntEnum):
    """A-ASSOCIATE-RJ reasons of source 3, service provider (presentation)."""

    TEMPORARY_CONGESTION = 1
    LOCAL_LIMIT_EXCEEDED = 2


class ContextResult(IntEnum):
    """Presentation context result in an A-ASSOCIATE-AC (PS3.8 §9.3.3.2)."""

    ACCEPTANCE = 0
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


class AbortSource(IntEnum):
    """A-ABORT source (PS3.8 §9.3.8)."""

    SERVICE_USER = 0
    SERVICE_PROVIDER = 2


class AbortReason(IntEnum):
    """A-ABORT reason, when the source is the service provider (PS3.8 §9.3.8)."""

    NOT_SPECIFIED = 0
    UNRECOGNIZED_PDU = 1
    UNEXPECTED_PDU = 2
    INVALID_PDU_PARAMETER = 6


class MessageControl(IntFlag):
    """The message control header of a PDV (PS3.8 Annex E.2)."""

    COMMAND = 0x01  # else a data set fragment
    LAST = 0x02  # the last fragment of the command or data set


_HEADER = struct.Struct(">BBL")
_ITEM = struct.Struct(">BBH")


class ProtocolError(Exception):
    """The peer sent something that is not valid Upper Layer protocol.

    ``reason`` is the A-ABORT reason to answer with (PS3.8 §9.3.8): an
    unknown PDU type is 1, a known PDU in the wrong state 2, anything wrong
    inside a PDU (lengths, items, fragments) 6.
    """

    def __init__(
        self, message: str, reason: AbortReason = AbortReason.INVALID_PDU_PARAMETER
    ) -> None:
        super().__init__(message)
        self.reason = reason


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
        if item_type == ItemType.APPLICATION_CONTEXT:
            rq.application_context = _uid(bytes(value))
        elif item_type == ItemType.PRESENTATION_CONTEXT_RQ:
            rq.contexts.append(_parse_context(value))
        elif item_type == ItemType.USER_INFORMATION:
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
        if sub_type == ItemType.ABSTRACT_SYNTAX:
            abstract = _uid(bytes(sub))
        elif sub_type == ItemType.TRANSFER_SYNTAX:
            transfers.append(_uid(bytes(sub)))
    # An even ID (PS3.8 §9.3.2.2 asks for odd ones), or a context without an
    # abstract syntax or transfer syntaxes, is answered per context, not by
    # aborting the association: DCMTK and Orthanc accept such requests too.
    return PresentationContextRQ(context_id, abstract, tuple(transfers))


def _parse_user_info(value: memoryview, rq: AssociateRequest) -> None:
    for sub_type, sub in _items(value, "user information"):
        if sub_type == ItemType.MAXIMUM_LENGTH:
            if len(sub) != 4:
                raise ProtocolError("maximum length sub-item is not 4 bytes")
            (rq.max_pdu,) = struct.unpack(">L", sub)
        elif sub_type == ItemType.IMPLEMENTATION_CLASS_UID:
            rq.implementation_class_uid = _uid(bytes(sub))
        elif sub_type == ItemType.IMPLEMENTATION_VERSION_NAME:
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
    """A-ASSOCIATE-AC answering ``rq``; ``results`` = (context id, result, transfer syntax).

    Every presentation context item carries a transfer syntax sub-item
    (PS3.8 §9.3.3.2): for a rejected context the value is not significant,
    and it is the first one proposed, as DCMTK and pynetdicom send it.
    """
    items = [_item(ItemType.APPLICATION_CONTEXT, _pad_uid(APPLICATION_CONTEXT))]
    proposed = {pc.context_id: pc.transfer_syntaxes for pc in rq.contexts}
    for context_id, result, transfer in results:
        shown = transfer or next(iter(proposed.get(context_id, ())), "")
        sub = _item(ItemType.TRANSFER_SYNTAX, _pad_uid(shown))
        items.append(
            _item(ItemType.PRESENTATION_CONTEXT_AC, bytes([context_id, 0, result, 0]) + sub)
        )
    user = (
        _item(ItemType.MAXIMUM_LENGTH, struct.pack(">L", max_pdu))
        + _item(ItemType.IMPLEMENTATION_CLASS_UID, _pad_uid(implementation_class_uid))
        + _item(ItemType.IMPLEMENTATION_VERSION_NAME, implementation_version.encode("ascii")[:16])
    )
    items.append(_item(ItemType.USER_INFORMATION, user))
    fixed = struct.pack(">HH", 1, 0) + rq.called_ae_raw + rq.calling_ae_raw + b"\x00" * 32
    return pdu(PduType.ASSOCIATE_AC, fixed + b"".join(items))


def encode_associate_rj(result: RejectResult, source: RejectSource, reason: int) -> bytes:
    return pdu(PduType.ASSOCIATE_RJ, bytes([0, result, source, reason]))


def encode_release_rp() -> bytes:
    return pdu(PduType.RELEASE_RP, b"\x00" * 4)


def encode_abort(
    source: AbortSource = AbortSource.SERVICE_PROVIDER,
    reason: AbortReason = AbortReason.NOT_SPECIFIED,
) -> bytes:
    return pdu(PduType.ABORT, bytes([0, 0, source, reason]))


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
    return pdu(PduType.P_DATA_TF, item)


def unpack_header(header: bytes) -> tuple[int, int]:
    pdu_type, _, length = _HEADER.unpack(header)
    return pdu_type, length
