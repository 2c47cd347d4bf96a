"""SQLAlchemy models of everything sglguard records. Times are stored in UTC."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Id = BigInteger().with_variant(Integer(), "sqlite")


def local_agent() -> str:
    """The agent a row names when its writer names none: `SGLGUARD_AGENT` when set (two
    agents on one host, or a host name shared by containers), else this host's name."""
    named = os.environ.get("SGLGUARD_AGENT", "").strip().replace(":", "-")
    return (named or socket.gethostname())[:128]


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend (SQLite has no zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = value
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of the store's tables."""


class CheckResultRow(Base):
    """One run of one check."""

    __tablename__ = "check_results"
    __table_args__ = (Index("ix_check_results_check_started", "check_name", "started_at"),
                      Index("ix_check_results_started", "started_at"))

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    check_name: Mapped[str] = mapped_column(String(128))
    target: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    value: Mapped[float | None] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(16), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    duration_ms: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    evaluated: Mapped[bool] = mapped_column(Boolean, default=True)
    agent: Mapped[str | None] = mapped_column(String(128), default=local_agent)  # its writer


class CheckStateRow(Base):
    """The running state of one check: counters toward an incident, and its open incident."""

    __tablename__ = "check_states"

    check_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    target: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    consecutive_successes: Mapped[int] = mapped_column(Integer, default=0)
    last_result_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_change_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    grace_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    recent: Mapped[str] = mapped_column(Text, default="")  # newest last: o w c u, up to 21
    flapping: Mapped[bool] = mapped_column(Boolean, default=False)
    incident_id: Mapped[int | None] = mapped_column(Id, ForeignKey("incidents.id"))


class IncidentRow(Base):
    """A breach that held: opened once, resolved once."""

    __tablename__ = "incidents"
    __table_args__ = (
        Index("ix_incidents_status", "status"),
        # One open incident per check, whatever number of sglguard processes share the store.
        Index("ux_incidents_one_open", "check_name", unique=True,
              sqlite_where=text("status = 'open'"), postgresql_where=text("status = 'open'")),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    check_name: Mapped[str] = mapped_column(String(128))
    target: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))  # open | resolved
    severity: Mapped[str] = mapped_column(String(16))
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    first_value: Mapped[float | None] = mapped_column(Float)
    last_value: Mapped[float | None] = mapped_column(Float)
    first_message: Mapped[str] = mapped_column(Text, default="")
    last_message: Mapped[str] = mapped_column(Text, default="")
    escalated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))
    last_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    agent: Mapped[str | None] = mapped_column(String(128), default=local_agent)  # who opened it


class IncidentEventRow(Base):
    """One entry of an incident's timeline."""

    __tablename__ = "incident_events"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(Id, ForeignKey("incidents.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")


class RemediationRunRow(Base):
    """One remediation, run or only planned (dry run), automatic or by hand."""

    __tablename__ = "remediation_runs"
    __table_args__ = (Index("ix_remediation_runs_budget", "remediation", "target", "started_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    incident_id: Mapped[int | None] = mapped_column(Id, ForeignKey("incidents.id"), index=True)
    remediation: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(128))
    trigger: Mapped[str] = mapped_column(String(16))  # incident | manual | first_start
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    plan: Mapped[str] = mapped_column(Text)  # JSON list of steps
    outcome: Mapped[str] = mapped_column(String(16))  # running|succeeded|failed|skipped|planned
    detail: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    verified: Mapped[bool | None] = mapped_column(Boolean)  # None: not verified (yet)
    verification: Mapped[str | None] = mapped_column(Text)
    agent: Mapped[str | None] = mapped_column(String(128), default=local_agent)  # who ran it


class NotificationAttemptRow(Base):
    """One delivery attempt of one message to one notifier."""

    __tablename__ = "notification_attempts"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    incident_id: Mapped[int | None] = mapped_column(Id, ForeignKey("incidents.id"), index=True)
    event: Mapped[str] = mapped_column(String(32))
    notifier: Mapped[str] = mapped_column(String(128))
    attempt: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))  # sent | failed | dropped
    error: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    check_name: Mapped[str | None] = mapped_column(String(128))
    target: Mapped[str | None] = mapped_column(String(128))
    outbox_id: Mapped[int | None] = mapped_column(Id)


class CheckSampleRow(Base):
    """What a check saw at one run, kept for windowed values (rates, quantiles, trends)."""

    __tablename__ = "check_samples"
    __table_args__ = (Index("ix_check_samples_check_taken", "check_name", "taken_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    check_name: Mapped[str] = mapped_column(String(128))
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime)
    data: Mapped[str] = mapped_column(Text)  # JSON


class TargetLeaseRow(Base):
    """Who may remediate a target now: claimed with a conditional UPDATE, so two sglguard
    processes on one database never act on the same server at once."""

    __tablename__ = "target_leases"

    target: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TargetLevelRow(Base):
    """A launch setting sglguard lowered (reduce_concurrency) and where it stands now."""

    __tablename__ = "target_levels"

    target: Mapped[str] = mapped_column(String(128), primary_key=True)
    setting: Mapped[str] = mapped_column(String(64), primary_key=True)  # max_running_requests
    original: Mapped[float] = mapped_column(Float)
    current: Mapped[float] = mapped_column(Float)
    steps: Mapped[int] = mapped_column(Integer, default=0)  # reductions in force
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SilenceRow(Base):
    """No notifications (and, unless allowed, no remediation) for a target or check for a while."""

    __tablename__ = "silences"
    __table_args__ = (Index("ix_silences_ends_at", "ends_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    target: Mapped[str] = mapped_column(String(128))
    check_name: Mapped[str | None] = mapped_column(String(128))  # None: every check
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OutboxRow(Base):
    """Something a decision owes: a message for one notifier, or a remediation request.

    Written in the transaction that made the decision; a worker claims it with a conditional
    UPDATE (`claimed_by`, `claim_until`), does it, and marks it done, so a process killed at
    any moment leaves nothing owed behind: the claim runs out, or its holder is seen dead, and
    another worker takes the row again."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_status_due", "status", "due_at"),
                      Index("ix_outbox_incident", "incident_id"))

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # message | remediation
    event: Mapped[str] = mapped_column(String(32))
    notifier: Mapped[str | None] = mapped_column(String(128))
    target: Mapped[str | None] = mapped_column(String(128))
    check_name: Mapped[str | None] = mapped_column(String(128))
    incident_id: Mapped[int | None] = mapped_column(Id)
    payload: Mapped[str] = mapped_column(Text)  # JSON
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # pending | claimed | done | failed | expired | withheld | cancelled
    status: Mapped[str] = mapped_column(String(16))
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claim_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AgentRow(Base):
    """One sglguard process using the store (`run` or a hand-run command), with its heartbeat:
    what a claim or lease held by a process that died is recognised by."""

    __tablename__ = "agents"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)  # host:pid:random
    host: Mapped[str] = mapped_column(String(128))
    pid: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))  # service | cli
    targets: Mapped[str] = mapped_column(Text, default="")  # JSON list of target names
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DrainedWorkerRow(Base):
    """A worker that sglguard took out of a gateway (drain) and owes the gateway back: its
    registration as the gateway listed it, kept until it is re-added as it was."""

    __tablename__ = "drained_workers"
    __table_args__ = (Index("ix_drained_workers_target", "target", "returned_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    target: Mapped[str] = mapped_column(String(128))
    remediation: Mapped[str] = mapped_column(String(128))  # the drain that removed it
    gateway: Mapped[str] = mapped_column(String(512))
    worker_url: Mapped[str] = mapped_column(String(512))  # as the gateway wrote it
    registration: Mapped[str] = mapped_column(Text)  # JSON body of POST /workers
    incident_id: Mapped[int | None] = mapped_column(Id)
    state: Mapped[str] = mapped_column(String(16))  # draining | out | returned
    in_flight: Mapped[int | None] = mapped_column(Integer)  # left when the chain went on
    drained_at: Mapped[datetime] = mapped_column(UTCDateTime)
    returned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    returned_by: Mapped[str | None] = mapped_column(Text)  # why / who put it back
    last_error: Mapped[str | None] = mapped_column(Text)  # the last failed attempt to re-add
