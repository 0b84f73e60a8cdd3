"""DIMSE status codes we answer with, named once (PS3.4 Annex B, PS3.7 Annex C)."""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    SUCCESS = 0x0000
    # General failures (PS3.7 C.4)
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NOT_AUTHORIZED = 0x0124
    PROCESSING_FAILURE = 0x0110
    UNRECOGNIZED_OPERATION = 0x0211
    # Storage service class (PS3.4 B.2.3)
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    # Our refinements inside the "Cannot understand" (Cxxx) range
    INVALID_UID = 0xC001
    INSTANCE_TOO_LARGE = 0xC002
    MISSING_ATTRIBUTE = 0xC003


def is_failure(status: int) -> bool:
    """True for statuses that tell the sender the instance was not kept."""
    return status not in (Status.SUCCESS,) and not 0xB000 <= status <= 0xBFFF
