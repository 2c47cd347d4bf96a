"""The outbox: what decisions owe (messages, remediation requests), as rows that workers claim.

Every function takes a session the caller owns, so a row is written in the same transaction as
the state change that owes it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from sglguard.store.models import OutboxRow

MESSAGE, REMEDIATION = "message", "remediation"
ACTIVE = ("pending", "claimed")


def add(session: Session, *, kind: str, event: str, payload: dict[str, Any], now: datetime,
        due: datetime | None = None, notifier: str | None = None, target: str | None = None,
        check: str | None = None, incident_id: int | None = None,
        expires: datetime | None = None) -> OutboxRow:
    row = OutboxRow(kind=kind, event=event, notifier=notifier, target=target, check_name=check,
                    incident_id=incident_id, payload=json.dumps(payload), created_at=now,
                    due_at=due or now, expires_at=expires, status="pending", attempts=0)
    session.add(row)
    return row


def active(session: Session, kind: str, *, notifier: str | None = None) -> Sequence[OutboxRow]:
    """Rows not finished yet, oldest first."""
    query = select(OutboxRow).where(OutboxRow.kind == kind, OutboxRow.status.in_(ACTIVE))
    if notifier is not None:
        query = query.where(OutboxRow.notifier == notifier)
    return session.scalars(query.order_by(OutboxRow.id).limit(2000)).all()


def next_due(session: Session, kind: str) -> datetime | None:
    return session.scalar(select(OutboxRow.due_at).where(
        OutboxRow.kind == kind, OutboxRow.status == "pending").order_by(OutboxRow.due_at)
        .limit(1))


def has_active_request(session: Session, incident_id: int) -> bool:
    return session.scalar(select(OutboxRow.id).where(
        OutboxRow.kind == REMEDIATION, OutboxRow.incident_id == incident_id,
        OutboxRow.status.in_(ACTIVE)).limit(1)) is not None


def acting_on(session: Session, incident_id: int) -> bool:
    """A remediation of the incident is under way and not yet at its verification."""
    return session.scalar(select(OutboxRow.id).where(
        OutboxRow.kind == REMEDIATION, OutboxRow.incident_id == incident_id,
        OutboxRow.status == "claimed",
        or_(OutboxRow.detail.is_(None), ~OutboxRow.detail.contains('"verifying"')),
    ).limit(1)) is not None


def has_active_message(session: Session, incident_id: int, notifier: str,
                       events: Sequence[str]) -> bool:
    return session.scalar(select(OutboxRow.id).where(
        OutboxRow.kind == MESSAGE, OutboxRow.incident_id == incident_id,
        OutboxRow.notifier == notifier, OutboxRow.event.in_(events),
        OutboxRow.status.in_(ACTIVE)).limit(1)) is not None


def on_the_way(session: Session, events: Sequence[str]) -> set[tuple[int, str, str]]:
    """(incident, notifier, event) of each unfinished message of these events."""
    return {(incident or 0, notifier or "", event) for incident, notifier, event in session.execute(
        select(OutboxRow.incident_id, OutboxRow.notifier, OutboxRow.event).where(
            OutboxRow.kind == MESSAGE, OutboxRow.event.in_(events),
            OutboxRow.status.in_(ACTIVE), OutboxRow.incident_id.is_not(None)))}


def has_any_active(session: Session, incident_id: int, events: Sequence[str]) -> bool:
    return session.scalar(select(OutboxRow.id).where(
        OutboxRow.kind == MESSAGE, OutboxRow.incident_id == incident_id,
        OutboxRow.event.in_(events), OutboxRow.status.in_(ACTIVE)).limit(1)) is not None


def hasten(session: Session, target: str, now: datetime) -> None:
    """Pending openings of `target` waiting for their group window go out now."""
    session.execute(update(OutboxRow).where(
        OutboxRow.kind == MESSAGE, OutboxRow.target == target, OutboxRow.status == "pending",
        OutboxRow.event == "incident_opened", OutboxRow.due_at > now,
    ).values(due_at=now).execution_options(synchronize_session=False))


def claim(session: Session, row_id: int, holder: str, until: datetime, now: datetime,
          dead: str | None = None) -> bool:
    """Take the row if it is pending, or claimed by a claim that ran out or by `dead`."""
    taken = or_(OutboxRow.status == "pending",
                (OutboxRow.status == "claimed") & (OutboxRow.claim_until < now))
    if dead is not None:
        taken = or_(taken, (OutboxRow.status == "claimed") & (OutboxRow.claimed_by == dead))
    result = session.execute(update(OutboxRow).where(OutboxRow.id == row_id, taken).values(
        status="claimed", claimed_by=holder, claim_until=until,
        attempts=OutboxRow.attempts + 1).execution_options(synchronize_session=False))
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def extend(session: Session, row_id: int, holder: str, until: datetime) -> None:
    session.execute(update(OutboxRow).where(
        OutboxRow.id == row_id, OutboxRow.claimed_by == holder, OutboxRow.status == "claimed",
    ).values(claim_until=until).execution_options(synchronize_session=False))


def note(session: Session, row_id: int, holder: str, detail: str) -> None:
    """Record progress on a claimed row (kept if its holder dies)."""
    session.execute(update(OutboxRow).where(
        OutboxRow.id == row_id, OutboxRow.claimed_by == holder,
    ).values(detail=detail).execution_options(synchronize_session=False))


def finish(session: Session, row_id: int, holder: str, status: str, detail: str | None,
           now: datetime) -> None:
    session.execute(update(OutboxRow).where(
        OutboxRow.id == row_id, OutboxRow.claimed_by == holder,
    ).values(status=status, detail=detail, finished_at=now, claim_until=None)
        .execution_options(synchronize_session=False))


def cancel(session: Session, row_id: int, detail: str, now: datetime) -> bool:
    """Cancel a row nobody has taken; False when somebody has."""
    result = session.execute(update(OutboxRow).where(
        OutboxRow.id == row_id, OutboxRow.status == "pending",
    ).values(status="cancelled", detail=detail, finished_at=now)
        .execution_options(synchronize_session=False))
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release(session: Session, row_id: int, holder: str, due: datetime,
            detail: str | None = None, *, attempted: bool = True) -> None:
    """Back to pending, due at `due` (a retry later, or a row this worker will not do now)."""
    values: dict[str, Any] = {"status": "pending", "claimed_by": None, "claim_until": None,
                              "due_at": due}
    if detail is not None:
        values["detail"] = detail
    if not attempted:
        values["attempts"] = OutboxRow.attempts - 1
    session.execute(update(OutboxRow).where(
        OutboxRow.id == row_id, OutboxRow.claimed_by == holder, OutboxRow.status == "claimed",
    ).values(**values).execution_options(synchronize_session=False))


def get(session: Session, row_id: int) -> OutboxRow | None:
    return session.get(OutboxRow, row_id)
