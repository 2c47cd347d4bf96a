"""Title and body templates a catalog may set: `string.Template` text with `$placeholders`.

Placeholders (every one is always filled; what does not apply reads `-`):

- `$event`: the event name, e.g. `incident_opened`
- `$what`: the event in words, e.g. `incident opened`
- `$status`: the headline status in capitals: `CRITICAL`, `RESOLVED`, `ESCALATION`, ...
- `$severity`: the incident's severity (`critical`, `warning`, `unknown`, `info`)
- `$host`: the machine sglguard runs on
- `$target`, `$url`: the target's name and URL
- `$check`, `$kind`: the check's name and kind (a group: the names joined by commas)
- `$value`, `$first_value`: the last and first values seen, with their unit
- `$threshold`: what counts as a breach (`critical > 200`, `3 consecutive failed runs`)
- `$message`: what the check said about its last run
- `$done`: what sglguard did or will do about it
- `$runbook`: the check's `runbook:` link
- `$incident`: the incident number(s), e.g. `#12` or `#12, #13`
- `$opened_at`: when the incident opened (UTC); `$lasted`: how long it was open
- `$count`: how many incidents the message is about
- `$checks`: one line per incident: check, status, value, threshold
- `$ack`: the command that acknowledges the incident(s) and stops repeats
- `$link`: the incident's (or check's) page on the status page, when `http.external_url` is set
- `$title`, `$body`: sglguard's default title and body, to wrap rather than replace

Braces are not used: the catalog loader reads `${NAME}` as an environment variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from string import Template

PLACEHOLDERS: tuple[str, ...] = (
    "ack", "body", "check", "checks", "count", "done", "event", "first_value", "host",
    "incident", "kind", "lasted", "link", "message", "opened_at", "runbook", "severity", "status",
    "target", "threshold", "title", "url", "value", "what",
)
MISSING = "-"


def check_template(text: str) -> str:
    """The template unchanged, or ValueError naming an unknown placeholder and the valid ones."""
    template = Template(text)
    valid = ", ".join(f"${name}" for name in PLACEHOLDERS)
    if not template.is_valid():
        raise ValueError(
            f"template has a '$' that starts no placeholder (write $$$$ for a literal $); "
            f"valid placeholders: {valid}")
    unknown = [name for name in template.get_identifiers() if name not in PLACEHOLDERS]
    if unknown:
        names = ", ".join(f"${name}" for name in unknown)
        raise ValueError(f"unknown placeholder {names} in template; valid placeholders: {valid}")
    return text


def render(text: str | None, fields: Mapping[str, str], default: str) -> str:
    """The template filled from `fields` (a missing field reads `-`), or `default` if none."""
    if text is None:
        return default
    values = {name: fields.get(name, MISSING) or MISSING for name in PLACEHOLDERS}
    return Template(text).safe_substitute(values)
