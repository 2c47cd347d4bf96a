"""Titles and bodies of notifications: what a person paged at night needs to read."""

from __future__ import annotations

from sglguard.checks.base import CheckConfig
from sglguard.config.models import TargetConfig
from sglguard.notify import Message, host_name
from sglguard.store.models import IncidentRow


def _value(value: float | None, unit: str = "") -> str:
    if value is None:
        return "none"
    return f"{value:g} {unit}".rstrip()


def _thresholds(check: CheckConfig) -> str:
    parts = [f"warning {check.warning}" if check.warning else "",
             f"critical {check.critical}" if check.critical else ""]
    shown = ", ".join(part for part in parts if part)
    if shown:
        return shown
    return f"{check.failure_threshold} consecutive failed runs"


def _lines(incident: IncidentRow, check: CheckConfig, target: TargetConfig) -> list[str]:
    return [
        f"host: {host_name()}",
        f"target: {target.name} ({target.url})",
        f"check: {check.name} ({check.kind})",
        f"status: {incident.severity}",
        f"value: {_value(incident.last_value)} (first {_value(incident.first_value)})",
        f"threshold: {_thresholds(check)}",
        f"message: {incident.last_message}",
        f"incident: #{incident.id} opened {incident.opened_at:%Y-%m-%d %H:%M:%S} UTC",
    ]


def incident_opened(incident: IncidentRow, check: CheckConfig, target: TargetConfig) -> Message:
    plan = ", ".join(check.remediate) or "none configured"
    return Message(
        event="incident_opened",
        title=f"[{incident.severity.upper()}] {target.name}/{check.name}: incident opened",
        body="\n".join([*_lines(incident, check, target), f"remediation: {plan}"]),
        severity=incident.severity,
        incident_id=incident.id,
    )


def incident_resolved(incident: IncidentRow, check: CheckConfig, target: TargetConfig) -> Message:
    lasted = (incident.resolved_at - incident.opened_at) if incident.resolved_at else None
    return Message(
        event="incident_resolved",
        title=f"[RESOLVED] {target.name}/{check.name}: incident resolved",
        body="\n".join([*_lines(incident, check, target), f"lasted: {lasted}"]),
        severity="ok",
        incident_id=incident.id,
    )


def remediation_result(incident: IncidentRow, check: CheckConfig, target: TargetConfig,
                       remediation: str, succeeded: bool, detail: str) -> Message:
    word = "succeeded" if succeeded else "failed"
    return Message(
        event=f"remediation_{word}",
        title=f"[{word.upper()}] {target.name}/{check.name}: {remediation} {word}",
        body="\n".join([*_lines(incident, check, target), f"done: {remediation}: {detail}"]),
        severity="ok" if succeeded else "critical",
        incident_id=incident.id,
    )


def budget_spent(incident: IncidentRow, check: CheckConfig, target: TargetConfig,
                 reason: str) -> Message:
    return Message(
        event="budget_spent",
        title=f"[ESCALATION] {target.name}/{check.name}: automatic remediation stopped",
        body="\n".join([
            *_lines(incident, check, target),
            f"why: {reason}",
            "sglguard will not act on this incident again until it resolves or someone runs "
            "`sglguard remediate` by hand. A person is needed.",
        ]),
        severity="critical",
        incident_id=incident.id,
    )
