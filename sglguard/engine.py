"""The incident engine: turns each stored result into state, and state flips into incidents."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from sglguard import flapping, messages
from sglguard.checks.base import CheckConfig, CheckResult, Status
from sglguard.clock import utcnow
from sglguard.config.models import Catalog
from sglguard.notify import Message
from sglguard.store import Store, queries
from sglguard.store.models import CheckStateRow, IncidentRow

logger = logging.getLogger(__name__)


@dataclass
class Decision:
    """What the service should do after one result: notify, and maybe remediate an incident."""

    evaluated: bool = True
    flapping: bool | None = None  # True: started, False: stopped, None: no change
    flap_percent: float = 0.0
    opened: int | None = None
    resolved: int | None = None
    remediate: int | None = None
    messages: list[Message] = field(default_factory=list)


class IncidentEngine:
    """Soft/hard state per check, one incident per held breach, resolution on recovery."""

    def __init__(self, catalog: Catalog, store: Store,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.catalog = catalog
        self.store = store
        self.clock = clock

    def record(self, result: CheckResult) -> Decision:
        """Store the result and move the check's state; one transaction, retried if locked."""
        for retry in self.store.retrying():
            with retry:
                return self._record(result)
        raise AssertionError("unreachable")  # pragma: no cover

    def _record(self, result: CheckResult) -> Decision:
        check = self.catalog.check(result.check)
        now = self.clock()
        decision = Decision()
        with self.store.session() as session:
            if result.skipped:  # a dependency is down: recorded, never counted
                queries.add_result(session, result, evaluated=False)
                decision.evaluated = False
                return decision
            state = queries.check_state(session, check.name, check.target)
            in_grace = state.grace_until is not None and now < state.grace_until
            failing = result.status is not Status.OK
            decision.evaluated = result.counts and not (failing and in_grace)
            self._count(state, result, decision.evaluated, now)
            if decision.evaluated:
                self._flap(check, state, decision)
            queries.add_result(session, result, evaluated=decision.evaluated)
            if state.incident_id is None:
                if failing and decision.evaluated and self._held(check, state, now):
                    incident = self._open(session, state, result, now)
                    decision.opened = incident.id
                    decision.remediate = None if state.flapping else incident.id
                    if not state.flapping:  # a flapping check says so once, not each flip
                        decision.messages.append(messages.incident_opened(
                            incident, check, self.catalog.target(check.target)))
                return decision
            incident = session.get_one(IncidentRow, state.incident_id)
            if not failing and state.consecutive_successes >= check.success_threshold:
                self._resolve(session, state, incident, now)
                decision.resolved = incident.id
                if not state.flapping:
                    decision.messages.append(messages.incident_resolved(
                        incident, check, self.catalog.target(check.target)))
            elif failing and decision.evaluated:
                self._update(incident, result)
                if incident.escalated_at is None and not state.flapping:
                    decision.remediate = incident.id
        return decision

    @staticmethod
    def _held(check: CheckConfig, state: CheckStateRow, now: datetime) -> bool:
        """The breach has lasted long enough: `for:`, `failures:` X of Y, or
        failure_threshold consecutive runs."""
        if check.hold is not None:
            return state.failing_since is not None and now - state.failing_since >= check.hold
        if check.failures is not None:
            return (flapping.failures_within(state.recent, check.failures.within)
                    >= check.failures.count)
        return state.consecutive_failures >= check.failure_threshold

    @staticmethod
    def _flap(check: CheckConfig, state: CheckStateRow, decision: Decision) -> None:
        if not check.flapping.enabled:
            return
        now_flapping = flapping.next_flapping(state.recent, state.flapping,
                                              check.flapping.high, check.flapping.low)
        decision.flap_percent = flapping.percent_state_change(state.recent)
        if now_flapping != state.flapping:
            decision.flapping = now_flapping
            state.flapping = now_flapping

    @staticmethod
    def _count(state: CheckStateRow, result: CheckResult, evaluated: bool,
               now: datetime) -> None:
        if result.status.label != state.status:
            state.last_change_at = now
        state.status = result.status.label
        state.last_result_at = now
        if evaluated:
            state.recent = flapping.remember(state.recent or "", result.status.label)
        if result.status is Status.OK:
            state.consecutive_successes += 1
            state.consecutive_failures = 0
            state.failing_since = None
            state.grace_until = None  # the check passed: start-up is over
        elif evaluated:
            state.consecutive_failures += 1
            state.consecutive_successes = 0
            if state.failing_since is None:
                state.failing_since = now

    @staticmethod
    def _open(session: Session, state: CheckStateRow, result: CheckResult,
              now: datetime) -> IncidentRow:
        incident = IncidentRow(
            check_name=result.check, target=result.target, status="open",
            severity=result.status.label, opened_at=now, first_value=result.value,
            last_value=result.value, first_message=result.message, last_message=result.message,
        )
        session.add(incident)
        session.flush()
        state.incident_id = incident.id
        queries.add_event(session, incident.id, now, "opened",
                          f"{state.consecutive_failures} consecutive failed runs: "
                          f"{result.message}")
        logger.warning("incident #%s opened: %s/%s %s: %s", incident.id, result.target,
                       result.check, result.status.label, result.message)
        return incident

    @staticmethod
    def _update(incident: IncidentRow, result: CheckResult) -> None:
        incident.last_value, incident.last_message = result.value, result.message
        severity = Status.from_label(incident.severity)
        if result.status is not Status.UNKNOWN and (
            severity is Status.UNKNOWN or result.status > severity
        ):
            incident.severity = result.status.label

    @staticmethod
    def _resolve(session: Session, state: CheckStateRow, incident: IncidentRow,
                 now: datetime) -> None:
        incident.status, incident.resolved_at = "resolved", now
        state.incident_id = None
        queries.add_event(session, incident.id, now, "resolved",
                          f"{state.consecutive_successes} consecutive passing runs")
        logger.warning("incident #%s resolved: %s/%s", incident.id, incident.target,
                       incident.check_name)

    def begin_grace(self, target: str, until: datetime) -> None:
        """Failures of the target's checks do not count until `until` or until they pass."""
        with self.store.session() as session:
            for state in queries.target_states(session, target):
                state.grace_until = until

    def end_grace(self, target: str) -> None:
        with self.store.session() as session:
            for state in queries.target_states(session, target):
                state.grace_until = None

    def note(self, incident_id: int, kind: str, detail: str) -> None:
        with self.store.session() as session:
            queries.add_event(session, incident_id, self.clock(), kind, detail)

    def incident(self, incident_id: int) -> IncidentRow:
        with self.store.session() as session:
            return session.get_one(IncidentRow, incident_id)

    def escalate(self, incident_id: int, reason: str) -> IncidentRow | None:
        """Mark the incident escalated; the row only the first time, None after."""
        with self.store.session() as session:
            incident = session.get_one(IncidentRow, incident_id, with_for_update=True)
            if incident.escalated_at is not None:
                return None
            incident.escalated_at = self.clock()
            queries.add_event(session, incident_id, incident.escalated_at, "escalated", reason)
            return incident
