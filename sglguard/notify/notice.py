"""One notification as sglguard builds it: event, text, routing keys and template fields."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# `unknown` (could not evaluate) pages like a warning; `ok`/`info` pass only `min_severity: info`.
SEVERITY_RANK = {"ok": 0, "info": 0, "warning": 1, "unknown": 1, "critical": 2}
ESCALATIONS = frozenset({"incident_escalated", "budget_spent"})
# Sent to a notifier only where the incident's "opened" reached it (or its fallback).
FOLLOW_UPS = frozenset({"incident_resolved", "acknowledged", "incident_closed"})
# Events that tell a person of an incident: whoever got one of them is owed its resolution.
TELLS = ("incident_opened", "incident_repeated", "incident_escalated", "budget_spent")
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
    `fields` fills catalog templates (see sglguard.notify.templates).
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

    def payload(self) -> dict[str, Any]:
        """The message as JSON-ready data (kept in the outbox)."""
        return {"event": self.event, "title": self.title, "body": self.body,
                "severity": self.severity, "incident_id": self.incident_id,
                "target": self.target, "check": self.check, "level": self.level,
                "incident_ids": list(self.incident_ids), "fields": dict(self.fields)}

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> Message:
        return cls(event=data["event"], title=data["title"], body=data["body"],
                   severity=data.get("severity", "info"), incident_id=data.get("incident_id"),
                   target=data.get("target"), check=data.get("check"), level=data.get("level"),
                   incident_ids=tuple(data.get("incident_ids") or ()),
                   fields=dict(data.get("fields") or {}))
