"""Workers taken out of a gateway by drain, with the registration they are re-added with.

Revision ID: 0006_drained
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_drained"
down_revision = "0005"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "drained_workers",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("remediation", sa.String(128), nullable=False),
        sa.Column("gateway", sa.String(512), nullable=False),
        sa.Column("worker_url", sa.String(512), nullable=False),
        sa.Column("registration", sa.Text(), nullable=False),
        sa.Column("incident_id", ID, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("in_flight", sa.Integer(), nullable=True),
        _time("drained_at", nullable=False),
        _time("returned_at"),
        sa.Column("returned_by", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_index("ix_drained_workers_target", "drained_workers", ["target", "returned_at"])


def downgrade() -> None:
    op.drop_index("ix_drained_workers_target", table_name="drained_workers")
    op.drop_table("drained_workers")
