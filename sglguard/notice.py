"""One notification as sglguard builds it: event, text, routing keys and template fields."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

# `unknown` (could not evaluate) pages like a warning; `ok`/`info` pass only `min_severity: info`.
SEVERITY_RANK = {"ok": 0, "info": 0, "warning": 1, "unknown": 1, "critical": 2}
ESCALATIONS = frozenset({"incident_escalated", "budget_spent"})
# Sent to a notifier only where the incident's "opened" reached it (or its fallback).
FOLLOW_UPS = frozenset({"incident_resolved", "acknowledged"})
# A delivery of one of these counts as "the person was told" for repeat_interval.
REMINDS = frozenset({"incident_opened", "incident_repeated"})


def host_name() -> str:
    return socket.gethostname()


@dataclass(frozen=True)
class Message:
    """One notification: an event about incidents (or a test), its title and body.

    `severity` picks the Apprise type (an `ok` resolution shows green); `level` is what
    `min_severity` filters on and defaults to `severity` (a resolution carries the incident's
    severity there). `incident_ids` lists every incident a grouped message is about;
    `fields` fills catalog templates (see sglguard.templates).
    """

    event: str
    title: str
    body: str
    severity: str = "info"
    incident_id: int | None = None
    target: str | None = None
    check: str | None = None
    level: str | None = None
    incident_ids: tuple[int, ...] = ()
    fields: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.incident_ids and self.incident_id is not None:
            object.__setattr__(self, "incident_ids", (self.incident_id,))

    @property
    def rank(self) -> int:
        return SEVERITY_RANK.get(self.level or self.severity, 0)
