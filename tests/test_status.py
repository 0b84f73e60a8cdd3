"""``ki67node status``: the report on a database populated through the models."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from daemon.cli import main
from daemon.db.engine import make_engine, make_sessionmaker, migrate
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
from daemon.db.read import make_read_engine, safe_url
from daemon.errors import DatabaseError
from daemon.ops import status as status_mod
from daemon.ops.status import (
    collect_status,
    format_status,
    query_status,
)
from daemon.settings import Settings

CANARY_NAME = "CANARY^PHI^NAME"
CANARY_ID = "CANARY-ID-4711"
T0 = dt.datetime(2026, 1, 5, 8, 0, 0)


def populate_db(settings: Settings) -> None:
    """A small, realistic database: 4 series, 4 jobs, outbox, errors (and canary PHI)."""
    engine = make_engine(settings.database_url)
    migrate(engine)
    with make_sessionmaker(engine).begin() as session:
        study = Study(study_uid="1.2.3", patient_name=CANARY_NAME, patient_id=CANARY_ID)
        session.add(study)
        session.flush()
        series = [
            Series(series_uid=f"1.2.3.{i}", study_id=study.id, state=state, qualifies=q)
            for i, (state, q) in enumerate(
                [("decided", True), ("decided", False), ("decided", False), ("receiving", None)]
            )
        ]
        session.add_all(series)
        session.flush()
        session.add_all(
            [
                # series 1 was first accepted, then re-decided: only the latest counts
                SeriesDecision(series_id=series[1].id, qualifies=True, reason="T1C MP-RAGE"),
                SeriesDecision(series_id=series[1].id, qualifies=False, reason="not 3D"),
                SeriesDecision(series_id=series[0].id, qualifies=True, reason="T1C MP-RAGE"),
                SeriesDecision(series_id=series[2].id, qualifies=False, reason="not 3D"),
            ]
        )
        for i, size in enumerate((1000, 2000, 3000)):
            session.add(
                Instance(
                    sop_instance_uid=f"1.2.3.0.{i}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                    series_id=series[0].id,
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    path=f"20260105/{i}.dcm",
                    size_bytes=size,
                    sha256="0" * 64,
                )
            )
        session.add(
            QuarantinedInstance(
                sop_instance_uid="1.2.3.0.0",
                path="quarantine/x.dcm",
                sha256="1" * 64,
                size_bytes=10,
                reason="same SOP Instance UID, different bytes",
            )
        )
        jobs = [
            Job(
                series_id=series[0].id,
                revision=0,
                state="done",
                finished_at=T0,
                result={"timings": {"segment": 2.0, "predict": 1.0}},
            ),
            Job(
                series_id=series[0].id,
                revision=1,
                state="done",
                finished_at=T0 + dt.timedelta(minutes=1),
                result={"timings": {"segment": 4.0, "predict": "n/a"}},
            ),
            Job(series_id=series[1].id, state="failed", error="CUDA out of memory"),
            Job(series_id=series[2].id, state="queued"),
        ]
        session.add_all(jobs)
        session.flush()
        session.add_all(
            [
                OutboxItem(
                    job_id=jobs[0].id,
                    destination="pacs",
                    sop_instance_uid=f"2.25.{i}",
                    path=f"outbox/{i}.dcm",
                    state=state,
                    created_at=T0,
                )
                for i, state in enumerate(("pending", "pending", "delivered"))
            ]
        )
        session.add_all(
            [
                AuditEvent(kind="store_rejected", level="error", message="bad UID", at=T0),
                AuditEvent(
                    kind="job_failed",
                    level="error",
                    message="job 3 failed: CUDA out of memory",
                    at=T0 + dt.timedelta(seconds=5),
                ),
                AuditEvent(kind="association", level="info", message="PACS connected", at=T0),
            ]
        )
    engine.dispose()


@pytest.fixture
def populated(settings: Settings) -> Settings:
    populate_db(settings)
    return settings


def _head_revision() -> str:
    from alembic.script import ScriptDirectory

    from daemon.db.engine import MIGRATIONS_DIR

    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert head is not None
    return head


def test_report_counts_everything(populated: Settings) -> None:
    report = collect_status(populated.data_dir, populated.database_target)

    assert report["database"]["state"] == "ok"
    assert report["database"]["schema"] == _head_revision()
    assert report["series"]["by_state"] == {"receiving": 1, "complete": 0, "decided": 3}
    assert report["series"]["total"] == 4
    assert report["decisions"]["qualifies"] == 1
    assert report["decisions"]["rejected"] == 2
    assert report["decisions"]["undecided"] == 1
    assert report["decisions"]["top_reasons"] == [
        {"qualifies": False, "reason": "not 3D", "count": 2},
        {"qualifies": True, "reason": "T1C MP-RAGE", "count": 1},
    ]
    assert report["jobs"]["by_state"] == {"queued": 1, "running": 0, "done": 2, "failed": 1}
    assert report["outbox"]["by_destination"] == {"pacs": {"pending": 2, "delivered": 1}}
    assert report["outbox"]["backlog"] == 2
    assert report["outbox"]["oldest_pending"] == {"pacs": "2026-01-05T08:00:00Z"}
    assert report["storage"] == {"studies": 1, "instances": 3, "bytes": 6000, "quarantined": 1}
    assert report["stage_latency_seconds"]["segment"] == {
        "jobs": 2,
        "mean": 3.0,
        "p50": 2.0,
        "p90": 4.0,
        "max": 4.0,
    }
    # a non-numeric timing is skipped, not a crash
    assert report["stage_latency_seconds"]["predict"]["jobs"] == 1
    assert [e["kind"] for e in report["last_errors"]] == ["job_failed", "store_rejected"]
    assert report["last_errors"][0]["at"] == "2026-01-05T08:00:05Z"


def test_report_and_text_carry_no_patient_data(populated: Settings) -> None:
    report = collect_status(populated.data_dir, populated.database_target)
    dumped = json.dumps(report) + format_status(report)
    assert CANARY_NAME not in dumped
    assert CANARY_ID not in dumped


def test_text_output_is_aligned_and_readable(populated: Settings) -> None:
    out = format_status(collect_status(populated.data_dir, populated.database_target))
    lines = out.splitlines()

    assert lines[0].startswith("ki67node ") and "not for diagnostic use" in lines[0]
    jobs = lines[lines.index("Jobs by state") + 1 : lines.index("Jobs by state") + 5]
    assert [line.split() for line in jobs] == [
        ["queued", "1"],
        ["running", "0"],
        ["done", "2"],
        ["failed", "1"],
    ]
    # numbers right-aligned in one column
    assert len({len(line) for line in jobs}) == 1
    assert "instances          3" in out
    assert "size         5.9 KiB" in out
    assert "Outbox (backlog 2)" in out
    outbox_row = next(line for line in lines if line.strip().startswith("pacs"))
    assert outbox_row.split() == ["pacs", "1", "2", "2026-01-05T08:00:00Z"]
    assert "job 3 failed: CUDA out of memory" in out
    assert "segment" in out and "4.00" in out


def test_latency_looks_at_recent_jobs_only(
    populated: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status_mod, "RECENT_JOBS_FOR_LATENCY", 1)
    latency = collect_status(populated.data_dir, populated.database_target)["stage_latency_seconds"]
    assert latency == {"segment": {"jobs": 1, "mean": 4.0, "p50": 4.0, "p90": 4.0, "max": 4.0}}


def test_cli_status_json_and_text(populated: Settings, tmp_path: Path, capsys) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{populated.data_dir.as_posix()}"\n')

    assert main(["status", "--json", "--config", str(config)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["jobs"]["by_state"]["done"] == 2

    assert main(["status", "--config", str(config)]) == 0
    assert "Series by state" in capsys.readouterr().out


def test_no_database_yet_is_reported_not_created(settings: Settings, capsys) -> None:
    db_file = settings.data_dir / "ki67node.db"
    report = collect_status(settings.data_dir, settings.database_target)

    assert report["database"]["state"] == "missing"
    assert "no database yet" in format_status(report)
    assert not db_file.exists()
    assert not settings.data_dir.exists()


def test_empty_file_without_schema_is_no_database_yet(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True)
    (settings.data_dir / "ki67node.db").write_bytes(b"")
    report = collect_status(settings.data_dir, settings.database_target)
    assert report["database"]["state"] == "missing"


def test_unreadable_database_raises_a_clear_error(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True)
    (settings.data_dir / "ki67node.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatabaseError, match="could not read the database at sqlite:///.*Check"):
        collect_status(settings.data_dir, settings.database_target)


def test_read_engine_never_writes(populated: Settings) -> None:
    engine = make_read_engine(populated.database_url)
    try:
        with engine.connect() as conn:
            assert query_status(conn)["series"]["total"] == 4
            with pytest.raises(OperationalError, match="readonly|read-only|query_only"):
                conn.execute(text("DELETE FROM jobs"))
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg://node:s3cret@db:5432/ki67",
            "postgresql+psycopg://node:***@db:5432/ki67",
        ),
        ("sqlite:////var/lib/ki67node/ki67node.db", "sqlite:////var/lib/ki67node/ki67node.db"),
    ],
    ids=["postgres-password-hidden", "sqlite-unchanged"],
)
def test_database_url_hides_the_password(url: str, shown: str) -> None:
    assert safe_url(url) == shown
