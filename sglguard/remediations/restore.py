"""Stepping lowered launch levels back up (reduce_concurrency's `restore_after`).

The service calls, on a timer (e.g. every minute), for each due target it may act on:

    for due in restore_due(store, catalog, clock()):
        outcome = restore_level(runner, due)

`restore_due` reads the store only; `restore_level` restarts the server one level up and records
the run (trigger `restore`) like any other remediation run.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from sglguard.config.models import Catalog
from sglguard.remediations.base import RemediationError
from sglguard.remediations.levels import Level, restore_is_due
from sglguard.remediations.reduce_concurrency import ReduceConcurrency, ReduceConcurrencyConfig
from sglguard.remediations.runner import RemediationRunner, RunOutcome
from sglguard.store import Store, queries
from sglguard.store.models import RemediationRunRow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestoreDue:
    """A target whose lowered levels may step up one level now."""

    target: str
    remediation: str  # the reduce_concurrency remediation whose factor and timing apply
    levels: tuple[Level, ...]
    since: datetime  # healthy since then


def governing(catalog: Catalog, target: str) -> ReduceConcurrencyConfig:
    """The reduce_concurrency config for a target: the first one a check of the target names,
    else the first in the catalog, else the defaults (a level outlives its catalog entry)."""
    named = [name for check in catalog.checks if check.target == target
             for name in check.remediate]
    configs = [item for item in catalog.remediations
               if isinstance(item, ReduceConcurrencyConfig)]
    for config in configs:
        if config.name in named:
            return config
    if configs:
        return configs[0]
    return ReduceConcurrencyConfig(name="reduce_concurrency", kind="reduce_concurrency")


def restore_due(store: Store, catalog: Catalog, now: datetime) -> list[RestoreDue]:
    """Targets of the catalog with levels in force and `restore_after` of healthy running
    (no open incident, none resolved meanwhile) since their last change."""
    known = {target.name for target in catalog.targets}
    due: list[RestoreDue] = []
    with store.session() as session:
        by_target: dict[str, list[Level]] = defaultdict(list)
        for row in queries.target_levels(session):
            by_target[row.target].append(
                Level(row.setting, row.original, row.current, row.steps, row.changed_at))
        for target, levels in sorted(by_target.items()):
            if target not in known:
                continue
            config = governing(catalog, target)
            open_incident, resolved = queries.target_trouble(session, target)
            if restore_is_due(levels, config.restore_after, now, open_incident=open_incident,
                              last_resolved=resolved):
                since = max([level.changed_at for level in levels]
                            + ([resolved] if resolved else []))
                due.append(RestoreDue(target, config.name, tuple(levels), since))
    return due


def restore_level(runner: RemediationRunner, due: RestoreDue, *,
                  dry_run: bool = False) -> RunOutcome:
    """Restart the target one level up and record it as a run (trigger `restore`)."""
    config = governing(runner.catalog, due.target)
    remediation = ReduceConcurrency(config, runner.context(due.target))
    try:
        plan = remediation.plan_restore()
    except RemediationError as exc:
        return _record(runner, config, due.target, [], "failed", "", str(exc), exc.permanent)
    if dry_run:
        return _record(runner, config, due.target, plan, "planned", "", None, False)
    run_id = _record(runner, config, due.target, plan, "running", "", None, False).run_id
    outcome = runner.perform(remediation.restore, run_id, config.name, due.target, plan)
    with runner.store.session() as session:
        incident_id = session.get_one(RemediationRunRow, run_id).incident_id
        if incident_id is not None:  # the step's incident tells its restore too
            queries.add_event(session, incident_id, runner.clock(),
                              f"restore_{outcome.outcome}",
                              f"{config.name}: {outcome.error or outcome.detail}")
    return outcome


def _record(runner: RemediationRunner, config: ReduceConcurrencyConfig, target: str,
            plan: list[str], outcome: str, detail: str, error: str | None,
            permanent: bool) -> RunOutcome:
    now = runner.clock()
    with runner.store.session() as session:
        stepped = session.scalar(  # the incident of the last step down, if any
            select(RemediationRunRow.incident_id).where(
                RemediationRunRow.target == target, RemediationRunRow.kind == config.kind,
                RemediationRunRow.trigger != "restore", RemediationRunRow.outcome == "succeeded",
                RemediationRunRow.incident_id.is_not(None))
            .order_by(RemediationRunRow.started_at.desc()).limit(1))
        run = queries.start_run(
            session, incident_id=stepped, remediation=config.name, kind=config.kind,
            target=target, trigger="restore", dry_run=outcome == "planned", plan=plan,
            outcome=outcome, at=now)
        if stepped is not None:
            queries.add_event(session, stepped, now, "restore_started",
                              f"{config.name}: {'; '.join(plan)}")
        if outcome != "running":
            run.error, run.finished_at = error, now
        run_id = run.id
    return RunOutcome(run_id, config.name, target, outcome, plan, detail, error, permanent)
