"""SQLAlchemy 2.x models: the node's state lives here, the bytes in the spool.

The schema is created and changed only by the Alembic migrations in
``daemon/migrations``; a test checks that the models and the migrations agree.
Patient identifiers are stored (follow-up matching needs them) but never logged.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    Unicode,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from daemon.db.states import JobState, OutboxState, SeriesState


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


UID = String(64)


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    study_date: Mapped[str | None] = mapped_column(String(8))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Series(Base):
    """One received series. ``state``: receiving → complete → decided."""

    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=SeriesState.RECEIVING, index=True)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    expected_count: Mapped[int | None] = mapped_column(Integer)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    qualifies: Mapped[bool | None] = mapped_column(Boolean)


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    calling_aet: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    header: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Set when spool retention deleted the file (the row stays: what was received).
    purged_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class QuarantinedInstance(Base):
    """A second copy of a known SOP Instance UID with *different* bytes."""

    __tablename__ = "quarantine"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    path: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(255))
    calling_aet: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class SeriesDecision(Base):
    """Why a series was (not) sent to the pipeline; one row per decision."""

    __tablename__ = "series_decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    qualifies: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(String(255))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    decided_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Job(Base):
    """A unit of work for a worker. ``state``: queued → running → done | failed."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("series_id", "revision", "kind", name="uq_job_series_revision_kind"),
        Index("ix_jobs_state_not_before", "state", "not_before"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), default="analyse_series")
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    not_before: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class OutboxItem(Base):
    """One object to deliver to one destination, retried until delivered."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("destination", "sop_instance_uid", name="uq_outbox_dest_sop"),
        Index("ix_outbox_state_next", "state", "next_attempt_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default=OutboxState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class StudyCharacteristics(Base):
    """The radiologist's four radiological characteristics of a study's meningioma.

    Entered with ``ki67node characteristics``; None = not known. Every change
    re-runs the prediction for the study's qualifying series (amended SR).
    """

    __tablename__ = "study_characteristics"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    edema_index: Mapped[float | None] = mapped_column(Float)
    necrosis: Mapped[bool | None] = mapped_column(Boolean)
    csf_cleft: Mapped[bool | None] = mapped_column(Boolean)
    capsular_enhancement: Mapped[bool | None] = mapped_column(Boolean)
    entered_by: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class AuditEvent(Base):
    """What happened, for admins: no patient names or IDs in ``detail``."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    level: Mapped[str] = mapped_column(String(8), default="info")
    study_uid: Mapped[str | None] = mapped_column(UID)
    series_uid: Mapped[str | None] = mapped_column(UID)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    calling_aet: Mapped[str | None] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


# -- surveillance (issue 6): findings, the follow-up list, the patient's clinical flag ----------
class MeningiomaFinding(Base):
    """One analysed T1C series with a measured meningioma (one row per series).

    A re-run of the same series updates its row (``id`` keeps the received
    order). ``comparison`` is the growth comparison with ``prior_finding_id``.
    ``patient_id``/``issuer`` are PHI: stored for matching, never logged.
    """

    __tablename__ = "findings"
    __table_args__ = (Index("ix_findings_patient", "patient_id", "issuer"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_uid: Mapped[str] = mapped_column(UID, index=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    issuer: Mapped[str] = mapped_column(String(64), default="")
    study_date: Mapped[dt.date | None] = mapped_column(Date)
    volume_cm3: Mapped[float] = mapped_column(Float)
    max_diameter_mm: Mapped[float] = mapped_column(Float)
    location: Mapped[str | None] = mapped_column(String(16))
    side: Mapped[str | None] = mapped_column(String(16))
    risk_group: Mapped[str] = mapped_column(String(8))
    probability: Mapped[float] = mapped_column(Float)
    asymptomatic: Mapped[bool] = mapped_column(Boolean)
    asymptomatic_source: Mapped[str] = mapped_column(String(16))  # recorded | default
    prior_finding_id: Mapped[int | None] = mapped_column(ForeignKey("findings.id"))
    comparison: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class FollowupEntry(Base):
    """One due follow-up imaging of a patient on surveillance.

    ``status``: scheduled → due → overdue (flagged by the scheduler), or
    completed / grown (closed by the next finding), or cancelled (the patient
    was marked symptomatic).
    """

    __tablename__ = "followups"
    __table_args__ = (Index("ix_followups_patient", "patient_id", "issuer"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str] = mapped_column(String(64), default="")
    finding_id: Mapped[int] = mapped_column(ForeignKey("findings.id"), index=True)
    due_date: Mapped[dt.date] = mapped_column(Date, index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    risk_group: Mapped[str] = mapped_column(String(8))
    interval_months: Mapped[int] = mapped_column(Integer)
    recommendation: Mapped[str] = mapped_column(String(255))
    closed_by_finding_id: Mapped[int | None] = mapped_column(ForeignKey("findings.id"))
    closed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    status_changed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class PatientFlag(Base):
    """The clinical "asymptomatic" flag of a patient (``ki67node symptoms``)."""

    __tablename__ = "patient_flags"
    __table_args__ = (UniqueConstraint("patient_id", "issuer", name="uq_patient_flags_patient"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str] = mapped_column(String(64), default="")
    asymptomatic: Mapped[bool] = mapped_column(Boolean)
    entered_by: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class SchedulerJobRow(Base):
    """APScheduler 3's ``SQLAlchemyJobStore`` table, declared here so the migrations own it.

    The job store finds the table present and never creates or alters it.
    """

    __tablename__ = "apscheduler_jobs"
    id: Mapped[str] = mapped_column(Unicode(191), primary_key=True)
    next_run_time: Mapped[float | None] = mapped_column(Float(25), index=True)
    job_state: Mapped[bytes] = mapped_column(LargeBinary)
