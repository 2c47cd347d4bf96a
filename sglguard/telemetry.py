"""sglguard's own instruments in the process that runs the checks: how long runs take, how late
the schedule keeps them, how the store takes writes, and what waits to be written.

What the store holds (runs by status, incidents, deliveries) is read from it at each scrape;
what only this process knows is kept here, in a registry of its own, and shown by its listener
next to the rest. Label sets are bounded: one per check of the catalog (dropped when a reload
removes the check), and a fixed few elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram

RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LATE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
# What a store write was: a batch of quiet results, or one result written at once (with the
# state change, incident and outbox rows it brings).
WRITES = ("batch", "result")


class Telemetry:
    """The instruments of one sglguard process; kept across reloads of the catalog."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.run_duration = Histogram(
            "sglguard_check_run_duration_seconds", "how long each check's runs took",
            ["target", "check"], buckets=RUN_BUCKETS, registry=self.registry)
        self.lateness = Histogram(
            "sglguard_schedule_lateness_seconds",
            "how late each check run started (start minus due)", buckets=LATE_BUCKETS,
            registry=self.registry)
        self.store_writes = Histogram(
            "sglguard_store_write_duration_seconds",
            "how long each write of results to the store took (failed ones included)",
            ["write"], buckets=WRITE_BUCKETS, registry=self.registry)
        self.store_errors = Counter(
            "sglguard_store_write_errors", "writes of results that failed",
            ["write"], registry=self.registry)
        for write in WRITES:  # shown at zero from the start, so rate() has a baseline
            self.store_writes.labels(write)
            self.store_errors.labels(write)
        self._checks: set[tuple[str, str]] = set()

    def run_timer(self, target: str, check: str) -> Histogram:
        """The histogram child a check's runs are observed into."""
        self._checks.add((target, check))
        return self.run_duration.labels(target, check)

    def keep_checks(self, checks: Iterable[tuple[str, str]]) -> None:
        """Drop the series of checks no longer in the catalog (target, check)."""
        keep = set(checks)
        for gone in self._checks - keep:
            self.run_duration.remove(*gone)
        self._checks &= keep

    def store_write(self, write: str, seconds: float, ok: bool) -> None:
        self.store_writes.labels(write).observe(seconds)
        if not ok:
            self.store_errors.labels(write).inc()


@dataclass(frozen=True)
class Pulse:
    """What the running service says of itself now: its scheduler's last tick, how the
    schedule was kept over the last `span_s`, and what waits to be written."""

    running: bool
    tick_age_s: float | None  # None: the scheduler has not ticked yet
    span_s: float
    runs: int
    missed: int
    late_p50_ms: float
    late_p99_ms: float
    late_max_ms: float
    runs_total: int
    missed_total: int
    writer_pending: int  # quiet results queued for the next batch
    writer_dropped: int
    backlog_pending: int  # results held while the store is down
    backlog_dropped: int
    store_outage_s: float | None = None  # how long the store has been down; None: it answers


class Runtime(Protocol):
    """The running service, as its listener sees it."""

    telemetry: Telemetry

    def pulse(self, span_s: float) -> Pulse: ...
