"""What the node is doing, read from the database: ``ki67node status`` and ``/api/status``.

The report is a plain JSON-able dict, built by one function and shared by the
CLI, the HTTP status server and the Prometheus collector (``daemon.ops.metrics``).
Reads go through a *read engine* (:func:`daemon.db.read.make_read_engine`): for SQLite it is
``query_only`` and never issues ``BEGIN IMMEDIATE``, so a status query or a
scrape never takes the write lock the listener needs. A missing database is
not created or migrated: the report says "no database yet". Nothing in the
report identifies a patient (counts, UIDs-free reasons, audit messages only).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, func, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError

from ai_core.disclaimer import DISCLAIMER
from daemon import __version__
from daemon.db.models import (
    AuditEvent,
    Instance,
    Job,
    OutboxItem,
    QuarantinedInstance,
    Series,
    SeriesDecision,
    Study,
)
from daemon.db.read import make_read_engine, safe_url, sqlite_path
from daemon.db.states import AuditLevel, JobState, OutboxState, SeriesState
from daemon.errors import DatabaseError
from daemon.settings import DatabaseTarget

log = logging.getLogger(__name__)

# Bounds that keep every status query cheap on a big database.
RECENT_JOBS_FOR_LATENCY = 200
TOP_REASONS = 10
LAST_ERRORS = 10

# States the rest of the daemon writes; listed so that a zero still shows.
SERIES_STATES = tuple(SeriesState)
JOB_STATES = tuple(JobState)
ERROR_LEVELS = (AuditLevel.ERROR, AuditLevel.CRITICAL)
DB_OK = "ok"
DB_MISSING = "missing"
# The table whose presence means "the schema has been created".
_SCHEMA_MARKER_TABLE = "jobs"


def collect_status(
    data_dir: Path, database: DatabaseTarget, engine: Engine | None = None
) -> dict[str, Any]:
    """The status report of the node under ``data_dir``. ``engine`` (a read engine) is
    reused when given.

    Raises :class:`DatabaseError` when the database exists but cannot be read.
    """
    url = database.url
    report: dict[str, Any] = {
        "version": __version__,
        "disclaimer": DISCLAIMER,
        "generated_at": _iso(dt.datetime.now(dt.UTC).replace(tzinfo=None)),
        "data_dir": str(data_dir),
        "database": {"url": safe_url(url), "state": DB_MISSING},
    }
    db_file = sqlite_path(url)
    if db_file is not None and not db_file.is_file():
        return report  # never create it here: `serve` creates and migrates it
    own = engine is None
    eng = make_read_engine(url, database.busy_timeout_ms) if engine is None else engine
    try:
        with eng.connect() as conn:
            if not inspect(conn).has_table(_SCHEMA_MARKER_TABLE):
                return report
            report["database"]["schema"] = _schema_revision(conn)
            report["database"]["state"] = DB_OK
            report.update(query_status(conn))
    except SQLAlchemyError as exc:
        reason = getattr(exc, "orig", None) or exc
        raise DatabaseError(
            f"could not read the database at {safe_url(url)}: {reason.__class__.__name__}: "
            f"{reason}. Check database.url, that the server is up and that this user may "
            "read the file."
        ) from exc
    finally:
        if own:
            eng.dispose()
    return report


def _schema_revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def query_status(conn: Connection) -> dict[str, Any]:
    """Every count of the report, read in one connection (bounded queries)."""
    series_by_state = _with_zeros(SERIES_STATES, _grouped(conn, Series.state))
    jobs_by_state = _with_zeros(JOB_STATES, _grouped(conn, Job.state))
    decided = dict(
        conn.execute(select(Series.qualifies, func.count()).group_by(Series.qualifies)).all()
    )
    outbox: dict[str, dict[str, int]] = {}
    for dest, state, count in conn.execute(
        select(OutboxItem.destination, OutboxItem.state, func.count()).group_by(
            OutboxItem.destination, OutboxItem.state
        )
    ):
        outbox.setdefault(dest, {})[state] = int(count)
    oldest = dict(
        conn.execute(
            select(OutboxItem.destination, func.min(OutboxItem.created_at))
            .where(OutboxItem.state == OutboxState.PENDING)
            .group_by(OutboxItem.destination)
        ).all()
    )
    instances, stored_bytes = conn.execute(
        select(func.count(Instance.id), func.coalesce(func.sum(Instance.size_bytes), 0))
    ).one()
    return {
        "series": {"by_state": series_by_state, "total": sum(series_by_state.values())},
        "decisions": {
            "qualifies": int(decided.get(True, 0)),
            "rejected": int(decided.get(False, 0)),
            "undecided": int(decided.get(None, 0)),
            "top_reasons": _top_reasons(conn),
        },
        "jobs": {"by_state": jobs_by_state},
        "outbox": {
            "by_destination": outbox,
            # Pending only: failed rows are given up (counted apart), not waiting.
            "backlog": sum(states.get(OutboxState.PENDING, 0) for states in outbox.values()),
            "failed": sum(states.get(OutboxState.FAILED, 0) for states in outbox.values()),
            "oldest_pending": {dest: _iso(at) for dest, at in oldest.items() if at is not None},
        },
        "storage": {
            "studies": int(conn.execute(select(func.count(Study.id))).scalar_one()),
            "instances": int(instances),
            "bytes": int(stored_bytes),
            "quarantined": int(
                conn.execute(select(func.count(QuarantinedInstance.id))).scalar_one()
            ),
        },
        "stage_latency_seconds": _stage_latencies(conn),
        "last_errors": _last_errors(conn),
    }


def _grouped(conn: Connection, column: Any) -> dict[str, int]:
    rows = conn.execute(select(column, func.count()).group_by(column))
    return {str(key): int(count) for key, count in rows}


def _with_zeros(known: Iterable[str], counts: Mapping[str, int]) -> dict[str, int]:
    out = dict.fromkeys(known, 0)
    out.update(counts)
    return out


def _top_reasons(conn: Connection) -> list[dict[str, Any]]:
    """Reasons of each series' latest decision, most frequent first."""
    latest = (
        select(func.max(SeriesDecision.id).label("id"))
        .group_by(SeriesDecision.series_id)
        .subquery()
    )
    count = func.count().label("n")
    rows = conn.execute(
        select(SeriesDecision.qualifies, SeriesDecision.reason, count)
        .join(latest, SeriesDecision.id == latest.c.id)
        .group_by(SeriesDecision.qualifies, SeriesDecision.reason)
        .order_by(count.desc(), SeriesDecision.reason)
        .limit(TOP_REASONS)
    )
    return [{"qualifies": bool(q), "reason": r, "count": int(n)} for q, r, n in rows]


def _stage_latencies(conn: Connection) -> dict[str, dict[str, float]]:
    """Per-stage latency over the most recent finished jobs' ``result["timings"]``."""
    rows = conn.execute(
        select(Job.result)
        .where(Job.state == JobState.DONE, Job.result.is_not(None))
        .order_by(Job.finished_at.desc(), Job.id.desc())
        .limit(RECENT_JOBS_FOR_LATENCY)
    ).scalars()
    samples: dict[str, list[float]] = {}
    for result in rows:
        timings = result.get("timings") if isinstance(result, dict) else None
        if not isinstance(timings, dict):
            continue
        for stage, seconds in timings.items():
            if isinstance(seconds, int | float) and not isinstance(seconds, bool):
                if math.isfinite(seconds) and seconds >= 0:
                    samples.setdefault(str(stage), []).append(float(seconds))
    return {
        stage: {
            "jobs": len(values),
            "mean": sum(values) / len(values),
            "p50": _quantile(values, 0.5),
            "p90": _quantile(values, 0.9),
            "max": max(values),
        }
        for stage, values in sorted(samples.items())
    }


def _quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (no interpolation: always an observed value)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def _last_errors(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(AuditEvent.at, AuditEvent.level, AuditEvent.kind, AuditEvent.message)
        .where(AuditEvent.level.in_(ERROR_LEVELS))
        .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
        .limit(LAST_ERRORS)
    )
    return [
        {"at": _iso(at), "level": level, "kind": kind, "message": message}
        for at, level, kind, message in rows
    ]


def _iso(value: dt.datetime) -> str:
    """Naive UTC timestamps from the database as ISO 8601 with ``Z``."""
    return value.replace(microsecond=0).isoformat() + "Z"


# -- text output ---------------------------------------------------------------


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - loop always returns


def _table(rows: Sequence[Sequence[str]], indent: str = "  ", align: str = "") -> list[str]:
    """Columns padded to one width; ``align`` per column, "l" or "r" (default: "lr...r")."""
    if not rows:
        return []
    ncols = len(rows[0])
    align = align or "l" + "r" * (ncols - 1)
    widths = [max(len(row[i]) for row in rows) for i in range(ncols)]
    out = []
    for row in rows:
        cells = [
            cell.rjust(width) if how == "r" else cell.ljust(width)
            for cell, width, how in zip(row, widths, align, strict=True)
        ]
        out.append(indent + "  ".join(cells).rstrip())
    return out


def _counts(title: str, counts: Mapping[str, int]) -> list[str]:
    return [title, *_table([(name, str(n)) for name, n in counts.items()])]


def format_status(report: Mapping[str, Any]) -> str:
    """The report as aligned, readable text (``ki67node status``)."""
    db = report["database"]
    lines = [
        f"ki67node {report['version']} ({report['disclaimer']})",
        *_table(
            [("data_dir", report["data_dir"]), ("database", db["url"])]
            + ([("schema", str(db["schema"]))] if db.get("schema") else []),
            indent="",
            align="ll",
        ),
    ]
    if db["state"] == DB_MISSING:
        lines += [
            "",
            "no database yet: `ki67node serve` creates it on its first start",
        ]
        return "\n".join(lines)
    storage = report["storage"]
    lines += ["", "Stored"]
    lines += _table(
        [
            ("studies", str(storage["studies"])),
            ("instances", str(storage["instances"])),
            ("size", _human_bytes(storage["bytes"])),
            ("quarantined", str(storage["quarantined"])),
        ]
    )
    lines += ["", *_counts("Series by state", report["series"]["by_state"])]
    dec = report["decisions"]
    lines += [
        "",
        *_counts(
            "Series decisions",
            {k: dec[k] for k in ("qualifies", "rejected", "undecided")},
        ),
    ]
    if dec["top_reasons"]:
        lines.append("  top reasons (latest decision per series):")
        lines += _table(
            [
                (str(r["count"]), "T1C" if r["qualifies"] else "no", r["reason"])
                for r in dec["top_reasons"]
            ],
            indent="    ",
            align="rll",
        )
    lines += ["", *_counts("Jobs by state", report["jobs"]["by_state"])]
    lines += ["", *_outbox_lines(report["outbox"])]
    latency = report["stage_latency_seconds"]
    if latency:
        lines += ["", "Stage latency, s (recent finished jobs)"]
        rows = [("stage", "jobs", "p50", "p90", "max")]
        rows += [
            (s, str(v["jobs"]), f"{v['p50']:.2f}", f"{v['p90']:.2f}", f"{v['max']:.2f}")
            for s, v in latency.items()
        ]
        lines += _table(rows)
    lines += ["", f"Last errors ({len(report['last_errors'])})"]
    if report["last_errors"]:
        lines += _table(
            [(e["at"], e["kind"], e["message"]) for e in report["last_errors"]], align="lll"
        )
    else:
        lines.append("  none")
    return "\n".join(lines)


def _outbox_lines(outbox: Mapping[str, Any]) -> list[str]:
    lines = [f"Outbox (backlog {outbox['backlog']})"]
    by_dest = outbox["by_destination"]
    if not by_dest:
        return [*lines, "  empty"]
    states = sorted({s for counts in by_dest.values() for s in counts})
    rows = [("destination", *states, "oldest pending")]
    for dest, counts in sorted(by_dest.items()):
        oldest = outbox["oldest_pending"].get(dest, "-")
        rows.append((dest, *(str(counts.get(s, 0)) for s in states), oldest))
    return lines + _table(rows)
