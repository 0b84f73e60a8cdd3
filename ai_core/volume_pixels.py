"""The pixels of a series' instances, decoded into the volume's array.

Native pixel data is checked for its length, encapsulated codestreams for
the size their own headers claim (a decompression bomb is refused before it
is decoded); compressed transfer syntaxes are decoded with pydicom's pixel
handlers (pylibjpeg plugins).
"""

from __future__ import annotations

import struct

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from ai_core.errors import VolumeError
from ai_core.volume_headers import HEADER_ERRORS, FileInfo, Frame

_DECODE_ERRORS = (*HEADER_ERRORS, RuntimeError, NotImplementedError)
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def decode_into(
    out: np.ndarray, files: list[FileInfo], frames: list[Frame], rescaled: bool
) -> None:
    """Decode each frame's pixels into ``out[z]`` (z = the frame's sorted position), rescaled
    when ``rescaled``."""
    targets: dict[int, list[tuple[int, Frame]]] = {}
    for z, frame in enumerate(frames):
        targets.setdefault(frame.file_index, []).append((z, frame))
    for file_index, wanted in targets.items():
        info = files[file_index]
        pixels = _decode_file(info)
        for z, frame in wanted:
            plane = pixels[frame.frame_index]
            if rescaled:
                out[z] = plane.astype(np.float32) * frame.slope + frame.intercept
            else:
                out[z] = plane


def _decode_file(info: FileInfo) -> np.ndarray:
    name = info.path.name
    try:
        ds = pydicom.dcmread(info.path)
    except HEADER_ERRORS as exc:
        raise VolumeError(f"{name}: unreadable DICOM file ({exc})") from exc
    if "PixelData" not in ds:
        raise VolumeError(f"{name}: no PixelData (float or double pixel data is unsupported)")
    encapsulated = ds.file_meta.TransferSyntaxUID.is_encapsulated
    if encapsulated:
        _check_codestreams(ds, info)
    else:
        expected = info.rows * info.columns * info.n_frames * info.dtype.itemsize
        actual = len(ds.PixelData)
        if actual < expected:
            raise VolumeError(
                f"{name}: pixel data has {actual} bytes but Rows×Columns×Frames needs {expected}; "
                "the instance is truncated"
            )
    try:
        pixels = ds.pixel_array
    except _DECODE_ERRORS as exc:
        kind = "compressed" if encapsulated else "native"
        raise VolumeError(
            f"{name}: corrupt {kind} pixel data could not be decoded ({exc})"
        ) from exc
    pixels = np.asarray(pixels).reshape((-1, *pixels.shape[-2:]))
    if pixels.shape != (info.n_frames, info.rows, info.columns):
        raise VolumeError(
            f"{name}: decoded pixels have shape {pixels.shape}, the header says "
            f"{(info.n_frames, info.rows, info.columns)}"
        )
    return pixels


def _check_codestreams(ds: Dataset, info: FileInfo) -> None:
    """Refuse codestreams whose own header claims another size (decompression bombs)."""
    name = info.path.name
    try:
        for number, frame in enumerate(
            generate_frames(ds.PixelData, number_of_frames=info.n_frames), start=1
        ):
            dims = _codestream_dims(frame)
            if dims is None:
                continue
            width, height = dims
            if width != info.columns or height not in (0, info.rows):
                raise VolumeError(
                    f"{name}: frame {number}'s codestream is {width}×{height}, the header says "
                    f"{info.columns}×{info.rows}; refusing to decode it"
                )
    except VolumeError:
        raise
    except _DECODE_ERRORS as exc:
        raise VolumeError(f"{name}: corrupt encapsulated pixel data ({exc})") from exc


def _codestream_dims(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG 2000 SIZ or JPEG/JPEG-LS SOF marker, if found."""
    if data[:4] == b"\xff\x4f\xff\x51" and len(data) >= 24:
        xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", data[8:24])
        return xsiz - xosiz, ysiz - yosiz
    if data[:2] != b"\xff\xd8":
        return None  # RLE or unknown: the decoder sizes its output from the dataset
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        if marker == 0xDA:
            return None
        pos += 2 + length
    return None
