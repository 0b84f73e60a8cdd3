"""``ki67node followups`` / ``symptoms`` and ``GET /api/followups``, on SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from daemon.cli.followups import add_followup_commands
from daemon.db.engine import make_engine, migrate
from daemon.followup.surveillance import record_finding
from daemon.ops import http as http_mod
from daemon.ops.http import StatusServer
from daemon.settings import Settings, load_settings
from tests.test_http import status_server
from tests.test_surveillance import BASE, CFG, follow


def run_cli(argv: list[str]) -> int:
    """The commands as ``daemon.cli`` registers them (``add_followup_commands(sub)``)."""
    parser = argparse.ArgumentParser(prog="ki67node")
    parser.add_argument("--debug", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    add_followup_commands(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "ki67node.toml"
    path.write_text(
        f'[node]\ndata_dir = "{tmp_path / "data"}"\n[database]\nurl = "{database_url}"\n'
        '[http]\nport = 0\nbind = "127.0.0.1"\n'
    )
    return path


@pytest.fixture
def populated(config: Path) -> Settings:
    """Patient 1: baseline then a grown follow-up; patient 2: a high-risk baseline."""
    settings = load_settings(config, env={})
    engine = make_engine(settings.database_url)
    migrate(engine)
    with Session(engine) as session, session.begin():
        record_finding(session, CFG, BASE, now=dt.datetime(2026, 1, 11))
        record_finding(
            session, CFG, follow(2, dt.date(2027, 1, 20), 2.4), now=dt.datetime(2027, 1, 21)
        )
        other = dataclasses.replace(
            BASE,
            patient_id="PAT-0002",
            study_uid="1.2.826.0.2.1",
            series_uid="1.2.826.0.2.1.1",
            risk_group="high",
            volume_cm3=1.234,
            max_diameter_mm=14.26,
        )
        record_finding(session, CFG, other, now=dt.datetime(2027, 1, 21))  # entered late
    engine.dispose()
    return settings


def followups_json(config: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> Any:
    assert run_cli(["followups", "--json", "--config", str(config), *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_followups_json_lists_entries_with_status_and_growth(
    populated: Settings, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = followups_json(config, capsys)["followups"]
    summary = [(r["patient_id"], r["due_date"], r["status"], r["risk_group"]) for r in rows]
    assert summary == [
        ("PAT-0002", "2026-07-10", "overdue", "high"),  # recorded late: already overdue
        ("PAT-0001", "2027-01-10", "grown", "low"),
        ("PAT-0001", "2027-07-20", "scheduled", "high"),  # grown: the shorter interval
    ]
    grown, following = rows[1], rows[2]
    assert grown["last_growth"]["change_percent"] == 20.0 and grown["last_growth"]["grown"]
    assert grown["closed_by_study_uid"] == "1.2.826.0.1.2" and grown["closed_at"]
    assert following["last_growth"] == grown["last_growth"]
    assert (rows[0]["max_diameter_mm"], rows[0]["volume_cm3"]) == (14.3, 1.23)
    assert rows[0]["recommendation"] == "earlier imaging; consider intervention"
    before = followups_json(config, capsys, "--due-before", "2027-01-10")["followups"]
    assert [r["patient_id"] for r in before] == ["PAT-0002"]


def test_followups_table(
    populated: Settings, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["followups", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:8] == ["#", "patient", "study", "date", "diam", "mm", "vol", "cm3"]
    assert "PAT-0001" in lines[2] and "grown" in lines[2] and "+20.0 % (grown)" in lines[2]
    assert "2027-07-20" in lines[3] and "growth +20.0 % since prior" in lines[3]


def test_followups_rejects_a_bad_date(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="2"):
        run_cli(["followups", "--config", str(config), "--due-before", "next week"])
    assert "is not a date; use YYYY-MM-DD" in capsys.readouterr().err


def test_followups_without_a_database_is_empty_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n')
    assert run_cli(["followups", "--config", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "no follow-up entries"
    assert not (tmp_path / "data" / "ki67node.db").exists()


def test_symptoms_command_cancels_and_restores(
    populated: Settings, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["symptoms", "PAT-0002", "--issuer", "HOSP", "--config", str(config)]
    assert run_cli([*argv, "--asymptomatic", "no"]) == 0
    out = capsys.readouterr().out
    assert "PAT-0002 is symptomatic" in out and "cancelled" in out
    statuses = {r["patient_id"]: r["status"] for r in followups_json(config, capsys)["followups"]}
    assert statuses["PAT-0002"] == "cancelled"
    assert run_cli([*argv, "--asymptomatic", "yes"]) == 0
    assert "rescheduled (due 2026-07-10, overdue)" in capsys.readouterr().out
    assert run_cli(["symptoms", "NEW-9", "--asymptomatic", "no", "--config", str(config)]) == 0
    assert "the flag applies to the next one" in capsys.readouterr().out


@pytest.fixture
def http_server(populated: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[StatusServer]:
    monkeypatch.setattr(http_mod, "POLL_INTERVAL_SECONDS", 0.05)
    server = status_server(populated)
    server.start()
    yield server
    server.stop()


def get(port: int, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_api_followups_is_the_same_json_as_the_cli(
    http_server: StatusServer, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, body = get(http_server.port, "/api/followups")
    cli = followups_json(config, capsys)
    assert status == 200
    assert {**body, "generated_at": None} == {**cli, "generated_at": None}
    status, body = get(http_server.port, "/api/followups?due_before=2027-01-10")
    assert (status, [r["patient_id"] for r in body["followups"]]) == (200, ["PAT-0002"])
    status, body = get(http_server.port, "/api/followups?due_before=soon")
    assert (status, body["error"]) == (400, "due_before must be a date, YYYY-MM-DD")


def test_api_followups_without_a_database_is_empty_and_creates_nothing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_mod, "POLL_INTERVAL_SECONDS", 0.05)
    server = status_server(settings)
    server.start()
    try:
        status, body = get(server.port, "/api/followups")
    finally:
        server.stop()
    assert (status, body["followups"]) == (200, [])
    assert not (settings.data_dir / "ki67node.db").exists()
