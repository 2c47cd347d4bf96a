"""Titles and bodies of notifications: what a person paged at night needs to read.

Each builder returns a Message whose `fields` fill catalog templates (sglguard.notify.templates);
the default title and body are what those fields read when no template is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sglguard.checks.base import CheckConfig
from sglguard.config.models import TargetConfig
from sglguard.flapping import HARD_DOWN_KINDS
from sglguard.notify.notice import Message, host_name
from sglguard.notify.templates import MISSING
from sglguard.store.models import IncidentRow

WORST_FIRST = ("critical", "warning", "unknown", "info", "ok")


def _value(value: float | None, unit: str = "") -> str:
    if value is None:
        return "none"
    return f"{value:g} {unit}".rstrip()


def span(length: timedelta | None) -> str:
    """`3h 5m`, `12m 40s`, `35s`."""
    if length is None:
        return MISSING
    seconds = max(0, int(length.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s" if minutes else f"{seconds}s"


def _thresholds(check: CheckConfig | None) -> str:
    if check is None:
        return MISSING
    parts = [f"warning {check.warning}" if check.warning else "",
             f"critical {check.critical}" if check.critical else ""]
    shown = ", ".join(part for part in parts if part)
    if shown:
        return shown
    if check.hold is not None:
        return f"failing for {span(check.hold)}"
    return f"{check.failure_threshold} consecutive failed runs"


def _plan(check: CheckConfig | None) -> str:
    if check is None or not check.remediate:
        return "nothing automatic (no remediation configured): a person must act"
    return f"sglguard will try: {', '.join(check.remediate)}"


def _fields(incident: IncidentRow, check: CheckConfig | None, target: TargetConfig | None,
            unit: str) -> dict[str, str]:
    """The template fields of one incident; `what`, `status`, `done` are set by the caller."""
    return {
        "host": host_name(),
        "target": incident.target,
        "url": target.url if target is not None else MISSING,
        "check": incident.check_name,
        "kind": check.kind if check is not None else MISSING,
        "severity": incident.severity,
        "value": _value(incident.last_value, unit),
        "first_value": _value(incident.first_value, unit),
        "threshold": _thresholds(check),
        "message": incident.last_message or MISSING,
        "runbook": (check.runbook if check is not None else None) or MISSING,
        "incident": f"#{incident.id}",
        "opened_at": f"{incident.opened_at:%Y-%m-%d %H:%M:%S} UTC",
        "lasted": span(incident.resolved_at - incident.opened_at
                       if incident.resolved_at else None),
        "count": "1",
        "ack": f"sglguard ack {incident.id} --by NAME",
    }


def _check_line(fields: dict[str, str]) -> str:
    return (f"{fields['check']} ({fields['kind']}): {fields['severity'].upper()}, value "
            f"{fields['value']}, threshold {fields['threshold']}: {fields['message']}")


def _body(fields: dict[str, str], extra: Sequence[str] = (), lead: str | None = None) -> str:
    lines = [
        lead or f"{fields['target']}/{fields['check']} is {fields['severity'].upper()}: "
        f"{fields['message']}",
        f"value: {fields['value']} (first {fields['first_value']}); "
        f"threshold: {fields['threshold']}",
        f"target: {fields['target']} ({fields['url']}) watched from host {fields['host']}",
        f"check: {fields['check']} ({fields['kind']})",
        f"incident: {fields['incident']} opened {fields['opened_at']}",
        f"done: {fields['done']}",
    ]
    if fields["runbook"] != MISSING:
        lines.append(f"runbook: {fields['runbook']}")
    return "\n".join([*lines, *extra])


def _message(event: str, incident: IncidentRow, fields: dict[str, str], title: str,
             body: str, severity: str, level: str | None = None) -> Message:
    """`level` (for min_severity) is the incident's severity unless given."""
    fields.update(event=event, title=title, body=body, checks=_check_line(fields))
    return Message(event=event, title=title, body=body, severity=severity,
                   incident_id=incident.id, target=incident.target, check=incident.check_name,
                   level=level or incident.severity, fields=fields)


def _about(incident: IncidentRow, check: CheckConfig | None, target: TargetConfig | None,
           unit: str, *, what: str, status: str, done: str) -> dict[str, str]:
    fields = _fields(incident, check, target, unit)
    fields.update(what=what, status=status, done=done)
    return fields


def incident_opened(incident: IncidentRow, check: CheckConfig, target: TargetConfig, *,
                    unit: str = "", done: str | None = None) -> Message:
    """`done`: what the service will do, when not the check's remediations (passive mode...)."""
    status = incident.severity.upper()
    fields = _about(incident, check, target, unit, what="incident opened", status=status,
                    done=done or _plan(check))
    title = f"[{status}] {incident.target}/{incident.check_name}: incident opened"
    body = _body(fields, [f"acknowledge: {fields['ack']} (stops the reminders)"])
    return _message("incident_opened", incident, fields, title, body, incident.severity)


def incident_repeated(incident: IncidentRow, check: CheckConfig | None,
                      target: TargetConfig | None, now: datetime, *, unit: str = "") -> Message:
    """The reminder of an incident still open and unacknowledged."""
    status = incident.severity.upper()
    open_for = span(now - incident.opened_at)
    fields = _about(incident, check, target, unit, what=f"still open after {open_for}",
                    status=status, done=_escalation_state(incident))
    fields["lasted"] = open_for
    title = f"[{status}] {incident.target}/{incident.check_name}: still open after {open_for}"
    body = _body(fields, [f"acknowledge: {fields['ack']} (stops these reminders)"])
    return _message("incident_repeated", incident, fields, title, body, incident.severity)


def _escalation_state(incident: IncidentRow) -> str:
    if incident.escalated_at is not None:
        return (f"automatic remediation stopped at {incident.escalated_at:%H:%M:%S} UTC "
                "(escalated): a person is needed")
    return "automatic remediation (if configured) continues"


def incident_resolved(incident: IncidentRow, check: CheckConfig, target: TargetConfig, *,
                      unit: str = "") -> Message:
    fields = _about(incident, check, target, unit, what="incident resolved", status="RESOLVED",
                    done="the check passes again")
    title = f"[RESOLVED] {incident.target}/{incident.check_name}: incident resolved"
    lead = (f"{incident.target}/{incident.check_name} passes again; it was "
            f"{incident.severity.upper()}: {fields['message']}")
    body = _body(fields, [f"lasted: {fields['lasted']}"], lead=lead)
    return _message("incident_resolved", incident, fields, title, body, "ok")


def incident_closed(incident: IncidentRow, reason: str) -> Message:
    """An incident ended without its check passing (the check left the catalog)."""
    fields = _about(incident, None, None, "", what="incident closed", status="CLOSED",
                    done=f"closed: {reason}")
    title = f"[CLOSED] {incident.target}/{incident.check_name}: incident closed ({reason})"
    lead = f"{incident.target}/{incident.check_name}: incident closed: {reason}"
    return _message("incident_closed", incident, fields, title, _body(fields, lead=lead), "info")


def incident_escalated(incident: IncidentRow, check: CheckConfig, target: TargetConfig,
                       reason: str, *, unit: str = "") -> Message:
    """One per incident: budget spent, verification failed, or a remediation keeps erroring."""
    fields = _about(incident, check, target, unit, what="automatic remediation stopped",
                    status="ESCALATION", done=f"stopped acting: {reason}")
    title = (f"[ESCALATION] {incident.target}/{incident.check_name}: "
             "automatic remediation stopped")
    body = _body(fields, [
        f"why: {reason}",
        "sglguard will not act on this incident again until it resolves or someone runs "
        "`sglguard remediate` by hand. A person is needed.",
        f"acknowledge: {fields['ack']}",
    ])
    # "A person is needed" passes every min_severity, whatever the incident's severity.
    return _message("incident_escalated", incident, fields, title, body, "critical",
                    level="critical")


def budget_spent(incident: IncidentRow, check: CheckConfig, target: TargetConfig,
                 reason: str, *, unit: str = "") -> Message:
    """The escalation when the remediation budget is spent (event `incident_escalated`)."""
    return incident_escalated(incident, check, target, reason, unit=unit)


def remediation_started(incident: IncidentRow, check: CheckConfig, target: TargetConfig,
                        remediation: str, plan: Sequence[str] = (), *,
                        unit: str = "") -> Message:
    steps = "; ".join(plan)
    fields = _about(incident, check, target, unit, what=f"{remediation} started",
                    status="ACTING", done=f"{remediation} started" + (f": {steps}" if steps
                                                                      else ""))
    title = f"[ACTING] {incident.target}/{incident.check_name}: {remediation} started"
    return _message("remediation_started", incident, fields, title, _body(fields), "info")


def remediation_result(incident: IncidentRow, check: CheckConfig, target: TargetConfig,
                       remediation: str, succeeded: bool, detail: str, *,
                       unit: str = "") -> Message:
    word = "succeeded" if succeeded else "failed"
    fields = _about(incident, check, target, unit, what=f"{remediation} {word}",
                    status=word.upper(), done=f"{remediation}: {detail}")
    title = f"[{word.upper()}] {incident.target}/{incident.check_name}: {remediation} {word}"
    return _message(f"remediation_{word}", incident, fields, title, _body(fields),
                    "ok" if succeeded else "critical")


def acknowledged(incident: IncidentRow, check: CheckConfig | None, target: TargetConfig | None,
                 by: str, comment: str) -> Message:
    said = f": {comment}" if comment else ""
    fields = _about(incident, check, target, "", what=f"acknowledged by {by}", status="ACK",
                    done=f"{by} acknowledged it{said}; reminders stop")
    title = f"[ACK] {incident.target}/{incident.check_name}: acknowledged by {by}"
    return _message("acknowledged", incident, fields, title, _body(fields), "info")


def flapping(check: CheckConfig, target: TargetConfig, started: bool, percent: float,
             incident_id: int | None = None) -> Message:
    """Said once when a check starts flapping (no remediation meanwhile) and once when it stops."""
    what = "flapping" if started else "no longer flapping"
    if not started:
        done = "normal handling resumes"
    elif check.kind in HARD_DOWN_KINDS:  # flapping never hides a dead server
        done = ("notifications of its state changes held; a failed probe still pages and "
                "is repaired")
    else:
        done = "remediation paused while it flaps; notifications of its incidents held"
    fields = {
        "event": f"flapping_{'started' if started else 'stopped'}", "what": what,
        "status": "FLAPPING" if started else "STABLE", "severity": "warning",
        "host": host_name(), "target": target.name, "url": target.url, "check": check.name,
        "kind": check.kind, "threshold": f"start at {check.flapping.high:g}%, stop below "
                                         f"{check.flapping.low:g}%",
        "message": f"{percent:.0f}% state change over the last 21 runs", "done": done,
        "runbook": check.runbook or MISSING, "count": "1",
        "incident": f"#{incident_id}" if incident_id is not None else MISSING,
    }
    title = f"[{fields['status']}] {target.name}/{check.name}: {what} ({percent:.0f}% change)"
    body = "\n".join([
        f"{target.name}/{check.name} is {what}: {fields['message']} "
        f"(threshold: {fields['threshold']})",
        f"target: {target.name} ({target.url}) watched from host {fields['host']}",
        f"check: {check.name} ({check.kind})", f"done: {done}",
        *([f"runbook: {check.runbook}"] if check.runbook else []),
    ])
    fields.update(title=title, body=body, checks=f"{check.name}: {what}")
    return Message(event=fields["event"], title=title, body=body,
                   severity="warning" if started else "info", incident_id=incident_id,
                   target=target.name, check=check.name, level="warning", fields=fields)


def notifier_test(notifier: str) -> Message:
    """What `sglguard notify test NAME` sends."""
    host = host_name()
    title = f"[TEST] sglguard on {host}: notifier {notifier} works"
    body = (f"A test message from sglguard on host {host} to notifier '{notifier}'. "
            "If you read this, incidents will reach you here. Nothing is wrong.")
    fields = {"event": "test", "what": "test message", "status": "TEST", "severity": "info",
              "host": host, "done": "nothing: this is a test", "count": "0",
              "title": title, "body": body}
    return Message(event="test", title=title, body=body, severity="info", fields=fields)


def _worst(levels: Sequence[str]) -> str:
    return min(levels, key=lambda level: WORST_FIRST.index(level)
               if level in WORST_FIRST else len(WORST_FIRST))


def _per_check(items: Sequence[Message], name: str) -> str:
    """One value when every incident has the same, else `check: value; ...`."""
    values = [item.fields.get(name, MISSING) for item in items]
    if len(set(values)) == 1:
        return values[0]
    return "; ".join(f"{item.check}: {value}" for item, value in zip(items, values, strict=True))


def grouped(items: Sequence[Message]) -> Message:
    """One message for incidents of one target that opened together (a dead server)."""
    if len(items) == 1:
        return items[0]
    first = items[0].fields
    severity = _worst([item.severity for item in items])
    names = ", ".join(item.fields.get("check", MISSING) for item in items)
    ids = tuple(number for item in items for number in item.incident_ids)
    fields = dict(first)
    fields.update(
        event="incident_opened", what=f"{len(items)} incidents opened", status=severity.upper(),
        severity=severity, check=names, count=str(len(items)),
        kind=", ".join(item.fields.get("kind", MISSING) for item in items),
        value="; ".join(f"{item.check}: {item.fields.get('value')}" for item in items),
        first_value="; ".join(f"{item.check}: {item.fields.get('first_value')}"
                              for item in items),
        threshold="; ".join(f"{item.check}: {item.fields.get('threshold')}" for item in items),
        message="; ".join(f"{item.check}: {item.fields.get('message')}" for item in items),
        done=_per_check(items, "done"),
        runbook="; ".join(f"{item.check}: {item.fields['runbook']}" for item in items
                          if item.fields.get("runbook", MISSING) != MISSING) or MISSING,
        incident=", ".join(f"#{number}" for number in ids),
        checks="\n".join(f"- {item.fields.get('checks')}" for item in items),
        ack=f"sglguard ack {' '.join(str(number) for number in ids)} --by NAME",
    )
    title = f"[{severity.upper()}] {items[0].target}: {len(items)} incidents opened ({names})"
    body = "\n".join([
        f"{len(items)} checks of target {items[0].target} ({first.get('url')}) failed together, "
        f"watched from host {first.get('host')}:",
        fields["checks"],
        f"incidents: {fields['incident']}, first opened {first.get('opened_at')}",
        f"done: {fields['done']}",
        *([f"runbook: {fields['runbook']}"] if fields["runbook"] != MISSING else []),
        f"acknowledge: {fields['ack']} (stops the reminders)",
    ])
    fields.update(title=title, body=body)
    return Message(event="incident_opened", title=title, body=body, severity=severity,
                   incident_id=ids[0] if ids else None, target=items[0].target, check=None,
                   level=severity, incident_ids=ids, fields=fields)
