"""The service: every check on one scheduler, incidents, remediation and notification."""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor as Pool
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.base import BaseExecutor
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING, STATE_STOPPED
from apscheduler.triggers.interval import IntervalTrigger

from sglguard import silences
from sglguard.agents import HEARTBEAT, Agents
from sglguard.backlog import Backlog, failed, store_down
from sglguard.checks.base import Check, CheckConfig, CheckContext
from sglguard.checks.registry import CHECKS
from sglguard.client import SGLangClient
from sglguard.clock import utcnow
from sglguard.config.models import Catalog
from sglguard.diag import Diagnostics
from sglguard.domain import CheckResult, Status
from sglguard.engine import IncidentEngine
from sglguard.housekeeping import HOUSEKEEPING
from sglguard.notify import Notifications, messages
from sglguard.outage import LocalRepairs
from sglguard.remediations.drained import return_when_well
from sglguard.remediations.restore import RestoreDue, restore_due, restore_level
from sglguard.remediations.runner import RemediationRunner
from sglguard.requested import Requests
from sglguard.responder import Responder
from sglguard.scheduling import CheckScheduler, target_limits
from sglguard.scheduling import Job as CheckJob
from sglguard.spill import SpillFile
from sglguard.store import Store, queries
from sglguard.store.models import CheckStateRow, IncidentRow
from sglguard.store.samples import StoreSamples
from sglguard.store.writer import ResultWriter
from sglguard.telemetry import Pulse, Telemetry

logger = logging.getLogger(__name__)


def every(seconds: float, *, jitter: float | None = None) -> IntervalTrigger:
    """An interval trigger in UTC (left alone, APScheduler would use the host's zone)."""
    return IntervalTrigger(seconds=seconds, jitter=jitter, timezone=UTC)


def scheduler(executor: BaseExecutor) -> BackgroundScheduler:
    """A scheduler whose jobs coalesce missed runs and never overlap themselves."""
    return BackgroundScheduler(
        timezone=UTC,  # the object: a zone name costs a lookup at every wake-up
        executors={"default": executor},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
    )


# Connections a target's pool keeps beyond its checks' runs: remediations, verifications and
# requests of other threads.
SPARE_CONNECTIONS = 2
# Old results deleted per transaction by the retention.
PRUNE_BATCH = 2_000
# Seconds after start when the first round's queued results are looked at (a timer every
# second would cost a small catalog more than its checks do).
FIRST_ROUND_LOOKS = (1.5, 6.0)
# How often the scheduler's lateness and missed runs are logged.
LAG_REPORT_S = 30.0


def check_limits(catalog: Catalog) -> dict[str, int]:
    """Check runs of each target that may be in flight together."""
    counts = {target.name: 0 for target in catalog.targets}
    for config in catalog.checks:
        counts[config.target] += 1
    return target_limits(counts)


def build_clients(catalog: Catalog) -> dict[str, SGLangClient]:
    limits = check_limits(catalog)
    return {
        target.name: SGLangClient(
            target.url,
            api_key=target.api_key.get_secret_value() if target.api_key else None,
            admin_api_key=(target.admin_api_key.get_secret_value()
                           if target.admin_api_key else None),
            timeout=target.timeout.total_seconds(),
            connections=limits[target.name] + SPARE_CONNECTIONS,
            gateway=target.role == "gateway",
        )
        for target in catalog.targets
    }


def build_checks(catalog: Catalog, clients: dict[str, SGLangClient], store: Store,
                 clock: Callable[[], datetime]) -> dict[str, Check[Any]]:
    secrets = catalog.secrets()
    samples = StoreSamples(store)
    return {
        config.name: CHECKS[config.kind](config, CheckContext(
            target=catalog.target(config.target), client=clients[config.target],
            clock=clock, secrets=secrets, samples=samples))
        for config in catalog.checks
    }


def skipped_result(config: CheckConfig, why: str, at: datetime) -> CheckResult:
    """The record of a run not made because a check it depends on is failing."""
    return CheckResult(check=config.name, target=config.target, status=Status.UNKNOWN,
                       value=None, unit="", message=f"skipped: {why}", duration_ms=0.0,
                       started_at=at, skipped=True)


def blocking_dependency(config: CheckConfig, latest: Mapping[str, str],
                        store: Store) -> str | None:
    """Why a check is skipped: a dependency not OK now, from `latest` (statuses this process
    saw), else from the newest stored result; None when it may run."""
    for name in config.depends_on:
        status = latest.get(name)
        if status is None:
            try:
                with store.session() as session:
                    status = queries.latest_status(session, name)
            except Exception as exc:
                if not store_down(exc):
                    raise
                status = None  # the store is down: nothing known, the check runs
        if status not in (None, "ok"):
            return f"{name} is {status}"
    return None


def first_round(checks: Sequence[CheckConfig]) -> list[CheckConfig]:
    """The checks in catalog order, except that each comes after the checks it depends on."""
    by_name = {config.name: config for config in checks}
    ordered: list[CheckConfig] = []
    seen: set[str] = set()  # placed, or being placed (a cycle is refused at load)
    for config in checks:
        if config.name in seen:
            continue
        seen.add(config.name)
        stack = [(config, iter(config.depends_on))]
        while stack:
            current, needs = stack[-1]
            need = next((name for name in needs if name in by_name and name not in seen), None)
            if need is None:
                stack.pop()
                ordered.append(current)
            else:
                seen.add(need)
                stack.append((by_name[need], iter(by_name[need].depends_on)))
    return ordered


def run_once(catalog: Catalog, store: Store, names: list[str],
             clock: Callable[[], datetime] = utcnow) -> list[CheckResult]:
    """Run the named checks once, concurrently, dependencies first (`sglguard check`)."""
    checks = build_checks(catalog, build_clients(catalog), store, clock)
    done: dict[str, CheckResult] = {}

    def one(name: str) -> CheckResult:
        config = catalog.check(name)
        seen = {check: result.shown_status for check, result in done.items()}
        why = blocking_dependency(config, seen, store)
        return skipped_result(config, why, clock()) if why else checks[name].execute()

    pending = list(names)
    with Pool(max_workers=max(1, min(16, len(names)))) as pool:
        while pending:
            ready = [name for name in pending if all(
                need in done or need not in pending for need in catalog.check(name).depends_on)]
            for result in pool.map(one, ready):
                done[result.check] = result
            pending = [name for name in pending if name not in done]
    return [done[name] for name in names]


class Service:
    """Everything `sglguard run` does, startable and stoppable from a test."""

    def __init__(self, catalog: Catalog, store: Store, *, dry_run: bool = False,
                 clock: Callable[[], datetime] = utcnow, agents: Agents | None = None,
                 telemetry: Telemetry | None = None) -> None:
        self.catalog = catalog
        self.telemetry = telemetry or Telemetry()  # a reload hands it on: counts go on
        self.store = store
        self.dry_run = dry_run
        self.clock = clock
        self.stopping = threading.Event()  # no new check run, no new request taken
        self.interrupt = threading.Event()  # remediations in flight give up their waits
        self.predecessors: list[Service] = []  # services of earlier catalogs (reloads)
        self.clients = build_clients(catalog)
        self.checks = build_checks(catalog, self.clients, store, clock)
        flush = catalog.store.flush_interval.total_seconds()
        self.writer = ResultWriter(store, interval=flush) if flush > 0 else None
        if self.writer is not None:
            self.writer.on_write = self.telemetry.store_write
        self.agents = agents or Agents(store, role="service", clock=clock)
        self.notifications = Notifications.from_catalog(catalog, store, clock=clock,
                                                        agents=self.agents)
        self.engine = IncidentEngine(catalog, store, clock, writer=self.writer,
                                     notifications=self.notifications, dry_run=dry_run,
                                     agent=self.agents.host)
        self.engine.on_write = self.telemetry.store_write
        self.runner = RemediationRunner(catalog, store, self.clients, stop=self.interrupt,
                                        clock=clock)
        self.diagnostics = Diagnostics(catalog, store, self.clients,
                                       lambda name: self.runner.control(catalog.target(name)),
                                       clock=clock)
        self.responder = Responder(catalog, store, self.engine, self.runner, self.notifications,
                                   self.checks, clock=clock, stop=self.interrupt,
                                   dry_run=dry_run, agents=self.agents,
                                   diagnostics=self.diagnostics)
        self.requests = Requests(catalog, store, self.responder, self.agents, clock=clock,
                                 stop=self.stopping, interrupt=self.interrupt)
        self._latest: dict[str, str] = {}  # each check's newest status, as this process saw it
        held = catalog.store.backlog  # results held while the store is down
        self.backlog = Backlog(self._write_held,
                               memory=held.memory,
                               spill=SpillFile(held.spill, held.spill_max_mb << 20))
        self.repairs = LocalRepairs(catalog, store, self.runner, self.notifications, clock=clock,
                                    hold=self.requests.hold, let_go=self.requests.let_go,
                                    in_grace=self.engine.in_grace, dry_run=dry_run)
        self._ran: dict[str, float] = {}  # when each check last finished a run (monotonic)
        self._started = time.monotonic()
        # Set once each check's first run of this process is recorded: on the first round a
        # check waits for the checks it depends on.
        self._first_run = {config.name: threading.Event() for config in catalog.checks}
        # Checks share one timer thread and a few workers, whatever their number (see
        # sglguard.scheduling); housekeeping has an APScheduler of its own and a small pool.
        self.scheduler = scheduler(ThreadPoolExecutor(2))
        HOUSEKEEPING.attach(self.scheduler)  # its missed and failed runs counted and logged
        self.check_scheduler = CheckScheduler(limits=check_limits(catalog),
                                              observe=self.telemetry.lateness.observe)
        self.telemetry.keep_checks((config.target, config.name) for config in catalog.checks)
        self._timers = {config.name: self.telemetry.run_timer(config.target, config.name)
                        for config in catalog.checks}

    def start(self, *, reloaded: bool = False) -> None:
        """Schedule every check. `reloaded`: this process ran the previous catalog, so a run
        left `running` belongs to a remediation thread of it that is still finishing (it records
        its own outcome), not to a process that died."""
        # Everything loaded so far lives as long as the process: keep it out of the cyclic
        # collector's way, so later collections only look at what the runs allocate.
        gc.collect()
        gc.freeze()
        targets = [target.name for target in self.catalog.targets]
        self._chores: list[Callable[[], object]] = [lambda: self.agents.register(targets)]
        if not reloaded:
            self._chores.append(self._close_interrupted_runs)
        self._chores.append(self._close_removed_checks)
        if not self.dry_run:
            self._chores.append(self.repairs.remember_flags)  # for a restart without the store
        self._do_chores()  # a store that is down now (a reload during an outage) delays them
        self.notifications.start()
        self.requests.start()
        try:  # the first round's quiet results are then batched, not a transaction each
            self.engine.prime()
        except Exception as exc:
            if not store_down(exc):
                raise
            logger.warning("store: could not read the checks' states at start: %s", exc)
        # The first round is spread over a tenth of a second per hundred checks (at most a
        # second, and never beyond a check's interval), not fired at once; checks come after
        # those they depend on.
        ordered = first_round(self.catalog.checks)
        spread = min(1.0, len(ordered) / 1000)
        for index, config in enumerate(ordered):
            interval = config.interval.total_seconds()
            self.check_scheduler.add(
                config.name, self.run_check, interval=interval,
                jitter=config.jitter_seconds, group=config.target,
                first_in=0.1 + min(spread, interval) * index / max(1, len(ordered)))
        # Housekeeping catches up at start (after a restart of sglguard, a reminder or a
        # restore may be overdue), then keeps its pace.
        soon = self.clock() + timedelta(seconds=1)
        self.scheduler.add_job(self.agents.beat, every(HEARTBEAT.total_seconds()),
                               id="_heartbeat", name="heartbeat")
        self.scheduler.add_job(self.find_stale, every(15), id="_stale",
                               name="notice checks that stopped producing results")
        self.scheduler.add_job(self._replay_backlog, every(5), id="_backlog",
                               name="write results held while the store was down")
        if self._chores:
            self.scheduler.add_job(self._do_chores, every(5), id="_chores",
                                   name="start-up work that waits for the store")
        self.scheduler.add_job(self.remember_levels, every(60), next_run_time=soon,
                               id="_levels", name="launch flags for a restart without the store")
        self.scheduler.add_job(self.repeat_reminders, every(60), next_run_time=soon,
                               id="_reminders", name="reminders")
        self.scheduler.add_job(self.restore_levels, every(60), next_run_time=soon,
                               id="_restore", name="restore lowered levels")
        self.scheduler.add_job(self.return_drained, every(15), next_run_time=soon,
                               id="_undrain", name="re-add drained workers once well")
        if self.writer is not None:
            # Runs flush when their result finds the queue due; this timer only catches rows
            # left when no check runs for a while. The first round's results (its checks may
            # not run again for minutes) are looked at twice soon after start.
            self.scheduler.add_job(self.writer.flush_if_due, every(max(self.writer.interval, 60.0)),
                                   id="_flush", name="write queued results")
            for look, after in enumerate(FIRST_ROUND_LOOKS):
                self.scheduler.add_job(self.writer.flush_if_due, "date",
                                       run_date=utcnow() + timedelta(seconds=after),
                                       id=f"_first_round_{look}",
                                       name="write the first round's results")
        self.scheduler.add_job(self.prune, every(3600), next_run_time=soon,
                               id="_prune", name="retention")
        self.scheduler.add_job(self.report_lag, every(LAG_REPORT_S), id="_lag",
                               name="report lateness")
        self.scheduler.start()
        self.check_scheduler.start()
        logger.info("sglguard running: %s checks on %s targets%s", len(self.catalog.checks),
                    len(self.catalog.targets), " (dry run)" if self.dry_run else "")

    def stop(self, timeout: float = 5.0, *, handing_over: bool = False) -> None:
        """Finish the check runs in flight, interrupt waits of remediations, flush notices.

        `handing_over` (a reload): remediations in flight are not interrupted; they finish
        under the catalog they started with, in their own threads, while the next service
        (see `take_over`) runs; this process stays the same agent."""
        self.stopping.set()
        if self.scheduler.state == STATE_RUNNING:  # no new run anywhere while the ones in
            self.scheduler.pause()                # flight finish
        self.diagnostics.release()  # request dumps switched on go back, while clients answer
        if not handing_over:  # a run waiting on a server ends now (a reload lets work finish)
            for client in self.clients.values():
                client.abort()
        self.check_scheduler.stop()
        if self.scheduler.state != STATE_STOPPED:
            self.scheduler.shutdown(wait=True)
        self.report_lag(final=True)
        if self.writer is not None:
            self.writer.flush()
        if handing_over:
            self.requests.stop(timeout=timeout, wait_for_work=False)
            self.notifications.stop(timeout=timeout)
            logger.info("previous catalog stopped; work in flight finishes under it")
            return
        for earlier in (*self.predecessors, self):
            earlier.interrupt.set()
        for earlier in self.predecessors:  # their work in flight, still finishing
            earlier.requests.stop(timeout=timeout)
        self.requests.stop(timeout=timeout)
        self.notifications.stop(timeout=timeout)
        self.agents.leave()
        for client in self.clients.values():
            client.close()
        logger.info("sglguard stopped")

    def take_over(self, previous: Service) -> None:
        """After a reload: keep what the previous service's work in flight needs (controls
        that know their child, the targets it is busy with), and wake this one for what that
        work writes into the outbox."""
        self.runner.adopt(previous.runner)
        self.requests.adopt(previous.requests)
        self.backlog.adopt(previous.backlog)  # results held through a store outage
        self.repairs.adopt(previous.repairs)
        self.predecessors = [earlier for earlier in (*previous.predecessors, previous)
                             if earlier.requests.working()]
        previous.notifications.successor = self.notifications
        previous.requests.successor = self.requests

    def jobs(self) -> list[Job | CheckJob]:
        """Every scheduled job: one per check, then housekeeping."""
        return [*self.check_scheduler.jobs(), *self.scheduler.get_jobs()]

    @property
    def running(self) -> bool:
        return self.check_scheduler.running and self.scheduler.running

    def report_lag(self, *, final: bool = False) -> None:
        """Log how the schedule was kept since the last report: a warning when runs were
        missed, else a line at info (one per report, never one per run)."""
        lag = self.check_scheduler.lag()
        if not lag.runs and not lag.missed:
            return
        logger.log(logging.WARNING if lag.behind else logging.INFO,
                   "schedule%s: %s runs in %.0f s, %s missed, lateness p50 %.0f ms, "
                   "p99 %.0f ms, max %.0f ms; %s worker threads",
                   " at stop" if final else "", lag.runs, lag.span_s, lag.missed, lag.p50_ms,
                   lag.p99_ms, lag.max_ms, self.check_scheduler.threads - 1)

    def pulse(self, span_s: float) -> Pulse:
        """What this service says of itself now (for its listener: /metrics, /healthz, page)."""
        lag = self.check_scheduler.recent(span_s)
        return Pulse(
            running=self.check_scheduler.running, tick_age_s=self.check_scheduler.tick_age(),
            span_s=span_s, runs=lag.runs, missed=lag.missed, late_p50_ms=lag.p50_ms,
            late_p99_ms=lag.p99_ms, late_max_ms=lag.max_ms,
            runs_total=self.check_scheduler.runs_total,
            missed_total=self.check_scheduler.missed_total,
            writer_pending=self.writer.pending if self.writer is not None else 0,
            writer_dropped=self.writer.dropped if self.writer is not None else 0,
            backlog_pending=self.backlog.pending, backlog_dropped=self.backlog.dropped,
            store_outage_s=self.backlog.outage_s)

    def run_check(self, name: str) -> CheckResult | None:
        """One scheduled run; never raises, so a failing job never stops the service."""
        try:
            config = self.catalog.check(name)
            if name in self.responder.verifying:
                logger.debug("check %s: its verification runs it now", name)
                return None
            self._await_dependencies(config)
            blocker = blocking_dependency(config, self._latest, self.store)
            result = (skipped_result(config, blocker, self.clock()) if blocker
                      else self.checks[name].execute())
            if self.stopping.is_set():
                return None  # cut short because sglguard stops: it says nothing of the server
            if not result.skipped:
                self._timers[name].observe(result.duration_ms / 1000)
            logger.debug("check %s: %s %s", name, result.status.label, result.message)
            self._latest[name] = result.shown_status
            # During an outage a run holds its result at once (the store is tried every few
            # seconds by _replay_backlog, not by each run, which would wait on it).
            if self.backlog.outage or (self.backlog.pending and not self.backlog.replay()):
                self._hold(result)  # behind those held before it: order is kept
                return result
            try:
                decision = self.engine.record(result)
            except Exception as exc:
                if not store_down(exc):
                    raise
                self._hold(result, exc)
                return result
            if decision.opened is not None and not self.dry_run:
                self.diagnostics.opened(decision.opened, name)  # in the background
            if decision.resolved is not None:
                self.undrain_soon()
                self.diagnostics.resolved(decision.resolved)
            if decision.staged:
                self.notifications.poke()
                if decision.requested:
                    self.requests.poke()
            return result
        except Exception:
            logger.exception("check %s: run failed", name)
            return None
        finally:
            self._first_run[name].set()
            self._ran[name] = time.monotonic()

    def stale_after(self, config: CheckConfig) -> float:
        """Seconds without a finished run after which a check is stale: several intervals,
        and never less than its timeout allows."""
        interval = config.interval.total_seconds()
        timeout = config.timeout.total_seconds()
        return max(3 * interval + config.jitter_seconds, interval + 2 * timeout, 30.0)

    def find_stale(self) -> list[str]:
        """Checks with no finished run for several intervals (a stuck thread, a scheduler that
        no longer runs them): each gets an UNKNOWN result that says so, which opens an incident
        of its own like any failure ("sglguard cannot run check X") and never restarts the
        server; the check's next real result ends it."""
        now = time.monotonic()
        stale: list[str] = []
        for config in self.catalog.checks:
            if config.name in self.responder.verifying:
                continue
            last = self._ran.get(config.name, self._started)
            silent = now - last
            if silent < self.stale_after(config):
                continue
            stale.append(config.name)
            logger.error("check %s: no result for %.0f s: sglguard cannot run it", config.name,
                         silent)
            result = CheckResult(
                check=config.name, target=config.target, status=Status.UNKNOWN, value=None,
                unit="", message=f"stale: sglguard has not run this check for {silent:.0f} s "
                                 "(a stuck run or a scheduler that no longer runs it)",
                duration_ms=0.0, started_at=self.clock())
            try:
                decision = self.engine.record(result)
            except Exception:
                logger.exception("check %s: its staleness could not be recorded", config.name)
                continue
            self._ran[config.name] = now  # said once per stale period, not at every look
            if decision.staged:
                self.notifications.poke()
        return stale

    def _hold(self, result: CheckResult, error: BaseException | None = None) -> None:
        """Keep a result the store refused; a dead server is repaired meanwhile (see
        sglguard.outage), the repair kept in order after the result that decided it."""
        if not self.backlog.outage:
            self.repairs.outage_over()  # a new outage: its own local budget
        self.backlog.hold(result, error)
        run = self.repairs.held(result)
        if run is not None:
            self.backlog.hold_action(run)

    def _write_held(self, result: CheckResult) -> None:
        """A result held during an outage, written with the time it was measured; one of a
        check since removed from the catalog (a reload during the outage) is kept as history,
        judging nothing."""
        if result.check in self.checks:
            self.engine.record(result, at=result.started_at)
            return
        for retry in self.store.retrying():
            with retry, self.store.session() as session:
                queries.add_result(session, result, evaluated=False, agent=self.engine.agent)

    def remember_levels(self) -> None:
        if not self.backlog.outage and not self.dry_run:
            self.repairs.remember_flags()

    def _replay_backlog(self) -> None:
        if self.backlog.pending or self.backlog.outage:
            with contextlib.suppress(Exception):
                if self.backlog.replay():
                    self.notifications.poke()
                    self.requests.poke()

    def undrain_soon(self) -> None:
        """A worker drained for an incident that just resolved goes back now, not at the next
        tick of the re-add job."""
        if self.scheduler.running and self.scheduler.get_job("_undrain") is not None:
            self.scheduler.modify_job("_undrain", next_run_time=datetime.now(UTC))

    def _await_dependencies(self, config: CheckConfig) -> None:
        """On the first round, the checks this one depends on run first."""
        for need in config.depends_on:
            first = self._first_run.get(need)
            if first is not None and not first.is_set():
                first.wait(self.catalog.check(need).timeout.total_seconds() + 1.0)

    def restore_levels(self) -> list[str]:
        """Step launch levels lowered by reduce_concurrency back up, one level per target,
        after `restore_after` of healthy running; under the same lease as any remediation."""
        stepped: list[str] = []
        if self.dry_run or (self.catalog.mode == "passive"):
            return stepped
        try:
            for due in restore_due(self.store, self.catalog, self.clock()):
                if self._restore(due):
                    stepped.append(due.target)
        except Exception as exc:
            failed(logger, "restoring lowered levels failed", exc)
        return stepped

    def return_drained(self) -> list[str]:
        """Re-add workers drained out of a gateway whose target has no open incident (also
        those an sglguard killed mid-drain left out)."""
        if self.dry_run or self.catalog.mode == "passive":
            return []
        try:
            return return_when_well(self.store, self.catalog, hold=self.requests.hold,
                                    let_go=self.requests.let_go,
                                    agents=self.responder.leases.agents, clock=self.clock,
                                    stop=self.stopping)
        except Exception as exc:
            failed(logger, "re-adding drained workers failed", exc)
            return []

    def _restore(self, due: RestoreDue) -> bool:
        if self.stopping.is_set() or not self.requests.hold(due.target):
            return False
        try:
            leases, ttl = self.responder.leases, timedelta(minutes=30)
            if not leases.claim(due.target, self.clock(), ttl):
                return False
            try:
                target = self.catalog.target(due.target)
                if target.control is not None:
                    self.engine.begin_grace(target.name,
                                            self.clock() + target.control.startup_timeout)
                with leases.kept(due.target, ttl, self.clock):
                    outcome = restore_level(self.runner, due)
                logger.info("restore on %s: %s %s", due.target, outcome.outcome,
                            outcome.error or outcome.detail)
                return outcome.outcome == "succeeded"
            finally:
                self.responder.leases.release(due.target)
        finally:
            self.requests.let_go(due.target)

    def prune(self) -> int:
        """Apply the store's retention: old results, and incidents long resolved. Results go
        in batches of PRUNE_BATCH rows, each its own transaction, so the writes of check runs
        wait a moment at most; stopping the service ends it between two batches."""
        retention = self.catalog.store.retention
        now = self.clock()
        gone = 0
        try:
            while not self.stopping.is_set():
                with self.store.session() as session:
                    batch = queries.prune_results(session, before=now - retention.results,
                                                  limit=PRUNE_BATCH)
                gone += batch
                if batch < PRUNE_BATCH:
                    break
            with self.store.session() as session:
                gone += queries.prune(session, results_before=None,
                                      incidents_before=now - retention.incidents)
        except Exception as exc:
            failed(logger, "retention failed", exc)
            return gone
        if gone:
            logger.info("retention: deleted %s old rows", gone)
        return gone

    def repeat_reminders(self) -> int:
        """Remind of open, unacknowledged incidents (not silenced, not flapping)."""
        try:
            return self.notifications.repeat_open_incidents(skip=self._hushed)
        except Exception as exc:
            failed(logger, "reminders failed", exc)
            return 0

    def _hushed(self, incident: IncidentRow) -> bool:
        quiet = silences.quiet(self.store, self.catalog.maintenance, incident.target,
                               incident.check_name, self.clock())
        if quiet is not None and not quiet.notify:
            return True
        with self.store.session() as session:
            return bool(queries.check_state(session, incident.check_name, incident.target)
                        .flapping)

    def _do_chores(self) -> None:
        """The start-up work that needs the store, in order; what the store refuses waits
        for the next try (watching starts anyway: a reload during a store outage must not
        stop it)."""
        while self._chores:
            try:
                self._chores[0]()
            except Exception as exc:
                if not store_down(exc):
                    raise
                failed(logger, "start-up work", exc)
                return
            self._chores.pop(0)
        with contextlib.suppress(Exception):  # no job yet at start, or already gone
            self.scheduler.remove_job("_chores")

    def _close_interrupted_runs(self) -> None:
        """Runs left `running` by a previous process that died are marked interrupted."""
        with self.store.session() as session:
            for run in queries.running_runs(session):
                run.outcome, run.finished_at = "interrupted", self.clock()
                run.error = "sglguard stopped while this run was in progress"

    def _close_removed_checks(self) -> None:
        """Incidents of checks no longer in the catalog are closed, with a note and a word to
        whoever was told of them."""
        names = {config.name for config in self.catalog.checks}
        now = self.clock()
        with self.store.session() as session:
            for incident in queries.incidents(session, open_only=True, limit=10_000):
                if incident.check_name in names:
                    continue
                incident.status, incident.resolved_at = "resolved", now
                queries.add_event(session, incident.id, now, "closed",
                                  "the check is no longer in the catalog")
                state = session.get(CheckStateRow, incident.check_name)
                if state is not None:
                    session.delete(state)
                self.notifications.stage(session, messages.incident_closed(
                    incident, "the check is no longer in the catalog"), now)
                logger.warning("incident #%s closed: check %s is no longer in the catalog",
                               incident.id, incident.check_name)
