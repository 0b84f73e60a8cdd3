"""The one exception tree of ki67node.

Every message says what went wrong *and* what to do next, because it is read
by an admin in a terminal or in the journal.
"""

from __future__ import annotations


class NodeError(Exception):
    """Base class of every error ki67node raises on purpose."""


class ConfigError(NodeError):
    """The configuration is invalid; ``problems`` lists ``(key, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = list(problems)
        lines = [f"{key}: {msg}" for key, msg in self.problems]
        super().__init__(
            "invalid configuration (fix these keys, then run `ki67node check-config`):\n  "
            + "\n  ".join(lines)
        )


class DatabaseError(NodeError):
    """The database could not be reached, migrated or written."""


class SpoolError(NodeError):
    """Received bytes could not be written durably to the spool."""


class InvalidInstanceError(NodeError):
    """A received instance is malformed or carries unsafe identifiers.

    ``status`` is the DICOM status the listener answers with.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class JobError(NodeError):
    """A job failed; ``retryable`` says whether another attempt may succeed."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class SendError(NodeError):
    """A result could not be delivered to a destination."""


class SourceError(NodeError):
    """An archive (``[[sources]]``) did not answer, refused, or a retrieval was incomplete
    (nothing of an incomplete retrieval is left behind)."""
