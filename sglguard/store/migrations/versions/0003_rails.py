"""Remediation rails and incident lifecycle: leases, lowered levels, silences, flapping,
acknowledgement, verification.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("check_states") as batch:
        batch.add_column(sa.Column("recent", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("flapping", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(_time("acknowledged_at"))
        batch.add_column(sa.Column("acknowledged_by", sa.String(128), nullable=True))
        batch.add_column(_time("last_notified_at"))
    with op.batch_alter_table("remediation_runs") as batch:
        batch.add_column(sa.Column("verified", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("verification", sa.Text(), nullable=True))
    op.create_table(
        "target_leases",
        sa.Column("target", sa.String(128), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=True),
        _time("claimed_at"),
        _time("expires_at"),
    )
    op.create_table(
        "target_levels",
        sa.Column("target", sa.String(128), primary_key=True),
        sa.Column("setting", sa.String(64), primary_key=True),
        sa.Column("original", sa.Float(), nullable=False),
        sa.Column("current", sa.Float(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        _time("changed_at", nullable=False),
    )
    op.create_table(
        "silences",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("check_name", sa.String(128), nullable=True),
        _time("starts_at", nullable=False),
        _time("ends_at", nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        _time("created_at", nullable=False),
    )
    op.create_index("ix_silences_ends_at", "silences", ["ends_at"])


def downgrade() -> None:
    op.drop_table("silences")
    op.drop_table("target_levels")
    op.drop_table("target_leases")
    with op.batch_alter_table("remediation_runs") as batch:
        batch.drop_column("verification")
        batch.drop_column("verified")
    with op.batch_alter_table("incidents") as batch:
        batch.drop_column("last_notified_at")
        batch.drop_column("acknowledged_by")
        batch.drop_column("acknowledged_at")
    with op.batch_alter_table("check_states") as batch:
        batch.drop_column("flapping")
        batch.drop_column("recent")
