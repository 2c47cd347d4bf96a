"""Silences (by hand, from the CLI) and maintenance windows (in the catalog, one-off or
recurring by cron with an IANA time zone). Results and incidents are still recorded; what a
silence stops is notification and, unless the window allows it, remediation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from sglguard.config.maintenance import MaintenanceWindow
from sglguard.store import Store
from sglguard.store.models import SilenceRow


@dataclass(frozen=True)
class Quiet:
    """Why a target/check is quiet now, and what is still allowed."""

    reason: str
    remediate: bool
    notify: bool


def add_silence(store: Store, *, target: str, check: str | None, starts: datetime,
                length: timedelta, reason: str, by: str) -> int:
    with store.session() as session:
        row = SilenceRow(target=target, check_name=check, starts_at=starts,
                         ends_at=starts + length, reason=reason, created_by=by,
                         created_at=starts)
        session.add(row)
        session.flush()
        return row.id


def list_silences(store: Store, now: datetime, *, include_ended: bool) -> list[SilenceRow]:
    with store.session() as session:
        query = select(SilenceRow).order_by(SilenceRow.id)
        if not include_ended:
            query = query.where(SilenceRow.ends_at > now)
        return list(session.scalars(query))


def expire_silence(store: Store, silence_id: int, now: datetime) -> bool:
    with store.session() as session:
        row = session.get(SilenceRow, silence_id)
        if row is None:
            return False
        row.ends_at = min(row.ends_at, now)
        return True


def quiet(store: Store, windows: tuple[MaintenanceWindow, ...], target: str, check: str,
          now: datetime) -> Quiet | None:
    """The silence or maintenance window covering this target/check now, if any."""
    with store.session() as session:
        return quiet_in(session, windows, target, check, now)


def quiet_in(session: Session, windows: tuple[MaintenanceWindow, ...], target: str, check: str,
             now: datetime) -> Quiet | None:
    """`quiet`, read in the caller's transaction."""
    for window in windows:
        if window.covers(target, check) and window.active(now):
            return Quiet(f"maintenance window {window.name}", window.remediate, window.notify)
    row = session.scalars(select(SilenceRow).where(
        SilenceRow.target == target, SilenceRow.starts_at <= now, SilenceRow.ends_at > now,
        (SilenceRow.check_name.is_(None)) | (SilenceRow.check_name == check),
    ).limit(1)).first()
    if row is None:
        return None
    return Quiet(f"silence #{row.id} by {row.created_by or 'someone'}: {row.reason}",
                 remediate=False, notify=False)
