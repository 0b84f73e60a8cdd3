"""study characteristics: the radiologist's four radiological characteristics

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "study_characteristics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("edema_index", sa.Float(), nullable=True),
        sa.Column("necrosis", sa.Boolean(), nullable=True),
        sa.Column("csf_cleft", sa.Boolean(), nullable=True),
        sa.Column("capsular_enhancement", sa.Boolean(), nullable=True),
        sa.Column("entered_by", sa.String(length=64), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_uid"),
    )


def downgrade() -> None:
    op.drop_table("study_characteristics")
