from __future__ import annotations

from sqlalchemy import insert, select

from daemon.db.engine import make_engine, migrate
from daemon.db.models import Series, Study
from daemon.intake.completeness import CompletenessTracker, count_reached, mark_complete, sweep


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    with engine.begin() as conn:
        study = conn.execute(insert(Study).values(study_uid="1.2.3").returning(Study.id)).scalar()
        for i, (count, expected) in enumerate([(5, None), (3, 3), (2, 4)]):
            conn.execute(
                insert(Series).values(
                    id=i + 1,
                    series_uid=f"1.2.3.{i}",
                    study_id=study,
                    instance_count=count,
                    expected_count=expected,
                )
            )
    return engine


def test_series_completes_after_quiet_period_on_monotonic_clock(tmp_path) -> None:
    engine = _engine(tmp_path)
    clock = FakeClock()
    tracker = CompletenessTracker(10.0, clock=clock)
    tracker.touch(1)
    clock.t += 9.9
    assert sweep(engine, tracker) == []
    tracker.touch(1)  # a new instance restarts the wait
    clock.t += 9.9
    assert sweep(engine, tracker) == []
    clock.t += 0.2
    assert sweep(engine, tracker) == [(1, 0)]
    with engine.connect() as conn:
        assert conn.execute(select(Series.state).where(Series.id == 1)).scalar() == "complete"
    assert tracker.pending() == []
    assert sweep(engine, tracker) == []  # decided once


def test_expected_count_completes_sooner(tmp_path) -> None:
    engine = _engine(tmp_path)
    tracker = CompletenessTracker(3600.0, clock=FakeClock())
    tracker.touch(2)
    tracker.touch(3)
    assert count_reached(engine, [2, 3]) == [2]
    assert sweep(engine, tracker) == [(2, 0)]
    assert tracker.pending() == [3]


def test_rearm_after_restart_waits_a_full_period(tmp_path) -> None:
    engine = _engine(tmp_path)
    clock = FakeClock()
    tracker = CompletenessTracker(5.0, clock=clock)
    tracker.rearm([1, 3])
    clock.t += 4.0
    assert sweep(engine, tracker) == []
    clock.t += 1.0
    assert sorted(sweep(engine, tracker)) == [(1, 0), (3, 0)]


def test_mark_complete_only_from_receiving(tmp_path) -> None:
    engine = _engine(tmp_path)
    assert mark_complete(engine, 1) == 0
    assert mark_complete(engine, 1) is None
