"""Running a series again when what we know about it changes.

Two things trigger a new revision of an already analysed series: a
radiologist's corrected DICOM SEG arriving for it (the SEG replaces our mask)
and the four radiological characteristics entered with ``ki67node
characteristics``. Either way the series' revision goes up, a job is queued
for the new revision, and the job's SR names the previous SR as its
predecessor. A SEG that we produced ourselves (the PACS routing our own
output back to us) is recognised and never triggers a re-run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pydicom
from pydicom.uid import SegmentationStorage
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session

from daemon.db.audit import audit
from daemon.db.models import (
    Instance,
    Job,
    OutboxItem,
    Series,
    SeriesDecision,
    utcnow,
)
from daemon.db.states import AuditKind, JobState, SeriesState
from daemon.intake.spool import Spool

log = logging.getLogger(__name__)


class JobSink(Protocol):
    """Where intake queues a series revision for analysis (the job queue,
    :class:`daemon.jobs.queue.JobQueue`, implements it; intake never imports jobs)."""

    def enqueue(self, series_id: int, revision: int) -> int:
        """Queue one job for this revision (idempotent); its id."""
        ...


@dataclass(frozen=True)
class ReceivedSeg:
    """What a received SEG instance says about itself."""

    sop_instance_uid: str
    referenced_series: tuple[str, ...]
    ours: bool  # produced by this node (known in our outbox)


def is_seg_series(headers: list[dict[str, Any]]) -> bool:
    classes = {str(h.get("SOPClassUID", "")) for h in headers}
    return classes == {SegmentationStorage}


def read_received_seg(path: Path, session: Session) -> ReceivedSeg:
    """Header facts of one SEG file in the spool."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    refs = []
    for item in ds.get("ReferencedSeriesSequence", []) or []:
        uid = str(item.get("SeriesInstanceUID", ""))
        if uid:
            refs.append(uid)
    sop = str(ds.get("SOPInstanceUID", ""))
    ours = (
        session.scalar(select(OutboxItem.id).where(OutboxItem.sop_instance_uid == sop).limit(1))
        is not None
    )
    return ReceivedSeg(sop, tuple(refs), ours)


def handle_received_seg(
    engine: Engine, spool: Spool, queue: JobSink, seg_series_id: int
) -> tuple[str, dict[str, Any]]:
    """A complete SEG series arrived: queue a re-run of the series it segments.

    Returns the decision reason and details for the SEG series itself (which
    is never analysed as an image).
    """
    with Session(engine) as session:
        rows = session.execute(
            select(Instance.path).where(Instance.series_id == seg_series_id).order_by(Instance.id)
        ).all()
        segs = []
        for row in rows:
            try:
                segs.append(read_received_seg(spool.path_of(row.path), session))
            except Exception as exc:  # noqa: BLE001 - a bad SEG is a decision, not a crash
                return f"received SEG unreadable ({exc.__class__.__name__})", {}
    if segs and all(s.ours for s in segs):
        return "our own SEG routed back to us: ignored", {"sop": [s.sop_instance_uid for s in segs]}
    refs = sorted({r for s in segs if not s.ours for r in s.referenced_series})
    if not refs:
        return "received SEG references no series: ignored", {}
    queued: list[str] = []
    for series_uid in refs:
        if requeue_series_uid(
            engine, queue, series_uid, "radiologist's SEG received: it replaces the automatic mask"
        ):
            queued.append(series_uid)
    if not queued:
        return (
            "received SEG for a series this node has not analysed: kept, used if that series "
            "arrives",
            {"referenced_series": refs},
        )
    return "received SEG: re-analysis queued", {"referenced_series": queued}


def requeue_series_uid(engine: Engine, queue: JobSink, series_uid: str, reason: str) -> bool:
    with engine.connect() as conn:
        series_id = conn.scalar(select(Series.id).where(Series.series_uid == series_uid))
    return series_id is not None and requeue_series(engine, queue, int(series_id), reason)


def requeue_series(engine: Engine, queue: JobSink, series_id: int, reason: str) -> bool:
    """Bump an analysed, qualifying series to a new revision and queue it; False if not such."""
    with engine.begin() as conn:
        row = conn.execute(
            select(Series.series_uid, Series.revision).where(
                Series.id == series_id,
                Series.state == SeriesState.DECIDED,
                Series.qualifies.is_(True),
            )
        ).first()
        if row is None:
            return False
        revision = int(row.revision) + 1
        changed = conn.execute(
            update(Series)
            .where(Series.id == series_id, Series.revision == row.revision)
            .values(revision=revision)
        ).rowcount
        if changed != 1:
            return False
        conn.execute(
            insert(SeriesDecision).values(
                series_id=series_id,
                revision=revision,
                qualifies=True,
                reason=f"re-analysis: {reason}"[:255],
                details=None,
                decided_at=utcnow(),
            )
        )
        audit(
            conn,
            AuditKind.SERIES_REANALYSIS,
            reason,
            series_uid=row.series_uid,
            detail={"revision": revision},
        )
    queue.enqueue(series_id, revision)
    log.info("series %s: re-analysis queued as revision %d (%s)", row.series_uid, revision, reason)
    return True


def latest_received_seg(
    session: Session, spool: Spool, study_id: int, series_uid: str
) -> Path | None:
    """The newest SEG in the study that references ``series_uid`` and is not ours."""
    rows = session.execute(
        select(Instance.path)
        .join(Series, Series.id == Instance.series_id)
        .where(Series.study_id == study_id, Instance.sop_class_uid == SegmentationStorage)
        .order_by(Instance.received_at.desc(), Instance.id.desc())
    ).all()
    for row in rows:
        path = spool.path_of(row.path)
        try:
            seg = read_received_seg(path, session)
        except Exception:  # noqa: BLE001 - an unreadable SEG is skipped, the automatic mask used
            log.warning("a received SEG in the spool is unreadable; skipped")
            continue
        if not seg.ours and series_uid in seg.referenced_series:
            return path
    return None


def previous_sr(session: Session, series_id: int, revision: int) -> dict[str, str] | None:
    """The SR output of the newest finished job of an earlier revision of this series."""
    jobs = session.scalars(
        select(Job)
        .where(Job.series_id == series_id, Job.revision < revision, Job.state == JobState.DONE)
        .order_by(Job.revision.desc(), Job.id.desc())
    )
    for job in jobs:
        for out in (job.result or {}).get("outputs", []) or []:
            if out.get("kind") == "sr":
                return dict(out)
    return None
