"""Prometheus text exposition of an emulated server, in the names and labels of a release."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .profiles import CURRENT, HistogramFamily, MetricsProfile
from .snapshot import SeriesKey, Snapshot

Labels = Mapping[str, str]
Sample = tuple[str, Labels, float]  # (name suffix, labels, value)


def scheduler_labels(model_name: str) -> dict[str, str]:
    """Labels SGLang 0.5.23 puts on scheduler metrics of a single-GPU server."""
    return CURRENT.scheduler_labels(model_name)


@dataclass(frozen=True)
class Launch:
    """The launch flags that shape the page: PD role, DP ranks, priority scheduling."""

    engine_type: str = "unified"
    dp_size: int = 1
    priority_scheduling: bool = False
    pid: int = field(default_factory=os.getpid)


# Gauges SGLang writes in prometheus_client's "all" multiprocess mode: a `pid` label each.
PID_GAUGES = frozenset({"num_retracted_reqs", "num_paused_reqs"})
# Gauges written once as the total (priority="") and once per priority.
BY_PRIORITY = {"num_running_reqs": "running_by_priority", "num_queue_reqs": "queue_by_priority"}


def render_metrics(snap: Snapshot, model_name: str, profile: MetricsProfile = CURRENT,
                   launch: Launch | None = None) -> str:
    """The body of GET /metrics: only series written so far (a family none of whose series
    exists is not on the page, as in SGLang's multiprocess mode)."""
    launch = launch or Launch()
    labels = _Labels(profile, model_name, launch)
    lines: list[str] = []
    if profile.http_metrics:
        _http_families(lines, snap)
    for name, help_text in profile.gauges:
        _family(lines, name, "gauge", help_text, _gauge_samples(snap, name, labels))
    for name, help_text in profile.tokenizer_gauges:
        samples = [("", dict(labels.tokenizer, phase=phase), value)
                   for phase, value in snap.startup.items()]
        _family(lines, name, "gauge", help_text, samples)
    for name, help_text, _collector in profile.counters:
        series = [("", labels.of(rank, extra), value)
                  for (family, rank, extra), value in sorted(snap.counters.items(), key=_order)
                  if family == name]
        _family(lines, name, "counter", help_text, series)
    for family in profile.histograms:
        _family(lines, family.name, "histogram", family.help,
                _histogram_samples(snap, family, labels))
    return "\n".join(lines) + "\n"


class _Labels:
    def __init__(self, profile: MetricsProfile, model_name: str, launch: Launch) -> None:
        self.tokenizer = profile.tokenizer_labels(model_name, launch.engine_type)
        self.scheduler = profile.scheduler_labels(model_name, launch.engine_type)
        if launch.priority_scheduling:
            self.tokenizer["priority"] = self.scheduler["priority"] = ""
        self.launch = launch

    def of(self, rank: int | None, extra: Iterable[tuple[str, str]] = ()) -> dict[str, str]:
        if rank is None:
            return {**self.tokenizer, **dict(extra)}
        base = dict(self.scheduler)
        if self.launch.dp_size > 1:
            base["dp_rank"] = str(rank)
        return {**base, **dict(extra)}


def _order(item: tuple[SeriesKey, Any]) -> tuple[str, int, SeriesKey]:
    (family, rank, extra), _ = item
    return (family, -1 if rank is None else rank, (family, rank, extra))


def _gauge_samples(snap: Snapshot, name: str, labels: _Labels) -> list[Sample]:
    samples: list[Sample] = []
    ranks = snap.ranks or ()
    for rank, view in enumerate(ranks):
        base = labels.of(rank)
        if name in PID_GAUGES:
            base["pid"] = str(labels.launch.pid + rank)
        samples.append(("", base, float(getattr(view, name))))
        if name in BY_PRIORITY and labels.launch.priority_scheduling:
            for priority, count in sorted(getattr(view, BY_PRIORITY[name]).items()):
                samples.append(("", dict(base, priority=str(priority)), float(count)))
    if not ranks:  # a snapshot without per-rank views: the totals, as one scheduler
        samples.append(("", labels.of(0), float(getattr(snap, name, 0.0))))
    return samples


def _http_families(lines: list[str], snap: Snapshot) -> None:
    active = [
        ("", {"endpoint": e, "method": m}, float(n))
        for (e, m), n in sorted(snap.http_active.items())
    ]
    requests = [
        ("", {"endpoint": e, "method": m}, float(n))
        for (e, m), n in sorted(snap.http_requests.items())
    ]
    responses = [
        ("", {"endpoint": e, "status_code": s, "method": m}, float(n))
        for (e, s, m), n in sorted(snap.http_responses.items())
    ]
    _family(
        lines, "http_requests_active", "gauge", "Number of currently active HTTP requests", active
    )
    _family(lines, "http_requests_total", "counter", "Total number of HTTP requests", requests)
    _family(
        lines,
        "http_responses_total",
        "counter",
        "Total number of HTTP responses by status code",
        responses,
    )


def _histogram_samples(snap: Snapshot, family: HistogramFamily, labels: _Labels) -> list[Sample]:
    samples: list[Sample] = []
    # Series exist only once observed, as with prometheus_client's labelled histograms.
    for (name, rank, extra), view in sorted(snap.histograms.items(), key=_order):
        if name != family.name:
            continue
        series = labels.of(rank, extra)
        for bound, count in view.buckets:
            samples.append(("_bucket", dict(series, le=_number(bound)), float(count)))
        samples.append(("_count", series, float(view.count)))
        samples.append(("_sum", series, view.total))
    return samples


def _family(
    lines: list[str], name: str, kind: str, help_text: str, samples: Iterable[Sample]
) -> None:
    samples = list(samples)
    if not samples:
        return
    full = f"sglang:{name}"
    lines.append(f"# HELP {full} {help_text}")
    lines.append(f"# TYPE {full} {kind}")
    for suffix, labels, value in samples:
        lines.append(f"{full}{suffix}{_labels(labels)} {_number(value)}")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    # Sorted by name, as prometheus_client's multiprocess collector writes them.
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in sorted(labels.items()))
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    """Format like prometheus_client: 1.0, 0.25, +Inf."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))
