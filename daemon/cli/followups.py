"""``ki67node followups`` (the follow-up list the scheduler keeps) and ``ki67node symptoms``.

Thin wrappers: the list and the flag rules live in :mod:`daemon.followup.queries`
(shared with ``GET /api/followups``); here the arguments and the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from typing import Any

from sqlalchemy.orm import Session

from daemon.cli.common import current_user, load_config
from daemon.db.engine import make_engine, migrate
from daemon.db.models import utcnow
from daemon.db.read import database_missing, make_read_engine
from daemon.followup.queries import followup_report, set_asymptomatic
from daemon.settings import Settings

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


def cmd_followups(args: argparse.Namespace) -> int:
    settings = load_config(args)
    if database_missing(settings.database_url):
        report = followup_report(None, due_before=args.due_before)
    else:
        engine = make_read_engine(settings.database_url, settings.database.busy_timeout_ms)
        try:
            report = followup_report(engine, due_before=args.due_before)
        finally:
            engine.dispose()
    print(json.dumps(report, indent=2) if args.json else format_followups(report))
    return 0


def cmd_symptoms(args: argparse.Namespace) -> int:
    settings: Settings = load_config(args)
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
                entered_by=current_user()[:64],
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
