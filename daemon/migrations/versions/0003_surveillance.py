"""surveillance: findings, the follow-up list, patient flags, scheduler jobs, spool purge mark

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-10 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "findings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer", sa.String(length=64), nullable=False),
        sa.Column("study_date", sa.Date(), nullable=True),
        sa.Column("volume_cm3", sa.Float(), nullable=False),
        sa.Column("max_diameter_mm", sa.Float(), nullable=False),
        sa.Column("location", sa.String(length=16), nullable=True),
        sa.Column("side", sa.String(length=16), nullable=True),
        sa.Column("risk_group", sa.String(length=8), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("asymptomatic", sa.Boolean(), nullable=False),
        sa.Column("asymptomatic_source", sa.String(length=16), nullable=False),
        sa.Column("prior_finding_id", sa.Integer(), nullable=True),
        sa.Column("comparison", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["prior_finding_id"], ["findings.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("series_uid"),
    )
    op.create_index("ix_findings_patient", "findings", ["patient_id", "issuer"])
    op.create_index(op.f("ix_findings_study_uid"), "findings", ["study_uid"])
    op.create_table(
        "followups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer", sa.String(length=64), nullable=False),
        sa.Column("finding_id", sa.Integer(), nullable=False),
        sa.Column("due_date", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("risk_group", sa.String(length=8), nullable=False),
        sa.Column("interval_months", sa.Integer(), nullable=False),
        sa.Column("recommendation", sa.String(length=255), nullable=False),
        sa.Column("closed_by_finding_id", sa.Integer(), nullable=True),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("status_changed_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["finding_id"], ["findings.id"]),
        sa.ForeignKeyConstraint(["closed_by_finding_id"], ["findings.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_followups_patient", "followups", ["patient_id", "issuer"])
    op.create_index(op.f("ix_followups_finding_id"), "followups", ["finding_id"])
    op.create_index(op.f("ix_followups_due_date"), "followups", ["due_date"])
    op.create_index(op.f("ix_followups_status"), "followups", ["status"])
    op.create_table(
        "patient_flags",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer", sa.String(length=64), nullable=False),
        sa.Column("asymptomatic", sa.Boolean(), nullable=False),
        sa.Column("entered_by", sa.String(length=64), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("patient_id", "issuer", name="uq_patient_flags_patient"),
    )
    # APScheduler 3's SQLAlchemyJobStore table (it finds it present and uses it as is).
    op.create_table(
        "apscheduler_jobs",
        sa.Column("id", sa.Unicode(length=191), nullable=False),
        sa.Column("next_run_time", sa.Float(precision=25), nullable=True),
        sa.Column("job_state", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_apscheduler_jobs_next_run_time"), "apscheduler_jobs", ["next_run_time"]
    )
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("purged_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("purged_at")
    op.drop_index(op.f("ix_apscheduler_jobs_next_run_time"), table_name="apscheduler_jobs")
    op.drop_table("apscheduler_jobs")
    op.drop_table("patient_flags")
    for name in ("status", "due_date", "finding_id"):
        op.drop_index(op.f(f"ix_followups_{name}"), table_name="followups")
    op.drop_index("ix_followups_patient", table_name="followups")
    op.drop_table("followups")
    op.drop_index(op.f("ix_findings_study_uid"), table_name="findings")
    op.drop_index("ix_findings_patient", table_name="findings")
    op.drop_table("findings")
