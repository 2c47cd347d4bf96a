"""Remediation requests from the outbox: those the engine wrote for an incident, and those a
person handed over with `sglguard remediate` while the service runs. Each is claimed, run in
a thread of its own (one at a time per target), and marked done with what became of it."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sglguard.agents import Agents, may_take
from sglguard.backlog import failed
from sglguard.config.models import Catalog
from sglguard.rails import clear_escalations
from sglguard.remediations.runner import RunOutcome
from sglguard.responder import Responder
from sglguard.store import Store
from sglguard.store import outbox as owed
from sglguard.store.models import IncidentRow, OutboxRow

logger = logging.getLogger(__name__)
POLL = 5.0  # seconds between looks for requests written by other processes
MANUAL_LEASE = timedelta(minutes=30)


class Requests:
    """Takes remediation requests from the outbox and runs them."""

    def __init__(self, catalog: Catalog, store: Store, responder: Responder, agents: Agents, *,
                 clock: Callable[[], datetime], stop: threading.Event,
                 interrupt: threading.Event | None = None, poll: float = POLL) -> None:
        self.catalog, self.store, self.responder = catalog, store, responder
        self.agents, self.clock, self.stopping, self.poll = agents, clock, stop, poll
        self.interrupt = interrupt or stop  # remediations in flight give up their waits
        self.successor: Requests | None = None  # after a reload, the one to wake
        self._targets = {target.name for target in catalog.targets}
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._running: list[threading.Thread] = []
        self._sleep = poll

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="requests", daemon=True)
            self._thread.start()

    def poke(self) -> None:
        self._wake.set()
        if self.successor is not None:
            self.successor.poke()

    def stop(self, timeout: float = 5.0, *, wait_for_work: bool = True) -> None:
        self.poke()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=timeout)
        if wait_for_work:
            for running in list(self._running):
                running.join(timeout=timeout)

    def working(self) -> bool:
        """A request of this instance is still being performed."""
        return any(thread.is_alive() for thread in self._running)

    def adopt(self, previous: Requests) -> None:
        """Share the previous instance's busy targets: its work in flight goes on."""
        self._busy, self._lock = previous._busy, previous._lock

    def hold(self, target: str) -> bool:
        """Mark the target busy in this process; False if it already is."""
        with self._lock:
            if target in self._busy:
                return False
            self._busy.add(target)
            return True

    def let_go(self, target: str) -> None:
        with self._lock:
            self._busy.discard(target)
        self.poke()

    def busy(self, target: str) -> bool:
        with self._lock:
            return target in self._busy

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.dispatch()
            except Exception as exc:
                failed(logger, "remediation request dispatcher error", exc)
            self._wake.wait(self._sleep)
            self._wake.clear()

    def dispatch(self) -> int:
        """Start every request that may run now; how many were started."""
        now = self.clock()
        with self.store.session() as session:
            rows = [row for row in owed.active(session, owed.REMEDIATION)
                    if row.target in self._targets]
        started = 0
        self._sleep = self.poll
        for row in rows:
            if self.stopping.is_set():
                break
            may, dead = may_take(self.agents, row.status, row.claimed_by, row.claim_until, now)
            if row.status == "pending" and row.due_at > now:
                self._sleep = max(0.05, min(self._sleep, (row.due_at - now).total_seconds()))
                continue
            if not may or row.target is None or not self.hold(row.target):
                continue
            if not self._claim(row, now, dead):
                self.let_go(row.target)
                continue
            thread = threading.Thread(target=self._perform, args=(row,),
                                      name=f"remediate-{row.target}", daemon=True)
            self._running = [item for item in self._running if item.is_alive()]
            self._running.append(thread)
            thread.start()
            started += 1
        return started

    def _claim(self, row: OutboxRow, now: datetime, dead: str | None) -> bool:
        until = now + self._claim_time(row)
        with self.store.session() as session:
            return owed.claim(session, row.id, self.agents.name, until, now, dead)

    def _claim_time(self, row: OutboxRow) -> timedelta:
        target = self.catalog.target(row.target or "")
        control = target.control
        startup = control.startup_timeout + control.stop_timeout if control else timedelta()
        return startup + timedelta(minutes=15)

    def _perform(self, row: OutboxRow) -> None:
        target = row.target or ""
        status, detail = "done", ""
        try:
            payload: dict[str, Any] = json.loads(row.payload)
            if row.event == "manual":
                status, detail = self._manual(target, payload)
            else:
                status, detail = self._incident(row, payload, target)
        except Exception as exc:
            logger.exception("remediation request %s failed", row.id)
            status, detail = "failed", f"unexpected error: {type(exc).__name__}: {exc}"
        finally:
            self._finish(row, status, detail)
            self.let_go(target)

    def _finish(self, row: OutboxRow, status: str, detail: str) -> None:
        now = self.clock()
        with self.store.session() as session:
            if status == "pending":  # stopped half-way or deferred: taken up again later
                due = self.responder.deferred_until.pop(row.incident_id or 0, now)
                owed.release(session, row.id, self.agents.name, max(due, now), detail,
                             attempted=False)
            else:
                owed.finish(session, row.id, self.agents.name, status, detail, now)

    def _incident(self, row: OutboxRow, payload: dict[str, Any],
                  target: str) -> tuple[str, str]:
        with self.store.session() as session:
            incident = session.get(IncidentRow, row.incident_id)
        progress = json.loads(row.detail or "{}") if (row.detail or "").startswith("{") else {}
        verifying = progress.get("phase") == "verifying"  # the action ran, not its verification
        if incident is None or (incident.status != "open" and not verifying):
            return "cancelled", "the incident is no longer open"
        if incident.escalated_at is not None:
            return "cancelled", "the incident is escalated: a person acts now"
        name = payload.get("check", incident.check_name)
        if name not in {check.name for check in self.catalog.checks}:
            return "cancelled", "the check is no longer in the catalog"
        check = self.catalog.check(name)
        if verifying:  # (a resolved incident verifies it at once)
            self.let_go(target)
            said = self.responder.resume(check, incident.id, int(progress["run_id"]))
        else:
            said = self.responder.respond(check, incident.id,
                                          acted=lambda last: self._acted(row, target, last))
        if self.interrupt.is_set() and said in ("not verified", "nothing run"):
            return "pending", f"sglguard stopped during it ({said})"
        if said == "deferred":
            return "pending", "deferred by the rails (backoff, cooldown)"
        return "done", said

    def _acted(self, row: OutboxRow, target: str, last: RunOutcome | None) -> None:
        """The chain is done: its target is free, and the request remembers that only the
        verification is left (a process killed now does not repeat the action)."""
        self.let_go(target)
        if last is not None and last.outcome == "succeeded":
            with self.store.session() as session:
                owed.note(session, row.id, self.agents.name,
                          json.dumps({"phase": "verifying", "run_id": last.run_id}))

    def _manual(self, target: str, payload: dict[str, Any]) -> tuple[str, str]:
        """A run a person asked for: the same lease, control and start-up grace as the
        service's own; the outcome goes back to the waiting command as JSON."""
        name, by = payload["remediation"], payload.get("by", "someone")
        if self.responder.dry_run:
            return "failed", json.dumps({"outcome": "refused", "error": (
                "the running service is a dry run and changes nothing; stop it to run this")})
        if name not in {item.name for item in self.catalog.remediations}:
            return "failed", json.dumps({"outcome": "refused", "error": (
                f"the running service's catalog has no remediation '{name}'")})
        leases = self.responder.leases
        if not leases.claim(target, self.clock(), MANUAL_LEASE):
            return "failed", json.dumps({"outcome": "refused", "error": (
                f"{target} is being remediated by {leases.holder_of(target)}; "
                "try again when it is done")})
        try:
            control = self.catalog.target(target).control
            if control is not None:
                self.responder.engine.begin_grace(target, self.clock() + control.startup_timeout)
            with leases.kept(target, MANUAL_LEASE, self.clock):
                outcome = self.responder.runner.run(name, target, trigger="manual")
        finally:
            leases.release(target)
        cleared = clear_escalations(self.store, target, self.clock(), f"{by} ran {name}")
        logger.info("remediation %s on %s by hand (%s): %s", name, target, by, outcome.outcome)
        return "done", json.dumps({
            "outcome": outcome.outcome, "run_id": outcome.run_id, "error": outcome.error,
            "detail": outcome.detail, "plan": outcome.plan, "cleared": cleared})
