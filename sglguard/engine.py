"""The incident engine: turns each stored result into state, and state flips into incidents."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sglguard import flapping, silences
from sglguard.checks.base import CheckConfig
from sglguard.clock import utcnow
from sglguard.config.models import Catalog
from sglguard.domain import CheckResult, Status
from sglguard.notify import Message, Notifications, messages
from sglguard.store import Store, queries
from sglguard.store import outbox as owed
from sglguard.store.models import CheckStateRow, IncidentRow, local_agent
from sglguard.store.writer import ResultWriter

logger = logging.getLogger(__name__)
HARD_DOWN_KINDS = flapping.HARD_DOWN_KINDS  # probes of the server's life


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
    staged: int = 0  # outbox rows written for it (messages, a remediation request)
    requested: bool = False  # a remediation request was written


@dataclass
class StateView:
    """The engine's copy of a check's stored state, as of its last transaction."""

    status: str
    consecutive_failures: int
    consecutive_successes: int
    last_result_at: datetime | None
    last_change_at: datetime | None
    grace_until: datetime | None
    failing_since: datetime | None
    recent: str
    flapping: bool
    incident_id: int | None
    stored: bool = True  # False: no row yet; the writer creates it with the first result

    @classmethod
    def of(cls, row: CheckStateRow) -> StateView:
        return cls(**{item.name: getattr(row, item.name) for item in fields(cls)
                      if item.name != "stored"})

    @classmethod
    def fresh(cls) -> StateView:
        """The state of a check that has no row yet (as `queries.check_state` makes one)."""
        return cls("ok", 0, 0, None, None, None, None, "", False, None, stored=False)

    @property
    def quiet(self) -> bool:
        """OK with nothing going on: the only state in which results are written in batches."""
        return (self.status == "ok" and self.incident_id is None and self.grace_until is None
                and not self.flapping)

    def counters(self) -> dict[str, Any]:
        """What a quiet result may change."""
        return {"status": self.status, "consecutive_failures": self.consecutive_failures,
                "consecutive_successes": self.consecutive_successes,
                "last_result_at": self.last_result_at, "last_change_at": self.last_change_at,
                "failing_since": self.failing_since, "recent": self.recent}


State = CheckStateRow | StateView


class IncidentEngine:
    """Soft/hard state per check, one incident per held breach, resolution on recovery.

    With a `writer`, a result that keeps a quiet check quiet (OK after OK, no incident, no
    grace, no flapping change) is queued there and written with others in one transaction;
    every other result is written at once, after what is queued.

    What a transition owes (its messages, a remediation request) is written to the outbox in
    the transaction of the state change, after the policy (passive mode, silences,
    maintenance, dry run) has had its say: nothing owed lives only in memory."""

    def __init__(self, catalog: Catalog, store: Store,
                 clock: Callable[[], datetime] = utcnow, *,
                 writer: ResultWriter | None = None,
                 notifications: Notifications | None = None, dry_run: bool = False,
                 agent: str | None = None) -> None:
        self.catalog = catalog
        self.agent = agent or local_agent()  # named on every row it writes
        # Told of each result written at once: ("result", seconds, written).
        self.on_write: Callable[[str, float, bool], None] = lambda _what, _took, _ok: None
        self.store = store
        self.clock = clock
        self.writer = writer
        self.notifications = notifications or Notifications.from_catalog(catalog, store,
                                                                         clock=clock)
        self.dry_run = dry_run
        self._views: dict[str, StateView] = {}
        self._views_lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._graces: dict[str, datetime | None] = {}  # begun by this process, per target
        if writer is not None:
            writer.on_stale = self.forget

    def record(self, result: CheckResult, *, at: datetime | None = None) -> Decision:
        """Store the result and move the check's state; one transaction, retried if locked.
        Results of one check are recorded one at a time (a scheduled run and a verification
        may finish together). `at`: when it happened, for a result written late (held while
        the store was down); now by default."""
        with self._check_lock(result.check):
            return self._record_one(result, at)

    def prime(self) -> None:
        """Read every check's stored state in one query, so that the first round's quiet
        results are batched like any others instead of each taking a transaction of its own.
        A check with no state yet starts from a fresh one, whose row the writer creates with
        its first batch (where the store can skip a row another process made meanwhile)."""
        if self.writer is None:
            return
        names = {check.name for check in self.catalog.checks}
        with self.store.session() as session:
            rows = session.scalars(select(CheckStateRow)).all()
            views = {row.check_name: StateView.of(row) for row in rows if row.check_name in names}
        if self.writer.creates_states:
            views.update((name, StateView.fresh()) for name in names if name not in views)
        with self._views_lock:
            for name, view in views.items():
                self._views.setdefault(name, view)

    def _check_lock(self, check: str) -> threading.Lock:
        with self._views_lock:
            return self._locks.setdefault(check, threading.Lock())

    def _record_one(self, result: CheckResult, at: datetime | None) -> Decision:
        if self.writer is not None:
            quiet = self._record_quietly(result, self.writer, at or self.clock())
            if quiet is not None:
                return quiet
            self.writer.flush()
        began = time.perf_counter()
        try:
            decision = self._record_at_once(result, at)
        except Exception:
            self.on_write("result", time.perf_counter() - began, False)
            raise
        self.on_write("result", time.perf_counter() - began, True)
        return decision

    def _record_at_once(self, result: CheckResult, at: datetime | None) -> Decision:
        for clash in range(3):
            try:
                for retry in self.store.retrying():
                    with retry:
                        return self._record(result, at or self.clock())
            except IntegrityError:
                # Another process opened the check's incident first (the store keeps one
                # open per check): read its state again and go on from there.
                self.forget(result.check)
                if clash == 2:
                    raise
            except Exception:
                self.forget(result.check)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def forget(self, check: str) -> None:
        """Read the check's state from the store next time: it changed behind the engine."""
        with self._views_lock:
            self._views.pop(check, None)

    def _record_quietly(self, result: CheckResult, writer: ResultWriter,
                        now: datetime) -> Decision | None:
        """Queue a result that changes nothing but counters; None when it must be written now."""
        with self._views_lock:
            view = self._views.get(result.check)
        if result.skipped:  # a dependency is down: recorded, never counted
            if view is None or not view.stored or self._window_open(view):
                return None  # its window restarts (or its state is new): written now
            if writer.add(queries.result_values(result, evaluated=False, agent=self.agent)):
                writer.flush()
            return Decision(evaluated=False)
        if view is None or not view.quiet or result.status is not Status.OK:
            return None
        trial, decision = replace(view), Decision(evaluated=result.counts)
        self._count(trial, result, decision.evaluated, now)
        if decision.evaluated:
            self._flap(self.catalog.check(result.check), trial, decision)
        if decision.flapping is not None:
            return None
        create = None if view.stored else self.catalog.check(result.check).target
        trial.stored = True  # from here on the writer holds its row (or the store has it)
        with self._views_lock:
            self._views[result.check] = trial
        if writer.add(queries.result_values(result, evaluated=decision.evaluated,
                                            agent=self.agent),
                      (result.check, trial.counters()), create=create):
            writer.flush()  # here, in the run's thread: no wake-up of its own
        return decision

    def _record(self, result: CheckResult, now: datetime) -> Decision:
        with self.store.session() as session:
            decision, state = self._apply(session, result, now)
            view = None if state is None else StateView.of(state)
        if view is not None:  # committed: the engine's copy may be trusted
            with self._views_lock:
                self._views[result.check] = view
        return decision

    def _apply(self, session: Session, result: CheckResult, now: datetime,
               ) -> tuple[Decision, CheckStateRow | None]:
        check = self.catalog.check(result.check)
        decision = Decision()
        state = queries.check_state(session, check.name, check.target)
        if result.skipped:  # a dependency is down: recorded, never counted
            queries.add_result(session, result, evaluated=False, agent=self.agent)
            self._restart_window(state)
            decision.evaluated = False
            return decision, state
        in_grace = state.grace_until is not None and now < state.grace_until
        failing = result.status is not Status.OK
        decision.evaluated = result.counts and not (failing and in_grace)
        self._count(state, result, decision.evaluated, now,
                    keep_grace=self._before_grace(check, state, result))
        if decision.evaluated:
            self._flap(check, state, decision)
        queries.add_result(session, result, evaluated=decision.evaluated,
                          agent=self.agent)
        if state.incident_id is None:
            if failing and decision.evaluated and self._held(check, state, now):
                incident = self._open(session, state, result, now)
                decision.opened = incident.id
                # A flapping check says so once, not at each flip; but a dead server always
                # pages and is repaired, flapping or not.
                hushed = state.flapping and not self._hard_down(check, result)
                decision.remediate = None if hushed else incident.id
                if not hushed:
                    decision.messages.append(messages.incident_opened(
                        incident, check, self.catalog.target(check.target)))
        else:
            self._follow(session, check, state, result, decision, now)
        self._owe(session, check, state, decision, now)
        return decision, state

    def _owe(self, session: Session, check: CheckConfig, state: CheckStateRow,
             decision: Decision, now: datetime) -> None:
        """Write what the decision owes into the outbox, as the policy allows."""
        target = self.catalog.target(check.target)
        if decision.flapping is not None:
            decision.messages.append(messages.flapping(
                check, target, decision.flapping, decision.flap_percent,
                incident_id=decision.opened or state.incident_id))
        if not decision.messages and decision.remediate is None:
            return
        quiet = silences.quiet_in(session, self.catalog.maintenance, check.target, check.name,
                                  now)
        if quiet is not None and not quiet.notify:
            if decision.opened is not None:
                queries.add_event(session, decision.opened, now, "silenced", quiet.reason)
        else:
            for message in decision.messages:
                decision.staged += self.notifications.stage(session, message, now)
        incident_id = decision.remediate
        if incident_id is None or not check.remediate:
            return
        incident = session.get_one(IncidentRow, incident_id)
        withheld = self._withheld(check, quiet, decision, incident)
        if withheld is not None:
            if decision.opened is not None:
                queries.add_event(session, incident_id, now, "remediation_withheld", withheld)
            return
        if owed.has_active_request(session, incident_id):
            return  # one request per incident at a time
        owed.add(session, kind=owed.REMEDIATION, event="incident", target=check.target,
                 check=check.name, incident_id=incident_id, now=now,
                 payload={"check": check.name, "dry_run": self.dry_run})
        decision.requested = True
        decision.staged += 1

    def _withheld(self, check: CheckConfig, quiet: silences.Quiet | None,
                  decision: Decision, incident: IncidentRow) -> str | None:
        """Why the policy lets no remediation run for this decision; None when it may."""
        if (check.mode or self.catalog.mode) == "passive":
            return "passive mode"
        harsh = [name for name in check.remediate if self.catalog.remediation(name).destructive]
        if incident.severity == "unknown" and harsh and not check.remediate_on_unknown:
            return (f"{', '.join(harsh)} withheld: the check could not evaluate (no measured "
                    "breach); set remediate_on_unknown to allow it")
        if quiet is not None and not quiet.remediate:
            return quiet.reason
        if self.dry_run and decision.opened is None:
            return "dry run: planned once, when the incident opened"
        return None

    def _follow(self, session: Session, check: CheckConfig, state: CheckStateRow,
                result: CheckResult, decision: Decision, now: datetime) -> None:
        """A result of a check whose incident is open: resolve it, or keep it current."""
        assert state.incident_id is not None
        incident = session.get_one(IncidentRow, state.incident_id)
        failing = result.status is not Status.OK
        if (not failing and decision.evaluated
                and state.consecutive_successes >= check.success_threshold):
            if owed.acting_on(session, incident.id):
                return  # its remediation is still acting: the verification resolves it
            if not self._resolve(session, state, incident, now):
                return  # another sglguard process resolved it a moment ago
            decision.resolved = incident.id
            # Goes to whoever was told of the incident (nobody, if it opened hushed).
            decision.messages.append(messages.incident_resolved(
                incident, check, self.catalog.target(check.target)))
        elif failing and decision.evaluated:
            self._update(incident, result)
            if incident.escalated_at is None and (
                    not state.flapping or self._hard_down(check, result)):
                decision.remediate = incident.id

    def _before_grace(self, check: CheckConfig, state: CheckStateRow,
                      result: CheckResult) -> bool:
        """The result was measured before the target's start-up grace began (by this process
        or another one, such as `sglguard remediate`): its pass says nothing of the restarted
        server."""
        control = self.catalog.target(check.target).control
        if state.grace_until is None or control is None:
            return False
        # Every grace is begun as now + startup_timeout, so its start is in the store.
        return result.started_at < state.grace_until - control.startup_timeout

    @staticmethod
    def _hard_down(check: CheckConfig, result: CheckResult) -> bool:
        """A probe of the server's life failed outright: the server is down, not noisy."""
        return result.status is Status.CRITICAL and check.kind in HARD_DOWN_KINDS

    @staticmethod
    def _window_open(state: State) -> bool:
        """Something counts toward an incident: a skipped run must restart it."""
        return (state.failing_since is not None or state.consecutive_failures > 0
                or any(letter != "o" for letter in flapping.since_gap(state.recent or "")))

    @staticmethod
    def _restart_window(state: State) -> None:
        """Runs were skipped (a dependency down): `for:`, X of Y and consecutive counts start
        again, so a check does not open on its first failure after an outage."""
        state.failing_since = None
        state.consecutive_failures = 0
        state.recent = flapping.remember_gap(state.recent or "")

    @staticmethod
    def _held(check: CheckConfig, state: State, now: datetime) -> bool:
        """The breach has lasted long enough: `for:`, `failures:` X of Y, or
        failure_threshold consecutive runs."""
        if check.hold is not None:
            return state.failing_since is not None and now - state.failing_since >= check.hold
        if check.failures is not None:
            return (flapping.failures_within(state.recent, check.failures.within)
                    >= check.failures.count)
        return state.consecutive_failures >= check.failure_threshold

    @staticmethod
    def _flap(check: CheckConfig, state: State, decision: Decision) -> None:
        if not check.flapping.enabled:
            return
        now_flapping = flapping.next_flapping(state.recent, state.flapping,
                                              check.flapping.high, check.flapping.low)
        decision.flap_percent = flapping.percent_state_change(state.recent)
        if now_flapping != state.flapping:
            decision.flapping = now_flapping
            state.flapping = now_flapping

    @staticmethod
    def _count(state: State, result: CheckResult, evaluated: bool,
               now: datetime, *, keep_grace: bool = False) -> None:
        """`keep_grace`: the result was measured before the grace began (a run in flight when
        a restart started): its pass says nothing of the restarted server."""
        if result.status.label != state.status:
            state.last_change_at = now
        state.status = result.status.label
        state.last_result_at = now
        if evaluated:
            state.recent = flapping.remember(state.recent or "", result.status.label)
        if result.status is Status.OK and evaluated:
            state.consecutive_successes += 1
            state.consecutive_failures = 0
            state.failing_since = None
            if not keep_grace:
                state.grace_until = None  # the check passed: start-up is over
        elif evaluated:
            state.consecutive_failures += 1
            state.consecutive_successes = 0
            if state.failing_since is None:
                state.failing_since = now

    def _open(self, session: Session, state: CheckStateRow, result: CheckResult,
              now: datetime) -> IncidentRow:
        incident = IncidentRow(
            check_name=result.check, target=result.target, status="open",
            severity=result.status.label, opened_at=now, first_value=result.value,
            last_value=result.value, first_message=result.message, last_message=result.message,
            agent=self.agent,
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
                 now: datetime) -> bool:
        """Resolve the incident if it is still open; False when it was resolved meanwhile."""
        state.incident_id = None
        done = session.execute(
            update(IncidentRow).where(IncidentRow.id == incident.id,
                                      IncidentRow.status == "open")
            .values(status="resolved", resolved_at=now)
            .execution_options(synchronize_session=False))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            return False
        incident.status, incident.resolved_at = "resolved", now
        queries.add_event(session, incident.id, now, "resolved",
                          f"{state.consecutive_successes} consecutive passing runs")
        logger.warning("incident #%s resolved: %s/%s", incident.id, incident.target,
                       incident.check_name)
        return True

    def begin_grace(self, target: str, until: datetime) -> None:
        """Failures of the target's checks do not count until `until` or until they pass (in a
        run that started after now)."""
        self._set_grace(target, until)

    def end_grace(self, target: str) -> None:
        self._set_grace(target, None)

    def in_grace(self, target: str, now: datetime) -> bool:
        """The target is in a start-up grace this process began (read without the store)."""
        until = self._graces.get(target)
        return until is not None and now < until

    def _set_grace(self, target: str, until: datetime | None) -> None:
        self._graces[target] = until
        if self.writer is not None:
            self.writer.flush()  # queued counters first: their update needs a state with no grace
        with self.store.session() as session:
            for state in queries.target_states(session, target):
                state.grace_until = until
                self.forget(state.check_name)

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
