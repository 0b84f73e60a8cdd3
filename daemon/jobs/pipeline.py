"""What a job does, run inside a worker process: the one place the daemon calls ai_core.

One attempt: read the series' instances from the spool and build the 3D
volume (decoding never happens in the listener), then the shared chain
(:mod:`daemon.jobs.chain`: image pipeline, Transformer, SEG / heatmap SCs / SR),
then stage the objects and their outbox rows for delivery. What the
radiologist gave (the four characteristics, a corrected SEG) is looked up
here; an earlier revision's SR becomes the new SR's predecessor. Output UIDs
derive from (series, revision), so a retried attempt stages the same objects
and the PACS never sees duplicates.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ai_core.errors import AiCoreError, VolumeError
from ai_core.model.inputs import Characteristics
from ai_core.volume import Volume, load_series
from daemon.db.models import Instance, Series, Study, StudyCharacteristics, utcnow
from daemon.delivery.outbox import StagedObject, stage_results
from daemon.errors import JobError, SpoolError
from daemon.followup.rules import SurveillanceError
from daemon.followup.surveillance import (
    Finding,
    SurveillanceOutcome,
    record_finding,
)
from daemon.intake.reanalysis import latest_received_seg, previous_sr
from daemon.intake.spool import Spool
from daemon.jobs.queue import ClaimedJob
from daemon.jobs.worker_process import JobSettings
from daemon.settings import FollowupSettings
from dicom_out.context import OutputError, Predecessor, PriorComparison

if TYPE_CHECKING:  # torch-free at import: the serving process imports this module's names
    from ai_core.analysis import ImageAnalysis
    from ai_core.model.predict import Prediction
    from daemon.jobs.chain import ChainRequest, ChainResult

log = logging.getLogger(__name__)

STAGE_LOAD = "load"


@dataclass(frozen=True)
class JobInputs:
    """What the database knows about the job's series."""

    series_uid: str
    study_uid: str
    relpaths: list[str]
    characteristics: Characteristics
    received_seg: Path | None
    predecessor: Predecessor | None


def run_job(
    session_factory: sessionmaker[Session], cfg: JobSettings, job: ClaimedJob
) -> dict[str, Any]:
    """Run one attempt of ``job``; return its JSON-safe result.

    Raises :class:`JobError` with ``retryable=False`` for bad data (retrying
    cannot help) and ``retryable=True`` for transient problems.
    """
    from daemon.jobs.chain import ChainRequest  # torch: worker processes only

    timings: dict[str, float] = {}
    spool = Spool(cfg.spool_dir)
    inputs = _inputs(session_factory, spool, job)
    series_uid = inputs.series_uid
    try:
        paths = [spool.path_of(rel) for rel in inputs.relpaths]
    except SpoolError as exc:
        raise JobError(f"series {series_uid}: {exc}", retryable=False) from exc

    start = time.perf_counter()
    volume = _load(series_uid, paths)
    timings[STAGE_LOAD] = round(time.perf_counter() - start, 6)
    log.info(
        "job %d: loaded series %s as a %s volume in %.2f s",
        job.id,
        series_uid,
        "×".join(str(n) for n in volume.shape),
        timings[STAGE_LOAD],
    )
    request = ChainRequest(
        paths=paths,
        job_key=f"{series_uid}/r{job.revision}",
        characteristics=inputs.characteristics,
        received_seg=inputs.received_seg,
        predecessor=inputs.predecessor,
    )
    surveillance = Surveillance(session_factory, cfg.followup, inputs)
    chain = _run_chain(request, cfg, volume, surveillance, job)
    timings.update(chain.timings)

    start = time.perf_counter()
    staged = _stage(cfg, session_factory, job, chain.datasets)
    timings["stage"] = time.perf_counter() - start
    summary = chain.summary()
    return {
        "kind": job.kind,
        "series_uid": series_uid,
        "revision": job.revision,
        "attempt": job.attempt,
        "status": summary["status"],
        "reason": summary["reason"],
        "stages_run": [STAGE_LOAD, *chain.timings, "stage"],
        "analysis": summary["analysis"],
        "prediction": summary["prediction"],
        "characteristics": inputs.characteristics.known(),
        "received_seg": inputs.received_seg is not None,
        "amends": None if inputs.predecessor is None else inputs.predecessor.sop_instance_uid,
        "outputs": summary["outputs"],
        "growth": summary["growth"],
        "surveillance": surveillance.summary(),
        "staged": len(staged),
        "volume": describe_volume(volume, len(paths)),
        "timings": {k: round(v, 6) for k, v in timings.items()},
    }


def _run_chain(
    request: ChainRequest,
    cfg: JobSettings,
    volume: Volume,
    surveillance: Surveillance,
    job: ClaimedJob,
) -> ChainResult:
    """The shared chain; its errors as retryable or final :class:`JobError`."""
    from daemon.jobs.chain import run_chain  # torch: worker processes only

    series_uid = surveillance.inputs.series_uid
    try:
        return run_chain(request, cfg.pipeline, volume=volume, prior=surveillance)
    except (AiCoreError, OutputError) as exc:  # bad data or unsupported: a retry cannot help
        raise JobError(f"series {series_uid}: {exc}", retryable=False) from exc
    except SQLAlchemyError as exc:
        raise JobError(
            f"job {job.id}: database unavailable while recording the finding; will retry",
            retryable=True,
        ) from exc
    except MemoryError as exc:
        raise JobError(f"series {series_uid}: out of memory; will retry", retryable=True) from exc


def _stage(
    cfg: JobSettings,
    session_factory: sessionmaker[Session],
    job: ClaimedJob,
    datasets: list[Dataset],
) -> list[StagedObject]:
    """The results into the outbox; a database or disk problem is retryable."""
    try:
        return stage_results(cfg.data_dir, cfg.destinations, session_factory, job.id, datasets)
    except SQLAlchemyError as exc:
        raise JobError(
            f"job {job.id}: database unavailable while staging results; will retry",
            retryable=True,
        ) from exc
    except OSError as exc:
        raise JobError(
            f"job {job.id}: could not write results ({exc.strerror or exc}); will retry",
            retryable=True,
        ) from exc


class Surveillance:
    """The chain's prior hook: record the finding, return the growth against the prior.

    Runs in its own transaction (the finding is stored once per series, so a
    retried job updates it); a problem with the follow-up rules is logged and
    the report goes out without the comparison rather than not at all.
    """

    def __init__(
        self, session_factory: sessionmaker[Session], cfg: FollowupSettings, inputs: JobInputs
    ) -> None:
        self.session_factory = session_factory
        self.cfg = cfg
        self.inputs = inputs
        self.outcome: SurveillanceOutcome | None = None

    def __call__(
        self, analysis: ImageAnalysis, prediction: Prediction, header: Dataset
    ) -> PriorComparison | None:
        m = analysis.measurements
        if m is None:
            return None
        finding = Finding(
            patient_id=str(header.get("PatientID", "") or ""),
            issuer=str(header.get("IssuerOfPatientID", "") or ""),
            study_uid=self.inputs.study_uid,
            series_uid=self.inputs.series_uid,
            study_date=_dicom_date(header.get("StudyDate")),
            volume_cm3=float(m.volume_cm3),
            max_diameter_mm=float(m.max_diameter_mm),
            location=m.location,
            side=m.side,
            risk_group=prediction.risk_group,
            probability=float(prediction.probability_output1),
        )
        try:
            with self.session_factory.begin() as session:
                self.outcome = record_finding(session, self.cfg, finding, now=utcnow())
        except SurveillanceError as exc:
            log.warning("series %s: follow-up rules not applied: %s", finding.series_uid, exc)
            return None
        return self.outcome.comparison

    def summary(self) -> dict[str, Any] | None:
        if self.outcome is None:
            return None
        return {"note": self.outcome.note, "followup": self.outcome.followup}


def _dicom_date(value: object) -> dt.date | None:
    text = str(value or "").strip()
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None
    except ValueError:
        return None


def _load(series_uid: str, paths: list[Path]) -> Volume:
    try:
        return load_series(paths)
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


def _inputs(session_factory: sessionmaker[Session], spool: Spool, job: ClaimedJob) -> JobInputs:
    try:
        with session_factory() as session:
            row = session.execute(
                select(Series.series_uid, Series.study_id, Study.study_uid)
                .join(Study, Study.id == Series.study_id)
                .where(Series.id == job.series_id)
            ).first()
            if row is None:
                raise JobError(
                    f"job {job.id}: series {job.series_id} no longer exists", retryable=False
                )
            relpaths = list(
                session.scalars(
                    select(Instance.path)
                    .where(Instance.series_id == job.series_id)
                    .order_by(Instance.id)
                )
            )
            purged = session.scalar(
                select(func.max(Instance.purged_at)).where(Instance.series_id == job.series_id)
            )
            if purged is not None:
                raise JobError(
                    f"series {row.series_uid}: its images were removed by spool retention "
                    f"({purged:%Y-%m-%d}); send the series again to analyse it",
                    retryable=False,
                )
            stored = session.scalar(
                select(StudyCharacteristics).where(StudyCharacteristics.study_uid == row.study_uid)
            )
            characteristics = (
                Characteristics(
                    edema_index=stored.edema_index,
                    necrosis=stored.necrosis,
                    csf_cleft=stored.csf_cleft,
                    capsular_enhancement=stored.capsular_enhancement,
                )
                if stored is not None
                else Characteristics()
            )
            received = latest_received_seg(session, spool, row.study_id, row.series_uid)
            previous = previous_sr(session, job.series_id, job.revision)
    except SQLAlchemyError as exc:
        raise JobError(
            f"job {job.id}: database unavailable ({exc.__class__.__name__}); will retry",
            retryable=True,
        ) from exc
    if not relpaths:
        raise JobError(f"series {row.series_uid} has no stored instances", retryable=False)
    predecessor = None
    if previous is not None:
        predecessor = Predecessor(
            study_uid=row.study_uid,
            series_uid=previous["series_uid"],
            sop_instance_uid=previous["sop_instance_uid"],
            sop_class_uid=previous["sop_class_uid"],
        )
    return JobInputs(
        row.series_uid, row.study_uid, relpaths, characteristics, received, predecessor
    )
