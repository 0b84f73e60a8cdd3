"""DIMSE command sets (PS3.7 §6.3, §9.3): always Implicit VR Little Endian,
group 0000 only, so they are decoded and encoded here with ``struct``
instead of building pydicom datasets for every instance.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from daemon.dicom.dimse_status import Status
from daemon.dicom.ul_pdu import ProtocolError

TAG_AFFECTED_SOP_CLASS = 0x00000002
TAG_COMMAND_FIELD = 0x00000100
TAG_MESSAGE_ID = 0x00000110
TAG_MESSAGE_ID_RESPONDED = 0x00000120
TAG_PRIORITY = 0x00000700
TAG_DATASET_TYPE = 0x00000800
TAG_STATUS = 0x00000900
TAG_ERROR_COMMENT = 0x00000902
TAG_AFFECTED_SOP_INSTANCE = 0x00001000
TAG_MOVE_ORIGINATOR_AE = 0x00001030

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
NO_DATASET = 0x0101
RESPONSE_BIT = 0x8000  # a response's command field = its request's | this bit (PS3.7 §9.3)

MAX_COMMAND_BYTES = 65_536
_ELEMENT = struct.Struct("<HHL")


@dataclass(frozen=True)
class Command:
    elements: dict[int, bytes]

    def us(self, tag: int) -> int | None:
        raw = self.elements.get(tag)
        if raw is None or len(raw) != 2:
            return None
        return int(struct.unpack("<H", raw)[0])

    def text(self, tag: int) -> str | None:
        raw = self.elements.get(tag)
        if raw is None:
            return None
        try:
            return raw.rstrip(b"\x00 ").decode("ascii")
        except UnicodeDecodeError:
            return None

    @property
    def command_field(self) -> int | None:
        return self.us(TAG_COMMAND_FIELD)

    @property
    def message_id(self) -> int:
        return self.us(TAG_MESSAGE_ID) or 0

    @property
    def has_dataset(self) -> bool:
        value = self.us(TAG_DATASET_TYPE)
        return value is not None and value != NO_DATASET


def decode_command(data: bytes) -> Command:
    """Decode an Implicit VR LE group-0000 command set."""
    elements: dict[int, bytes] = {}
    pos = 0
    view = memoryview(data)
    while pos < len(view):
        if len(view) - pos < _ELEMENT.size:
            raise ProtocolError("truncated command element")
        group, elem, length = _ELEMENT.unpack_from(view, pos)
        pos += _ELEMENT.size
        if group != 0x0000 or length == 0xFFFFFFFF or pos + length > len(view):
            raise ProtocolError("malformed DIMSE command set")
        elements[(group << 16) | elem] = bytes(view[pos : pos + length])
        pos += length
    if TAG_COMMAND_FIELD not in elements:
        raise ProtocolError("DIMSE command without a command field")
    return Command(elements)


def _even(raw: bytes, pad: bytes) -> bytes:
    return raw + pad if len(raw) % 2 else raw


def encode_command(elements: list[tuple[int, bytes]]) -> bytes:
    """Encode elements (already in tag order, values raw) with a group length."""
    body = b"".join(_ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(v)) + v for tag, v in elements)
    group_length = _ELEMENT.pack(0, 0, 4) + struct.pack("<L", len(body))
    return group_length + body


def store_response(
    *, message_id: int, sop_class: str, sop_instance: str, status: int, comment: str = ""
) -> bytes:
    elements = [
        (TAG_AFFECTED_SOP_CLASS, _even(sop_class.encode("ascii"), b"\x00")),
        (TAG_COMMAND_FIELD, struct.pack("<H", C_STORE_RSP)),
        (TAG_MESSAGE_ID_RESPONDED, struct.pack("<H", message_id)),
        (TAG_DATASET_TYPE, struct.pack("<H", NO_DATASET)),
        (TAG_STATUS, struct.pack("<H", status)),
    ]
    if comment:
        text = comment.encode("ascii", "replace")[:64]
        elements.append((TAG_ERROR_COMMENT, _even(text, b" ")))
    elements.append((TAG_AFFECTED_SOP_INSTANCE, _even(sop_instance.encode("ascii"), b"\x00")))
    return encode_command(elements)


def echo_response(*, message_id: int, sop_class: str, status: int = Status.SUCCESS) -> bytes:
    return encode_command(
        [
            (TAG_AFFECTED_SOP_CLASS, _even(sop_class.encode("ascii"), b"\x00")),
            (TAG_COMMAND_FIELD, struct.pack("<H", C_ECHO_RSP)),
            (TAG_MESSAGE_ID_RESPONDED, struct.pack("<H", message_id)),
            (TAG_DATASET_TYPE, struct.pack("<H", NO_DATASET)),
            (TAG_STATUS, struct.pack("<H", status)),
        ]
    )


def generic_failure_response(command: Command, status: int) -> bytes:
    """Response for a command we do not perform (e.g. C-FIND on a storage context)."""
    field = (command.command_field or 0) | RESPONSE_BIT
    return encode_command(
        [
            (TAG_COMMAND_FIELD, struct.pack("<H", field)),
            (TAG_MESSAGE_ID_RESPONDED, struct.pack("<H", command.message_id)),
            (TAG_DATASET_TYPE, struct.pack("<H", NO_DATASET)),
            (TAG_STATUS, struct.pack("<H", status)),
        ]
    )
