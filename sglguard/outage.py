"""Repairing a dead server while the store is down, under a local budget stricter than the
catalog's, and writing what was done when the store answers again.

While the store cannot be reached, the rails it keeps (the lease, the budget, backoff) cannot be
read. A dead server is not left dead for that: a failed probe of its life (an `http`, `process`
or `generate` check at CRITICAL) that holds for its check's threshold starts the check's
`restart` remediations here, in a thread of their own, at most `PER_OUTAGE` times per target
in one outage, never while this process is busy with the target, and with the launch flags
last read from the store. The run is placed in the backlog among the results, so that when the
store answers the results before it (which open the incident) are written first, then the run,
its timeline and the messages it owes, then the results after it; the request the incident
wrote is left to verify the run (its action is not repeated)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from sglguard.backlog import store_down
from sglguard.checks.base import CheckConfig
from sglguard.config.models import Catalog
from sglguard.domain import CheckResult, Status
from sglguard.engine import HARD_DOWN_KINDS
from sglguard.notify import Notifications, messages
from sglguard.remediations.base import RemediationError
from sglguard.remediations.levels import Level, TargetLevels
from sglguard.remediations.registry import REMEDIATIONS
from sglguard.remediations.runner import RemediationRunner
from sglguard.store import Store, queries
from sglguard.store import outbox as owed
from sglguard.store.models import IncidentRow, OutboxRow

logger = logging.getLogger(__name__)
LOCAL_KINDS = frozenset({"restart"})  # what may run without the store
PER_OUTAGE = 1  # runs per target in one outage, whatever the catalog's budget allows


class KnownLevels(TargetLevels):
    """The levels of a target as last read from the store (which cannot be read now)."""

    def __init__(self, levels: list[Level]) -> None:
        self.known = list(levels)

    def all(self) -> list[Level]:
        return list(self.known)


@dataclass
class LocalRun:
    """A remediation run while the store was down; `done` once it has finished."""

    check: str
    target: str
    remediation: str
    kind: str
    started_at: datetime
    plan: list[str] = field(default_factory=list)
    outcome: str = "running"
    detail: str = ""
    error: str | None = None
    finished_at: datetime | None = None
    done: threading.Event = field(default_factory=threading.Event)
    recorder: Callable[[LocalRun], None] | None = None

    @property
    def key(self) -> str:
        return f"{self.target}@{self.started_at.isoformat()}"

    def ready(self) -> bool:
        return self.done.is_set()

    def write(self) -> None:
        """Record the run (the backlog calls this in its turn)."""
        if self.recorder is not None:
            self.recorder(self)


@dataclass
class _Streak:
    failures: int = 0
    since: datetime | None = None


class LocalRepairs:
    """Decides and runs repairs during a store outage; `record` writes one afterwards."""

    def __init__(self, catalog: Catalog, store: Store, runner: RemediationRunner,
                 notifications: Notifications, *, clock: Callable[[], datetime],
                 hold: Callable[[str], bool], let_go: Callable[[str], None],
                 in_grace: Callable[[str, datetime], bool], dry_run: bool = False) -> None:
        self.catalog, self.store, self.runner = catalog, store, runner
        self.notifications, self.clock, self.dry_run = notifications, clock, dry_run
        self._hold, self._let_go, self._in_grace = hold, let_go, in_grace
        self._lock = threading.Lock()
        self._streaks: dict[str, _Streak] = {}
        self._spent: dict[str, int] = {}  # runs per target in this outage
        self._levels: dict[str, list[Level]] = {}  # levels kept lowered, as last read
        self.threads: list[threading.Thread] = []

    def remember_flags(self) -> None:
        """Read the launch flags each target must keep (reduce_concurrency) while the store
        answers, for a restart made when it does not."""
        for target in self.catalog.targets:
            try:
                levels = self.runner.context(target.name).levels
                self._levels[target.name] = levels.all() if levels is not None else []
            except Exception as exc:
                logger.debug("launch flags of %s not read: %s", target.name, exc)

    def adopt(self, previous: LocalRepairs) -> None:
        """After a reload: the outage's budget spent so far, its streaks and the launch flags
        known go on (a reload is no new outage)."""
        with previous._lock:
            spent, streaks = dict(previous._spent), dict(previous._streaks)
        with self._lock:
            self._spent.update(spent)
            self._streaks.update(streaks)
        for target, levels in previous._levels.items():
            self._levels.setdefault(target, levels)

    def outage_over(self) -> None:
        with self._lock:
            self._streaks.clear()
            self._spent.clear()

    def held(self, result: CheckResult) -> LocalRun | None:
        """A result the store refused: the run it starts, if it is a held hard-down breach."""
        config = self.catalog.check(result.check)
        now = self.clock()
        with self._lock:
            streak = self._streaks.setdefault(result.check, _Streak())
            if not self._hard_down(config, result) or self._in_grace(config.target, now):
                streak.failures, streak.since = 0, None
                return None
            streak.failures += 1
            streak.since = streak.since or now
            if not self._breach_held(config, streak, now):
                return None
            name = self._restart_of(config)
            if name is None or self._spent.get(config.target, 0) >= PER_OUTAGE:
                return None
            if config.target not in self._levels:
                logger.warning("%s is down while the store is: not restarted here (the launch "
                               "flags it must keep are not known yet)", config.target)
                self._spent[config.target] = PER_OUTAGE
                return None
            if not self._hold(config.target):
                return None  # this process is busy with the target: one action at a time
            self._spent[config.target] = self._spent.get(config.target, 0) + 1
            streak.failures, streak.since = 0, None
        run = LocalRun(check=config.name, target=config.target, remediation=name,
                       kind=self.catalog.remediation(name).kind, started_at=now,
                       recorder=self.record)
        thread = threading.Thread(target=self._perform, args=(run,),
                                  name=f"outage-remediate-{config.target}", daemon=True)
        self.threads = [item for item in self.threads if item.is_alive()]
        self.threads.append(thread)
        thread.start()
        return run

    def _hard_down(self, config: CheckConfig, result: CheckResult) -> bool:
        return (result.status is Status.CRITICAL and config.kind in HARD_DOWN_KINDS
                and not result.skipped and result.counts)

    @staticmethod
    def _breach_held(config: CheckConfig, streak: _Streak, now: datetime) -> bool:
        """The check's threshold, counted from the outage's start only (`failures: X of Y`
        as X in a row: stricter, never looser)."""
        if config.hold is not None:
            return streak.since is not None and now - streak.since >= config.hold
        if config.failures is not None:
            return streak.failures >= config.failures.count
        return streak.failures >= config.failure_threshold

    def _restart_of(self, config: CheckConfig) -> str | None:
        if self.dry_run or (config.mode or self.catalog.mode) == "passive":
            return None
        now = self.clock()
        for window in self.catalog.maintenance:
            if window.covers(config.target, config.name) and window.active(now) \
                    and not window.remediate:
                return None
        return next((name for name in config.remediate
                     if self.catalog.remediation(name).kind in LOCAL_KINDS), None)

    def _perform(self, run: LocalRun) -> None:
        logger.warning("%s: %s is down and the store is unreachable: running %s now under the "
                       "outage budget (%s per target per outage); recorded when the store "
                       "answers", run.check, run.target, run.remediation, PER_OUTAGE)
        try:
            base = self.runner.context(run.target)
            context = replace(base, levels=KnownLevels(self._levels.get(run.target, [])))
            config = self.catalog.remediation(run.remediation)
            remediation = REMEDIATIONS[config.kind](config, context)
            run.plan = remediation.plan()
            run.detail = remediation.execute()
            run.outcome = "succeeded"
        except RemediationError as exc:
            run.outcome, run.error = "failed", str(exc)
        except Exception as exc:
            logger.exception("remediation %s raised", run.remediation)
            run.outcome, run.error = "failed", f"unexpected error: {type(exc).__name__}: {exc}"
        finally:
            run.finished_at = self.clock()
            log = logger.warning if run.outcome == "succeeded" else logger.error
            log("remediation %s on %s during the store outage: %s %s", run.remediation,
                run.target, run.outcome, run.error or run.detail)
            run.done.set()

    def record(self, run: LocalRun) -> None:
        """Write a finished run: the run row, the incident's timeline, the messages it owes;
        the incident's pending request is left to verify it (or, if it failed, to act under
        the catalog's rails). Then the target is free again in this process."""
        try:
            with self.store.session() as session:
                self._record(session, run)
        except Exception as exc:
            if not store_down(exc):  # dropped (said by the backlog): the target is free
                self._let_go(run.target)
            raise  # the store is down: written again later, the target still held
        self._let_go(run.target)
        self.notifications.poke()

    def _record(self, session: Session, run: LocalRun) -> None:
        assert run.finished_at is not None
        state = queries.check_state(session, run.check, run.target)
        incident_id = state.incident_id
        row = queries.start_run(
            session, incident_id=incident_id, remediation=run.remediation, kind=run.kind,
            target=run.target, trigger="incident", dry_run=False, plan=run.plan,
            outcome=run.outcome, at=run.started_at)
        row.detail, row.error, row.finished_at = run.detail, run.error, run.finished_at
        if run.outcome == "succeeded" and run.detail.startswith("nothing was running"):
            queries.mark_first_start(session, row.id, run.target, run.started_at)
        if incident_id is None:
            logger.warning("remediation %s on %s during the store outage recorded as run #%s "
                           "with no incident (none was open for %s)", run.remediation,
                           run.target, row.id, run.check)
            return
        said = "run while the store was unreachable"
        queries.add_event(session, incident_id, run.started_at, "remediation_started",
                          f"{run.remediation} ({said})")
        queries.add_event(session, incident_id, run.finished_at, f"remediation_{run.outcome}",
                          f"{run.remediation}: {run.error or run.detail} ({said})")
        incident = session.get_one(IncidentRow, incident_id)
        check, target = self.catalog.check(run.check), self.catalog.target(run.target)
        now = self.clock()
        succeeded = run.outcome == "succeeded"
        for message in (
                messages.remediation_started(incident, check, target, run.remediation,
                                             [said]),
                messages.remediation_result(incident, check, target, run.remediation,
                                            succeeded, f"{run.error or run.detail} ({said})")):
            self.notifications.stage(session, message, now)
        if succeeded:
            self._hand_over(session, incident_id, row.id)

    @staticmethod
    def _hand_over(session: Session, incident_id: int, run_id: int) -> None:
        """The incident's request verifies the run instead of acting again."""
        for row in session.scalars(select(OutboxRow).where(
                OutboxRow.kind == owed.REMEDIATION, OutboxRow.incident_id == incident_id,
                OutboxRow.status == "pending")):
            session.execute(update(OutboxRow).where(OutboxRow.id == row.id).values(
                detail=json.dumps({"phase": "verifying", "run_id": run_id}))
                .execution_options(synchronize_session=False))
