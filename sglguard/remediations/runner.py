"""Runs one remediation under the rails the store enforces: budget, audit record, dry run."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sglguard.client import SGLangClient
from sglguard.clock import utcnow
from sglguard.config.models import Catalog, TargetConfig
from sglguard.controls.base import Control
from sglguard.controls.registry import CONTROLS
from sglguard.redact import clean
from sglguard.remediations.base import Remediation, RemediationContext, RemediationError
from sglguard.remediations.levels import TargetLevels
from sglguard.remediations.registry import REMEDIATIONS
from sglguard.store import Store, queries

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    """What became of one remediation run."""

    run_id: int
    remediation: str
    target: str
    outcome: str  # succeeded | failed | skipped | planned
    plan: list[str]
    detail: str = ""
    error: str | None = None
    permanent: bool = False

    @property
    def budget_spent(self) -> bool:
        return self.outcome == "skipped"


class RemediationRunner:
    """Builds remediations for targets and runs them with their budget and audit trail."""

    def __init__(self, catalog: Catalog, store: Store, clients: dict[str, SGLangClient], *,
                 stop: threading.Event | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.catalog = catalog
        self.store = store
        self.clients = clients
        self.stop = stop or threading.Event()
        self.clock = clock
        self._controls: dict[str, Control[Any] | None] = {}

    def control(self, target: TargetConfig) -> Control[Any] | None:
        """One control object per target, so it remembers the process it started."""
        if target.name not in self._controls:
            config = target.control
            self._controls[target.name] = (
                CONTROLS[config.kind](config, target) if config is not None else None
            )
        return self._controls[target.name]

    def adopt(self, previous: RemediationRunner) -> None:
        """Keep the previous runner's controls whose config is unchanged (they know their child)."""
        for target in self.catalog.targets:
            control = previous._controls.get(target.name)
            if control is not None and control.config == target.control:
                self._controls[target.name] = control

    def context(self, target_name: str, *, incident_id: int | None = None
                ) -> RemediationContext:
        """What a remediation of the target gets, the levels it keeps lowered included."""
        target = self.catalog.target(target_name)
        return RemediationContext(
            target=target, client=self.clients[target.name], control=self.control(target),
            stop=self.stop, clock=self.clock,
            levels=TargetLevels(self.store, target.name, self.clock), incident_id=incident_id,
            store=self.store,
        )

    def build(self, name: str, target_name: str, *,
              incident_id: int | None = None) -> Remediation[Any]:
        config = self.catalog.remediation(name)
        return REMEDIATIONS[config.kind](config, self.context(target_name,
                                                              incident_id=incident_id))

    def refusal(self, name: str, target_name: str) -> str | None:
        """Why an automatic run of `name` on the target would be refused now (its budget is
        spent); None when it would run."""
        config = self.catalog.remediation(name)
        with self.store.session() as session:
            used = queries.budget_used(session, name, target_name,
                                       self.clock() - config.budget.within)
        if used >= config.budget.max:
            return (f"budget spent: {used} of {config.budget.max} runs within "
                    f"{config.budget.within}")
        return None

    def run(self, name: str, target_name: str, *, incident_id: int | None = None,
            trigger: str = "incident", dry_run: bool = False) -> RunOutcome:
        config = self.catalog.remediation(name)
        remediation = self.build(name, target_name, incident_id=incident_id)
        try:
            plan = remediation.plan()
        except RemediationError as exc:
            return self._record_only(name, target_name, incident_id, trigger, dry_run, [],
                                     "failed", str(exc), exc.permanent)
        if dry_run:
            return self._record_only(name, target_name, incident_id, trigger, True, plan,
                                     "planned", None, False)
        now = self.clock()
        with self.store.session() as session:
            used = queries.budget_used(session, name, target_name, now - config.budget.within)
            if trigger == "incident" and used >= config.budget.max:
                error = (f"budget spent: {used} of {config.budget.max} runs within "
                         f"{config.budget.within}")
                run = queries.start_run(
                    session, incident_id=incident_id, remediation=name, kind=config.kind,
                    target=target_name, trigger=trigger, dry_run=False, plan=plan,
                    outcome="skipped", at=now)
                run.error, run.finished_at = error, now
                return RunOutcome(run.id, name, target_name, "skipped", plan, error=error)
            run = queries.start_run(
                session, incident_id=incident_id, remediation=name, kind=config.kind,
                target=target_name, trigger=trigger, dry_run=False, plan=plan,
                outcome="running", at=now)
            run_id = run.id
        logger.info("remediation %s on %s: running (run %s)", name, target_name, run_id)
        outcome = self.perform(remediation.execute, run_id, name, target_name, plan)
        if outcome.outcome == "succeeded" and outcome.detail.startswith("nothing was running"):
            with self.store.session() as session:
                if queries.mark_first_start(session, run_id, target_name, now):
                    logger.info("remediation %s on %s: the server's first start, not counted "
                                "against the budget", name, target_name)
        return outcome

    def perform(self, action: Callable[[], str], run_id: int, name: str, target: str,
                plan: list[str]) -> RunOutcome:
        """Do a recorded run's action and record how it ended (never raises for its errors)."""
        outcome, detail, error, permanent = "succeeded", "", None, False
        try:
            detail = action()
        except RemediationError as exc:
            outcome, error, permanent = "failed", clean(str(exc)), exc.permanent
        except Exception as exc:
            logger.exception("remediation %s raised", name)
            outcome, error = "failed", clean(f"unexpected error: {type(exc).__name__}: {exc}")
        for retry in self.store.retrying():
            with retry, self.store.session() as session:
                queries.finish_run(session, run_id, outcome=outcome, detail=detail,
                                   error=error, at=self.clock())
        log = logger.info if outcome == "succeeded" else logger.warning
        log("remediation %s on %s: %s %s", name, target, outcome, error or detail)
        return RunOutcome(run_id, name, target, outcome, plan, detail, error, permanent)

    def _record_only(self, name: str, target: str, incident_id: int | None, trigger: str,
                     dry_run: bool, plan: list[str], outcome: str, error: str | None,
                     permanent: bool) -> RunOutcome:
        now = self.clock()
        config = self.catalog.remediation(name)
        with self.store.session() as session:
            run = queries.start_run(
                session, incident_id=incident_id, remediation=name, kind=config.kind,
                target=target, trigger=trigger, dry_run=dry_run, plan=plan, outcome=outcome,
                at=now)
            run.error, run.finished_at = error, now
            run_id = run.id
        return RunOutcome(run_id, name, target, outcome, plan, error=error, permanent=permanent)
