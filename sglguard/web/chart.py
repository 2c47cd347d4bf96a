"""A small value chart, computed on the server and drawn by the browser as SVG (no script)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sglguard.config.types import parse_threshold

MAX_POINTS = 240
CHART_HOURS = 3


@dataclass(frozen=True)
class Chart:
    """What the template draws: a polyline, the value range and threshold lines."""

    width: int
    height: int
    points: str  # "x,y x,y ..." in SVG coordinates
    low: float
    high: float
    lines: tuple[tuple[str, float], ...]  # (level, y) of each threshold inside the range
    count: int
    first_at: str
    last_at: str


def build_chart(series: list[list[Any]], *, warning: str | None, critical: str | None,
                width: int = 240, height: int = 48) -> Chart | None:
    """The chart of `[[iso time, value], ...]` (oldest first); None without two points."""
    samples = [(datetime.fromisoformat(at), float(value)) for at, value in series
               if value is not None]
    if len(samples) < 2:
        return None
    samples = _thin(samples)
    start, end = samples[0][0], samples[-1][0]
    span = max((end - start).total_seconds(), 1e-9)
    bounds = {level: parse_threshold(text).bound for level, text in
              (("warning", warning), ("critical", critical)) if text is not None}
    values = [value for _, value in samples]
    low, high = min(values), max(values)
    if high == low:
        low, high = low - 1.0 if low else -1.0, high + 1.0 if high else 1.0
    pad = 2.0

    def y(value: float) -> float:
        return round(height - pad - (value - low) / (high - low) * (height - 2 * pad), 1)

    points = " ".join(
        f"{round((at - start).total_seconds() / span * width, 1)},{y(value)}"
        for at, value in samples)
    lines = tuple((level, y(bound)) for level, bound in bounds.items() if low <= bound <= high)
    return Chart(width, height, points, low, high, lines, len(samples),
                 start.isoformat(), end.isoformat())


def _thin(samples: list[tuple[datetime, float]]) -> list[tuple[datetime, float]]:
    """At most MAX_POINTS points: the mean of each time bucket (keeping the first and last)."""
    if len(samples) <= MAX_POINTS:
        return samples
    start, end = samples[0][0], samples[-1][0]
    size = (end - start) / MAX_POINTS or timedelta(microseconds=1)
    buckets: dict[int, list[tuple[datetime, float]]] = {}
    for at, value in samples:
        buckets.setdefault(min(int((at - start) / size), MAX_POINTS - 1), []).append((at, value))
    return [(items[len(items) // 2][0], sum(value for _, value in items) / len(items))
            for _, items in sorted(buckets.items())]
