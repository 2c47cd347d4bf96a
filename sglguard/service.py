"""The service: one APScheduler job per check, incidents, remediation and notification."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor as Pool
from datetime import datetime, timedelta
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from sglguard import messages
from sglguard.checks.base import Check, CheckConfig, CheckContext, CheckResult, Status
from sglguard.checks.registry import CHECKS
from sglguard.client import SGLangClient
from sglguard.clock import utcnow
from sglguard.config.models import Catalog
from sglguard.engine import Decision, IncidentEngine
from sglguard.notify import Notifications
from sglguard.remediations.runner import RemediationRunner, RunOutcome
from sglguard.store import Store, queries
from sglguard.store.samples import StoreSamples

logger = logging.getLogger(__name__)


def build_clients(catalog: Catalog) -> dict[str, SGLangClient]:
    return {
        target.name: SGLangClient(
            target.url,
            api_key=target.api_key.get_secret_value() if target.api_key else None,
            admin_api_key=(target.admin_api_key.get_secret_value()
                           if target.admin_api_key else None),
            timeout=target.timeout.total_seconds(),
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


def run_once(catalog: Catalog, store: Store, names: list[str],
             clock: Callable[[], datetime] = utcnow) -> list[CheckResult]:
    """Run the named checks once, concurrently, dependencies first (`sglguard check`)."""
    checks = build_checks(catalog, build_clients(catalog), store, clock)
    done: dict[str, CheckResult] = {}

    def blocker(config: CheckConfig) -> str | None:
        for name in config.depends_on:
            if name in done:
                if done[name].status is not Status.OK or done[name].skipped:
                    return f"{name} is {done[name].shown_status}"
                continue
            with store.session() as session:
                status = queries.latest_status(session, name)
            if status not in (None, "ok"):
                return f"{name} is {status}"
        return None

    def one(name: str) -> CheckResult:
        config = catalog.check(name)
        why = blocker(config)
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
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.catalog = catalog
        self.store = store
        self.dry_run = dry_run
        self.clock = clock
        self.stopping = threading.Event()
        self.clients = build_clients(catalog)
        self.checks = build_checks(catalog, self.clients, store, clock)
        self.engine = IncidentEngine(catalog, store, clock)
        self.notifications = Notifications(catalog.notifiers, store, secrets=catalog.secrets(),
                                           clock=clock)
        self.runner = RemediationRunner(catalog, store, self.clients, stop=self.stopping,
                                        clock=clock)
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self._remediations: list[threading.Thread] = []
        self.scheduler = BackgroundScheduler(
            timezone="UTC",
            executors={"default": ThreadPoolExecutor(max(4, len(catalog.checks)))},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
        )

    def start(self) -> None:
        self._close_interrupted_runs()
        self.notifications.start()
        for config in self.catalog.checks:
            self.scheduler.add_job(
                self.run_check, IntervalTrigger(
                    seconds=config.interval.total_seconds(), jitter=config.jitter_seconds or None),
                args=[config.name], id=config.name, name=config.name,
                next_run_time=self.clock() + timedelta(seconds=0.1),
            )
        self.scheduler.start()
        logger.info("sglguard running: %s checks on %s targets%s", len(self.catalog.checks),
                    len(self.catalog.targets), " (dry run)" if self.dry_run else "")

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the check runs in flight, interrupt waits of remediations, flush notices."""
        self.stopping.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        for thread in list(self._remediations):
            thread.join(timeout=timeout)
        self.notifications.stop(timeout=timeout)
        for client in self.clients.values():
            client.close()
        logger.info("sglguard stopped")

    def run_check(self, name: str) -> CheckResult | None:
        """One scheduled run; never raises, so a failing job never stops the service."""
        try:
            config = self.catalog.check(name)
            if self._is_busy(config.target):
                logger.debug("check %s paused: target %s is being remediated", name,
                             config.target)
                return None
            blocker = self._blocking_dependency(config)
            result = (skipped_result(config, blocker, self.clock()) if blocker
                      else self.checks[name].execute())
            logger.debug("check %s: %s %s", name, result.status.label, result.message)
            decision = self.engine.record(result)
            self._act(config, decision)
            return result
        except Exception:
            logger.exception("check %s: run failed", name)
            return None

    def _act(self, config: CheckConfig, decision: Decision) -> None:
        for message in decision.messages:
            self.notifications.submit(message)
        incident_id = decision.remediate
        if incident_id is None or not config.remediate or self.catalog.mode == "passive":
            return
        if self.dry_run and decision.opened is None:
            return  # a dry run plans once per incident
        with self._busy_lock:
            if config.target in self._busy or self.stopping.is_set():
                return
            self._busy.add(config.target)
        thread = threading.Thread(target=self._remediate, args=(config, incident_id),
                                  name=f"remediate-{config.target}", daemon=True)
        self._remediations = [item for item in self._remediations if item.is_alive()]
        self._remediations.append(thread)
        thread.start()

    def _blocking_dependency(self, config: CheckConfig) -> str | None:
        """Why this check is skipped: a dependency that is not OK now, or None."""
        if not config.depends_on:
            return None
        with self.store.session() as session:
            for name in config.depends_on:
                status = queries.latest_status(session, name)
                if status not in (None, "ok"):
                    return f"{name} is {status}"
        return None

    def _is_busy(self, target: str) -> bool:
        with self._busy_lock:
            return target in self._busy

    def _remediate(self, config: CheckConfig, incident_id: int) -> None:
        target = self.catalog.target(config.target)
        try:
            if target.control is not None and not self.dry_run:
                self.engine.begin_grace(target.name, self.clock() + target.control.startup_timeout)
            for name in config.remediate:
                self.engine.note(incident_id, "remediation_started", name)
                outcome = self.runner.run(name, target.name, incident_id=incident_id,
                                          dry_run=self.dry_run)
                if not self._after(config, incident_id, outcome):
                    self.engine.end_grace(target.name)
                    break
        except Exception:
            logger.exception("remediation of incident #%s failed", incident_id)
        finally:
            with self._busy_lock:
                self._busy.discard(target.name)

    def _after(self, config: CheckConfig, incident_id: int, outcome: RunOutcome) -> bool:
        """Record and announce one outcome; False when the chain should stop."""
        target = self.catalog.target(config.target)
        detail = outcome.error or outcome.detail or "; ".join(outcome.plan)
        self.engine.note(incident_id, f"remediation_{outcome.outcome}",
                         f"{outcome.remediation}: {detail}")
        incident = self.engine.incident(incident_id)
        if outcome.outcome == "planned":
            return True
        if outcome.budget_spent or outcome.permanent:
            escalated = self.engine.escalate(incident_id, detail)
            if escalated is not None:
                self.notifications.submit(messages.budget_spent(escalated, config, target, detail))
            return False
        succeeded = outcome.outcome == "succeeded"
        self.notifications.submit(messages.remediation_result(
            incident, config, target, outcome.remediation, succeeded, detail))
        return succeeded

    def _close_interrupted_runs(self) -> None:
        """Runs left `running` by a previous process that died are marked interrupted."""
        with self.store.session() as session:
            for run in queries.running_runs(session):
                run.outcome, run.finished_at = "interrupted", self.clock()
                run.error = "sglguard stopped while this run was in progress"
