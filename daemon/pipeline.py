"""What a job does, run inside a worker process: the one place that calls ai_core.

Today the real first stage runs: the series' instances are read from the
spool and built into a 3D volume (decoding never happens in the listener).
Segmentation, prediction and the DICOM outputs are added by later issues; the
result names the stages that ran, and nothing here pretends to predict.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ai_core.errors import VolumeError
from ai_core.volume import Volume, load_series
from daemon.db.models import Instance, Series
from daemon.errors import JobError, SpoolError
from daemon.jobs import ClaimedJob
from daemon.spool import Spool

log = logging.getLogger(__name__)

STAGE_LOAD = "load"
STAGES_NOT_BUILT = ("segment", "measure", "radiomics", "predict", "build_outputs")


def run_job(
    session_factory: sessionmaker[Session], spool_root: Path, job: ClaimedJob
) -> dict[str, Any]:
    """Run one attempt of ``job``; return its JSON-safe result.

    Raises :class:`JobError` with ``retryable=False`` for bad data (retrying
    cannot help) and ``retryable=True`` for transient problems.
    """
    timings: dict[str, float] = {}
    series_uid, relpaths = _instances(session_factory, job)
    spool = Spool(spool_root)
    try:
        paths = [spool.path_of(rel) for rel in relpaths]
    except SpoolError as exc:
        raise JobError(f"series {series_uid}: {exc}", retryable=False) from exc

    start = time.perf_counter()
    try:
        volume = load_series(paths)
    except VolumeError as exc:
        raise JobError(f"series {series_uid} cannot be loaded: {exc}", retryable=False) from exc
    except FileNotFoundError as exc:
        raise JobError(
            f"series {series_uid}: a spool file is missing ({Path(str(exc.filename)).name}); "
            "ask the sender to resend the series",
            retryable=False,
        ) from exc
    except OSError as exc:
        raise JobError(
            f"series {series_uid}: could not read the spool ({exc.strerror or exc}); will retry",
            retryable=True,
        ) from exc
    timings[STAGE_LOAD] = round(time.perf_counter() - start, 6)
    log.info(
        "job %d: loaded series %s as a %s volume in %.2f s",
        job.id,
        series_uid,
        "×".join(str(n) for n in volume.shape),
        timings[STAGE_LOAD],
    )
    return {
        "kind": job.kind,
        "series_uid": series_uid,
        "revision": job.revision,
        "attempt": job.attempt,
        "stages_run": [STAGE_LOAD],
        "stages_not_built": list(STAGES_NOT_BUILT),
        "prediction": None,
        "volume": describe_volume(volume, len(paths)),
        "timings": timings,
    }


def describe_volume(volume: Volume, n_instances: int) -> dict[str, Any]:
    """The JSON-safe summary of a volume kept in the job's result."""
    return {
        "shape_zyx": list(volume.shape),
        "spacing_xyz_mm": [round(v, 6) for v in volume.spacing],
        "origin_lps_mm": [round(v, 6) for v in volume.origin],
        "direction": [round(float(v), 6) for v in volume.direction.flatten()],
        "axis_codes": volume.axis_codes(),
        "plane": volume.plane(),
        "dtype": str(volume.array.dtype),
        "rescaled": volume.rescaled,
        "instances": n_instances,
        "frame_of_reference_uid": volume.frame_of_reference_uid,
    }


def _instances(session_factory: sessionmaker[Session], job: ClaimedJob) -> tuple[str, list[str]]:
    try:
        with session_factory() as session:
            series_uid = session.scalar(select(Series.series_uid).where(Series.id == job.series_id))
            relpaths = list(
                session.scalars(
                    select(Instance.path)
                    .where(Instance.series_id == job.series_id)
                    .order_by(Instance.id)
                )
            )
    except SQLAlchemyError as exc:
        raise JobError(
            f"job {job.id}: database unavailable ({exc.__class__.__name__}); will retry",
            retryable=True,
        ) from exc
    if series_uid is None:
        raise JobError(f"job {job.id}: series {job.series_id} no longer exists", retryable=False)
    if not relpaths:
        raise JobError(f"series {series_uid} has no stored instances", retryable=False)
    return series_uid, relpaths
