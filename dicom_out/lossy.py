"""Which source images count as lossy compressed (PS3.3 C.7.6.1.1.5, PS3.5 Annex A).

One place for the rule, used by the acceptor (prefer lossless transfer
syntaxes), the series filter (``filter.accept_lossy``) and the outputs (the
SR says so; derived images carry Lossy Image Compression "01").
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.uid import UID

# Transfer syntaxes whose compression may lose information (PS3.5 Annex A,
# PS3.6 Table A-1): JPEG lossy processes, JPEG-LS near-lossless, JPEG 2000 and
# HTJ2K that are not "lossless only", and the video syntaxes.
LOSSY_TRANSFER_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
        "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
        "1.2.840.10008.1.2.4.81",  # JPEG-LS Lossy (Near-Lossless)
        "1.2.840.10008.1.2.4.91",  # JPEG 2000 (lossless or lossy)
        "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 Multi-component (lossless or lossy)
        "1.2.840.10008.1.2.4.203",  # High-Throughput JPEG 2000 (lossless or lossy)
        "1.2.840.10008.1.2.4.100",  # MPEG2 Main Profile / Main Level
        "1.2.840.10008.1.2.4.101",  # MPEG2 Main Profile / High Level
        "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 High Profile / Level 4.1
        "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD-compatible
        "1.2.840.10008.1.2.4.104",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 (2D)
        "1.2.840.10008.1.2.4.105",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 (3D)
        "1.2.840.10008.1.2.4.106",  # MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2
        "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main Profile / Level 5.1
        "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10 Profile / Level 5.1
    }
)


def is_lossy(transfer_syntax: str) -> bool:
    """True for a transfer syntax whose pixel data may have lost information."""
    return transfer_syntax in LOSSY_TRANSFER_SYNTAXES


def lossy_marker(lossy_image_compression: object, transfer_syntax: object) -> str | None:
    """Why an instance counts as lossy compressed, or None.

    Lossy Image Compression (0028,2110) decides when present: "01" is lossy
    (once lossy, always lossy, whatever the transfer syntax now), "00" is
    not, even in a syntax that may be lossy (JPEG 2000 used losslessly).
    Without it, the transfer syntax decides.
    """
    flag = str(lossy_image_compression or "").strip()
    if flag == "01":
        return "Lossy Image Compression 01"
    if flag == "00":
        return None
    syntax = str(transfer_syntax or "").strip()
    if is_lossy(syntax):
        return f"{UID(syntax).name} transfer syntax"
    return None


def source_lossy(source: Iterable[Dataset]) -> str | None:
    """The first reason any instance of a source series counts as lossy, or None."""
    for ds in source:
        meta = getattr(ds, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID") if meta is not None else None
        reason = lossy_marker(ds.get("LossyImageCompression"), syntax)
        if reason is not None:
            return reason
    return None
