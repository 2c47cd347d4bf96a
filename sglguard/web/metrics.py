"""sglguard's own /metrics and /healthz, computed from the store when scraped.

Reading the store (not counters kept in memory) means `sglguard serve` on another machine shows
the same numbers as the service, and a restart of sglguard does not reset them. Counts cover
what retention keeps (`store.retention`), so a counter drops when old rows are deleted; Prometheus
treats that as a counter reset. OK results written in batches appear up to
`store.flush_interval` late.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

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
    RemediationRunRow,
)
from sglguard.web.view import View

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


def metrics_registry(view: View) -> CollectorRegistry:
    """A registry of sglguard's own, apart from the process-wide default one."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(view))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


@dataclass(frozen=True)
class Health:
    """Whether sglguard is alive: a check result was written recently."""

    healthy: bool
    detail: dict[str, Any]


def health(view: View) -> Health:
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
