"""Samples for windowed checks; when a check's current breach began (for `for:`).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "check_samples",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("check_name", sa.String(128), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
    )
    op.create_index("ix_check_samples_check_taken", "check_samples", ["check_name", "taken_at"])
    with op.batch_alter_table("check_states") as batch:
        batch.add_column(sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("check_states") as batch:
        batch.drop_column("failing_since")
    op.drop_table("check_samples")
