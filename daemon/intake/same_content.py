"""Is a re-sent instance the same as the one stored? Compare content, not wire bytes.

The same SOP instance comes back from another calling AE (the file meta
header the node writes names the sender), in another transfer syntax (a
PACS forwarding what a modality sent directly), or with sequences encoded
with defined instead of undefined lengths. None of that changes the
instance. This module answers whether two Part 10 files hold the same data
set: first by their data-set bytes after the file meta group (cheap, no
decoding), then by a canonical digest of the decoded data set — every
element except group 0002, group lengths and trailing padding, written in
implicit VR little endian with undefined-length sequences, and the pixel
data as decoded pixel values. Lossy and lossless copies of one image differ
there, as they should.

Only the duplicate path calls this (a SOP Instance UID already stored), so
the decoding cost never lands on ordinary C-STOREs.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

log = logging.getLogger(__name__)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PADDING_TAG = 0xFFFCFFFC
_BLOCK = 1 << 20


def same_content(first: Path, second: Path) -> bool:
    """True when both Part 10 files hold the same data set (see the module docstring).

    Anything that cannot be read or decoded counts as different: the caller
    then keeps the second copy aside instead of dropping it.
    """
    try:
        if _dataset_bytes_equal(first, second):
            return True
        return canonical_digest(first) == canonical_digest(second)
    except Exception as exc:  # noqa: BLE001 - unreadable means "not shown to be the same"
        log.info("re-sent instance could not be compared by content (%s)", exc.__class__.__name__)
        return False


def _dataset_start(fh: Any) -> tuple[int, bytes]:
    """(offset of the data set, transfer syntax) of a Part 10 file written with a meta group."""
    fh.seek(128)
    if fh.read(4) != b"DICM":
        raise ValueError("no DICM prefix")
    head = fh.read(12)
    if len(head) != 12 or head[:6] != b"\x02\x00\x00\x00UL":
        raise ValueError("file meta group length missing")
    (meta_len,) = struct.unpack_from("<L", head, 8)
    meta = fh.read(meta_len)
    marker = meta.find(b"\x02\x00\x10\x00UI")
    syntax = b""
    if marker >= 0:
        (length,) = struct.unpack_from("<H", meta, marker + 6)
        syntax = meta[marker + 8 : marker + 8 + length].rstrip(b"\x00 ")
    return 132 + 12 + meta_len, syntax


def _dataset_bytes_equal(first: Path, second: Path) -> bool:
    """The data sets after the file meta group are byte for byte the same."""
    with open(first, "rb") as a, open(second, "rb") as b:
        start_a, syntax_a = _dataset_start(a)
        start_b, syntax_b = _dataset_start(b)
        if syntax_a != syntax_b:
            return False
        size_a, size_b = first.stat().st_size - start_a, second.stat().st_size - start_b
        if size_a != size_b:
            return False
        a.seek(start_a)
        b.seek(start_b)
        while True:
            block_a, block_b = a.read(_BLOCK), b.read(_BLOCK)
            if block_a != block_b:
                return False
            if not block_a:
                return True


def canonical_digest(path: Path) -> str:
    """SHA-256 of the decoded data set, independent of transfer syntax and file meta."""
    ds = pydicom.dcmread(path)
    digest = hashlib.sha256()
    pixels = {kw: ds.get(kw) is not None for kw in _PIXEL_KEYWORDS}
    if any(pixels.values()):
        array = np.asarray(ds.pixel_array)
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        digest.update(f"pixels {little.dtype.str} {little.shape}".encode())
        digest.update(np.ascontiguousarray(little).tobytes())
    for keyword, present in pixels.items():
        if present:
            del ds[keyword]
    _normalise(ds)
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, ds)
    digest.update(fp.getvalue())
    return digest.hexdigest()


def _normalise(ds: Dataset) -> None:
    """Drop what encodings add (group lengths, padding); sequences with undefined lengths."""
    for elem in list(ds):  # iterating converts raw elements in the data set's own encoding
        if elem.tag.element == 0 or int(elem.tag) == _PADDING_TAG:
            del ds[elem.tag]
        elif elem.VR == "SQ" and isinstance(elem.value, Sequence):
            elem.is_undefined_length = True
            for item in elem.value:
                item.is_undefined_length_sequence_item = True
                _normalise(item)
