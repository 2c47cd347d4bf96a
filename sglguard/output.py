"""How the CLI shows results, incidents and plans: rich tables for people, JSON for programs."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from sglguard.domain import CheckResult, Status
from sglguard.redact import clean, for_terminal
from sglguard.store.models import (
    CheckResultRow,
    IncidentEventRow,
    IncidentRow,
    NotificationAttemptRow,
    RemediationRunRow,
)

PIPE_WIDTH = 100_000  # "no limit": a table is as wide as its content, a line as long as it is


def console(*, highlight: bool = True) -> Console:
    """Where the CLI prints for people. At a terminal, wrapped to its width (COLUMNS or the
    terminal's size) and coloured; into a pipe or a file, nothing is wrapped, so `grep` and
    `less -S` see whole lines and no word is split."""
    shown = Console(highlight=highlight)
    try:
        terminal = sys.stdout.isatty()
    except ValueError:  # closed
        terminal = False
    if not terminal:
        shown.width = PIPE_WIDTH
        shown.soft_wrap = True
    return shown


STYLES = {"ok": "green", "warning": "yellow", "critical": "bold red", "unknown": "magenta",
          "open": "bold red", "resolved": "green", "succeeded": "green", "failed": "red",
          "skipped": "yellow", "planned": "cyan", "sent": "green", "dropped": "red"}


def json_text(items: Any) -> str:
    """JSON that every parser takes: NaN and infinities (which json.dumps writes bare) become
    null, and every string has crossed the redaction boundary."""
    return json.dumps(_plain(items), indent=2, allow_nan=False)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return clean(value, 1 << 20)
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _short_time(iso: str | None) -> str:
    return iso[5:19].replace("T", " ") if iso else "-"


def _styled(text: str) -> str:
    style = STYLES.get(text)
    return f"[{style}]{text}[/]" if style else text


def _value(value: float | None, unit: str) -> str:
    return "" if value is None else f"{value:.4g} {unit}".rstrip()


def result_dict(result: CheckResult) -> dict[str, Any]:
    return {
        "check": result.check, "target": result.target, "status": result.shown_status,
        "value": result.value, "unit": result.unit, "message": result.message,
        "duration_ms": result.duration_ms, "started_at": _time(result.started_at),
    }


def row_dict(row: CheckResultRow) -> dict[str, Any]:
    return {
        "check": row.check_name, "target": row.target, "status": row.status,
        "value": row.value, "unit": row.unit, "message": row.message,
        "duration_ms": row.duration_ms, "started_at": _time(row.started_at),
        "evaluated": row.evaluated,
    }


def results_table(console: Console, results: Sequence[dict[str, Any]], title: str) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("time", "check", "target", "status", "value", "ms", "message"):
        table.add_column(column, overflow="fold")
    for item in results:
        table.add_row(
            (item["started_at"] or "")[11:19], item["check"], item["target"],
            _styled(item["status"]), _value(item["value"], item["unit"]),
            f"{item['duration_ms']:.0f}", for_terminal(item["message"]),
        )
    console.print(table)


# As monitoring plugins combine states: critical, then warning, then unknown, then ok.
_PLUGIN_RANK = {Status.OK: 0, Status.UNKNOWN: 1, Status.WARNING: 2, Status.CRITICAL: 3}


def worst(results: Sequence[CheckResult]) -> Status:
    """The Nagios exit status: CRITICAL outranks UNKNOWN (a dead server is critical even if a
    GPU check could not tell); skipped runs say nothing about the server."""
    return max((result.status for result in results if not result.skipped), default=Status.OK,
               key=_PLUGIN_RANK.__getitem__)


def run_dict(run: RemediationRunRow) -> dict[str, Any]:
    return {
        "id": run.id, "incident_id": run.incident_id, "remediation": run.remediation,
        "kind": run.kind, "target": run.target, "trigger": run.trigger,
        "dry_run": run.dry_run, "plan": json.loads(run.plan), "outcome": run.outcome,
        "detail": run.detail, "error": run.error, "started_at": _time(run.started_at),
        "finished_at": _time(run.finished_at),
    }


def attempt_dict(attempt: NotificationAttemptRow) -> dict[str, Any]:
    return {
        "event": attempt.event, "notifier": attempt.notifier, "attempt": attempt.attempt,
        "outcome": attempt.outcome, "error": attempt.error, "title": attempt.title,
        "at": _time(attempt.created_at),
    }


def incident_dict(incident: IncidentRow, runs: Sequence[RemediationRunRow],
                  attempts: Sequence[NotificationAttemptRow],
                  events: Sequence[IncidentEventRow]) -> dict[str, Any]:
    return {
        "id": incident.id, "check": incident.check_name, "target": incident.target,
        "status": incident.status, "severity": incident.severity,
        "opened_at": _time(incident.opened_at), "resolved_at": _time(incident.resolved_at),
        "escalated_at": _time(incident.escalated_at),
        "acknowledged_at": _time(incident.acknowledged_at),
        "acknowledged_by": incident.acknowledged_by,
        "first_value": incident.first_value, "last_value": incident.last_value,
        "message": incident.last_message,
        "remediations": [run_dict(run) for run in runs],
        "notifications": [attempt_dict(attempt) for attempt in attempts],
        "timeline": [{"at": _time(event.at), "event": event.kind, "detail": event.detail}
                     for event in events],
    }


def incidents_table(console: Console, items: Sequence[dict[str, Any]]) -> None:
    table = Table(title="incidents", title_justify="left")
    for column in ("id", "target/check", "status", "severity", "opened (UTC)", "resolved",
                   "remediations", "notified"):
        table.add_column(column, overflow="fold")
    for item in items:
        runs = ", ".join(f"{run['remediation']} {_styled(run['outcome'])}"
                         for run in item["remediations"]) or "-"
        sent = sum(1 for attempt in item["notifications"] if attempt["outcome"] == "sent")
        failed = len(item["notifications"]) - sent
        notes = f"{sent} sent" if sent else "none sent"
        if failed:
            notes += f", [red]{failed} failed[/]"
        table.add_row(
            str(item["id"]), f"{item['target']}/{item['check']}", _styled(item["status"]),
            _styled(item["severity"]), _short_time(item["opened_at"]),
            _short_time(item["resolved_at"]), runs, notes,
        )
    console.print(table)


def plan_lines(console: Console, name: str, target: str, plan: Sequence[str],
               dry_run: bool) -> None:
    heading = "would do" if dry_run else "doing"
    console.print(f"remediation [bold]{name}[/] on target [bold]{target}[/] {heading}:")
    for number, step in enumerate(plan, start=1):
        console.print(f"  {number}. {clean(step)}", highlight=False, markup=False)


def incident_timeline(console: Console, item: dict[str, Any]) -> None:
    """One incident: what it is, then everything that happened to it, in order."""
    console.print(f"[bold]incident #{item['id']}[/] {item['target']}/{item['check']} "
                  f"{_styled(item['status'])} ({_styled(item['severity'])})")
    resolved = (f"resolved {_short_time(item['resolved_at'])} UTC" if item["resolved_at"]
                else "not resolved")
    values = ", ".join(f"{label} value {item[key]:.6g}"
                       for label, key in (("first", "first_value"), ("last", "last_value"))
                       if item[key] is not None)
    console.print(f"  opened {_short_time(item['opened_at'])} UTC, {resolved}"
                  + (f"; {values}" if values else ""), markup=False)
    if item["acknowledged_by"]:
        console.print(f"  acknowledged by {clean(item['acknowledged_by'])} at "
                      f"{_short_time(item['acknowledged_at'])} UTC", markup=False)
    if item["escalated_at"]:
        console.print(f"  escalated at {_short_time(item['escalated_at'])} UTC: automatic "
                      "action stopped", markup=False)
    if item["message"]:
        console.print(f"  {clean(item['message'])}", markup=False)
    events = [(event["at"], event["event"], event["detail"]) for event in item["timeline"]]
    events += [(attempt["at"], f"notified {attempt['outcome']}",
                f"{attempt['notifier']}: {attempt['event']}"
                + (f" ({attempt['error']})" if attempt["error"] else ""))
               for attempt in item["notifications"]]
    table = Table(title="timeline", title_justify="left")
    for column in ("time (UTC)", "event", "detail"):
        table.add_column(column, overflow="fold")
    for at, kind, detail in sorted(events, key=lambda event: event[0] or ""):
        table.add_row(_short_time(at), _styled(kind), for_terminal(detail or ""))
    console.print(table)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{max(seconds, 0):.0f}s ago"


def status_table(console: Console, checks: Sequence[dict[str, Any]]) -> None:
    """`sglguard status`: one line per check, worst first (as given); long messages are cut
    to the screen's width."""
    rows = [(item["target"], item["name"], item["status"], _value(item["value"], item["unit"]),
             _age(item["age_s"]), f"#{item['incident_id']}" if item["incident_id"] else "",
             item["message"]) for item in checks]
    headers = ("target", "check", "status", "value", "last result", "incident")
    widths = [max([len(column), *(len(row[index]) for row in rows)])
              for index, column in enumerate(headers)]
    room = max(10, console.width - sum(widths) - 3 * (len(headers) + 1) - 1)
    table = Table(title="status", title_justify="left")
    for column, width in zip(headers, widths, strict=True):
        table.add_column(column, no_wrap=True, min_width=width)
    table.add_column("message", no_wrap=True, max_width=room)
    for row in rows:
        message = row[6] if len(row[6]) <= room else row[6][:room - 1] + "…"
        table.add_row(row[0], row[1], _styled(row[2]), *row[3:6], message)
    console.print(table)


def worst_label(statuses: Iterable[str]) -> int:
    """The Nagios exit status of stored statuses, as `sglguard check` gives it; skipped and
    not yet run say nothing about the server."""
    return max((int(Status.from_label(label)) for label in statuses
                if label.upper() in Status.__members__), default=int(Status.OK))


def runs_table(console: Console, runs: Sequence[dict[str, Any]]) -> None:
    """`sglguard runs`: remediation runs, newest first."""
    table = Table(title="remediation runs", title_justify="left")
    for column in ("id", "started (UTC)", "remediation", "target", "trigger", "outcome",
                   "incident", "detail"):
        table.add_column(column, overflow="fold")
    for run in runs:
        outcome = _styled(run["outcome"]) + (" (dry run)" if run["dry_run"] else "")
        if run["verified"] is not None:
            outcome += ", verified" if run["verified"] else ", [red]not verified[/]"
        table.add_row(str(run["id"]), _short_time(run["started_at"]),
                      f"{run['remediation']} ({run['kind']})", run["target"], run["trigger"],
                      outcome, f"#{run['incident_id']}" if run["incident_id"] else "",
                      run["error"] or run["detail"])
    console.print(table)
