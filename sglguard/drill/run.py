"""Running drills: the catalog's own service, in this process, against a drills database.

For each fault: wait for a healthy target, inject, wait for an incident of the target, let the
catalog's remediation act, undo the fault, wait for the incident to resolve; then record how
long each step took against the bound the catalog implies."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from sglguard.checks.base import CheckConfig
from sglguard.clock import utcnow
from sglguard.config.models import Catalog
from sglguard.drill.faults import Fault
from sglguard.service import Service
from sglguard.store import Store
from sglguard.store.evidence import DrillReportRow
from sglguard.store.models import IncidentRow, NotificationAttemptRow, RemediationRunRow

logger = logging.getLogger(__name__)
DRILL_MARK = "[DRILL]"
SOON = 5.0  # seconds: a check run less often is run by the drill before each fault
RECORDING = timedelta(seconds=1)  # from a run's end to its incident in the store, on a busy host


def detection_bound(check: CheckConfig) -> timedelta:
    """How long after a fault the catalog promises an incident: the first run after the fault
    (an interval, with its jitter, at most), then the runs it takes to judge (failure_threshold,
    X of Y, or `for:`), the last one running out its timeout; plus the check's `window`, and a
    moment to record the incident. Runs of a check never overlap: a run still going when the
    next one falls due makes that one missed, so after a run that takes its whole timeout the
    next starts at the first due time of the interval's grid after it ends."""
    jitter = timedelta(seconds=check.jitter_seconds)
    first = check.interval + jitter
    periods = max(1, math.ceil((check.timeout + jitter) / check.interval - 1e-9))
    step = check.interval * periods + jitter
    if check.hold is not None:
        rest = check.hold + step
    elif check.failures is not None:
        rest = step * (check.failures.within - 1)
    else:
        rest = step * (check.failure_threshold - 1)
    window = getattr(check, "window", None)
    return first + rest + check.timeout + RECORDING + (
        window if isinstance(window, timedelta) else timedelta())


def drill_catalog(catalog: Catalog, store_url: str, *, request_dumps: bool = True) -> Catalog:
    """The catalog as the drill runs it: its own database, every message marked as a drill;
    without `request_dumps` (a real server whose operator did not consent) the server's logging
    is left alone."""
    settings = catalog.notifications
    title = f"{DRILL_MARK} {settings.title or '$title'}"
    body = f"{settings.body or '$body'}\n\n(sglguard drill: a fault injected on purpose)"
    notifiers = tuple(
        notifier.model_copy(update={"title": f"{DRILL_MARK} {notifier.title}"})
        if notifier.title else notifier for notifier in catalog.notifiers)
    diagnostics = catalog.diagnostics if request_dumps else \
        catalog.diagnostics.model_copy(update={"request_dumps": None})
    return catalog.model_copy(update={
        "diagnostics": diagnostics,
        "store": catalog.store.model_copy(update={"url": store_url}),
        "notifications": settings.model_copy(update={"title": title, "body": body}),
        "notifiers": notifiers,
    })


@dataclass
class Outcome:
    """What one fault's drill found."""

    fault: str
    action: str
    detected: bool = False
    check: str | None = None
    incident: int | None = None
    detection_s: float | None = None
    bound_s: float | None = None
    remediation: str | None = None
    healthy_s: float | None = None  # from injection to the incident resolved
    notifications: list[str] = field(default_factory=list)
    verdict: str = "not run"
    note: str = ""


@dataclass
class Report:
    """A whole drill run."""

    target: str
    emulator: bool
    started_at: str
    finished_at: str = ""
    outcomes: list[Outcome] = field(default_factory=list)
    ignored: list[int] = field(default_factory=list)  # incidents already open at the start
    not_ok: list[str] = field(default_factory=list)  # checks not OK before the drills
    id: int | None = None
    time_scale: float = 1.0  # the catalog's schedule was multiplied by this (--time-scale)

    @property
    def passed(self) -> bool:
        return bool(self.outcomes) and all(item.verdict == "pass" for item in self.outcomes)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        outcomes = [Outcome(**item) for item in data.get("outcomes", [])]
        fields = {key: value for key, value in data.items()
                  if key in ("target", "emulator", "started_at", "finished_at", "ignored", "not_ok",
                              "id", "time_scale")}
        return cls(**fields, outcomes=outcomes)


class Drill:
    """Runs faults one after the other against one target of a catalog."""

    def __init__(self, catalog: Catalog, store: Store, target: str, *, wait: float | None = None,
                 settle: float | None = None, clock: Callable[[], datetime] = utcnow,
                 say: Callable[[str], None] = lambda text: None, time_scale: float = 1.0) -> None:
        self.catalog, self.store, self.clock, self.say = catalog, store, clock, say
        self.time_scale = time_scale  # already applied to the catalog; the report states it
        self.target = catalog.target(target)
        self.checks = [check for check in catalog.checks if check.target == target]
        self.bounds = {check.name: detection_bound(check).total_seconds()
                       for check in self.checks}
        self.wait = wait if wait is not None else 2 * max(self.bounds.values(), default=30.0)
        # How long to wait for a healthy target before a fault: an incident of a windowed
        # check resolves only once its window has forgotten the previous fault.
        self.settle = settle if settle is not None else max(
            60.0, max(self.bounds.values(), default=0.0))
        self.service = Service(catalog, store, clock=clock)
        self.baseline: list[str] = []  # checks OK before the drills: OK again before each

    def pid(self) -> int | None:
        control = self.service.runner.control(self.target)
        return control.server_pid() if control is not None else None

    def run(self, faults: Sequence[Fault], emulator: bool) -> Report:
        report = Report(self.target.name, emulator, self.clock().isoformat(),
                        time_scale=self.time_scale)
        self.service.start()
        try:
            self._warm_up()
            report.ignored = sorted(self._open_ids())
            latest = self.service._latest
            self.baseline = [check.name for check in self.checks if latest.get(check.name) == "ok"]
            report.not_ok = [check.name for check in self.checks
                             if check.name not in self.baseline]
            for fault in faults:
                report.outcomes.append(self._one(fault, set(report.ignored)))
        finally:
            self.service.notifications.flush(10)
            self.service.stop()
        report.finished_at = self.clock().isoformat()
        report.id = self._store(report)
        return report

    def _warm_up(self) -> None:
        """Every check of the target has run once (or its first round had time to)."""
        deadline = time.monotonic() + max(5.0, self.settle)
        for check in self.checks:
            self.service._first_run[check.name].wait(max(0.0, deadline - time.monotonic()))

    def _one(self, fault: Fault, ignored: set[int]) -> Outcome:
        outcome = Outcome(fault.name, fault.plan())
        self.say(f"drill {fault.name}: waiting for a healthy target")
        if not self._healthy(ignored):
            outcome.verdict, outcome.note = "skipped", "target not healthy before the drill"
            return outcome
        before = self._open_ids() | ignored
        wall = self.clock()
        self.say(f"drill {fault.name}: {outcome.action}")
        try:
            fault.inject()
            incident = self._detect(before, wall, fault)
            if incident is not None:
                self._detected(outcome, incident, wall)
                self._let_remediation_act(incident.id)
            fault.clear()
            if incident is not None:
                self._healed(outcome, incident.id, wall)
        except Exception as exc:
            outcome.verdict, outcome.note = "error", f"{type(exc).__name__}: {exc}"
            return outcome
        finally:
            fault.clear()
        self.service.notifications.flush(10)
        outcome.notifications = self._sent(wall)
        outcome.verdict = self._verdict(outcome)
        self.say(f"drill {fault.name}: {outcome.verdict}")
        return outcome

    def _detect(self, before: set[int], since: datetime, fault: Fault) -> IncidentRow | None:
        hold = fault.max_hold()
        limit = self.wait if hold is None else min(self.wait, hold)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with self.store.session() as session:
                rows = session.scalars(select(IncidentRow).where(
                    IncidentRow.target == self.target.name, IncidentRow.opened_at >= since)
                    .order_by(IncidentRow.id)).all()
                fresh = [row for row in rows if row.id not in before]
                if fresh:
                    session.expunge(fresh[0])
                    return fresh[0]
            time.sleep(0.05)
        return None

    def _detected(self, outcome: Outcome, incident: IncidentRow, since: datetime) -> None:
        outcome.detected, outcome.check, outcome.incident = True, incident.check_name, incident.id
        outcome.detection_s = round((incident.opened_at - since).total_seconds(), 2)
        outcome.bound_s = round(self.bounds.get(incident.check_name, 0.0), 2)

    def _let_remediation_act(self, incident_id: int) -> None:
        """Wait for the catalog's remediation of the incident (if it has one) to finish."""
        config = self.catalog.check(self._check_of(incident_id))
        if not config.remediate or self.catalog.mode == "passive":
            return
        control = self.target.control
        budget = (control.startup_timeout + control.stop_timeout).total_seconds() \
            if control is not None else 60.0
        deadline = time.monotonic() + self.wait + budget
        while time.monotonic() < deadline:
            with self.store.session() as session:
                runs = session.scalars(select(RemediationRunRow).where(
                    RemediationRunRow.incident_id == incident_id)).all()
                incident = session.get(IncidentRow, incident_id)
                if incident is None or incident.status != "open":
                    return
                if runs and all(run.outcome != "running" for run in runs):
                    return
            time.sleep(0.1)

    def _healed(self, outcome: Outcome, incident_id: int, since: datetime) -> None:
        control = self.target.control
        budget = control.startup_timeout.total_seconds() if control is not None else 60.0
        deadline = time.monotonic() + self.wait + budget
        while time.monotonic() < deadline:
            with self.store.session() as session:
                incident = session.get(IncidentRow, incident_id)
                runs = session.scalars(select(RemediationRunRow).where(
                    RemediationRunRow.incident_id == incident_id)).all()
                outcome.remediation = ", ".join(
                    f"{run.remediation} {run.outcome}" for run in runs) \
                    or self._other_repairs(session, incident_id, since) \
                    or "none (the drill undid the fault)"
                if incident is not None and incident.status != "open":
                    end = incident.resolved_at or self.clock()
                    outcome.healthy_s = round((end - since).total_seconds(), 2)
                    if all(run.outcome != "running" for run in runs):
                        return  # resolved, and its remediation has recorded how it went
            time.sleep(0.1)

    def _other_repairs(self, session: Session, incident_id: int, since: datetime) -> str:
        """Remediations of the target's other incidents opened since the fault: the one that
        repaired it when its own check's had no run (a restart withheld on an UNKNOWN result,
        then made for another check's incident)."""
        rows = session.execute(
            select(RemediationRunRow, IncidentRow.check_name)
            .join(IncidentRow, IncidentRow.id == RemediationRunRow.incident_id)
            .where(IncidentRow.target == self.target.name, IncidentRow.opened_at >= since,
                   IncidentRow.id != incident_id)
            .order_by(RemediationRunRow.id)).all()
        return ", ".join(f"{run.remediation} {run.outcome} (for #{run.incident_id} {check})"
                         for run, check in rows)

    def _check_of(self, incident_id: int) -> str:
        with self.store.session() as session:
            incident = session.get(IncidentRow, incident_id)
            return incident.check_name if incident is not None else ""

    def _sent(self, since: datetime) -> list[str]:
        with self.store.session() as session:
            row_type = NotificationAttemptRow
            rows = session.scalars(select(row_type).where(
                row_type.created_at >= since, row_type.outcome == "sent",
                row_type.target == self.target.name)
                .order_by(row_type.id)).all()
            return [f"{row.event} -> {row.notifier}" for row in rows]

    @staticmethod
    def _verdict(outcome: Outcome) -> str:
        if not outcome.detected:
            return "missed"
        if outcome.bound_s is not None and (outcome.detection_s or 0) > outcome.bound_s:
            return "late"
        if outcome.healthy_s is None:
            return "not healed"
        return "pass"

    def _healthy(self, ignored: set[int]) -> bool:
        """/health answers 200, no incident of the target is open (but those open before the
        drills began), then every check that was OK before the drills has passed again (a
        check passing ends its start-up grace after a restart)."""
        deadline = time.monotonic() + self.settle
        url = f"{str(self.target.url).rstrip('/')}/health"
        while time.monotonic() < deadline:
            try:
                ok = requests.get(url, timeout=5).status_code == 200
            except requests.RequestException:
                ok = False
            if ok and not (self._open_ids() - ignored):
                break
            time.sleep(0.2)
        else:
            return False
        latest = self.service._latest
        for name in self.baseline:
            latest.pop(name, None)  # from here on, only fresh runs count
        for name in self.baseline:  # a check run seldom is run now rather than waited for
            if self.catalog.check(name).interval.total_seconds() > SOON:
                self.service.run_check(name)
        while time.monotonic() < deadline:
            if all(latest.get(name) == "ok" for name in self.baseline):
                return True
            time.sleep(0.05)
        return False

    def _open_ids(self) -> set[int]:
        with self.store.session() as session:
            return set(session.scalars(select(IncidentRow.id).where(
                IncidentRow.target == self.target.name, IncidentRow.status == "open")).all())

    def _store(self, report: Report) -> int:
        with self.store.session() as session:
            row = DrillReportRow(target=report.target,
                                 started_at=datetime.fromisoformat(report.started_at),
                                 finished_at=datetime.fromisoformat(report.finished_at),
                                 passed=report.passed, report=json.dumps(report.as_dict()))
            session.add(row)
            session.flush()
            return row.id
