"""The reads and writes sglguard makes, on a session the caller owns."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from sglguard.domain import CheckResult
from sglguard.store.evidence import DiagnosticRow
from sglguard.store.models import (
    CheckResultRow,
    CheckStateRow,
    IncidentEventRow,
    IncidentRow,
    NotificationAttemptRow,
    RemediationRunRow,
    TargetLevelRow,
    local_agent,
)

# Results by when they ran: quiet ones are written in batches, after others that ran later.
NEWEST_FIRST = (CheckResultRow.started_at.desc(), CheckResultRow.id.desc())


def result_values(result: CheckResult, *, evaluated: bool = True,
                  agent: str | None = None) -> dict[str, Any]:
    """The columns of a result's row; `agent`: who wrote it (default: this host)."""
    return {"check_name": result.check, "target": result.target, "status": result.shown_status,
            "value": result.value, "unit": result.unit, "message": result.message,
            "duration_ms": result.duration_ms, "started_at": result.started_at,
            "evaluated": evaluated and not result.skipped, "agent": agent or local_agent()}


def add_result(session: Session, result: CheckResult, *, evaluated: bool = True,
               agent: str | None = None) -> None:
    session.add(CheckResultRow(**result_values(result, evaluated=evaluated, agent=agent)))


def check_state(session: Session, check: str, target: str) -> CheckStateRow:
    """The check's state row, locked for this transaction where the backend can."""
    state = session.execute(
        select(CheckStateRow).where(CheckStateRow.check_name == check).with_for_update()
    ).scalar_one_or_none()
    if state is None:
        state = CheckStateRow(check_name=check, target=target, status="ok",
                              consecutive_failures=0, consecutive_successes=0, recent="",
                              flapping=False)
        session.add(state)
    return state


def target_states(session: Session, target: str) -> Sequence[CheckStateRow]:
    return session.scalars(select(CheckStateRow).where(CheckStateRow.target == target)).all()


def add_event(session: Session, incident_id: int, at: datetime, kind: str, detail: str) -> None:
    session.add(IncidentEventRow(incident_id=incident_id, at=at, kind=kind, detail=detail))


def budget_used(session: Session, remediation: str, target: str, since: datetime) -> int:
    """Automatic and manual runs (not dry runs, not skipped) that count against the budget."""
    return session.scalar(
        select(func.count()).select_from(RemediationRunRow).where(
            RemediationRunRow.remediation == remediation,
            RemediationRunRow.target == target,
            RemediationRunRow.dry_run.is_(False),
            RemediationRunRow.outcome.not_in(("skipped", "planned")),
            RemediationRunRow.trigger != "first_start",
            RemediationRunRow.started_at >= since,
        )
    ) or 0


def mark_first_start(session: Session, run_id: int, target: str, before: datetime) -> bool:
    """A restart that found nothing running on a target never seen healthy in this store was
    the server's first start, not a repair: it is marked so (and not counted in the budget)."""
    seen_well = session.scalar(select(CheckResultRow.id).where(
        CheckResultRow.target == target, CheckResultRow.status == "ok",
        CheckResultRow.evaluated.is_(True), CheckResultRow.started_at < before).limit(1))
    if seen_well is not None:
        return False
    run = session.get(RemediationRunRow, run_id)
    if run is None or run.trigger != "incident":
        return False
    run.trigger = "first_start"
    return True


def start_run(session: Session, *, incident_id: int | None, remediation: str, kind: str,
              target: str, trigger: str, dry_run: bool, plan: Sequence[str],
              outcome: str, at: datetime) -> RemediationRunRow:
    run = RemediationRunRow(
        incident_id=incident_id, remediation=remediation, kind=kind, target=target,
        trigger=trigger, dry_run=dry_run, plan=json.dumps(list(plan)), outcome=outcome,
        detail="", started_at=at,
    )
    session.add(run)
    session.flush()
    return run


def finish_run(session: Session, run_id: int, *, outcome: str, detail: str,
               error: str | None, at: datetime) -> RemediationRunRow:
    run = session.get_one(RemediationRunRow, run_id)
    run.outcome, run.detail, run.error, run.finished_at = outcome, detail, error, at
    return run


def add_attempt(session: Session, *, incident_id: int | None, event: str, notifier: str,
                attempt: int, outcome: str, error: str | None, title: str, body: str,
                at: datetime, check: str | None = None, target: str | None = None,
                outbox_id: int | None = None) -> None:
    session.add(NotificationAttemptRow(
        incident_id=incident_id, event=event, notifier=notifier, attempt=attempt,
        outcome=outcome, error=error, title=title, body=body, created_at=at,
        check_name=check, target=target, outbox_id=outbox_id,
    ))


def was_delivered(session: Session, incident_id: int, event: str, notifier: str) -> bool:
    return was_told(session, incident_id, (event,), notifier)


def was_told(session: Session, incident_id: int, events: Sequence[str], notifier: str) -> bool:
    """One of `events` about the incident reached `notifier`."""
    return session.scalar(
        select(NotificationAttemptRow.id).where(
            NotificationAttemptRow.incident_id == incident_id,
            NotificationAttemptRow.event.in_(events),
            NotificationAttemptRow.notifier == notifier,
            NotificationAttemptRow.outcome == "sent",
        ).limit(1)
    ) is not None


def recent_results(session: Session, check: str | None, limit: int) -> Sequence[CheckResultRow]:
    query = select(CheckResultRow).order_by(*NEWEST_FIRST).limit(limit)
    if check is not None:
        query = query.where(CheckResultRow.check_name == check)
    return session.scalars(query).all()


def incidents(session: Session, *, open_only: bool, limit: int) -> Sequence[IncidentRow]:
    query = select(IncidentRow).order_by(IncidentRow.id.desc()).limit(limit)
    if open_only:
        query = query.where(IncidentRow.status == "open")
    return session.scalars(query).all()


def runs_of(session: Session, incident_id: int) -> Sequence[RemediationRunRow]:
    return session.scalars(select(RemediationRunRow).where(
        RemediationRunRow.incident_id == incident_id).order_by(RemediationRunRow.id)).all()


def attempts_of(session: Session, incident_id: int) -> Sequence[NotificationAttemptRow]:
    return session.scalars(select(NotificationAttemptRow).where(
        NotificationAttemptRow.incident_id == incident_id
    ).order_by(NotificationAttemptRow.id)).all()


def events_of(session: Session, incident_id: int) -> Sequence[IncidentEventRow]:
    return session.scalars(select(IncidentEventRow).where(
        IncidentEventRow.incident_id == incident_id).order_by(IncidentEventRow.id)).all()


def manual_runs(session: Session, limit: int) -> Sequence[RemediationRunRow]:
    return session.scalars(select(RemediationRunRow).order_by(
        RemediationRunRow.id.desc()).limit(limit)).all()


def running_runs(session: Session) -> Sequence[RemediationRunRow]:
    return session.scalars(select(RemediationRunRow).where(
        RemediationRunRow.outcome == "running")).all()


def latest_status(session: Session, check: str) -> str | None:
    """The status of the check's newest stored result (from the service or `sglguard check`)."""
    return session.scalar(select(CheckResultRow.status).where(
        CheckResultRow.check_name == check).order_by(*NEWEST_FIRST).limit(1))


def set_verified(session: Session, run_id: int, verified: bool, detail: str) -> None:
    run = session.get_one(RemediationRunRow, run_id)
    run.verified, run.verification = verified, detail


def target_levels(session: Session, target: str | None = None) -> Sequence[TargetLevelRow]:
    """Launch settings kept lowered (reduce_concurrency), of one target or of all."""
    query = select(TargetLevelRow).order_by(TargetLevelRow.target, TargetLevelRow.setting)
    if target is not None:
        query = query.where(TargetLevelRow.target == target)
    return session.scalars(query).all()


def save_level(session: Session, *, target: str, setting: str, original: float,
               current: float, steps: int, at: datetime) -> TargetLevelRow:
    row = session.get(TargetLevelRow, (target, setting))
    if row is None:
        row = TargetLevelRow(target=target, setting=setting)
        session.add(row)
    row.original, row.current, row.steps, row.changed_at = original, current, steps, at
    return row


def delete_level(session: Session, target: str, setting: str) -> None:
    row = session.get(TargetLevelRow, (target, setting))
    if row is not None:
        session.delete(row)


def target_trouble(session: Session, target: str) -> tuple[bool, datetime | None]:
    """Whether the target has an open incident, and when its last incident was resolved."""
    open_count = session.scalar(select(func.count()).select_from(IncidentRow).where(
        IncidentRow.target == target, IncidentRow.status == "open")) or 0
    resolved = session.scalar(select(func.max(IncidentRow.resolved_at)).where(
        IncidentRow.target == target))
    return open_count > 0, resolved


REMINDER_EVENTS = ("incident_opened", "incident_repeated")


def due_repeats(session: Session, notifier: str, cutoff: datetime) -> list[IncidentRow]:
    """Open, unacknowledged incidents that `notifier` was last reminded of (opened or
    repeated, any outcome) before `cutoff`; never tried: opened before `cutoff`."""
    candidates = session.scalars(select(IncidentRow).where(
        IncidentRow.status == "open", IncidentRow.acknowledged_at.is_(None),
        IncidentRow.opened_at <= cutoff).order_by(IncidentRow.id)).all()
    if not candidates:
        return []
    last = {incident_id: at for incident_id, at in session.execute(
        select(NotificationAttemptRow.incident_id, func.max(NotificationAttemptRow.created_at))
        .where(NotificationAttemptRow.notifier == notifier,
               NotificationAttemptRow.event.in_(REMINDER_EVENTS),
               NotificationAttemptRow.incident_id.in_([row.id for row in candidates]))
        .group_by(NotificationAttemptRow.incident_id))}
    return [row for row in candidates if (last.get(row.id) or row.opened_at) <= cutoff]


def mark_notified(session: Session, incident_ids: Sequence[int], at: datetime) -> None:
    """A reminder (opened or repeated) reached someone: `last_notified_at` moves to `at`."""
    for row in session.scalars(select(IncidentRow).where(IncidentRow.id.in_(incident_ids))):
        if row.last_notified_at is None or row.last_notified_at < at:
            row.last_notified_at = at


def latest_unit(session: Session, check: str) -> str:
    """The unit of the check's newest stored result ('' when none)."""
    return session.scalar(select(CheckResultRow.unit).where(
        CheckResultRow.check_name == check).order_by(*NEWEST_FIRST).limit(1)) or ""


def prune_results(session: Session, *, before: datetime, limit: int) -> int:
    """Delete up to `limit` of the oldest results started before `before`; how many went.
    Called in a loop, one short transaction each, so writers wait a moment at most."""
    oldest = (select(CheckResultRow.id).where(CheckResultRow.started_at < before)
              .order_by(CheckResultRow.started_at).limit(limit).scalar_subquery())
    return int(session.execute(delete(CheckResultRow).where(
        CheckResultRow.id.in_(oldest))).rowcount or 0)  # type: ignore[attr-defined]


def prune(session: Session, *, results_before: datetime | None,
          incidents_before: datetime) -> int:
    """Delete results older than `results_before` (None: leave them to `prune_results`), and
    resolved incidents (with their timeline, runs and deliveries) resolved before
    `incidents_before`; how many rows went."""
    gone = 0
    if results_before is not None:
        gone = session.execute(delete(CheckResultRow).where(
            CheckResultRow.started_at < results_before)).rowcount or 0  # type: ignore[attr-defined]
    old = select(IncidentRow.id).where(IncidentRow.status == "resolved",
                                       IncidentRow.resolved_at < incidents_before)
    for table in (IncidentEventRow, RemediationRunRow, NotificationAttemptRow, DiagnosticRow):
        gone += session.execute(delete(table).where(
            table.incident_id.in_(old))).rowcount or 0  # type: ignore[attr-defined]
    gone += session.execute(delete(IncidentRow).where(
        IncidentRow.id.in_(old))).rowcount or 0  # type: ignore[attr-defined]
    return int(gone)
