"""Acting on an incident: a check's remediations in order, under every rail, then verified."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sglguard.agents import Agents
from sglguard.checks.base import Check, CheckConfig
from sglguard.config.models import Catalog
from sglguard.diag import Diagnostics
from sglguard.domain import Status
from sglguard.engine import IncidentEngine
from sglguard.notify import Notifications, messages
from sglguard.rails import Leases, next_run_allowed
from sglguard.remediations.base import RemediationConfig, RemediationError
from sglguard.remediations.drained import UNDRAIN, return_workers
from sglguard.remediations.runner import RemediationRunner, RunOutcome
from sglguard.store import Store, queries

logger = logging.getLogger(__name__)
DEFAULT_VERIFY = timedelta(minutes=2)


class Responder:
    """Runs the remediations of one incident: lease, backoff, budget, verification, escalation."""

    def __init__(self, catalog: Catalog, store: Store, engine: IncidentEngine,
                 runner: RemediationRunner, notifications: Notifications,
                 checks: Mapping[str, Check[Any]], *, clock: Callable[[], datetime],
                 stop: threading.Event, dry_run: bool = False,
                 leases: Leases | None = None, agents: Agents | None = None,
                 diagnostics: Diagnostics | None = None) -> None:
        self.catalog, self.store, self.engine = catalog, store, engine
        self.runner, self.notifications, self.checks = runner, notifications, checks
        self.clock, self.stop, self.dry_run = clock, stop, dry_run
        self.diagnostics = diagnostics
        self.leases = leases or Leases(store, agents.name if agents else None, agents=agents)
        self.verifying: set[str] = set()  # checks whose scheduled runs wait for a verification
        self._noted: dict[int, str] = {}  # the last deferral noted per incident
        self.deferred_until: dict[int, datetime] = {}  # when a deferred incident may act

    def respond(self, config: CheckConfig, incident_id: int,
                acted: Callable[[RunOutcome | None], None] | None = None) -> str:
        """Run the incident's chain under the target's lease, then verify it (the lease and
        `acted()` are given back first, so another incident of the target can act while this
        one is verified). What became of it, in a few words."""
        target = self.catalog.target(config.target)
        if not self.dry_run and self._deferred(config, incident_id):
            return "deferred"
        ttl = self._lease_time(config)
        if not self.dry_run and not self.leases.claim(target.name, self.clock(), ttl):
            holder = self.leases.holder_of(target.name) or ""
            if UNDRAIN in holder:
                # a worker going back into its gateway holds the lease for a moment only:
                # this incident's chain runs once it is done
                self.deferred_until[incident_id] = self.clock() + timedelta(seconds=5)
                self._note_once(incident_id, "remediation_deferred",
                                f"{target.name} is being re-added to its gateway")
                return "deferred"
            self._note_once(incident_id, "remediation_deferred",
                            f"another sglguard ({holder}) is remediating {target.name}")
            return "deferred: target leased"
        last: RunOutcome | None = None
        try:
            if self.dry_run:
                last = self._run_chain(config, incident_id)
            else:
                with self.leases.kept(target.name, ttl, self.clock):
                    last = self._run_chain(config, incident_id)
        finally:
            if not self.dry_run:
                self.leases.release(target.name)
            if acted is not None:
                acted(last)
        if last is None or last.outcome != "succeeded":
            return last.outcome if last is not None else "nothing run"
        return "verified" if self._verify(config, incident_id, last) else "not verified"

    def resume(self, config: CheckConfig, incident_id: int, run_id: int) -> str:
        """Verify a run that a process stopped or killed while verifying it: the action is
        not repeated."""
        self.engine.note(incident_id, "verification_resumed", f"run #{run_id}")
        outcome = RunOutcome(run_id, "", config.target, "succeeded", [])
        return "verified" if self._verify(config, incident_id, outcome) else "not verified"

    def _run_chain(self, config: CheckConfig, incident_id: int) -> RunOutcome | None:
        target = self.catalog.target(config.target)
        if target.control is not None and not self.dry_run:
            self.engine.begin_grace(target.name, self.clock() + target.control.startup_timeout)
        last: RunOutcome | None = None
        done: list[str] = []
        try:
            last = self._run_each(config, incident_id, done)
        finally:
            self._after_chain(config, incident_id, done,
                              last is not None and last.outcome == "succeeded")
        return last

    def _run_each(self, config: CheckConfig, incident_id: int,
                  done: list[str]) -> RunOutcome | None:
        """The chain in order; stops at the first that fails. `done` gets those that ran."""
        target = self.catalog.target(config.target)
        last: RunOutcome | None = None
        for name in config.remediate:
            if not self.dry_run and self.engine.incident(incident_id).status != "open":
                self.engine.note(incident_id, "remediation_skipped",
                                 f"{name}: the incident resolved meanwhile")
                return last
            self.engine.note(incident_id, "remediation_started", name)
            if not self.dry_run and self.runner.refusal(name, target.name) is None:
                # "acting" only for an action that will run: a spent budget says so instead
                self.notifications.submit(messages.remediation_started(
                    self.engine.incident(incident_id), config, target, name))
            if self.diagnostics is not None and not self.dry_run and (
                    self.catalog.remediation(name).destructive):
                self.diagnostics.before(incident_id, config.name, name)  # bounded, never fails
            last = self.runner.run(name, target.name, incident_id=incident_id,
                                   dry_run=self.dry_run)
            if last.outcome == "succeeded":
                done.append(name)
            if not self._after(config, incident_id, last):
                self.engine.end_grace(target.name)
                return last
        return last

    def _after_chain(self, config: CheckConfig, incident_id: int, done: list[str],
                     succeeded: bool) -> None:
        """Let each remediation that ran undo what waits on the chain (drain re-adds)."""
        if self.dry_run:
            return
        for name in done:
            try:
                said = self.runner.build(name, config.target).after_chain(succeeded)
            except RemediationError as exc:
                said = f"failed: {exc}"
            if said:
                self.engine.note(incident_id, "after_chain", f"{name}: {said}")

    def _deferred(self, config: CheckConfig, incident_id: int) -> bool:
        now = self.clock()
        fresh = self._fresh_after_step(config, now)
        if fresh is not None:
            self.deferred_until[incident_id] = fresh
            stepped = fresh - self._memory(config)
            self._note_once(incident_id, "remediation_deferred",
                            f"the last concurrency step was taken at {stepped:%H:%M:%S} UTC: "
                            f"waiting until {config.name} judges only data from after it "
                            f"({fresh:%H:%M:%S} UTC)")
            return True
        for name in config.remediate:
            wait = next_run_allowed(self.store, self.catalog.remediation(name), config.target, now)
            if wait is not None:
                self.deferred_until[incident_id] = wait.until
                self._note_once(incident_id, "remediation_deferred",
                                f"{name}: {wait.reason}: not before "
                                f"{wait.until:%H:%M:%S} UTC")
                return True
        return False

    def _memory(self, config: CheckConfig) -> timedelta:
        """How long a result of the check still reflects the past: its window (a windowed
        metric, progress) and the runs its threshold needs."""
        window = getattr(config, "window", None) or timedelta(0)
        runs = config.failures.within if config.failures is not None else \
            config.failure_threshold
        held = config.hold or timedelta(0)
        return window + max(held, config.interval * runs)

    def _fresh_after_step(self, config: CheckConfig, now: datetime) -> datetime | None:
        """When the chain lowers concurrency and a step was taken lately, the moment the check
        judges only data from after it; None when that is past (or no step was taken)."""
        kinds = {self.catalog.remediation(name).kind for name in config.remediate}
        if "reduce_concurrency" not in kinds:
            return None
        kept = self.runner.context(config.target).levels
        levels = kept.all() if kept is not None else []
        if not levels:
            return None
        fresh = max(level.changed_at for level in levels) + self._memory(config)
        return fresh if fresh > now else None

    def _note_once(self, incident_id: int, kind: str, detail: str) -> None:
        if self._noted.get(incident_id) != detail:
            self._noted[incident_id] = detail
            self.engine.note(incident_id, kind, detail)
            logger.info("incident #%s: %s", incident_id, detail)

    def _lease_time(self, config: CheckConfig) -> timedelta:
        target = self.catalog.target(config.target)
        control = target.control
        startup = control.startup_timeout + control.stop_timeout if control else timedelta()
        return startup + self._verify_within(config) + timedelta(minutes=1)

    def _verify_config(self, config: CheckConfig) -> RemediationConfig | None:
        chain = [self.catalog.remediation(name) for name in config.remediate]
        return next((item for item in reversed(chain)
                     if item.verify is not None or item.verify_within is not None), None)

    def _verify_within(self, config: CheckConfig) -> timedelta:
        """The last `verify_within` of the chain, with or without its own `verify:`."""
        chain = [self.catalog.remediation(name) for name in config.remediate]
        chosen = next((item for item in reversed(chain) if item.verify_within is not None),
                      None)
        if chosen is not None and chosen.verify_within is not None:
            return chosen.verify_within
        control = self.catalog.target(config.target).control
        return control.startup_timeout if control is not None else DEFAULT_VERIFY

    def _verify(self, config: CheckConfig, incident_id: int, outcome: RunOutcome) -> bool:
        """The triggering check (or `verify:`) must pass within the start-up budget. It runs
        here meanwhile (its scheduled runs wait); every other check keeps its schedule."""
        chosen = self._verify_config(config)
        name = chosen.verify if chosen is not None and chosen.verify else config.name
        if name == config.name and self.engine.incident(incident_id).status != "open":
            self._verified(incident_id, outcome, True, f"{name}: the incident resolved")
            return True
        check = self.checks[name]
        within = self._verify_within(config)
        deadline = time.monotonic() + within.total_seconds()
        pause = min(2.0, check.config.interval.total_seconds())
        last = "no run"
        self.verifying.add(name)
        try:
            while not self.stop.is_set():
                result = check.execute()
                if self.stop.is_set():
                    break  # cut short because sglguard stops: no verdict from it
                decision = self.engine.record(result)
                if decision.resolved is not None and self.diagnostics is not None:
                    self.diagnostics.resolved(decision.resolved)  # request dumps go back
                self.notifications.poke()
                last = f"{result.status.label}: {result.message}"
                passed = result.status is Status.OK and result.counts  # not 'no data'
                if not passed and name == config.name \
                        and self.engine.incident(incident_id).status != "open":
                    passed = True  # it passed in a scheduled run, which resolved the incident
                if passed:
                    self._verified(incident_id, outcome, True, f"{name} passed")
                    for said in return_workers(self.store, self.catalog, config.target,
                                               by=f"verified: {name} passed",
                                               agents=self.leases.agents, clock=self.clock):
                        self.engine.note(incident_id, "undrained", said)
                    return True
                if time.monotonic() >= deadline:
                    break
                self.stop.wait(pause)
        finally:
            self.verifying.discard(name)
        if self.stop.is_set():
            return False  # sglguard is stopping: no verdict (the request is taken up again)
        reason = f"not verified: {name} did not pass within {within} (last {last})"
        self._verified(incident_id, outcome, False, reason)
        self._escalate(config, incident_id, reason)
        return False

    def _verified(self, incident_id: int, outcome: RunOutcome, ok: bool, detail: str) -> None:
        with self.store.session() as session:
            queries.set_verified(session, outcome.run_id, ok, detail)
        self.engine.note(incident_id, "verified" if ok else "not_verified", detail)

    def _escalate(self, config: CheckConfig, incident_id: int, reason: str) -> None:
        escalated = self.engine.escalate(incident_id, reason)
        if escalated is not None:
            target = self.catalog.target(config.target)
            self.notifications.submit(messages.incident_escalated(escalated, config, target,
                                                                  reason))

    def _after(self, config: CheckConfig, incident_id: int, outcome: RunOutcome) -> bool:
        """Record and announce one outcome; False when the chain should stop."""
        target = self.catalog.target(config.target)
        detail = outcome.error or outcome.detail or "; ".join(outcome.plan)
        self.engine.note(incident_id, f"remediation_{outcome.outcome}",
                         f"{outcome.remediation}: {detail}")
        if outcome.outcome == "planned":
            return True
        if outcome.budget_spent or outcome.permanent:
            self._escalate(config, incident_id, detail)
            return False
        succeeded = outcome.outcome == "succeeded"
        self.notifications.submit(messages.remediation_result(
            self.engine.incident(incident_id), config, target, outcome.remediation, succeeded,
            detail))
        return succeeded
