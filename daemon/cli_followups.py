"""``ki67node followups`` (the follow-up list the scheduler keeps) and ``ki67node symptoms``.

:func:`followup_report` builds the list once, as JSON-safe data, for the
command (table or ``--json``) and for ``GET /api/followups``. Patient IDs are
PHI: they are shown to the operator who asks for the list, never logged.
``symptoms`` records the clinical "asymptomatic" flag of a patient; it applies
to findings recorded after it and re-evaluates the patient's open entry.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, inspect, select
from sqlalchemy.orm import Session

from daemon import DISCLAIMER
from daemon.db.models import FollowupEntry, MeningiomaFinding, PatientFlag, utcnow
from daemon.settings import FollowupSettings, Settings
from daemon.surveillance import (
    CANCELLED,
    OPEN_STATUSES,
    GrowthComparison,
    SurveillanceError,
    entry_summary,
    order_key,
    patient_entries,
    schedule_next,
)

log = logging.getLogger(__name__)

_YES = {"yes": True, "y": True, "true": True, "no": False, "n": False, "false": False}


def add_followup_commands(sub: Any) -> None:
    p = sub.add_parser(
        "followups",
        help="the follow-up list the scheduler keeps",
        description="List the surveillance entries: patient, study, tumour size, risk group, "
        "due date, status (scheduled, due, overdue, completed, grown, cancelled), "
        "recommendation and the last growth result. Shows patient IDs.",
    )
    p.add_argument("--config", help="TOML configuration (default: config/ki67node.toml)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--due-before", type=parse_date, metavar="DATE", help="only entries due before DATE"
    )
    p.set_defaults(func=cmd_followups)

    p = sub.add_parser(
        "symptoms",
        help="record whether a patient is asymptomatic (the follow-up rule needs it)",
        description="Record the clinical flag of a patient. Findings recorded after it use it "
        "(unknown = followup.default_asymptomatic); the patient's open follow-up entry is "
        "re-evaluated at once: cancelled when symptomatic, created when asymptomatic.",
    )
    p.add_argument("patient_id", metavar="PATIENT_ID")
    p.add_argument("--asymptomatic", required=True, choices=("yes", "no"))
    p.add_argument("--issuer", default="", help="IssuerOfPatientID, when the PACS sends one")
    p.add_argument("--config", help="TOML configuration (default: config/ki67node.toml)")
    p.set_defaults(func=cmd_symptoms)


def parse_date(text: str) -> dt.date:
    """YYYY-MM-DD (or DICOM's YYYYMMDD)."""
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYY-MM-DD")


# -- the list ----------------------------------------------------------------------------
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


def format_followups(report: dict[str, Any]) -> str:
    """The list as a fixed-width table."""
    rows = report["followups"]
    if not rows:
        return "no follow-up entries" + (
            f" due before {report['due_before']}" if report["due_before"] else ""
        )
    head = ("#", "patient", "study date", "diam mm", "vol cm3", "risk", "due", "status")
    lines = [
        f"{head[0]:>4} {head[1]:16} {head[2]:10} {head[3]:>7} {head[4]:>7} {head[5]:4} "
        f"{head[6]:10} {head[7]:9} last growth / recommendation"
    ]
    for r in rows:
        lines.append(
            f"{r['id']:>4} {r['patient_id'][:16]:16} {r['study_date'] or '-':10} "
            f"{r['max_diameter_mm']:>7.1f} {r['volume_cm3']:>7.2f} {r['risk_group']:4} "
            f"{r['due_date']:10} {r['status']:9} {_growth(r['last_growth'])}; {r['recommendation']}"
        )
    return "\n".join(lines)


def _growth(data: dict[str, Any] | None) -> str:
    if not data:
        return "-"
    verdict = "grown" if data["grown"] else "stable"
    return f"{data['change_percent']:+.1f} % ({verdict})"


def database_missing(settings: Settings) -> bool:
    """True when the SQLite database file does not exist yet (read commands never create it)."""
    url = settings.database_url
    if not url.startswith("sqlite:///"):
        return False
    name = url.removeprefix("sqlite:///").split("?", 1)[0]
    return bool(name) and name != ":memory:" and not Path(name).is_file()


def cmd_followups(args: argparse.Namespace) -> int:
    from daemon.cli import _load
    from daemon.status import make_read_engine

    settings = _load(args)
    if database_missing(settings):
        report = followup_report(None, due_before=args.due_before)
    else:
        engine = make_read_engine(settings)
        try:
            report = followup_report(engine, due_before=args.due_before)
        finally:
            engine.dispose()
    print(json.dumps(report, indent=2) if args.json else format_followups(report))
    return 0


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
            if other.status in OPEN_STATUSES and other.finding_id != latest.id:
                other.status, other.status_changed_at = CANCELLED, now
                result.setdefault("cancelled_other", []).append(other.id)
    comparison = GrowthComparison.from_json(latest.comparison) if latest.comparison else None
    entry, action = schedule_next(session, cfg, latest, comparison, now)
    session.flush()
    if entry is not None:
        result[action] = entry_summary(entry)
    return result


def cmd_symptoms(args: argparse.Namespace) -> int:
    from daemon.cli import _load
    from daemon.cli_results import _user
    from daemon.db.engine import make_engine, migrate

    settings: Settings = _load(args)
    engine = make_engine(settings.database_url, settings.database.busy_timeout_ms)
    try:
        migrate(engine)
        with Session(engine) as session, session.begin():
            result = set_asymptomatic(
                session,
                settings.followup,
                args.patient_id,
                args.issuer,
                _YES[args.asymptomatic],
                now=utcnow(),
                entered_by=_user()[:64],
            )
    finally:
        engine.dispose()
    state = "asymptomatic" if result["asymptomatic"] else "symptomatic"
    print(f"recorded: patient {args.patient_id} is {state}")
    for action in ("created", "rescheduled", "cancelled"):
        if action in result:
            e = result[action]
            print(f"follow-up #{e['id']} {action} (due {e['due_date']}, {e['status']})")
    if result.get("cancelled_other"):
        print(f"follow-up(s) cancelled: {', '.join(f'#{i}' for i in result['cancelled_other'])}")
    if not result["findings"]:
        print("no finding of this patient yet; the flag applies to the next one")
    return 0
