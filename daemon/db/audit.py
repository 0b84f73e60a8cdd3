"""The one way an audit event is written (table ``audit_events``).

Audit events are for admins (``ki67node status`` shows the last errors): no
patient names or IDs, in the message or the detail. The event joins the
caller's transaction, so it is committed (or rolled back) with the change it
describes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, insert
from sqlalchemy.orm import Session

from daemon.db.models import AuditEvent, utcnow
from daemon.db.states import AuditKind, AuditLevel


def audit(
    db: Session | Connection,
    kind: AuditKind,
    message: str,
    *,
    level: AuditLevel = AuditLevel.INFO,
    at: dt.datetime | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    calling_aet: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Insert one event in ``db``'s open transaction (``at`` defaults to now, UTC)."""
    db.execute(
        insert(AuditEvent).values(
            at=at or utcnow(),
            kind=kind,
            level=level,
            study_uid=study_uid,
            series_uid=series_uid,
            sop_instance_uid=sop_instance_uid,
            calling_aet=calling_aet,
            message=message,
            detail=detail,
        )
    )
