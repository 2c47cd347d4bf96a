"""Results listed by when they ran: quiet results are written in batches, so row ids no longer
follow run order across checks.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_check_results_started", "check_results", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_check_results_started", table_name="check_results")
