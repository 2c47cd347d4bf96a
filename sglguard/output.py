"""How the CLI shows results, incidents and plans: rich tables for people, JSON for programs."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from sglguard.checks.base import CheckResult, Status
from sglguard.redact import clean, for_terminal
from sglguard.store.models import (
    CheckResultRow,
    IncidentEventRow,
    IncidentRow,
    NotificationAttemptRow,
    RemediationRunRow,
)

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


def worst(results: Sequence[CheckResult]) -> Status:
    """The Nagios exit status; skipped runs say nothing about the server."""
    return max((result.status for result in results if not result.skipped), default=Status.OK)


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
    console.print(f"  opened {_short_time(item['opened_at'])} UTC, resolved "
                  f"{_short_time(item['resolved_at'])}; first value {item['first_value']}, "
                  f"last {item['last_value']}")
    if item["acknowledged_by"]:
        console.print(f"  acknowledged by {clean(item['acknowledged_by'])} at "
                      f"{_short_time(item['acknowledged_at'])} UTC", markup=False)
    if item["escalated_at"]:
        console.print(f"  escalated at {_short_time(item['escalated_at'])} UTC: automatic "
                      "action stopped", markup=False)
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
        table.add_row(_short_time(at), _styled(kind), for_terminal(detail))
    console.print(table)
