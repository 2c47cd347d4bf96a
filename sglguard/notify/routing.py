"""Which notifiers a message goes to, and the load-time checks of notifier references.

A notifier receives a message when all of these hold:

- its `events` include the message's event (`budget_spent` there selects every escalation);
- the message's level reaches `min_severity` (info < warning = unknown < critical). A resolution,
  a repeat or a remediation message carries the *incident's* severity as its level, so a
  `min_severity: critical` notifier hears "resolved" for exactly the incidents it was paged for.
  An escalation is always critical; flapping messages are warnings; a test passes;
- `targets` / `checks`, when given, contain the message's target / check;
- for escalations: if any notifier has `escalation: true`, only those receive escalations
  (their `events` need not list them); if none has, to every notifier whose `events` take
  them (all do by default).

A fallback receives what its notifier failed to deliver whatever its own filters say; a
notifier with `events: []` is a pure fallback.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sglguard.notify.notice import ESCALATIONS, SEVERITY_RANK, Message

if TYPE_CHECKING:
    from sglguard.config.models import NotifierConfig

Loc = tuple[str | int, ...]


class Router:
    """Applies each notifier's filters to a message."""

    def __init__(self, notifiers: Sequence[NotifierConfig]) -> None:
        self.notifiers = list(notifiers)
        self.escalation_only = any(notifier.escalation for notifier in notifiers)

    def accepts(self, notifier: NotifierConfig, message: Message) -> bool:
        if message.event in ESCALATIONS and self.escalation_only:
            return notifier.escalation and self._scoped(notifier, message)
        if message.event not in notifier.events:
            return False
        if message.event == "test":
            return True
        return (message.rank >= SEVERITY_RANK[notifier.min_severity]
                and self._scoped(notifier, message))

    def recipients(self, message: Message) -> list[NotifierConfig]:
        return [notifier for notifier in self.notifiers if self.accepts(notifier, message)]

    @staticmethod
    def _scoped(notifier: NotifierConfig, message: Message) -> bool:
        if notifier.targets and message.target not in notifier.targets:
            return False
        return not (notifier.checks and message.check not in notifier.checks)


def _notifiers(data: Any) -> Iterator[tuple[int, Mapping[str, Any]]]:
    items = data.get("notifiers") if isinstance(data, Mapping) else None
    if isinstance(items, list):
        for index, item in enumerate(items):
            if isinstance(item, Mapping):
                yield index, item


def _names(data: Any, section: str) -> list[str]:
    items = data.get(section) if isinstance(data, Mapping) else None
    if not isinstance(items, list):
        return []
    return [item["name"] for item in items
            if isinstance(item, Mapping) and isinstance(item.get("name"), str)]


def _fallback_problem(name: str, fallback: Any, fallbacks: Mapping[str, Any]) -> str | None:
    known = ", ".join(sorted(fallbacks)) or "none"
    if not isinstance(fallback, str):
        return None
    if fallback == name:
        return f"notifier '{name}' cannot be its own fallback"
    if fallback not in fallbacks:
        return f"unknown notifier '{fallback}' (known: {known})"
    further = fallbacks[fallback]
    if isinstance(further, str):
        return (f"'{fallback}' has a fallback of its own ('{further}'): a fallback is one hop, "
                f"so a fallback notifier may not name another")
    return None


def notifier_problems(data: Any) -> list[tuple[Loc, str]]:
    """Dangling or chained `fallback`s, unknown names in `targets`/`checks`, with their path."""
    problems: list[tuple[Loc, str]] = []
    fallbacks = {item["name"]: item.get("fallback") for _, item in _notifiers(data)
                 if isinstance(item.get("name"), str)}
    known = {"targets": _names(data, "targets"), "checks": _names(data, "checks")}
    for index, item in _notifiers(data):
        name = item.get("name")
        problem = _fallback_problem(str(name), item.get("fallback"), fallbacks)
        if problem is not None:
            problems.append((("notifiers", index, "fallback"), problem))
        for section, names in known.items():
            listed = item.get(section)
            for position, entry in enumerate(listed if isinstance(listed, list) else []):
                if isinstance(entry, str) and entry not in names:
                    problems.append(((("notifiers", index, section, position)), (
                        f"unknown {section[:-1]} '{entry}' (known: "
                        f"{', '.join(names) or 'none'})")))
    return problems
