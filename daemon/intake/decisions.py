"""Deciding a completed series: is it the T1C MP-RAGE we process?

Runs in the daemon's main loop, off the C-STORE path: reads the header of
every instance from the spool (headers only, no pixel data), summarises them,
asks the series filter, records the decision with its reason and, for a
qualifying series, enqueues one job for this revision of the series. A
radiologist's SEG series is not analysed itself: it queues a re-run of the
series it segments (:mod:`daemon.intake.reanalysis`).
"""

from __future__ import annotations

import logging
from typing import Any

import pydicom
from sqlalchemy import Engine, insert, select, update

from daemon.db.audit import audit
from daemon.db.models import Instance, Series, SeriesDecision, Study, utcnow
from daemon.db.states import AuditKind, SeriesState
from daemon.intake.headers import extract_header
from daemon.intake.reanalysis import JobSink, handle_received_seg, is_seg_series
from daemon.intake.series_filter import FilterVerdict, decide_series
from daemon.intake.spool import Spool
from daemon.settings import FilterSettings

log = logging.getLogger(__name__)


def _headers(engine: Engine, spool: Spool, series_id: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Instance.id, Instance.path, Instance.header)
            .where(Instance.series_id == series_id)
            .order_by(Instance.id)
        ).all()
    headers: list[dict[str, Any]] = []
    fresh: list[tuple[int, dict[str, Any]]] = []
    for row in rows:
        if row.header:
            headers.append(row.header)
            continue
        try:
            ds = pydicom.dcmread(spool.path_of(row.path), stop_before_pixels=True)
            header = extract_header(ds)
        except Exception as exc:  # noqa: BLE001 - a bad header is a decision, not a crash
            header = {"unreadable": f"{exc.__class__.__name__}"}
        headers.append(header)
        fresh.append((row.id, header))
    if fresh:
        with engine.begin() as conn:
            for instance_id, header in fresh:
                conn.execute(
                    update(Instance).where(Instance.id == instance_id).values(header=header)
                )
    return headers


def decide(
    engine: Engine,
    spool: Spool,
    queue: JobSink,
    cfg: FilterSettings,
    series_id: int,
    revision: int,
) -> FilterVerdict | None:
    """Decide (series, revision) once; None if it was decided already or re-opened."""
    with engine.connect() as conn:
        done = conn.execute(
            select(SeriesDecision.id).where(
                SeriesDecision.series_id == series_id, SeriesDecision.revision == revision
            )
        ).first()
        series = conn.execute(
            select(Series.series_uid, Series.state, Series.revision, Study.study_uid)
            .join(Study, Study.id == Series.study_id)
            .where(Series.id == series_id)
        ).first()
    if done is not None or series is None:
        return None
    headers = _headers(engine, spool, series_id)
    try:
        if is_seg_series(headers):  # a radiologist's SEG: re-run the series it segments
            reason, details = handle_received_seg(engine, spool, queue, series_id)
            decision = FilterVerdict(False, reason, details)
        else:
            decision = decide_series(headers, cfg)
    except Exception as exc:  # noqa: BLE001 - the filter must never stop intake
        log.exception("series filter failed on series %s", series.series_uid)
        decision = FilterVerdict(False, f"filter error: {exc.__class__.__name__}", {})
    with engine.begin() as conn:
        changed = conn.execute(
            update(Series)
            .where(
                Series.id == series_id,
                Series.revision == revision,
                Series.state == SeriesState.COMPLETE,
            )
            .values(state=SeriesState.DECIDED, qualifies=decision.qualifies)
        ).rowcount
        if changed != 1:
            return None  # a late instance re-opened it: the next revision decides
        conn.execute(
            insert(SeriesDecision).values(
                series_id=series_id,
                revision=revision,
                qualifies=decision.qualifies,
                reason=decision.reason[:255],
                details=decision.details,
                decided_at=utcnow(),
            )
        )
        audit(
            conn,
            AuditKind.SERIES_DECIDED,
            f"{'qualifies' if decision.qualifies else 'skipped'}: {decision.reason}",
            study_uid=series.study_uid,
            series_uid=series.series_uid,
            detail={"revision": revision, "instances": len(headers)},
        )
    log.info(
        "series %s (revision %d, %d instances) %s: %s",
        series.series_uid,
        revision,
        len(headers),
        "qualifies" if decision.qualifies else "does not qualify",
        decision.reason,
    )
    if decision.qualifies:
        queue.enqueue(series_id, revision)
    return decision


def undecided(engine: Engine) -> list[tuple[int, int]]:
    """Series left 'complete' by a crash between completion and decision."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(Series.id, Series.revision).where(Series.state == SeriesState.COMPLETE)
        )
        return [(int(r.id), int(r.revision)) for r in rows]
