"""Surveillance of small meningiomas: the follow-up list, growth between studies, the rules.

The worker calls :func:`record_finding` once per analysed T1C series. The
finding is stored (one row per series: a re-run updates it and is never a
follow-up of itself), matched to the same patient's most recent *earlier*
finding (study date, else received order; lesion by location and side when
both are known, else the prior study's single lesion), compared (volume
change, growth >= ``followup.growth_threshold_percent``, compound annual rate,
volume doubling time), the patient's open follow-up entry is closed
("completed" or "grown") and, when the patient qualifies (max diameter <
``followup.max_diameter_mm`` and asymptomatic), the next entry is created with
a due date by risk group. :func:`status_at` is the one rule for scheduled /
due / overdue; the scheduler's jobs persist its result
(:func:`daemon.followup.scheduler.flag_due`, :func:`daemon.followup.scheduler.flag_overdue`).
Everything here takes ``now``; nothing reads the clock.
Patient IDs are stored for matching, never logged or put into notes.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from daemon.db.models import FollowupEntry, MeningiomaFinding, PatientFlag
from daemon.db.states import OPEN_FOLLOWUP_STATUSES, FollowupStatus
from daemon.followup.rules import (
    SurveillanceError,
    add_months,
    compare_volumes,
    comparison_to_json,
    status_at,
)
from daemon.settings import FollowupSettings
from dicom_out.context import PriorComparison

log = logging.getLogger(__name__)

RISK_GROUPS = ("high", "low")
RECOMMENDATION = {"high": "earlier imaging; consider intervention", "low": "routine imaging"}


@dataclass(frozen=True)
class Finding:
    """One analysed T1C series with a measured meningioma."""

    patient_id: str  # "" when the source has none: no follow-up matching possible
    issuer: str  # IssuerOfPatientID or ""
    study_uid: str
    series_uid: str
    study_date: dt.date | None
    volume_cm3: float
    max_diameter_mm: float
    location: str | None  # convexity | falx | skull_base | None
    side: str | None  # left | right | midline | None
    risk_group: str  # "high" | "low" (ki67_high -> "high")
    probability: float  # Output 1


@dataclass(frozen=True)
class SurveillanceOutcome:
    comparison: PriorComparison | None
    followup: dict[str, Any] | None  # JSON-safe: the entries closed / created / rescheduled
    note: str  # one line for the job result and the log, no patient data


def resolve_asymptomatic(
    session: Session, cfg: FollowupSettings, patient_id: str, issuer: str
) -> tuple[bool, str]:
    """The patient's recorded flag, else ``followup.default_asymptomatic``; with its source."""
    if patient_id:
        flag = session.scalar(
            select(PatientFlag).where(
                PatientFlag.patient_id == patient_id, PatientFlag.issuer == issuer
            )
        )
        if flag is not None:
            return bool(flag.asymptomatic), "recorded"
    return cfg.default_asymptomatic, "default"


# -- recording a finding -----------------------------------------------------------------------
def record_finding(
    session: Session, cfg: FollowupSettings, finding: Finding, *, now: dt.datetime
) -> SurveillanceOutcome:
    """Store ``finding``, compare it with the prior, close and (re)schedule follow-up entries.

    Runs inside the caller's transaction (flushes, never commits).
    """
    _check(finding)
    row = _upsert(session, cfg, finding, now)
    if not finding.patient_id:
        return SurveillanceOutcome(
            None, None, "no patient ID in the source: stored, no follow-up matching possible"
        )
    prior = _match_prior(session, row)
    comparison = _comparison(cfg, prior, row) if prior is not None else None
    row.prior_finding_id = prior.id if prior is not None else None
    row.comparison = comparison_to_json(comparison) if comparison is not None else None
    closed = _close_earlier_entries(session, row, comparison, now)
    entry, action = schedule_next(session, cfg, row, comparison, now)
    session.flush()
    summary: dict[str, Any] = {"closed": [entry_summary(e) for e in closed]}
    if entry is not None:
        summary[action] = entry_summary(entry)
    return SurveillanceOutcome(comparison, summary, _note(comparison, prior, closed, entry, action))


def _check(f: Finding) -> None:
    if f.risk_group not in RISK_GROUPS:
        raise SurveillanceError(f"risk_group must be 'high' or 'low', got {f.risk_group!r}")
    if not (math.isfinite(f.volume_cm3) and f.volume_cm3 >= 0):
        raise SurveillanceError(f"volume_cm3 must be a finite number >= 0, got {f.volume_cm3!r}")
    if not (math.isfinite(f.max_diameter_mm) and f.max_diameter_mm >= 0):
        raise SurveillanceError(f"max_diameter_mm must be >= 0, got {f.max_diameter_mm!r}")


def _upsert(
    session: Session, cfg: FollowupSettings, f: Finding, now: dt.datetime
) -> MeningiomaFinding:
    row = session.scalar(
        select(MeningiomaFinding).where(MeningiomaFinding.series_uid == f.series_uid)
    )
    asymptomatic, source = resolve_asymptomatic(session, cfg, f.patient_id, f.issuer)
    if row is None:
        row = MeningiomaFinding(series_uid=f.series_uid, created_at=now)
        session.add(row)
    for name in ("study_uid", "patient_id", "issuer", "study_date", "volume_cm3"):
        setattr(row, name, getattr(f, name))
    for name in ("max_diameter_mm", "location", "side", "risk_group", "probability"):
        setattr(row, name, getattr(f, name))
    row.asymptomatic, row.asymptomatic_source, row.updated_at = asymptomatic, source, now
    session.flush()
    return row


def _earlier(a: MeningiomaFinding, b: MeningiomaFinding) -> bool:
    """``a`` was acquired before ``b``: by study date when both have one, else received order."""
    if a.study_date is not None and b.study_date is not None and a.study_date != b.study_date:
        return a.study_date < b.study_date
    return a.id < b.id


def _patient_findings(session: Session, row: MeningiomaFinding) -> list[MeningiomaFinding]:
    return list(
        session.scalars(
            select(MeningiomaFinding).where(
                MeningiomaFinding.patient_id == row.patient_id,
                MeningiomaFinding.issuer == row.issuer,
            )
        )
    )


def _match_prior(session: Session, row: MeningiomaFinding) -> MeningiomaFinding | None:
    """The same lesion in the most recent earlier study that has it (None: first or no match)."""
    earlier = [
        f
        for f in _patient_findings(session, row)
        if f.study_uid != row.study_uid and _earlier(f, row)
    ]
    by_study: dict[str, list[MeningiomaFinding]] = {}
    for f in earlier:
        by_study.setdefault(f.study_uid, []).append(f)
    studies = sorted(by_study.values(), key=lambda fs: order_key(max(fs, key=order_key)))
    for candidates in reversed(studies):
        match = _same_lesion(row, candidates)
        if match is not None:
            return match
    return None


def order_key(f: MeningiomaFinding) -> tuple[dt.date, int]:
    return (f.study_date or dt.date.min, f.id)


def _same_lesion(
    row: MeningiomaFinding, candidates: list[MeningiomaFinding]
) -> MeningiomaFinding | None:
    if row.location and row.side:
        same = [c for c in candidates if (c.location, c.side) == (row.location, row.side)]
        if same:
            return max(same, key=lambda c: c.id)
        if any(c.location and c.side for c in candidates):
            return None  # the prior lesion(s) are known to lie elsewhere
    return candidates[0] if len(candidates) == 1 else None


def _comparison(
    cfg: FollowupSettings, prior: MeningiomaFinding, row: MeningiomaFinding
) -> PriorComparison | None:
    if prior.volume_cm3 <= 0:
        return None
    interval = None
    if prior.study_date is not None and row.study_date is not None:
        interval = (row.study_date - prior.study_date).days
    change, grown, annual, doubling = compare_volumes(
        prior.volume_cm3, row.volume_cm3, interval, cfg.growth_threshold_percent
    )
    return PriorComparison(
        prior_study_uid=prior.study_uid,
        prior_study_date=prior.study_date,
        prior_volume_cm3=prior.volume_cm3,
        volume_cm3=row.volume_cm3,
        interval_days=interval,
        change_percent=change,
        grown=grown,
        threshold_percent=cfg.growth_threshold_percent,
        annual_growth_percent=annual,
        doubling_time_years=doubling,
    )


def patient_entries(session: Session, patient_id: str, issuer: str) -> list[FollowupEntry]:
    return list(
        session.scalars(
            select(FollowupEntry)
            .where(FollowupEntry.patient_id == patient_id, FollowupEntry.issuer == issuer)
            .order_by(FollowupEntry.id)
        )
    )


def _close_earlier_entries(
    session: Session, row: MeningiomaFinding, comparison: PriorComparison | None, now: dt.datetime
) -> list[FollowupEntry]:
    """Open entries of earlier findings, and entries this finding closed before (a re-run)."""
    status = (
        FollowupStatus.GROWN
        if comparison is not None and comparison.grown
        else FollowupStatus.COMPLETED
    )
    closed = []
    for entry in patient_entries(session, row.patient_id, row.issuer):
        if entry.finding_id == row.id:
            continue
        ours = entry.closed_by_finding_id == row.id
        if not ours and entry.status in OPEN_FOLLOWUP_STATUSES:
            source = session.get(MeningiomaFinding, entry.finding_id)
            ours = (
                source is not None and source.study_uid != row.study_uid and _earlier(source, row)
            )
        if ours:
            if entry.status != status:
                entry.status, entry.status_changed_at = status, now
            entry.closed_by_finding_id = row.id
            entry.closed_at = entry.closed_at or now
            closed.append(entry)
    return closed


def schedule_next(
    session: Session,
    cfg: FollowupSettings,
    row: MeningiomaFinding,
    comparison: PriorComparison | None,
    now: dt.datetime,
) -> tuple[FollowupEntry | None, str]:
    """Create, reschedule or cancel the entry that follows ``row``; ``(entry, action)``."""
    entry = session.scalar(select(FollowupEntry).where(FollowupEntry.finding_id == row.id))
    if entry is not None and entry.status not in (
        *OPEN_FOLLOWUP_STATUSES,
        FollowupStatus.CANCELLED,
    ):
        return None, ""  # already closed by a later study: history stays
    later = [f for f in _patient_findings(session, row) if f.id != row.id and _earlier(row, f)]
    qualifies = row.asymptomatic and row.max_diameter_mm < cfg.max_diameter_mm and not later
    if not qualifies:
        if entry is not None and entry.status in OPEN_FOLLOWUP_STATUSES:
            entry.status, entry.status_changed_at = FollowupStatus.CANCELLED, now
            return entry, "cancelled"
        return None, ""
    if entry is None and any(
        e.status in OPEN_FOLLOWUP_STATUSES
        for e in patient_entries(session, row.patient_id, row.issuer)
    ):
        return None, ""  # one open entry per patient (e.g. a second T1C series of the same study)
    grown = comparison is not None and comparison.grown
    group = "high" if grown else row.risk_group
    months = cfg.interval_months_high if group == "high" else cfg.interval_months_low
    recommendation = RECOMMENDATION[group]
    if grown and comparison is not None:
        recommendation = f"growth {comparison.change_percent:+.1f} % since prior; {recommendation}"
    due = add_months(row.study_date or now.date(), months)
    action = "rescheduled" if entry is not None else "created"
    if entry is None:
        entry = FollowupEntry(
            patient_id=row.patient_id, issuer=row.issuer, finding_id=row.id, created_at=now
        )
        session.add(entry)
    status = status_at(due, now, cfg.overdue_grace_days)
    if entry.status != status:
        entry.status_changed_at = now
    entry.due_date, entry.status, entry.risk_group = due, status, group
    entry.interval_months, entry.recommendation = months, recommendation
    return entry, action


def _note(
    comparison: PriorComparison | None,
    prior: MeningiomaFinding | None,
    closed: list[FollowupEntry],
    entry: FollowupEntry | None,
    action: str,
) -> str:
    if comparison is not None:
        parts = [
            f"{'growth' if comparison.grown else 'no growth'} {comparison.change_percent:+.1f} % "
            f"vs prior study ({comparison.prior_volume_cm3:.2f} → {comparison.volume_cm3:.2f} cm³)"
        ]
    elif prior is not None:
        parts = ["prior finding has no measurable volume: no comparison"]
    else:
        parts = ["no earlier finding of this lesion: baseline"]
    if closed:
        parts.append(f"closed follow-up {', '.join(f'#{e.id} ({e.status})' for e in closed)}")
    if entry is not None:
        parts.append(f"follow-up #{entry.id} {action} (due {entry.due_date.isoformat()})")
    elif not closed:
        parts.append("not on the follow-up list")
    return "; ".join(parts)


def entry_summary(entry: FollowupEntry) -> dict[str, Any]:
    """JSON-safe, without patient data (job results, notes)."""
    return {
        "id": entry.id,
        "status": entry.status,
        "due_date": entry.due_date.isoformat(),
        "risk_group": entry.risk_group,
        "interval_months": entry.interval_months,
        "recommendation": entry.recommendation,
    }
