"""Silences (by hand, from the CLI) and maintenance windows (in the catalog, one-off or
recurring by cron with an IANA time zone). Results and incidents are still recorded; what a
silence stops is notification and, unless the window allows it, remediation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from pydantic import Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from sglguard.config.base import ConfigModel, Name
from sglguard.config.types import Duration
from sglguard.store import Store
from sglguard.store.models import SilenceRow


class MaintenanceWindow(ConfigModel):
    """A planned quiet period: `cron` + `duration` (recurring) or `start` + `end` (one-off)."""

    name: Name
    targets: tuple[Name, ...] = Field(default=(), description="empty: every target")
    checks: tuple[Name, ...] = Field(default=(), description="empty: every check")
    cron: str | None = Field(default=None, description="when it starts, e.g. '0 3 * * sun'")
    duration: Duration | None = None
    timezone: str = "UTC"
    start: datetime | None = None
    end: datetime | None = None
    remediate: bool = Field(default=False, description="let remediation run inside it")
    notify: bool = Field(default=False, description="let notifications go out inside it")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {zone!r}") from None
        return zone

    @model_validator(mode="after")
    def _one_kind(self) -> MaintenanceWindow:
        recurring = self.cron is not None or self.duration is not None
        one_off = self.start is not None or self.end is not None
        if recurring == one_off:
            raise ValueError("give either cron + duration (recurring) or start + end (one-off)")
        if recurring:
            if self.cron is None or self.duration is None:
                raise ValueError("a recurring window needs both cron and duration")
            try:
                CronTrigger.from_crontab(self.cron, timezone=self.timezone)
            except ValueError as exc:
                raise ValueError(f"invalid cron expression {self.cron!r}: {exc}") from None
        else:
            if self.start is None or self.end is None:
                raise ValueError("a one-off window needs both start and end")
            if self.start.tzinfo is None or self.end.tzinfo is None:
                raise ValueError("start and end need a time zone, e.g. 2026-12-01T02:00:00Z")
            if self.end <= self.start:
                raise ValueError("end must come after start")
        return self

    def covers(self, target: str, check: str) -> bool:
        return ((not self.targets or target in self.targets)
                and (not self.checks or check in self.checks))

    def active(self, now: datetime) -> bool:
        if self.start is not None and self.end is not None:
            return self.start <= now < self.end
        assert self.cron is not None and self.duration is not None
        trigger = CronTrigger.from_crontab(self.cron, timezone=self.timezone)
        # The window is open if it started within the last `duration`.
        began = trigger.get_next_fire_time(None, now - self.duration)
        return began is not None and began <= now


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
