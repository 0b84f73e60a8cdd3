"""The File Meta group we write in front of every received data set (PS3.10 §7.1).

Encoded directly with ``struct``: it runs for every instance on the C-STORE
path. The implementation identifiers here are also the ones we announce in
A-ASSOCIATE-AC.
"""

from __future__ import annotations

import struct

IMPLEMENTATION_CLASS_UID = "2.25.231874829155327340129874467231109821447"
IMPLEMENTATION_VERSION = "KI67NODE_010"
_META_PREFIX = b"\x00" * 128 + b"DICM"


def _short_text(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _even(raw: bytes, pad: bytes) -> bytes:
    return raw + pad if len(raw) % 2 else raw


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str) -> bytes:
    """Preamble, 'DICM' and the File Meta group, encoded directly (PS3.10 §7.1)."""
    elements = (
        struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 2)
        + b"\x00\x01"
        + _short_text(0x00020002, b"UI", _even(sop_class.encode(), b"\x00"))
        + _short_text(0x00020003, b"UI", _even(sop_instance.encode(), b"\x00"))
        + _short_text(0x00020010, b"UI", _even(transfer_syntax.encode(), b"\x00"))
        + _short_text(0x00020012, b"UI", _even(IMPLEMENTATION_CLASS_UID.encode(), b"\x00"))
        + _short_text(0x00020013, b"SH", _even(IMPLEMENTATION_VERSION.encode(), b" "))
    )
    if source_ae:
        elements += _short_text(0x00020016, b"AE", _even(source_ae.encode(), b" "))
    group_length = _short_text(0x00020000, b"UL", struct.pack("<L", len(elements)))
    return _META_PREFIX + group_length + elements


def safe_ae(text: str) -> str:
    """An AE title fit for a file header: printable ASCII, no backslash, ≤ 16."""
    cleaned = "".join(c for c in text if 0x20 <= ord(c) < 0x7F and c != "\\").strip()
    return cleaned[:16]
