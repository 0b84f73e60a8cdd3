"""Surveillance rules with an injected clock, on SQLite and PostgreSQL: entries, growth, matching."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from daemon.cli.followups import set_asymptomatic
from daemon.db.engine import make_engine, migrate
from daemon.db.models import AuditEvent, FollowupEntry, MeningiomaFinding
from daemon.followup.rules import SurveillanceError, add_months, compare_volumes, status_at
from daemon.followup.scheduler import flag_due, flag_overdue
from daemon.followup.surveillance import (
    Finding,
    record_finding,
)
from daemon.settings import FollowupSettings

CFG = FollowupSettings()
NOW = dt.datetime(2026, 3, 1, 12, 0)
BASE = Finding(
    patient_id="PAT-0001",
    issuer="HOSP",
    study_uid="1.2.826.0.1.1",
    series_uid="1.2.826.0.1.1.1",
    study_date=dt.date(2026, 1, 10),
    volume_cm3=2.0,
    max_diameter_mm=20.0,
    location="convexity",
    side="left",
    risk_group="low",
    probability=0.3,
)


def follow(n: int, date: dt.date | None, volume: float, **changes: object) -> Finding:
    """A later study of the same patient (study n)."""
    return dataclasses.replace(
        BASE,
        study_uid=f"1.2.826.0.1.{n}",
        series_uid=f"1.2.826.0.1.{n}.1",
        study_date=date,
        volume_cm3=volume,
        **changes,  # type: ignore[arg-type]
    )


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    migrate(eng)
    yield eng
    eng.dispose()


def record(engine: Engine, finding: Finding, cfg: FollowupSettings = CFG, now: dt.datetime = NOW):
    with Session(engine) as session, session.begin():
        return record_finding(session, cfg, finding, now=now)


def entries(engine: Engine) -> list[FollowupEntry]:
    with Session(engine) as session:
        return list(session.scalars(select(FollowupEntry).order_by(FollowupEntry.id)))


# -- entries created or not ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("risk", "due", "recommendation"),
    [
        ("low", dt.date(2027, 1, 10), "routine imaging"),
        ("high", dt.date(2026, 7, 10), "earlier imaging; consider intervention"),
    ],
    ids=["low-12-months", "high-6-months"],
)
def test_small_asymptomatic_tumour_gets_an_entry_by_risk_group(
    engine: Engine, risk: str, due: dt.date, recommendation: str
) -> None:
    outcome = record(engine, dataclasses.replace(BASE, risk_group=risk))
    [entry] = entries(engine)
    assert (entry.due_date, entry.status, entry.recommendation) == (
        due,
        "scheduled",
        recommendation,
    )
    assert entry.patient_id == "PAT-0001" and entry.risk_group == risk
    assert outcome.comparison is None
    assert outcome.followup is not None and outcome.followup["created"]["id"] == entry.id
    assert "baseline" in outcome.note and "PAT-0001" not in outcome.note


@pytest.mark.parametrize(
    ("finding", "cfg"),
    [
        (dataclasses.replace(BASE, max_diameter_mm=35.0), CFG),
        (dataclasses.replace(BASE, max_diameter_mm=30.0), CFG),
        (BASE, FollowupSettings(default_asymptomatic=False)),
    ],
    ids=["35mm", "30mm-not-below-limit", "default-symptomatic"],
)
def test_no_entry_for_large_tumour_or_symptomatic_default(
    engine: Engine, finding: Finding, cfg: FollowupSettings
) -> None:
    outcome = record(engine, finding, cfg)
    assert entries(engine) == []
    assert "not on the follow-up list" in outcome.note


def test_no_entry_for_a_patient_marked_symptomatic(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        set_asymptomatic(session, CFG, "PAT-0001", "HOSP", False, now=NOW)
    record(engine, BASE)
    assert entries(engine) == []
    with Session(engine) as session:
        row = session.scalars(select(MeningiomaFinding)).one()
        assert (row.asymptomatic, row.asymptomatic_source) == (False, "recorded")


def test_without_patient_id_no_matching_and_no_entry(engine: Engine) -> None:
    outcome = record(engine, dataclasses.replace(BASE, patient_id=""))
    assert entries(engine) == [] and outcome.followup is None
    assert "no patient ID" in outcome.note


# -- scheduled -> due -> overdue ----------------------------------------------------------------
def test_status_due_then_overdue_with_audit_event(engine: Engine) -> None:
    record(engine, BASE)  # due 2027-01-10, grace 30 days
    steps = [
        (dt.datetime(2027, 1, 9, 23, 59), "scheduled"),
        (dt.datetime(2027, 1, 10, 0, 0), "due"),
        (dt.datetime(2027, 2, 9, 12, 0), "due"),
        (dt.datetime(2027, 2, 10, 0, 0), "overdue"),
    ]
    for now, expected in steps:
        with Session(engine) as session, session.begin():
            flag_due(session, CFG, now=now)
            flag_overdue(session, CFG, now=now)
        assert entries(engine)[0].status == expected, now
    with Session(engine) as session:
        [event] = session.scalars(select(AuditEvent).where(AuditEvent.kind == "followup_overdue"))
    assert event.detail == {"followup_ids": [entries(engine)[0].id]}
    assert "PAT-0001" not in event.message + str(event.detail)


@pytest.mark.parametrize(
    ("today", "expected"),
    [(dt.date(2027, 1, 9), "scheduled"), (dt.date(2027, 1, 10), "due"),
     (dt.date(2027, 2, 9), "due"), (dt.date(2027, 2, 10), "overdue")],
)  # fmt: skip
def test_status_rule(today: dt.date, expected: str) -> None:
    now = dt.datetime.combine(today, dt.time(8))
    assert status_at(dt.date(2027, 1, 10), now, 30) == expected


def test_an_old_study_entered_late_is_overdue_at_once(engine: Engine) -> None:
    record(engine, BASE, now=dt.datetime(2028, 6, 1))
    assert entries(engine)[0].status == "overdue"


# -- a follow-up study closes the entry and measures growth --------------------------------------
def test_follow_up_study_closes_entry_and_schedules_the_next(engine: Engine) -> None:
    record(engine, BASE)
    outcome = record(engine, follow(2, dt.date(2027, 1, 20), 2.1), now=dt.datetime(2027, 1, 21))
    first, second = entries(engine)
    assert (first.status, first.closed_at) == ("completed", dt.datetime(2027, 1, 21))
    assert (second.status, second.due_date) == ("scheduled", dt.date(2028, 1, 20))
    comparison = outcome.comparison
    assert comparison is not None and not comparison.grown
    assert comparison.prior_study_uid == BASE.study_uid and comparison.interval_days == 375
    assert comparison.change_percent == pytest.approx(5.0)
    assert outcome.followup is not None
    assert [c["status"] for c in outcome.followup["closed"]] == ["completed"]


@pytest.mark.parametrize(
    ("volume", "change", "grown"),
    [(2.3, 15.0, True), (2.298, 14.9, False)],
    ids=["15.0%-grown", "14.9%-not"],
)
def test_growth_threshold(engine: Engine, volume: float, change: float, grown: bool) -> None:
    record(engine, BASE)
    outcome = record(engine, follow(2, dt.date(2027, 1, 10), volume), now=dt.datetime(2027, 1, 11))
    assert outcome.comparison is not None
    assert (outcome.comparison.change_percent, outcome.comparison.grown) == (change, grown)
    first, second = entries(engine)
    assert first.status == ("grown" if grown else "completed")
    if grown:  # a grown tumour gets the shorter (high) interval with the growth noted
        assert (second.risk_group, second.interval_months) == ("high", 6)
        assert second.recommendation.startswith("growth +15.0 % since prior")
    else:
        assert (second.risk_group, second.interval_months) == ("low", 12)


def test_annual_rate_and_doubling_time_against_hand_computed_values() -> None:
    # 3.2 -> 4.0 cm3 in 365 days: years = 365/365.25; ratio 1.25
    # annual = 1.25 ** (365.25/365) - 1 = 25.0191 %; doubling = ln2 * 0.999316 / ln1.25 = 3.10416 y
    change, grown, annual, doubling = compare_volumes(3.2, 4.0, 365, 15.0)
    assert (change, grown) == (25.0, True)
    assert annual == pytest.approx(25.01910621614687, rel=1e-12)
    assert doubling == pytest.approx(3.104157584173764, rel=1e-12)
    # exactly two doublings in 4 years of 365.25 days
    _, _, annual2, doubling2 = compare_volumes(1.0, 4.0, 1461, 15.0)
    assert (annual2, doubling2) == (pytest.approx(100 * (math.sqrt(2) - 1)), pytest.approx(2.0))


@pytest.mark.parametrize(
    ("args", "expected"),
    [((2.0, 1.5, 365, 15.0), (-25.0, False, True)), ((2.0, 2.5, None, 15.0), (25.0, True, False))],
    ids=["shrinking-no-doubling", "no-dates-no-rates"],
)
def test_rates_need_growth_and_dates(args: tuple, expected: tuple) -> None:
    change, grown, annual, doubling = compare_volumes(*args)
    assert (change, grown, annual is not None) == expected
    assert doubling is None


def test_compare_refuses_a_zero_prior_volume() -> None:
    with pytest.raises(SurveillanceError, match="the prior must be > 0"):
        compare_volumes(0.0, 1.0, 100, 15.0)


# -- idempotency and matching ----------------------------------------------------------------
def test_rerun_of_the_same_series_is_not_a_follow_up_of_itself(engine: Engine) -> None:
    record(engine, BASE)
    outcome = record(engine, dataclasses.replace(BASE, volume_cm3=2.6, risk_group="high"))
    assert outcome.comparison is None and "baseline" in outcome.note
    [entry] = entries(engine)
    assert (entry.status, entry.due_date, entry.risk_group) == (
        "scheduled",
        dt.date(2026, 7, 10),
        "high",
    )
    assert outcome.followup is not None and outcome.followup["rescheduled"]["id"] == entry.id
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(MeningiomaFinding)) == 1


def test_rerun_of_the_follow_up_updates_its_comparison_only(engine: Engine) -> None:
    record(engine, BASE)
    later = dt.datetime(2027, 1, 21)
    record(engine, follow(2, dt.date(2027, 1, 20), 2.1), now=later)
    outcome = record(engine, follow(2, dt.date(2027, 1, 20), 2.4), now=later)  # re-segmented
    first, second = entries(engine)
    assert outcome.comparison is not None and outcome.comparison.change_percent == 20.0
    assert (first.status, second.status, len(entries(engine))) == ("grown", "scheduled", 2)
    assert second.interval_months == 6


def test_a_second_series_of_the_same_study_is_not_a_follow_up(engine: Engine) -> None:
    record(engine, BASE)
    outcome = record(engine, dataclasses.replace(BASE, series_uid="1.2.826.0.1.1.2", volume_cm3=3))
    assert outcome.comparison is None
    assert [e.status for e in entries(engine)] == ["scheduled"]  # one open entry per patient


def test_lesion_matched_by_location_and_side(engine: Engine) -> None:
    record(engine, BASE)  # left convexity 2.0
    falx = dataclasses.replace(
        BASE, series_uid="1.2.826.0.1.1.3", volume_cm3=5.0, location="falx", side="midline"
    )
    record(engine, falx)
    outcome = record(engine, follow(2, dt.date(2027, 1, 10), 5.5, location="falx", side="midline"))
    assert outcome.comparison is not None and outcome.comparison.prior_volume_cm3 == 5.0
    elsewhere = record(
        engine, follow(3, dt.date(2028, 1, 10), 1.0, location="skull_base", side="left")
    )
    assert elsewhere.comparison is None and "baseline" in elsewhere.note
    unknown = record(engine, follow(4, dt.date(2029, 1, 10), 1.2, location=None, side=None))
    assert unknown.comparison is not None  # the prior study (3) has a single lesion
    assert unknown.comparison.prior_volume_cm3 == 1.0


def test_without_dates_the_received_order_decides(engine: Engine) -> None:
    record(engine, dataclasses.replace(BASE, study_date=None))
    outcome = record(engine, follow(2, None, 2.5))
    assert outcome.comparison is not None
    assert (outcome.comparison.change_percent, outcome.comparison.interval_days) == (25.0, None)
    assert outcome.comparison.annual_growth_percent is None


def test_an_older_study_arriving_late_changes_no_open_entry(engine: Engine) -> None:
    record(engine, BASE)
    old = record(engine, follow(0, dt.date(2024, 1, 10), 1.5))
    assert old.comparison is None and old.followup == {"closed": []}
    [entry] = entries(engine)
    assert entry.status == "scheduled"
    rerun = record(engine, BASE)  # now BASE has a prior: 1.5 -> 2.0 cm3
    assert rerun.comparison is not None and rerun.comparison.change_percent == pytest.approx(
        33.333333
    )


# -- the clinical flag re-evaluates the open entry -----------------------------------------------
def test_symptoms_flag_cancels_and_restores_the_entry(engine: Engine) -> None:
    record(engine, BASE)
    with Session(engine) as session, session.begin():
        result = set_asymptomatic(session, CFG, "PAT-0001", "HOSP", False, now=NOW)
    assert result["cancelled"]["status"] == "cancelled"
    assert [e.status for e in entries(engine)] == ["cancelled"]
    with Session(engine) as session, session.begin():
        result = set_asymptomatic(session, CFG, "PAT-0001", "HOSP", True, now=NOW)
    assert [e.status for e in entries(engine)] == ["scheduled"]
    assert result["rescheduled"]["due_date"] == "2027-01-10"


def test_finding_is_validated(engine: Engine) -> None:
    with pytest.raises(SurveillanceError, match="risk_group must be 'high' or 'low'"):
        record(engine, dataclasses.replace(BASE, risk_group="ki67_high"))
    with pytest.raises(SurveillanceError, match="volume_cm3 must be a finite number"):
        record(engine, dataclasses.replace(BASE, volume_cm3=float("nan")))


@pytest.mark.parametrize(
    ("day", "months", "expected"),
    [(dt.date(2026, 1, 31), 1, dt.date(2026, 2, 28)), (dt.date(2026, 8, 15), 6, dt.date(2027, 2, 15)),
     (dt.date(2028, 1, 31), 1, dt.date(2028, 2, 29))],
)  # fmt: skip
def test_add_months(day: dt.date, months: int, expected: dt.date) -> None:
    assert add_months(day, months) == expected
