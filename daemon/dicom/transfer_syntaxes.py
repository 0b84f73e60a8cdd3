"""The transfer syntaxes the node can read: what the listener accepts and what a
retrieval from an archive asks for (:mod:`daemon.sources.dimse`).

What pydicom cannot decode here is never negotiated (the sender then falls
back to an uncompressed syntax), so nothing is taken in that the worker
cannot read. Deflate never is (an unbounded inflate would be a bomb).
"""

from __future__ import annotations

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # explicit, implicit VR LE
# Compressed syntaxes worth offering when pydicom has a decoder for them.
COMPRESSED_CANDIDATES = (
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)


def decodable_compressed() -> tuple[str, ...]:
    """The compressed candidates pydicom can decode on this machine, in that order."""
    from pydicom.pixels.decoders.base import get_decoder

    usable = []
    for uid in COMPRESSED_CANDIDATES:
        try:
            if get_decoder(uid).is_available:
                usable.append(str(uid))
        except (NotImplementedError, ValueError, KeyError):
            continue
    return tuple(usable)


def decodable_transfer_syntaxes() -> frozenset[str]:
    """Uncompressed plus every compressed syntax pydicom can decode here."""
    return frozenset((*UNCOMPRESSED, *decodable_compressed()))
