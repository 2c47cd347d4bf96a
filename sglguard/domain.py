"""The domain's own types, shared by checks, the engine, the store and the CLI, and depending on
none of them: a check's status, what a run measured, and a stored result."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum

__all__ = ["CheckResult", "Measurement", "SamplesUnavailable", "Status"]


class Status(IntEnum):
    """Check states, ordered so that max() gives the worst (as Nagios exit codes)."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Status:
        return cls[label.upper()]


@dataclass(frozen=True)
class Measurement:
    """What a kind's run() saw: a value and, where the kind can judge, a status."""

    value: float | None
    message: str = ""
    status: Status | None = None
    unit: str = ""
    counts: bool = True  # False: nothing to judge yet (a window still filling)


@dataclass(frozen=True)
class CheckResult:
    """One evaluated run of one check, as it is stored and printed."""

    check: str
    target: str
    status: Status
    value: float | None
    unit: str
    message: str
    duration_ms: float
    started_at: datetime
    skipped: bool = False
    counts: bool = True  # False: recorded, never counted toward an incident

    @property
    def shown_status(self) -> str:
        return "skipped" if self.skipped else self.status.label


class SamplesUnavailable(Exception):
    """The sample book (the store) cannot be read or written now: sglguard's own trouble, not
    the server's."""
