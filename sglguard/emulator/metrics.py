"""Prometheus text exposition of an emulated server, in the names and labels of a release."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from .profiles import CURRENT, HistogramFamily, MetricsProfile
from .state import Snapshot

Labels = Mapping[str, str]
Sample = tuple[str, Labels, float]  # (name suffix, labels, value)


def scheduler_labels(model_name: str) -> dict[str, str]:
    """Labels SGLang 0.5.23 puts on scheduler metrics of a single-GPU server."""
    return CURRENT.scheduler_labels(model_name)


def render_metrics(snap: Snapshot, model_name: str, profile: MetricsProfile = CURRENT) -> str:
    """The body of GET /metrics."""
    base = profile.scheduler_labels(model_name)
    lines: list[str] = []
    if profile.http_metrics:
        _http_families(lines, snap)
    for name, help_text in profile.gauges:
        value = float(getattr(snap, name))
        _family(lines, name, "gauge", help_text, [("", base, value)])
    for name, help_text in profile.counters:
        _family(lines, name, "counter", help_text, [("", base, float(snap.counters[name]))])
    for family in profile.histograms:
        samples = _histogram_samples(snap, family, base)
        _family(lines, family.name, "histogram", family.help, samples)
    return "\n".join(lines) + "\n"


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


def _histogram_samples(snap: Snapshot, family: HistogramFamily, base: Labels) -> list[Sample]:
    samples: list[Sample] = []
    # Series exist only once observed, as with prometheus_client's labelled histograms.
    for (name, streaming), view in sorted(snap.histograms.items()):
        if name != family.name:
            continue
        labels = dict(base, is_streaming=streaming) if streaming else dict(base)
        for bound, count in view.buckets:
            samples.append(("_bucket", dict(labels, le=_number(bound)), float(count)))
        samples.append(("_count", labels, float(view.count)))
        samples.append(("_sum", labels, view.total))
    return samples


def _family(
    lines: list[str], name: str, kind: str, help_text: str, samples: Iterable[Sample]
) -> None:
    full = f"sglang:{name}"
    lines.append(f"# HELP {full} {help_text}")
    lines.append(f"# TYPE {full} {kind}")
    for suffix, labels, value in samples:
        lines.append(f"{full}{suffix}{_labels(labels)} {_number(value)}")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())
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
