"""Every result, incident and remediation run names the agent (host) that wrote it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLES = ("check_results", "incidents", "remediation_runs")


def upgrade() -> None:
    # Nullable and without a server default: adding the column rewrites no row, on SQLite or
    # PostgreSQL, however many results are kept; rows from before it show no agent.
    for table in TABLES:
        op.add_column(table, sa.Column("agent", sa.String(128), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("agent")
