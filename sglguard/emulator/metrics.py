"""Prometheus text exposition of an emulated server, with SGLang 0.5.23 names and labels."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from .state import Snapshot

Labels = Mapping[str, str]
Sample = tuple[str, Labels, float]  # (name suffix, labels, value)

GAUGES: tuple[tuple[str, str], ...] = (
    ("num_running_reqs", "The number of running requests."),
    ("num_queue_reqs", "The number of requests in the waiting queue."),
    ("num_grammar_queue_reqs", "The number of requests in the grammar waiting queue."),
    ("num_used_tokens", "The number of used tokens."),
    ("token_usage", "The token usage."),
    ("cache_hit_rate", "The prefix cache hit rate."),
    ("max_total_num_tokens", "Maximum total number of tokens in the KV cache pool."),
    ("gen_throughput", "The generation throughput (token/s)."),
    ("utilization", "The utilization."),
    ("num_retracted_reqs", "The number of currently retracted requests."),
)

COUNTERS: tuple[tuple[str, str], ...] = (
    ("prompt_tokens_total", "Number of prefill tokens processed."),
    ("generation_tokens_total", "Number of generation tokens processed."),
    ("cached_tokens_total", "Number of cached prompt tokens."),
    ("num_requests_total", "Number of requests processed."),
    ("num_aborted_requests_total", "Number of requests aborted."),
    ("num_retracted_requests_total", "Number of retracted requests."),
    ("num_grammar_aborted_total", "Number of grammar-constrained requests aborted."),
    ("num_grammar_timeout_total", "Number of grammar compilations that timed out."),
)

HISTOGRAMS: tuple[tuple[str, str], ...] = (
    ("time_to_first_token_seconds", "Histogram of time to first token in seconds."),
    ("inter_token_latency_seconds", "Histogram of inter-token latency in seconds."),
    ("request_time_per_output_token_seconds", "Histogram of time per output token in seconds."),
    ("e2e_request_latency_seconds", "Histogram of End-to-end request latency in seconds"),
    ("queue_time_seconds", "Histogram of queueing time in seconds."),
)


def scheduler_labels(model_name: str) -> dict[str, str]:
    """Labels SGLang 0.5.23 puts on scheduler metrics of a single-GPU server."""
    return {
        "model_name": model_name,
        "engine_type": "unified",
        "tp_rank": "0",
        "pp_rank": "0",
        "moe_ep_rank": "0",
    }


def render_metrics(snap: Snapshot, model_name: str) -> str:
    """The body of GET /metrics."""
    base = scheduler_labels(model_name)
    lines: list[str] = []
    _http_families(lines, snap)
    for name, help_text in GAUGES:
        value = float(getattr(snap, name))
        _family(lines, name, "gauge", help_text, [("", base, value)])
    for name, help_text in COUNTERS:
        _family(lines, name, "counter", help_text, [("", base, float(snap.counters[name]))])
    for name, help_text in HISTOGRAMS:
        _family(lines, name, "histogram", help_text, _histogram_samples(snap, name, base))
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


def _histogram_samples(snap: Snapshot, name: str, base: Labels) -> list[Sample]:
    samples: list[Sample] = []
    # Series exist only once observed, as with prometheus_client's labelled histograms.
    for (hist_name, streaming), view in sorted(snap.histograms.items()):
        if hist_name != name:
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
