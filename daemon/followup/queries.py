"""The follow-up list and the clinical flag: the queries and rules behind
``ki67node followups`` / ``symptoms`` and ``GET /api/followups``.

:func:`followup_report` builds the list once, as JSON-safe data. Patient IDs
are PHI: they are shown to the operator who asks for the list, never logged.
:func:`set_asymptomatic` records a patient's "asymptomatic" flag; it applies
to findings recorded after it and re-evaluates the patient's open entry.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine, inspect, select
from sqlalchemy.orm import Session

from ai_core.disclaimer import DISCLAIMER
from daemon.db.models import FollowupEntry, MeningiomaFinding, PatientFlag, utcnow
from daemon.db.states import OPEN_FOLLOWUP_STATUSES, FollowupStatus
from daemon.followup.rules import SurveillanceError, comparison_from_json
from daemon.followup.surveillance import (
    entry_summary,
    order_key,
    patient_entries,
    schedule_next,
)
from daemon.settings import FollowupSettings


# -- the list ----------------------------------------------------------------------------------
def followup_report(
    engine: Engine | None, *, due_before: dt.date | None = None, now: dt.datetime | None = None
) -> dict[str, Any]:
    """The follow-up list as JSON-safe data (``followups --json`` and ``/api/followups``).

    ``engine`` None (no database yet) or a database without the tables: an empty list.
    """
    now = now or utcnow()
    report: dict[str, Any] = {
        "generated_at": now.isoformat(timespec="seconds"),
        "disclaimer": DISCLAIMER,
        "due_before": due_before.isoformat() if due_before else None,
        "followups": [],
    }
    if engine is None:
        return report
    with engine.connect() as conn:
        if not inspect(conn).has_table(FollowupEntry.__tablename__):
            return report  # database not migrated yet: nothing on the list
    with Session(engine) as session:
        query = select(FollowupEntry).order_by(FollowupEntry.due_date, FollowupEntry.id)
        if due_before is not None:
            query = query.where(FollowupEntry.due_date < due_before)
        for entry in session.scalars(query):
            report["followups"].append(_row(session, entry))
    return report


def _row(session: Session, entry: FollowupEntry) -> dict[str, Any]:
    finding = session.get(MeningiomaFinding, entry.finding_id)
    closing = (
        session.get(MeningiomaFinding, entry.closed_by_finding_id)
        if entry.closed_by_finding_id
        else None
    )
    growth_from = closing if closing is not None else finding
    assert finding is not None  # foreign key
    return {
        **entry_summary(entry),
        "patient_id": entry.patient_id,
        "issuer": entry.issuer,
        "study_uid": finding.study_uid,
        "study_date": finding.study_date.isoformat() if finding.study_date else None,
        "max_diameter_mm": round(finding.max_diameter_mm, 1),
        "volume_cm3": round(finding.volume_cm3, 2),
        "probability": round(finding.probability, 4),
        "created_at": entry.created_at.isoformat(timespec="seconds"),
        "closed_at": entry.closed_at.isoformat(timespec="seconds") if entry.closed_at else None,
        "closed_by_study_uid": closing.study_uid if closing is not None else None,
        "last_growth": growth_from.comparison if growth_from is not None else None,
    }


# -- the clinical flag --------------------------------------------------------------------
def set_asymptomatic(
    session: Session,
    cfg: FollowupSettings,
    patient_id: str,
    issuer: str,
    asymptomatic: bool,
    *,
    now: dt.datetime,
    entered_by: str | None = None,
) -> dict[str, Any]:
    """Record the flag and re-evaluate the patient's open entry; what changed (JSON-safe)."""
    if not patient_id or len(patient_id) > 64 or len(issuer) > 64:
        raise SurveillanceError("the patient ID must be 1-64 characters (the issuer at most 64)")
    flag = session.scalar(
        select(PatientFlag).where(
            PatientFlag.patient_id == patient_id, PatientFlag.issuer == issuer
        )
    )
    if flag is None:
        flag = PatientFlag(patient_id=patient_id, issuer=issuer)
        session.add(flag)
    flag.asymptomatic, flag.entered_by, flag.updated_at = asymptomatic, entered_by, now
    findings = list(
        session.scalars(
            select(MeningiomaFinding).where(
                MeningiomaFinding.patient_id == patient_id, MeningiomaFinding.issuer == issuer
            )
        )
    )
    result: dict[str, Any] = {"asymptomatic": asymptomatic, "findings": len(findings)}
    if not findings:
        return result
    latest = max(findings, key=order_key)
    latest.asymptomatic, latest.asymptomatic_source = asymptomatic, "recorded"
    if not asymptomatic:
        for other in patient_entries(session, patient_id, issuer):
            if other.status in OPEN_FOLLOWUP_STATUSES and other.finding_id != latest.id:
                other.status, other.status_changed_at = FollowupStatus.CANCELLED, now
                result.setdefault("cancelled_other", []).append(other.id)
    comparison = (
        comparison_from_json(latest.comparison, cfg.growth_threshold_percent)
        if latest.comparison
        else None
    )
    entry, action = schedule_next(session, cfg, latest, comparison, now)
    session.flush()
    if entry is not None:
        result[action] = entry_summary(entry)
    return result
