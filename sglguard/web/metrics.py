"""sglguard's own /metrics and /healthz.

What the store holds is read from it when scraped: `sglguard serve` on another machine shows
the same numbers as the service, and a restart of sglguard does not reset them. Counts cover
what retention keeps (`store.retention`), so a counter drops when old rows are deleted; Prometheus
treats that as a counter reset. OK results written in batches appear up to
`store.flush_interval` late.

Beside the service (`sglguard run`), the listener adds what only that process knows
(`sglguard.telemetry`): run durations, the schedule's lateness and missed runs, its
scheduler's last tick, the results waiting to be written, and how store writes go; and
/healthz is judged by the scheduler's last tick.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import func, select

from sglguard import __version__
from sglguard.domain import Status
from sglguard.housekeeping import HOUSEKEEPING
from sglguard.store.models import (
    CheckResultRow,
    CheckStateRow,
    IncidentRow,
    NotificationAttemptRow,
    OutboxRow,
    RemediationRunRow,
)
from sglguard.web.view import View

if TYPE_CHECKING:
    from sglguard.telemetry import Runtime

# /healthz fails when the scheduler's timer (which ticks at least every 5 s) has not ticked
# for this long.
TICK_BOUND = timedelta(seconds=30)
# The span over which the page and /metrics show the schedule's recent lateness.
LAG_SPAN = timedelta(minutes=5)

logger = logging.getLogger(__name__)


class StoreCollector:
    """A prometheus_client collector whose every sample is read from the store at scrape."""

    def __init__(self, view: View) -> None:
        self.view = view
        self.scrape_errors = 0

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("sglguard_build_info", "sglguard's version", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        try:
            families = list(self._from_store())
        except Exception:
            logger.warning("metrics: reading the store failed", exc_info=True)
            self.scrape_errors += 1
            families = []
        up = GaugeMetricFamily("sglguard_store_up", "1 when the store answered this scrape")
        up.add_metric([], 1.0 if families else 0.0)
        yield up
        errors = CounterMetricFamily("sglguard_metrics_store_errors",
                                     "scrapes whose store read failed, since start")
        errors.add_metric([], float(self.scrape_errors))
        yield errors
        yield housekeeping_events()
        yield from families

    def _from_store(self) -> Iterator[Metric]:
        names = {config.name: config.target for config in self.view.catalog.checks}
        with self.view.store.session() as session:
            runs = CounterMetricFamily("sglguard_check_runs", "check runs stored, by status",
                                       labels=["check", "target", "status"])
            for check, target, status, count in session.execute(
                    select(CheckResultRow.check_name, CheckResultRow.target,
                           CheckResultRow.status, func.count())
                    .group_by(CheckResultRow.check_name, CheckResultRow.target,
                              CheckResultRow.status)):
                runs.add_metric([check, target, status], float(count))
            yield runs
            states = list(session.scalars(select(CheckStateRow)))
            last = GaugeMetricFamily(
                "sglguard_check_status", "each check's state: 0 ok, 1 warning, 2 critical, "
                "3 unknown", labels=["check", "target"])
            at = GaugeMetricFamily("sglguard_check_last_run_timestamp_seconds",
                                   "when each check's state last took a result",
                                   labels=["check", "target"])
            for state in states:
                if state.check_name not in names:
                    continue
                last.add_metric([state.check_name, state.target], float(_status(state.status)))
                if state.last_result_at is not None:
                    at.add_metric([state.check_name, state.target],
                                  state.last_result_at.timestamp())
            yield last
            yield at
            incidents = GaugeMetricFamily("sglguard_incidents_open", "incidents open now",
                                          labels=["target", "check", "severity"])
            for target, check, severity, count in session.execute(
                    select(IncidentRow.target, IncidentRow.check_name, IncidentRow.severity,
                           func.count()).where(IncidentRow.status == "open")
                    .group_by(IncidentRow.target, IncidentRow.check_name, IncidentRow.severity)):
                incidents.add_metric([target, check, severity], float(count))
            yield incidents
            yield _counted(session, "sglguard_remediation_runs",
                           "remediation runs stored (dry runs included), by kind and outcome",
                           RemediationRunRow, ["kind", "outcome"],
                           [RemediationRunRow.kind, RemediationRunRow.outcome])
            yield _counted(session, "sglguard_notification_attempts",
                           "notification delivery attempts, by notifier and outcome",
                           NotificationAttemptRow, ["notifier", "outcome"],
                           [NotificationAttemptRow.notifier, NotificationAttemptRow.outcome])
            outbox = GaugeMetricFamily(
                "sglguard_outbox_unclaimed", "messages and remediation requests owed and not "
                "yet taken by a worker, by kind", labels=["kind"])
            waiting = dict.fromkeys(("message", "remediation"), 0)
            for kind, count in session.execute(
                    select(OutboxRow.kind, func.count()).where(OutboxRow.status == "pending")
                    .group_by(OutboxRow.kind)):
                waiting[kind] = count
            for kind, count in sorted(waiting.items()):
                outbox.add_metric([kind], float(count))
            yield outbox


class RuntimeCollector:
    """What the service beside the listener knows only in memory, read at each scrape."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        yield from self.runtime.telemetry.registry.collect()
        pulse = self.runtime.pulse(LAG_SPAN.total_seconds())
        missed = CounterMetricFamily("sglguard_schedule_missed_runs",
                                     "check runs missed (the previous run still in progress, "
                                     "or a lagging timer), since start")
        missed.add_metric([], float(pulse.missed_total))
        yield missed
        tick = GaugeMetricFamily("sglguard_scheduler_last_tick_age_seconds",
                                 "seconds since the scheduler's timer last ticked")
        if pulse.tick_age_s is not None:
            tick.add_metric([], pulse.tick_age_s)
        yield tick
        depth = GaugeMetricFamily("sglguard_queue_depth", "results waiting to be written: "
                                  "quiet ones queued for the next batch, and those held "
                                  "while the store is down", labels=["queue"])
        depth.add_metric(["results_batch"], float(pulse.writer_pending))
        depth.add_metric(["store_backlog"], float(pulse.backlog_pending))
        yield depth
        dropped = CounterMetricFamily("sglguard_results_dropped",
                                      "results dropped over a queue's bound, since start",
                                      labels=["queue"])
        dropped.add_metric(["results_batch"], float(pulse.writer_dropped))
        dropped.add_metric(["store_backlog"], float(pulse.backlog_dropped))
        yield dropped
        outage = GaugeMetricFamily("sglguard_store_outage_seconds",
                                   "how long the store has been down for this service's "
                                   "writes (0: it answers)")
        outage.add_metric([], pulse.store_outage_s or 0.0)
        yield outage


def housekeeping_events() -> Metric:
    """Counted in memory by the process whose scheduler runs the jobs (`sglguard run`), not
    stored: another process serving the page shows none."""
    family = CounterMetricFamily("sglguard_housekeeping_events",
                                 "housekeeping jobs' missed, failed and skipped runs, since start",
                                 labels=["job", "event"])
    for (job, event), count in sorted(HOUSEKEEPING.counts().items()):
        family.add_metric([job, event], float(count))
    return family


def _counted(session: Any, name: str, documentation: str, table: Any, labels: list[str],
             columns: list[Any]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for *values, count in session.execute(select(*columns, func.count()).select_from(table)
                                          .group_by(*columns)):
        family.add_metric([str(value) for value in values], float(count))
    return family


def _status(label: str) -> int:
    try:
        return int(Status.from_label(label))
    except KeyError:
        return int(Status.UNKNOWN)


def metrics_registry(view: View, runtime: Runtime | None = None) -> CollectorRegistry:
    """A registry of sglguard's own, apart from the process-wide default one."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(view))
    if runtime is not None:
        registry.register(RuntimeCollector(runtime))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


@dataclass(frozen=True)
class Health:
    """Whether sglguard is alive."""

    healthy: bool
    detail: dict[str, Any]


def health(view: View, runtime: Runtime | None = None) -> Health:
    """Beside the service: whether its scheduler ticked within TICK_BOUND. Served apart from
    it (`sglguard serve`), whether the store holds a recent result."""
    if runtime is not None:
        return scheduler_health(runtime)
    return results_health(view)


def scheduler_health(runtime: Runtime) -> Health:
    """Healthy while the scheduler runs and its timer ticked within TICK_BOUND, whatever the
    checks found (a failing server is not a failing sglguard)."""
    pulse = runtime.pulse(LAG_SPAN.total_seconds())
    detail: dict[str, Any] = {
        "scheduler_tick_age_s": (round(pulse.tick_age_s, 1) if pulse.tick_age_s is not None
                                 else None),
        "allowed_tick_age_s": TICK_BOUND.total_seconds(),
        "missed_runs_recent": pulse.missed, "results_held": pulse.backlog_pending,
        # sglguard's own trouble, said here, not a failure of it: it keeps watching and
        # repairing through an outage and writes what it held afterwards (a restart of it
        # would help nothing)
        "store": ("ok" if pulse.store_outage_s is None else
                  f"unreachable for {pulse.store_outage_s:.0f} s; "
                  f"{pulse.backlog_pending} results held")}
    if pulse.tick_age_s is None:
        return Health(False, {"status": "failing", "reason": "the scheduler has not started",
                              **detail})
    if not pulse.running:
        return Health(False, {"status": "failing", "reason": "the scheduler is stopped",
                              **detail})
    if pulse.tick_age_s > TICK_BOUND.total_seconds():
        return Health(False, {"status": "failing", "reason": "the scheduler has not ticked "
                              f"for {pulse.tick_age_s:.0f} s", **detail})
    return Health(True, {"status": "ok", **detail})


def results_health(view: View) -> Health:
    """Healthy when the newest stored result is younger than the catalog allows: three of the
    longest check interval plus the batching delay, at least a minute."""
    catalog = view.catalog
    longest = max((config.interval for config in catalog.checks), default=timedelta(minutes=1))
    allowed = max(3 * longest + catalog.store.flush_interval, timedelta(minutes=1))
    now = view.clock()
    try:
        with view.store.session() as session:
            newest: datetime | None = session.scalar(select(func.max(
                CheckStateRow.last_result_at)))
            stored: datetime | None = session.scalar(select(func.max(CheckResultRow.started_at)))
    except Exception as exc:
        return Health(False, {"status": "failing", "reason": f"store: {type(exc).__name__}"})
    latest = max((moment for moment in (newest, stored) if moment is not None), default=None)
    if latest is not None and latest.tzinfo is None:
        latest = latest.replace(tzinfo=now.tzinfo)
    detail: dict[str, Any] = {"last_result_at": latest.isoformat() if latest else None,
                              "allowed_age_s": allowed.total_seconds()}
    if latest is None:
        return Health(False, {"status": "failing", "reason": "no check result stored", **detail})
    age = (now - latest).total_seconds()
    detail["age_s"] = round(age, 1)
    if age > allowed.total_seconds():
        return Health(False, {"status": "failing",
                              "reason": "no check result written recently", **detail})
    return Health(True, {"status": "ok", **detail})
