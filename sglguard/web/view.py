"""What the status page, the API and `sglguard status` show, read from the store when asked.

Every item is a plain dict, the API's JSON as it is sent (so the page, the API and the CLI show
the same thing); secrets of the catalog are scrubbed from every string before it leaves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sglguard import silences
from sglguard.client import REDACTED
from sglguard.clock import utcnow
from sglguard.config.models import Catalog, TargetConfig
from sglguard.config.types import format_duration
from sglguard.store import Store
from sglguard.store.models import (
    CheckResultRow,
    CheckStateRow,
    DrainedWorkerRow,
    IncidentEventRow,
    IncidentRow,
    NotificationAttemptRow,
    RemediationRunRow,
    TargetLevelRow,
)
from sglguard.web.chart import CHART_HOURS

RECENT_RUNS = 48
CHART_SPAN = timedelta(hours=CHART_HOURS)
# Newest rows a chart reads at most: the status page's small charts read fewer (a fast check's
# chart then covers less than CHART_HOURS; the chart says which span it shows).
CHART_ROWS = 3000
SMALL_CHART_ROWS = 500
# Worst first: what needs a person most comes on top.
RANK = {"critical": 0, "warning": 1, "unknown": 2, "skipped": 3, "pending": 4, "ok": 5}
_SERVER = re.compile(r"\(server ([^,)]+)(?:, model ([^)]+))?\)")
_NEWEST = (CheckResultRow.started_at.desc(), CheckResultRow.id.desc())


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def public_url(url: str) -> str:
    """A target's URL without credentials written into it."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=f"{REDACTED}@{parts.netloc.rsplit('@', 1)[1]}"))


def result_item(row: CheckResultRow) -> dict[str, Any]:
    return {"status": row.status, "value": row.value, "unit": row.unit, "message": row.message,
            "duration_ms": row.duration_ms, "started_at": iso(row.started_at),
            "agent": row.agent}


class View:
    """Reads for people and programs: targets, checks with their runs, incidents."""

    def __init__(self, catalog: Catalog, store: Store,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.catalog = catalog
        self.store = store
        self.clock = clock
        from sglguard.notify import url_secrets  # the same scrubbing as recorded errors get

        found = {*catalog.secrets(), *url_secrets(catalog.notifiers)}
        self._secrets = tuple(sorted((item for item in found if item), key=len, reverse=True))

    def scrub(self, value: Any) -> Any:
        """`value` with every catalog secret replaced, in every string it holds."""
        if isinstance(value, str):
            for secret in self._secrets:
                value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {key: self.scrub(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub(item) for item in value]
        return value

    # --- checks -------------------------------------------------------------------------

    def checks(self, *, runs: int = RECENT_RUNS, chart: bool = False) -> list[dict[str, Any]]:
        """Every check of the catalog with its latest result and recent runs, worst first;
        `chart`: with the series of its small chart."""
        with self.store.session() as session:
            states = {row.check_name: row for row in session.scalars(select(CheckStateRow))}
            items = [self._check(session, config.name, states.get(config.name), runs)
                     for config in self.catalog.checks]
            items = list(self.scrub(items))
            if chart:  # numbers and times only: nothing to scrub
                since = self.clock() - CHART_SPAN
                for item in items:
                    item["chart"] = self._series(session, item["name"], since, SMALL_CHART_ROWS)
        items.sort(key=lambda item: (RANK.get(item["status"], 9), item["target"], item["name"]))
        return items

    def check(self, name: str, *, runs: int = 200) -> dict[str, Any] | None:
        """One check with more runs and its value chart; None when the catalog has no such."""
        if name not in {config.name for config in self.catalog.checks}:
            return None
        with self.store.session() as session:
            state = session.get(CheckStateRow, name)
            item = self._check(session, name, state, runs)
            item["incidents"] = [self._incident_summary(row) for row in session.scalars(
                select(IncidentRow).where(IncidentRow.check_name == name)
                .order_by(IncidentRow.id.desc()).limit(20))]
            item = dict(self.scrub(item))
            item["chart"] = self._series(session, name, self.clock() - CHART_SPAN, CHART_ROWS)
        return item

    def results(self, name: str, limit: int) -> list[dict[str, Any]] | None:
        if name not in {config.name for config in self.catalog.checks}:
            return None
        with self.store.session() as session:
            rows = session.scalars(select(CheckResultRow).where(
                CheckResultRow.check_name == name).order_by(*_NEWEST).limit(limit)).all()
            return self.scrub([result_item(row) for row in rows])  # type: ignore[no-any-return]

    def _check(self, session: Session, name: str, state: CheckStateRow | None,
               runs: int) -> dict[str, Any]:
        config = self.catalog.check(name)
        rows = session.scalars(select(CheckResultRow).where(
            CheckResultRow.check_name == name).order_by(*_NEWEST).limit(runs)).all()
        latest = rows[0] if rows else None
        now = self.clock()
        item: dict[str, Any] = {
            "name": name, "kind": config.kind, "target": config.target,
            "interval": format_duration(config.interval),
            "status": latest.status if latest is not None else "pending",
            "value": latest.value if latest is not None else None,
            "unit": latest.unit if latest is not None else "",
            "message": latest.message if latest is not None else "no result yet",
            "duration_ms": latest.duration_ms if latest is not None else None,
            "last_run_at": iso(latest.started_at) if latest is not None else None,
            "age_s": (round((now - latest.started_at).total_seconds(), 1)
                      if latest is not None else None),
            "warning": str(config.warning) if config.warning is not None else None,
            "critical": str(config.critical) if config.critical is not None else None,
            "runbook": config.runbook,
            "incident_id": state.incident_id if state is not None else None,
            "flapping": bool(state.flapping) if state is not None else False,
            "runs": [result_item(row) for row in reversed(rows)],
        }
        return item

    def _series(self, session: Session, name: str, since: datetime,
                limit: int) -> list[list[Any]]:
        rows = session.execute(
            select(CheckResultRow.started_at, CheckResultRow.value).where(
                CheckResultRow.check_name == name, CheckResultRow.started_at >= since,
                CheckResultRow.value.is_not(None)).order_by(*_NEWEST).limit(limit)).all()
        return [[iso(at), value] for at, value in reversed(rows)]

    # --- agents -------------------------------------------------------------------------

    def agents(self) -> list[dict[str, Any]]:
        """Every sglguard process that used this store lately (`sglguard run` on each host,
        hand-run commands), grouped by host, with its last heartbeat: one that stopped
        reporting shows as silent at once."""
        from sglguard.agents import DEAD_AFTER
        from sglguard.store.models import AgentRow

        now = self.clock()
        with self.store.session() as session:
            rows = session.scalars(select(AgentRow).where(
                AgentRow.heartbeat_at >= now - timedelta(days=1))
                .order_by(AgentRow.host, AgentRow.started_at)).all()
        items = []
        for row in rows:
            silent = now - row.heartbeat_at
            state = ("stopped" if row.stopped_at is not None
                     else "silent" if silent > DEAD_AFTER else "running")
            items.append({
                "agent": row.name, "host": row.host, "pid": row.pid, "role": row.role,
                "targets": json.loads(row.targets or "[]"), "state": state,
                "started_at": iso(row.started_at), "heartbeat_at": iso(row.heartbeat_at),
                "heartbeat_age_s": round(silent.total_seconds(), 1),
                "stopped_at": iso(row.stopped_at)})
        return self.scrub(items)  # type: ignore[no-any-return]

    def by_agent(self) -> list[dict[str, Any]]:
        """The newest result of every check in the store (this catalog's or not) that ran in
        the last day, grouped by the agent that wrote it: the fleet as the store knows it."""
        since = self.clock() - timedelta(days=1)
        groups: dict[str, list[dict[str, Any]]] = {}
        with self.store.session() as session:
            names = session.scalars(select(CheckStateRow.check_name).where(
                CheckStateRow.last_result_at >= since).order_by(CheckStateRow.check_name)).all()
            for name in names:
                row = session.scalars(select(CheckResultRow).where(
                    CheckResultRow.check_name == name).order_by(*_NEWEST).limit(1)).first()
                if row is not None:
                    groups.setdefault(row.agent or "unknown", []).append(
                        {"check": name, "target": row.target, **result_item(row)})
        return self.scrub([{"agent": agent, "checks": groups[agent]}  # type: ignore[no-any-return]
                           for agent in sorted(groups)])

    # --- targets ------------------------------------------------------------------------

    def targets(self) -> list[dict[str, Any]]:
        """Every target: its server, quiet state, lowered levels, budgets and open incidents."""
        now = self.clock()
        with self.store.session() as session:
            items = [self._target(session, target, now) for target in self.catalog.targets]
        for item in items:
            quiet = silences.quiet(self.store, self.catalog.maintenance, item["name"], "", now)
            item["quiet"] = quiet.reason if quiet is not None else None
        return self.scrub(items)  # type: ignore[no-any-return]

    def _target(self, session: Session, target: TargetConfig, now: datetime) -> dict[str, Any]:
        infos = [config.name for config in self.catalog.checks
                 if config.target == target.name and config.kind == "server_info"]
        server: dict[str, str | None] = {"version": None, "model": None, "seen_at": None}
        if infos:
            row = session.scalars(select(CheckResultRow).where(
                CheckResultRow.check_name.in_(infos), CheckResultRow.message.contains("(server "))
                .order_by(*_NEWEST).limit(1)).first()
            found = _SERVER.search(row.message) if row is not None else None
            if row is not None and found is not None:
                server = {"version": found.group(1), "model": found.group(2),
                          "seen_at": iso(row.started_at)}
        levels = session.scalars(select(TargetLevelRow).where(
            TargetLevelRow.target == target.name)).all()
        open_ids = session.scalars(select(IncidentRow.id).where(
            IncidentRow.target == target.name, IncidentRow.status == "open")).all()
        drained = session.scalars(select(DrainedWorkerRow).where(
            DrainedWorkerRow.target == target.name, DrainedWorkerRow.returned_at.is_(None))
            .order_by(DrainedWorkerRow.id)).all()
        return {
            "name": target.name, "url": public_url(target.url),
            "control": target.control.kind if target.control is not None else None,
            "server": server,
            "levels": [{"setting": level.setting, "current": level.current,
                        "original": level.original} for level in levels],
            "budgets": self._budgets(session, target.name, now),
            "open_incidents": list(open_ids),
            # Workers sglguard took out of a gateway and has not put back yet.
            "drained": [{"worker": public_url(row.worker_url), "gateway": public_url(row.gateway),
                         "state": row.state, "remediation": row.remediation,
                         "incident_id": row.incident_id, "drained_at": iso(row.drained_at),
                         "last_error": row.last_error} for row in drained],
        }

    def _budgets(self, session: Session, target: str, now: datetime) -> list[dict[str, Any]]:
        names = sorted({name for config in self.catalog.checks if config.target == target
                        for name in config.remediate})
        budgets = []
        for name in names:
            budget = self.catalog.remediation(name).budget
            used = session.scalar(select(func.count()).select_from(RemediationRunRow).where(
                RemediationRunRow.remediation == name, RemediationRunRow.target == target,
                RemediationRunRow.dry_run.is_(False),
                RemediationRunRow.outcome.not_in(("skipped", "planned")),
                RemediationRunRow.started_at >= now - budget.within)) or 0
            budgets.append({"remediation": name, "used": used, "max": budget.max,
                            "left": max(0, budget.max - used),
                            "within": format_duration(budget.within)})
        return budgets

    # --- incidents ----------------------------------------------------------------------

    def incidents(self, *, open_only: bool = False, limit: int = 20) -> list[dict[str, Any]]:
        """Incidents newest first, each with its timeline."""
        with self.store.session() as session:
            query = select(IncidentRow).order_by(IncidentRow.id.desc()).limit(limit)
            if open_only:
                query = query.where(IncidentRow.status == "open")
            items = [self._incident(session, row) for row in session.scalars(query)]
        return self.scrub(items)  # type: ignore[no-any-return]

    def incident(self, incident_id: int) -> dict[str, Any] | None:
        with self.store.session() as session:
            row = session.get(IncidentRow, incident_id)
            item = self._incident(session, row) if row is not None else None
        return self.scrub(item)  # type: ignore[no-any-return]

    @staticmethod
    def _incident_summary(row: IncidentRow) -> dict[str, Any]:
        return {
            "id": row.id, "check": row.check_name, "target": row.target, "status": row.status,
            "severity": row.severity, "opened_at": iso(row.opened_at),
            "resolved_at": iso(row.resolved_at), "escalated_at": iso(row.escalated_at),
            "acknowledged_at": iso(row.acknowledged_at), "acknowledged_by": row.acknowledged_by,
            "first_value": row.first_value, "last_value": row.last_value,
            "message": row.last_message, "agent": row.agent,
        }

    def _incident(self, session: Session, row: IncidentRow) -> dict[str, Any]:
        item = self._incident_summary(row)
        runs = session.scalars(select(RemediationRunRow).where(
            RemediationRunRow.incident_id == row.id).order_by(RemediationRunRow.id)).all()
        attempts = session.scalars(select(NotificationAttemptRow).where(
            NotificationAttemptRow.incident_id == row.id)
            .order_by(NotificationAttemptRow.id)).all()
        events = session.scalars(select(IncidentEventRow).where(
            IncidentEventRow.incident_id == row.id).order_by(IncidentEventRow.id)).all()
        item["remediations"] = [run_item(run) for run in runs]
        item["timeline"] = timeline(events, runs, attempts)
        return item


def run_item(run: RemediationRunRow) -> dict[str, Any]:
    return {"id": run.id, "incident_id": run.incident_id, "remediation": run.remediation,
            "kind": run.kind, "target": run.target, "trigger": run.trigger,
            "dry_run": run.dry_run, "plan": json.loads(run.plan), "outcome": run.outcome,
            "detail": run.detail, "error": run.error, "started_at": iso(run.started_at),
            "finished_at": iso(run.finished_at), "verified": run.verified,
            "verification": run.verification, "agent": run.agent}


def timeline(events: Sequence[IncidentEventRow], runs: Sequence[RemediationRunRow],
             attempts: Sequence[NotificationAttemptRow]) -> list[dict[str, Any]]:
    """Everything that happened to an incident, in the order it happened: its events, each
    remediation run (with its plan and outcome) and each notification attempt."""
    entries: list[tuple[datetime, int, int, dict[str, Any]]] = []
    for event in events:
        entries.append((event.at, 0, event.id, {
            "at": iso(event.at), "kind": event.kind, "detail": event.detail}))
    for run in runs:
        entries.append((run.started_at, 1, run.id, {
            "at": iso(run.started_at), "kind": "remediation_run",
            "detail": f"{run.remediation} ({run.kind}): {run.outcome}"
                      + (f" - {run.error}" if run.error else ""),
            "run_id": run.id, "plan": json.loads(run.plan), "outcome": run.outcome}))
    for attempt in attempts:
        entries.append((attempt.created_at, 2, attempt.id, {
            "at": iso(attempt.created_at), "kind": "notification",
            "detail": f"{attempt.event} to {attempt.notifier}: {attempt.outcome}"
                      + (f" ({attempt.error})" if attempt.error else ""),
            "outcome": attempt.outcome}))
    return [entry for *_, entry in sorted(entries, key=lambda entry: entry[:3])]
