"""When is a series complete?

After ``series_stable_seconds`` without a new instance, measured on the
monotonic clock (a wall clock stepped by NTP never completes a series early
or late), or sooner when its expected instance count is known and reached.
Timers live in memory; at start-up every series still SeriesState.RECEIVING in the
database is re-armed with a fresh full wait, so a restart loses no series.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from sqlalchemy import Engine, select, update

from daemon.db.models import Series, utcnow
from daemon.db.states import SeriesState


class CompletenessTracker:
    """Thread-safe last-activity timers per series id."""

    def __init__(self, stable_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stable_seconds = stable_seconds
        self.clock = clock
        self._last: dict[int, float] = {}
        self._lock = threading.Lock()

    def touch(self, series_id: int) -> None:
        """An instance of ``series_id`` was stored just now."""
        now = self.clock()
        with self._lock:
            self._last[series_id] = now

    def rearm(self, series_ids: Iterable[int]) -> None:
        now = self.clock()
        with self._lock:
            for series_id in series_ids:
                self._last.setdefault(series_id, now)

    def pending(self) -> list[int]:
        with self._lock:
            return list(self._last)

    def due(self) -> list[int]:
        """Series quiet for at least ``stable_seconds``."""
        now = self.clock()
        with self._lock:
            return [sid for sid, t in self._last.items() if now - t >= self.stable_seconds]

    def forget(self, series_id: int, touched_before: float | None = None) -> None:
        """Stop tracking, unless it was touched again after ``touched_before``."""
        with self._lock:
            last = self._last.get(series_id)
            if last is not None and (touched_before is None or last <= touched_before):
                del self._last[series_id]


def receiving_series(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(select(Series.id).where(Series.state == SeriesState.RECEIVING)).scalars()
        )


def count_reached(engine: Engine, series_ids: Iterable[int]) -> list[int]:
    """Series whose known expected count has been received."""
    ids = list(series_ids)
    if not ids:
        return []
    with engine.connect() as conn:
        rows = conn.execute(
            select(Series.id).where(
                Series.id.in_(ids),
                Series.state == SeriesState.RECEIVING,
                Series.expected_count.is_not(None),
                Series.instance_count >= Series.expected_count,
            )
        )
        return list(rows.scalars())


def mark_complete(engine: Engine, series_id: int) -> int | None:
    """receiving → complete; returns the revision, or None if it changed meanwhile."""
    with engine.begin() as conn:
        row = conn.execute(
            select(Series.revision).where(
                Series.id == series_id, Series.state == SeriesState.RECEIVING
            )
        ).first()
        if row is None:
            return None
        conn.execute(
            update(Series)
            .where(Series.id == series_id, Series.revision == row.revision)
            .values(state=SeriesState.COMPLETE, completed_at=utcnow())
        )
        return int(row.revision)


def sweep(engine: Engine, tracker: CompletenessTracker) -> list[tuple[int, int]]:
    """Mark due series complete; return (series id, revision) pairs to decide."""
    started = tracker.clock()
    candidates = set(tracker.due()) | set(count_reached(engine, tracker.pending()))
    completed: list[tuple[int, int]] = []
    for series_id in sorted(candidates):
        revision = mark_complete(engine, series_id)
        tracker.forget(series_id, touched_before=started)
        if revision is not None:
            completed.append((series_id, revision))
    return completed
