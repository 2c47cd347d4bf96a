"""Launch settings lowered by reduce_concurrency: the arithmetic (pure) and where they are kept.

A level is one setting (`max_running_requests`, `max_queued_requests`, `mem_fraction_static`) of
one target: its original value, the value in force, and how many reductions brought it there.
While a level exists, every restart of the target passes it as a launch flag.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sglguard.store import Store


@dataclass(frozen=True)
class Level:
    """One lowered launch setting of a target."""

    setting: str
    original: float
    current: float
    steps: int
    changed_at: datetime

    @property
    def flag(self) -> str:
        return flag_of(self.setting)

    @property
    def value(self) -> str:
        return format_value(self.current)


# Counts; every other setting (mem_fraction_static) is a fraction.
INTEGER_SETTINGS = frozenset({"max_running_requests", "max_queued_requests"})


def flag_of(setting: str) -> str:
    """`max_running_requests` -> `--max-running-requests` (SGLang's CLI naming)."""
    return "--" + setting.replace("_", "-")


def format_value(value: float) -> str:
    """128.0 -> "128", 0.792 -> "0.792": as a launch flag takes it."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value, 4):g}"


def lowered(current: float, factor: float, floor: float, *, integer: bool) -> float | None:
    """`current * factor`, rounded down for integer settings, never below `floor`;
    None when that is no lower than `current` (already at the minimum)."""
    wanted = current * factor
    new = math.floor(wanted + 1e-9) if integer else round(wanted, 4)
    new = max(new, floor)
    return None if new >= current else float(new)


def stepped_up(level: Level, factor: float, now: datetime) -> Level | None:
    """One level back up: `current / factor`, capped at the original; None once back at the
    original (the last step always lands exactly on it, whatever rounding happened on the way)."""
    if level.steps <= 1:
        return None
    integer = level.setting in INTEGER_SETTINGS
    wanted = level.current / factor
    new = float(round(wanted)) if integer else round(wanted, 4)
    new = max(new, level.current + (1 if integer else 0))
    if new >= level.original:
        return None
    return replace(level, current=new, steps=level.steps - 1, changed_at=now)


def restore_is_due(levels: Sequence[Level], restore_after: timedelta, now: datetime, *,
                   open_incident: bool, last_resolved: datetime | None) -> bool:
    """Whether a target's levels may step up: `restore_after` of healthy running (no incident
    open, none resolved in that time) since the last change of any of its levels."""
    if not levels or open_incident:
        return False
    since = max(level.changed_at for level in levels)
    if last_resolved is not None:
        since = max(since, last_resolved)
    return now - since >= restore_after


class TargetLevels:
    """The levels of one target as kept in the store (table `target_levels`)."""

    def __init__(self, store: Store, target: str, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.target = target
        self.clock = clock

    def all(self) -> list[Level]:
        from sglguard.store import queries

        with self.store.session() as session:
            return [Level(row.setting, row.original, row.current, row.steps, row.changed_at)
                    for row in queries.target_levels(session, self.target)]

    def overrides(self) -> dict[str, str]:
        """The launch flags in force, e.g. `{"--max-running-requests": "128"}`."""
        return overrides_of(self.all())

    def save(self, levels: Sequence[Level], removed: Sequence[str] = ()) -> None:
        """Write `levels` and delete the settings named in `removed`, in one transaction."""
        from sglguard.store import queries

        for retry in self.store.retrying():
            with retry, self.store.session() as session:
                for level in levels:
                    queries.save_level(session, target=self.target, setting=level.setting,
                                       original=level.original, current=level.current,
                                       steps=level.steps, at=level.changed_at)
                for setting in removed:
                    queries.delete_level(session, self.target, setting)

    def trouble(self) -> tuple[bool, datetime | None]:
        from sglguard.store import queries

        with self.store.session() as session:
            return queries.target_trouble(session, self.target)


def overrides_of(levels: Sequence[Level]) -> dict[str, str]:
    """The launch flags that keep `levels` in force."""
    return {level.flag: level.value for level in levels}
