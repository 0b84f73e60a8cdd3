"""One strict pass over a received Part 10 file: is it structurally
complete, and what are the few top-level values intake needs?

pydicom accepts a value cut short at the end of its input without a word
(a truncated last element, Pixel Data shorter than its length says, a length
near 2³² that swallows the rest). This walks the element *headers*, seeking
over values, and checks that the structure ends exactly at the end of the
file; on the way it keeps the raw bytes of the wanted top-level elements
(short values only). Nothing is allocated from a length the sender claims.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
MAX_DEPTH = 64
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_TRANSFER_SYNTAX = 0x00020010
MAX_WANTED_VALUE = 1024


@dataclass
class ScanResult:
    """``problem`` is None for a complete file; ``values`` maps tag → raw bytes."""

    problem: str | None
    transfer_syntax: str = ""
    values: dict[int, bytes] = field(default_factory=dict)


class Incomplete(Exception):
    """The element structure does not fit the file."""


def _read(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise Incomplete("data set ends inside an element header")
    return data


def _skip(fh: BinaryIO, length: int, end: int) -> None:
    target = fh.tell() + length
    if target > end:
        raise Incomplete("an element's length runs past the end of the data set")
    fh.seek(target)


def _element_header(fh: BinaryIO, implicit: bool) -> tuple[int, bytes, int]:
    group, elem = struct.unpack("<HH", _read(fh, 4))
    tag = (group << 16) | elem
    if group == 0xFFFE or implicit:
        (length,) = struct.unpack("<L", _read(fh, 4))
        return tag, b"", length
    vr = _read(fh, 2)
    if vr in _LONG_VRS:
        (length,) = struct.unpack("<xxL", _read(fh, 6))
    else:
        (length,) = struct.unpack("<H", _read(fh, 2))
    return tag, vr, length


def _walk(
    fh: BinaryIO, end: int, implicit: bool, wanted: frozenset[int], out: dict[int, bytes]
) -> None:
    # Stack of open undefined-length containers, each with the VR encoding of
    # its content: "seq" (items until the sequence delimiter), "item"
    # (elements until the item delimiter), "frags" (encapsulated pixel data
    # fragments until the sequence delimiter). A UN element of undefined
    # length is a sequence whose items are implicit VR little endian
    # (PS3.5 §6.2.2, CP-246), whatever the transfer syntax says.
    stack: list[tuple[str, bool]] = []
    while True:
        if fh.tell() == end:
            if stack:
                raise Incomplete("data set ends inside an undefined-length sequence")
            return
        context, level_implicit = stack[-1] if stack else ("top", implicit)
        tag, vr, length = _element_header(fh, level_implicit)
        if context in ("seq", "frags"):
            if tag == _SEQ_END:
                stack.pop()
            elif tag == _ITEM and length == _UNDEFINED and context == "seq":
                stack.append(("item", level_implicit))
            elif tag == _ITEM and length != _UNDEFINED:
                # A defined-length item is skipped whole (its content is not walked).
                _skip(fh, length, end)
            else:
                raise Incomplete(f"unexpected tag {tag:08X} inside a sequence")
        elif tag == _ITEM_END and context == "item":
            stack.pop()
        elif tag >> 16 == 0xFFFE:
            raise Incomplete(f"misplaced delimiter {tag:08X}")
        elif length == _UNDEFINED:
            if vr == b"UN":
                stack.append(("seq", True))
            elif vr == b"SQ" or level_implicit:
                stack.append(("seq", level_implicit))
            elif tag == _PIXEL_DATA and vr in (b"OB", b"OW"):
                stack.append(("frags", level_implicit))
            else:
                raise Incomplete(f"undefined length on a {vr.decode(errors='replace')} element")
        elif not stack and tag in wanted and length <= MAX_WANTED_VALUE:
            if fh.tell() + length > end:
                raise Incomplete("an element's length runs past the end of the data set")
            out[tag] = _read(fh, length)
        else:
            _skip(fh, length, end)
        if len(stack) > MAX_DEPTH:
            raise Incomplete(f"sequences nested deeper than {MAX_DEPTH}")


def scan_file(
    path: Path, wanted: frozenset[int] = frozenset(), transfer_syntax: str | None = None
) -> ScanResult:
    """Walk the whole file; ``transfer_syntax`` None = take it from the file meta."""
    values: dict[int, bytes] = {}
    with open(path, "rb", buffering=65_536) as fh:
        end = fh.seek(0, 2)
        try:
            fh.seek(128)
            if end < 132 or _read(fh, 4) != b"DICM":
                return ScanResult("no DICM prefix")
            tag, vr, length = _element_header(fh, implicit=False)
            if tag != 0x00020000 or vr != b"UL" or length != 4:
                return ScanResult("file meta group length missing")
            (meta_len,) = struct.unpack("<L", _read(fh, 4))
            meta_end = fh.tell() + meta_len
            if meta_end > end:
                return ScanResult("file meta group runs past the end of the file")
            while fh.tell() < meta_end:
                tag, vr, length = _element_header(fh, implicit=False)
                if tag == _TRANSFER_SYNTAX and length <= 64:
                    values[tag] = _read(fh, length)
                else:
                    _skip(fh, length, meta_end)
            if transfer_syntax is None:
                raw = values.get(_TRANSFER_SYNTAX, b"")
                transfer_syntax = raw.rstrip(b"\x00 ").decode("ascii", "replace")
            _walk(fh, end, transfer_syntax == IMPLICIT_VR_LE, wanted, values)
        except Incomplete as exc:
            return ScanResult(str(exc), transfer_syntax or "", values)
    return ScanResult(None, transfer_syntax, values)


def check_complete(path: Path, transfer_syntax: str) -> str | None:
    """None when the data set after the file meta ends exactly at the end of
    the file; otherwise a short reason."""
    return scan_file(path, frozenset(), transfer_syntax).problem
