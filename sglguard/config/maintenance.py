"""Maintenance windows, as the catalog writes them: planned quiet periods, one-off or recurring
by cron with an IANA time zone (what they silence is in `sglguard.silences`)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from sglguard.config.base import ConfigModel, Name
from sglguard.config.types import Duration


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
            from apscheduler.triggers.cron import CronTrigger

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
        from apscheduler.triggers.cron import CronTrigger

        assert self.cron is not None and self.duration is not None
        trigger = CronTrigger.from_crontab(self.cron, timezone=self.timezone)
        # The window is open if it started within the last `duration`.
        began = trigger.get_next_fire_time(None, now - self.duration)
        return began is not None and began <= now
