"""Writing synthetic series to files, fast and byte-for-byte reproducibly.

A classic series has a few hundred instances that differ in a handful of
elements. The shared elements are encoded once, in segments cut at the tags
that differ; each file is then preamble + file meta + segments interleaved
with its own encoded elements. Compressed transfer syntaxes encapsulate
each frame with pydicom's encoders (pylibjpeg-openjpeg for JPEG 2000
lossless, pylibjpeg-rle or pydicom for RLE). Files are written to a temporary
name and renamed, so a crash never leaves a half file behind a real name.
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
from pathlib import Path

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.pixels.encoders import JPEG2000LosslessEncoder, RLELosslessEncoder
from pydicom.pixels.encoders.base import Encoder
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from lab.synth.dicom_writer import ClassicSeries

TRANSFER_SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "jpeg2000": JPEG2000Lossless,
    "rle": RLELossless,
}
IMPLEMENTATION_UID = "2.25.150766925378612063961233128442513519171"
IMPLEMENTATION_VERSION = "KI67NODE_SYNTH1"
_ENCODERS = {"jpeg2000": JPEG2000LosslessEncoder, "rle": RLELosslessEncoder}
_PIXEL_DATA = 0x7FE00010


def _encode(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return bytes(fp.getvalue())


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    """One explicit-VR little-endian element with a short (16-bit) length."""
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\0" * (len(raw) % 2)


def _file_meta(sop_class: str, sop_instance: str, syntax: str) -> bytes:
    """Preamble, "DICM" and the File Meta Information group (PS3.10 7.1)."""
    version = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"
    name = IMPLEMENTATION_VERSION.encode("ascii")
    body = (
        version
        + _element(0x0002, 0x0002, b"UI", _ui(sop_class))
        + _element(0x0002, 0x0003, b"UI", _ui(sop_instance))
        + _element(0x0002, 0x0010, b"UI", _ui(TRANSFER_SYNTAXES[syntax]))
        + _element(0x0002, 0x0012, b"UI", _ui(IMPLEMENTATION_UID))
        + _element(0x0002, 0x0013, b"SH", name + b" " * (len(name) % 2))
    )
    length = _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(body)))
    return b"\0" * 128 + b"DICM" + length + body


def _frames(ds: Dataset, data: bytes) -> np.ndarray:
    dtype = np.int16 if ds.PixelRepresentation else np.uint16
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    return np.frombuffer(data, dtype=dtype).reshape(n, int(ds.Rows), int(ds.Columns))


def _encapsulated(ds: Dataset, frames: np.ndarray, syntax: str) -> DataElement:
    encoder = _ENCODERS[syntax]
    chatty = logging.getLogger("openjpeg")  # logs one INFO line per encoded tile
    level = chatty.level
    chatty.setLevel(max(level, logging.WARNING))
    try:
        return _encode_frames(ds, frames, encoder)
    finally:
        chatty.setLevel(level)


def _encode_frames(ds: Dataset, frames: np.ndarray, encoder: Encoder) -> DataElement:
    encoded = [
        encoder.encode(
            np.ascontiguousarray(f),
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            samples_per_pixel=1,
            bits_allocated=16,
            bits_stored=int(ds.BitsStored),
            pixel_representation=int(ds.PixelRepresentation),
            photometric_interpretation="MONOCHROME2",
            number_of_frames=1,
        )
        for f in frames
    ]
    elem = DataElement(_PIXEL_DATA, "OB", encapsulate(encoded), is_undefined_length=True)
    return elem


def _atomic_write(path: Path, chunks: list[bytes]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        for c in chunks:
            fh.write(c)
    os.replace(tmp, path)


def write_classic(series: ClassicSeries, folder: Path, syntax: str) -> list[Path]:
    """Write ``IM00001.dcm``... (names made by us) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    base = series.base
    tags = sorted({int(e.tag) for inst in series.instances for e in inst})
    segments: list[list[DataElement]] = [[] for _ in range(len(tags) + 1)]
    for elem in base:
        if int(elem.tag) in tags:
            raise ValueError(f"element {elem.tag} is both shared and per instance")
        segments[bisect.bisect_left(tags, int(elem.tag))].append(elem)
    seg_bytes = [_encode(Dataset({e.tag: e for e in seg})) for seg in segments]
    paths = []
    for i, inst in enumerate(series.instances):
        own = Dataset({e.tag: e for e in inst})
        if syntax != "explicit":
            own[_PIXEL_DATA] = _encapsulated(base, _frames(base, inst.PixelData), syntax)
        chunks = [_file_meta(base.SOPClassUID, inst.SOPInstanceUID, syntax), seg_bytes[0]]
        for j, tag in enumerate(tags):
            if tag in own:
                chunks.append(_encode(Dataset({own[tag].tag: own[tag]})))
            chunks.append(seg_bytes[j + 1])
        path = folder / f"IM{i + 1:05d}.dcm"
        _atomic_write(path, chunks)
        paths.append(path)
    return paths


def write_single(ds: Dataset, folder: Path, syntax: str) -> Path:
    """Write one (multi-frame) instance as ``IM00001.dcm``."""
    folder.mkdir(parents=True, exist_ok=True)
    if syntax != "explicit":
        ds[_PIXEL_DATA] = _encapsulated(ds, _frames(ds, ds.PixelData), syntax)
    path = folder / "IM00001.dcm"
    _atomic_write(path, [_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, syntax), _encode(ds)])
    return path
