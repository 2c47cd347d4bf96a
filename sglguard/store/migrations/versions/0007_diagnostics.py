"""Evidence and proof: diagnostics bundles captured for incidents, and stored drill reports.

Revision ID: 0007
Revises: 0006_drained
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006_drained"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "diagnostics",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("incident_id", ID, nullable=True),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("stage", sa.String(64), nullable=False),
        sa.Column("captured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("took_ms", sa.Float(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_diagnostics_incident", "diagnostics", ["incident_id"])
    op.create_table(
        "drill_reports",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("drill_reports")
    op.drop_index("ix_diagnostics_incident", "diagnostics")
    op.drop_table("diagnostics")
