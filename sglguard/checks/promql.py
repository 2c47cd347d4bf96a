"""Prometheus arithmetic over two scrapes: increases across resets, histogram quantiles."""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# Metrics renamed between SGLang releases: either name answers for the other.
ALIASES = {
    "sglang:request_time_per_output_token_seconds": "sglang:time_per_output_token_seconds",
    "sglang:time_per_output_token_seconds": "sglang:request_time_per_output_token_seconds",
}


_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def _keep_families(text: str, names: Iterable[str]) -> str:
    """The lines of `text` about the families of `names` (and their aliases)."""
    wanted = set()
    for name in names:
        for each in (name, ALIASES.get(name)):
            if each is not None:
                wanted.add(next((each.removesuffix(s) for s in _SUFFIXES if each.endswith(s)),
                                each))
    prefixes = tuple(wanted)
    kept = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) > 2 and parts[2].startswith(prefixes):
                kept.append(line)
        elif line.startswith(prefixes):
            kept.append(line)
    return "\n".join(kept) + "\n"


def _family_key(name: str) -> str:
    return next((name.removesuffix(s) for s in _SUFFIXES if name.endswith(s)), name)


def _wanted(names: Iterable[str]) -> set[str]:
    return {_family_key(each) for name in names for each in (name, ALIASES.get(name))
            if each is not None}


class Page:
    """One fetched `/metrics` page, split by family once; each family is parsed at most once,
    however many checks read it (a big server's page has thousands of series)."""

    def __init__(self, text: str) -> None:
        self.size = len(text)
        self._lines: dict[str, list[str]] = {}
        # A family's lines come together: look its key up only when the name changes.
        name, lines = "", None
        for line in text.splitlines():
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) <= 2 or parts[1] not in ("HELP", "TYPE"):
                    continue
                current = parts[2]
            elif line:
                end = line.find("{")
                current = line[:end] if end > 0 else line.split(None, 1)[0]
            else:
                continue
            if current != name or lines is None:
                name = current
                lines = self._lines.setdefault(_family_key(name), [])
            lines.append(line)
        self._parsed: dict[str, dict[str, list[tuple[dict[str, str], float]]]] = {}
        self._lock = threading.Lock()

    def scrape(self, names: Iterable[str]) -> Scrape:
        """The samples of the families `names` (and their aliases) belong to."""
        scrape = Scrape()
        for key in sorted(_wanted(names)):
            with self._lock:
                parsed = self._parsed.get(key)
                if parsed is None:
                    parsed = self._parsed[key] = Scrape.parse(
                        "\n".join(self._lines.get(key, ())) + "\n").samples
            for name, samples in parsed.items():
                scrape.samples.setdefault(name, []).extend(samples)
        return scrape


def series_key(labels: Mapping[str, str]) -> str:
    """A stable name for one series: its labels, sorted."""
    return ",".join(f"{name}={labels[name]}" for name in sorted(labels))


@dataclass
class Scrape:
    """One parsed `/metrics` page: sample name -> list of (labels, value)."""

    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, only: Iterable[str] | None = None) -> Scrape:
        """Parse the page; with `only`, just the families those sample names belong to (a big
        server's page has thousands of series and a check needs a few)."""
        if only is not None:
            text = _keep_families(text, only)
        scrape = cls()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                scrape.samples.setdefault(sample.name, []).append(
                    (dict(sample.labels), float(sample.value)))
        return scrape

    def resolve(self, name: str) -> str | None:
        """The name as served: `name` itself, else its alias from another release."""
        if name in self.samples:
            return name
        alias = ALIASES.get(name)
        return alias if alias is not None and alias in self.samples else None

    def select(self, name: str, matchers: Mapping[str, re.Pattern[str]],
               ignore: Iterable[str] = ()) -> dict[str, float]:
        """Series of `name` whose labels match, keyed by series_key (labels in `ignore` kept)."""
        skipped = set(ignore)
        chosen: dict[str, float] = {}
        for labels, value in self.samples.get(name, ()):
            if all(pattern.fullmatch(labels.get(label, "")) for label, pattern in matchers.items()
                   if label not in skipped):
                chosen[series_key(labels)] = value
        return chosen


def increases(before: Mapping[str, float], now: Mapping[str, float]) -> dict[str, float]:
    """Per-series counter increase; a counter that went down was reset and counts from zero."""
    result: dict[str, float] = {}
    for key, value in now.items():
        previous = before.get(key, 0.0)  # a series born inside the window counted from zero
        result[key] = value if value < previous else value - previous
    return result


def carry(previous: Mapping[str, Any] | None, raw: Mapping[str, float]) -> dict[str, Any]:
    """A counter sample: the raw values and running totals corrected for resets, so that an
    increase over a window counts every reset inside it, not only its two ends.

    A series missing from a page that was read keeps its running total: SGLang drops a series
    only when its process restarts, so when it comes back it counts from zero on top of what it
    had counted (as `increase()` treats a reset). Nothing is ever taken away."""
    if previous is None:
        return {"raw": dict(raw), "adj": dict(raw)}
    last_raw = previous.get("raw", {})
    adjusted = dict(previous.get("adj", {}))
    for key, value in raw.items():
        last = last_raw.get(key)
        grown = value if last is None or value < last else value - last
        adjusted[key] = adjusted.get(key, 0.0) + grown
    return {"raw": dict(raw), "adj": adjusted}


def window_increases(before: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, float]:
    """Per-series increase between two carried samples (never negative: totals only grow)."""
    start = before.get("adj", {})
    return {key: max(0.0, value - start.get(key, 0.0)) for key, value in now["adj"].items()}


def bucket_bound(key: str) -> float:
    """The `le` of a bucket series key."""
    for part in key.split(","):
        name, _, value = part.partition("=")
        if name == "le":
            return math.inf if value in ("+Inf", "Inf", "inf") else float(value)
    raise ValueError(f"bucket series without le: {key}")


def merge_buckets(per_series: Mapping[str, float]) -> dict[float, float]:
    """Sum bucket counts of all series by their upper bound (`sum by (le)`)."""
    merged: dict[float, float] = {}
    for key, value in per_series.items():
        bound = bucket_bound(key)
        merged[bound] = merged.get(bound, 0.0) + value
    return merged


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets; None when nothing was observed."""
    if not buckets or math.inf not in buckets:
        return None
    bounds = sorted(buckets)
    counts = [buckets[bound] for bound in bounds]
    for index in range(1, len(counts)):  # cumulative counts cannot fall; smooth scrape skew
        counts[index] = max(counts[index], counts[index - 1])
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    index = next(i for i, count in enumerate(counts) if count >= rank)
    if bounds[index] == math.inf:
        return bounds[-2] if len(bounds) > 1 else None
    upper = bounds[index]
    lower = bounds[index - 1] if index > 0 else (0.0 if upper > 0 else upper)
    below = counts[index - 1] if index > 0 else 0.0
    in_bucket = counts[index] - below
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / in_bucket
