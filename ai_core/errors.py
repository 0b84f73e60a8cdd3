"""Errors of ai_core: images in, numbers out, and a clear reason when not.

ai_core imports neither ``daemon`` nor ``dicom_out``; the daemon maps these
errors to its own (a :class:`VolumeError` becomes a non-retryable job error).
"""

from __future__ import annotations


class AiCoreError(Exception):
    """Base class of the errors ai_core raises on purpose."""


class VolumeError(AiCoreError):
    """The series cannot be made into one trustworthy 3D volume.

    The message names the problem (missing slices, mixed orientations,
    corrupt pixel data...) so that an admin can tell the sender what to fix.
    Retrying with the same files gives the same error.
    """


class ModelError(AiCoreError):
    """The Ki-67 model cannot be built, loaded or run as asked.

    Raised for invalid hyper-parameters, an unreadable or inconsistent model
    bundle, or inputs of the wrong shape; the message names the argument or
    file and what to change.
    """


class EvaluationError(AiCoreError):
    """A training or evaluation run cannot go on (bad manifest, one-class split...)."""
