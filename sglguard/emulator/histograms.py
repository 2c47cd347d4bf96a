"""Prometheus histograms and the bucket sets SGLang releases use."""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass


def _bounds(text: str) -> tuple[float, ...]:
    return tuple(float(bound) for bound in text.split())


# SGLang 0.5.23.
TTFT_BUCKETS = _bounds("0.1 0.2 0.4 0.6 0.8 1 2 4 6 8 10 20 40 60 80 100 200 400")
ITL_BUCKETS = _bounds(
    "0.002 0.004 0.006 0.008 0.010 0.015 0.020 0.025 0.030 0.035 0.040 0.060 0.080 0.100 "
    "0.200 0.400 0.600 0.800 1 2 4 6 8"
)
TPOT_BUCKETS = ITL_BUCKETS  # per request in 0.5.23, on the inter-token buckets
E2E_BUCKETS = _bounds("0.1 0.2 0.4 0.6 0.8 1 2 4 6 8 10 20 40 60 80 100 200 400 600 1200 1800 2400")
QUEUE_BUCKETS = _bounds(
    "0 0.001 0.005 0.01 0.05 0.1 0.2 0.5 1 2 3 4 5 10 15 20 30 40 50 60 70 80 90 100 200 300 400 "
    "500 600 700 800 900 1000 1200 1400 1600 1800 2000 2500 3000"
)

# The older release of the sample in SGLang's docs (shared/fixtures/sglang-metrics-docs-sample.txt).
LEGACY_TTFT_BUCKETS = _bounds(
    "0.001 0.005 0.01 0.02 0.04 0.06 0.08 0.1 0.25 0.5 0.75 1.0 2.5 5.0 7.5 10.0 15.0 20.0 "
    "25.0 30.0"
)
LEGACY_E2E_BUCKETS = _bounds("0.3 0.5 0.8 1.0 1.5 2.0 2.5 5.0 10.0 15.0 20.0 30.0 40.0 50.0 60.0")
LEGACY_TPOT_BUCKETS = _bounds(
    "0.005 0.01 0.015 0.02 0.025 0.03 0.04 0.05 0.075 0.1 0.15 0.2 0.3 0.4 0.5 0.75 1.0 2.5"
)


class Histogram:
    """A Prometheus histogram: per-bucket counts, total count and sum."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        index = bisect_left(self.bounds, value)  # first bound >= value: Prometheus' `le`
        if index < len(self.bounds):
            self.counts[index] += times
        self.count += times
        self.total += value * times

    def view(self) -> HistogramView:
        cumulative: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            running += count
            cumulative.append((bound, running))
        cumulative.append((math.inf, self.count))
        return HistogramView(tuple(cumulative), self.count, self.total)


@dataclass(frozen=True)
class HistogramView:
    """A copy of a histogram for rendering: cumulative (bound, count) pairs, count and sum."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    total: float
