"""sglguard's own instruments in the process that runs the checks: how long runs take, how late
the schedule keeps them, how the store takes writes, and what waits to be written.

What the store holds (runs by status, incidents, deliveries) is read from it at each scrape;
what only this process knows is kept here, in a registry of its own, and shown by its listener
next to the rest. Label sets are bounded: one per check of the catalog (dropped when a reload
removes the check), and a fixed few elsewhere.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import HistogramMetricFamily, Metric

RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LATE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
# What a store write was: a batch of quiet results, or one result written at once (with the
# state change, incident and outbox rows it brings).
WRITES = ("batch", "result")


class RunTimer:
    """One check's run durations as histogram counts. A check runs one run at a time, so
    its counts need no lock of their own."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(RUN_BUCKETS) + 1)  # per bucket, the last one +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(RUN_BUCKETS, seconds)] += 1
        self.total += seconds


class RunDurations:
    """`sglguard_check_run_duration_seconds{target,check}`, kept as plain counts and turned
    into a histogram when scraped: a prometheus_client Histogram child holds a lock per bucket,
    about 4 MiB at a thousand checks."""

    def __init__(self) -> None:
        self.timers: dict[tuple[str, str], RunTimer] = {}

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily("sglguard_check_run_duration_seconds",
                                       "how long each check's runs took",
                                       labels=["target", "check"])
        for (target, check), timer in sorted(list(self.timers.items())):
            counts, cumulative, buckets = list(timer.counts), 0, []
            for bound, count in zip((*RUN_BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                buckets.append((le, float(cumulative)))
            family.add_metric([target, check], buckets, timer.total)
        yield family


class Telemetry:
    """The instruments of one sglguard process; kept across reloads of the catalog."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.run_duration = RunDurations()
        self.registry.register(self.run_duration)
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

    def run_timer(self, target: str, check: str) -> RunTimer:
        """What a check's runs are observed into (kept across reloads)."""
        return self.run_duration.timers.setdefault((target, check), RunTimer())

    def keep_checks(self, checks: Iterable[tuple[str, str]]) -> None:
        """Drop the series of checks no longer in the catalog (target, check)."""
        keep = set(checks)
        for gone in set(self.run_duration.timers) - keep:
            del self.run_duration.timers[gone]

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
