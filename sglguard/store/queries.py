"""The reads and writes sglguard makes, on a session the caller owns."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sglguard.checks.base import CheckResult
from sglguard.store.models import (
    CheckResultRow,
    CheckStateRow,
    IncidentEventRow,
    IncidentRow,
    NotificationAttemptRow,
    RemediationRunRow,
)


def add_result(session: Session, result: CheckResult, *, evaluated: bool = True) -> None:
    evaluated = evaluated and not result.skipped
    session.add(CheckResultRow(
        check_name=result.check, target=result.target, status=result.shown_status,
        value=result.value, unit=result.unit, message=result.message,
        duration_ms=result.duration_ms, started_at=result.started_at, evaluated=evaluated,
    ))


def check_state(session: Session, check: str, target: str) -> CheckStateRow:
    """The check's state row, locked for this transaction where the backend can."""
    state = session.execute(
        select(CheckStateRow).where(CheckStateRow.check_name == check).with_for_update()
    ).scalar_one_or_none()
    if state is None:
        state = CheckStateRow(check_name=check, target=target, status="ok",
                              consecutive_failures=0, consecutive_successes=0)
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
            RemediationRunRow.started_at >= since,
        )
    ) or 0


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
                at: datetime) -> None:
    session.add(NotificationAttemptRow(
        incident_id=incident_id, event=event, notifier=notifier, attempt=attempt,
        outcome=outcome, error=error, title=title, body=body, created_at=at,
    ))


def was_delivered(session: Session, incident_id: int, event: str, notifier: str) -> bool:
    return session.scalar(
        select(func.count()).select_from(NotificationAttemptRow).where(
            NotificationAttemptRow.incident_id == incident_id,
            NotificationAttemptRow.event == event,
            NotificationAttemptRow.notifier == notifier,
            NotificationAttemptRow.outcome == "sent",
        )
    ) != 0


def recent_results(session: Session, check: str | None, limit: int) -> Sequence[CheckResultRow]:
    query = select(CheckResultRow).order_by(CheckResultRow.id.desc()).limit(limit)
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
        CheckResultRow.check_name == check).order_by(CheckResultRow.id.desc()).limit(1))
