"""Initial schema: results, check states, incidents and their timeline, remediations, deliveries.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _id() -> sa.Column[int]:
    return sa.Column("id", ID, primary_key=True, autoincrement=True)


def _time(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _incident_ref(nullable: bool) -> sa.Column[int]:
    return sa.Column("incident_id", ID, sa.ForeignKey("incidents.id"), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "check_results",
        _id(),
        sa.Column("check_name", sa.String(128), nullable=False),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        _time("started_at"),
        sa.Column("evaluated", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_check_results_check_started", "check_results",
                    ["check_name", "started_at"])
    op.create_table(
        "incidents",
        _id(),
        sa.Column("check_name", sa.String(128), nullable=False),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        _time("opened_at"),
        _time("resolved_at", nullable=True),
        sa.Column("first_value", sa.Float(), nullable=True),
        sa.Column("last_value", sa.Float(), nullable=True),
        sa.Column("first_message", sa.Text(), nullable=False),
        sa.Column("last_message", sa.Text(), nullable=False),
        _time("escalated_at", nullable=True),
    )
    op.create_index("ix_incidents_status", "incidents", ["status"])
    op.create_table(
        "check_states",
        sa.Column("check_name", sa.String(128), primary_key=True),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("consecutive_successes", sa.Integer(), nullable=False),
        _time("last_result_at", nullable=True),
        _time("last_change_at", nullable=True),
        _time("grace_until", nullable=True),
        _incident_ref(nullable=True),
    )
    op.create_table(
        "incident_events",
        _id(),
        _incident_ref(nullable=False),
        _time("at"),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    op.create_index("ix_incident_events_incident_id", "incident_events", ["incident_id"])
    op.create_table(
        "remediation_runs",
        _id(),
        _incident_ref(nullable=True),
        sa.Column("remediation", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("plan", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _time("started_at"),
        _time("finished_at", nullable=True),
    )
    op.create_index("ix_remediation_runs_budget", "remediation_runs",
                    ["remediation", "target", "started_at"])
    op.create_index("ix_remediation_runs_incident_id", "remediation_runs", ["incident_id"])
    op.create_table(
        "notification_attempts",
        _id(),
        _incident_ref(nullable=True),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("notifier", sa.String(128), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        _time("created_at"),
    )
    op.create_index("ix_notification_attempts_incident_id", "notification_attempts",
                    ["incident_id"])


def downgrade() -> None:
    for table in ("notification_attempts", "remediation_runs", "incident_events",
                  "check_states", "incidents", "check_results"):
        op.drop_table(table)
