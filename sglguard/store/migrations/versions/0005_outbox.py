"""Decisions kept as rows: the outbox of messages and remediation requests, the agents that
claim them, and one open incident per check enforced by the store.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
OPEN = sa.text("status = 'open'")


def _time(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("notifier", sa.String(128), nullable=True),
        sa.Column("target", sa.String(128), nullable=True),
        sa.Column("check_name", sa.String(128), nullable=True),
        sa.Column("incident_id", ID, nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        _time("created_at", False),
        _time("due_at", False),
        _time("expires_at"),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        _time("claim_until"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("detail", sa.Text(), nullable=True),
        _time("finished_at"),
    )
    op.create_index("ix_outbox_status_due", "outbox", ["status", "due_at"])
    op.create_index("ix_outbox_incident", "outbox", ["incident_id"])
    op.create_table(
        "agents",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("host", sa.String(128), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("targets", sa.Text(), nullable=False, server_default=""),
        _time("started_at", False),
        _time("heartbeat_at", False),
        _time("stopped_at"),
    )
    with op.batch_alter_table("notification_attempts") as batch:
        batch.add_column(sa.Column("check_name", sa.String(128), nullable=True))
        batch.add_column(sa.Column("target", sa.String(128), nullable=True))
        batch.add_column(sa.Column("outbox_id", ID, nullable=True))
    # Before the store guarantees one open incident per check, close the extras a race of two
    # processes may have left (the oldest stays open).
    op.execute(sa.text(
        "update incidents set status = 'resolved', resolved_at = opened_at "
        "where status = 'open' and id not in "
        "(select min(id) from incidents where status = 'open' group by check_name)"))
    op.create_index("ux_incidents_one_open", "incidents", ["check_name"], unique=True,
                    sqlite_where=OPEN, postgresql_where=OPEN)


def downgrade() -> None:
    op.drop_index("ux_incidents_one_open", "incidents")
    with op.batch_alter_table("notification_attempts") as batch:
        batch.drop_column("outbox_id")
        batch.drop_column("target")
        batch.drop_column("check_name")
    op.drop_table("agents")
    op.drop_index("ix_outbox_incident", "outbox")
    op.drop_index("ix_outbox_status_due", "outbox")
    op.drop_table("outbox")
