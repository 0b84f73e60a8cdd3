"""The states a row moves through, named once, beside the tables that hold them.

Each is a :class:`~enum.StrEnum`: the value is what the database stores (so
old rows and new code agree, and a member compares equal to its string), the
member is what the code writes. The transitions are the owners' business:
intake (series), the job queue (jobs), delivery (outbox), follow-up (entries).
"""

from __future__ import annotations

from enum import StrEnum


class SeriesState(StrEnum):
    """``series.state``: receiving → complete → decided (a late instance re-opens it)."""

    RECEIVING = "receiving"
    COMPLETE = "complete"
    DECIDED = "decided"


class JobState(StrEnum):
    """``jobs.state``: queued → running → done | failed (a retry goes back to queued)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class OutboxState(StrEnum):
    """``outbox.state``: pending → delivered | failed (retries stay pending)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class FollowupStatus(StrEnum):
    """``followup_entries.status``: scheduled → due → overdue, closed as completed or
    grown by a follow-up study, or cancelled."""

    SCHEDULED = "scheduled"
    DUE = "due"
    OVERDUE = "overdue"
    COMPLETED = "completed"
    GROWN = "grown"
    CANCELLED = "cancelled"


#: The entries still waiting for a follow-up study.
OPEN_FOLLOWUP_STATUSES = (FollowupStatus.SCHEDULED, FollowupStatus.DUE, FollowupStatus.OVERDUE)


class AuditKind(StrEnum):
    """``audit_events.kind``: what happened, one name per event."""

    INSTANCE_QUARANTINED = "instance_quarantined"
    SERIES_DECIDED = "series_decided"
    SERIES_REANALYSIS = "series_reanalysis"
    JOB_RETRY = "job_retry"
    JOB_FAILED = "job_failed"
    OUTBOX_FAILED = "outbox_failed"
    FOLLOWUP_OVERDUE = "followup_overdue"
    SPOOL_PURGED = "spool_purged"


class AuditLevel(StrEnum):
    """``audit_events.level`` (``ki67node status`` lists error and critical)."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"
