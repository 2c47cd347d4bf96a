"""What differs between the SGLang releases the emulator can pose as (`--metrics-version`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from . import histograms as h

# What one finished request can add to a histogram; a profile says which family shows which.
Source = Literal["ttft", "itl", "tpot", "e2e", "queue"]
# Which process writes a family: the HTTP/tokenizer process (labels model_name, engine_type)
# or a scheduler, one per DP rank (also tp_rank, pp_rank, moe_ep_rank, dp_rank, priority).
Collector = Literal["tokenizer", "scheduler"]

DEFAULT_METRICS_VERSION = "0.5.23"


@dataclass(frozen=True)
class HistogramFamily:
    """One exposed histogram: its name (without `sglang:`), help, source and buckets."""

    name: str
    help: str
    source: Source
    buckets: tuple[float, ...]
    streaming_label: bool = False  # split series by is_streaming
    collector: Collector = "tokenizer"
    latency: bool = False  # a PD prefill worker never observes it (TTFT, ITL, TPOT)


@dataclass(frozen=True)
class MetricsProfile:
    """The surface of one release: metric families and labels, and the endpoints it had."""

    version: str  # what /server_info and /v1/loads report
    extra_labels: tuple[tuple[str, str], ...]  # scheduler labels besides model_name
    gauges: tuple[tuple[str, str], ...]  # (name, help), one series per scheduler (DP rank)
    counters: tuple[tuple[str, str, Collector], ...]  # (name, help, collector)
    histograms: tuple[HistogramFamily, ...]
    http_metrics: bool  # sglang:http_requests_total and friends
    health_generates: bool  # /health runs a 1-token generation (else a plain 200)
    renamed_endpoints: bool  # /server_info, /model_info exist (else only /get_server_info, ...)
    graph_by_phase: bool  # memory_usage.graph is a dict by phase (else a number)
    tokenizer_gauges: tuple[tuple[str, str], ...] = ()  # (name, help), by `phase`
    engine_type_label: bool = False  # tokenizer families carry engine_type too
    streaming_counters: bool = False  # token and request counters split by is_streaming

    def scheduler_labels(self, model_name: str, engine_type: str = "unified") -> dict[str, str]:
        labels = {"model_name": model_name, **dict(self.extra_labels)}
        if "engine_type" in labels:
            labels["engine_type"] = engine_type
        return labels

    def tokenizer_labels(self, model_name: str, engine_type: str = "unified") -> dict[str, str]:
        if self.engine_type_label:
            return {"model_name": model_name, "engine_type": engine_type}
        return {"model_name": model_name}


CURRENT = MetricsProfile(
    version="0.5.23",
    extra_labels=(
        ("engine_type", "unified"),
        ("tp_rank", "0"),
        ("pp_rank", "0"),
        ("moe_ep_rank", "0"),
    ),
    gauges=(
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
        ("num_paused_reqs", "The number of paused requests by async weight sync."),
        ("kv_used_tokens", "KV cache slots held by running requests."),
        ("kv_available_tokens", "Free KV cache slots."),
        ("kv_evictable_tokens", "KV cache slots holding evictable prefix-cache data."),
    ),
    counters=(
        ("prompt_tokens_total", "Number of prefill tokens processed.", "tokenizer"),
        ("generation_tokens_total", "Number of generation tokens processed.", "tokenizer"),
        ("cached_tokens_total", "Number of cached prompt tokens.", "tokenizer"),
        ("num_requests_total", "Number of requests processed.", "tokenizer"),
        ("num_so_requests_total", "Number of structured output requests processed.",
         "tokenizer"),
        ("num_aborted_requests_total", "Number of requests aborted.", "tokenizer"),
        ("realtime_tokens_total", "Total number of tokens processed (updated on each log "
         "interval). mode: prefill_compute, prefill_cache, decode.", "scheduler"),
        ("num_retracted_requests_total", "Number of retracted requests.", "scheduler"),
        ("num_retracted_input_tokens_total", "Number of retracted input tokens.", "scheduler"),
        ("num_retracted_output_tokens_total", "Number of retracted output tokens.",
         "scheduler"),
        ("num_grammar_aborted_total", "Number of grammar-constrained requests aborted.",
         "scheduler"),
        ("num_grammar_timeout_total", "Number of grammar compilations that timed out.",
         "scheduler"),
    ),
    tokenizer_gauges=(
        ("startup_time_seconds", "Server startup time by phase in seconds."),
    ),
    engine_type_label=True,
    streaming_counters=True,
    histograms=(
        HistogramFamily(
            "time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            "ttft",
            h.TTFT_BUCKETS,
            streaming_label=True,
            latency=True,
        ),
        HistogramFamily(
            "inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            "itl",
            h.ITL_BUCKETS,
            latency=True,
        ),
        HistogramFamily(
            "request_time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            "tpot",
            h.TPOT_BUCKETS,
            streaming_label=True,
            latency=True,
        ),
        HistogramFamily(
            "e2e_request_latency_seconds",
            "Histogram of End-to-end request latency in seconds",
            "e2e",
            h.E2E_BUCKETS,
            streaming_label=True,
        ),
        HistogramFamily(
            "queue_time_seconds",
            "Histogram of queueing time in seconds.",
            "queue",
            h.QUEUE_BUCKETS,
            collector="scheduler",
        ),
    ),
    http_metrics=True,
    health_generates=True,
    renamed_endpoints=True,
    graph_by_phase=True,
)

# The release of the sample in SGLang's docs: exactly the families that sample shows (its
# sglang:func_latency_seconds aside, a debugging timer keyed by function name), only the
# model_name label, per-token time_per_output_token_seconds, and its bucket sets.
LEGACY = MetricsProfile(
    version="0.4.6",
    extra_labels=(),
    gauges=(
        ("num_running_reqs", "The number of running requests"),
        ("num_used_tokens", "The number of used tokens"),
        ("token_usage", "The token usage"),
        ("cache_hit_rate", "The cache hit rate"),
        ("gen_throughput", "The generate throughput (token/s)"),
        ("num_queue_reqs", "The number of requests in the waiting queue"),
    ),
    counters=(
        ("prompt_tokens_total", "Number of prefill tokens processed.", "scheduler"),
        ("generation_tokens_total", "Number of generation tokens processed.", "scheduler"),
    ),
    histograms=(
        HistogramFamily(
            "time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            "ttft",
            h.LEGACY_TTFT_BUCKETS,
        ),
        HistogramFamily(
            "e2e_request_latency_seconds",
            "Histogram of End-to-end request latency in seconds",
            "e2e",
            h.LEGACY_E2E_BUCKETS,
        ),
        # Observed once per output token, like today's inter-token latency: in the docs
        # sample its count is close to generation_tokens_total.
        HistogramFamily(
            "time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            "itl",
            h.LEGACY_TPOT_BUCKETS,
        ),
    ),
    http_metrics=False,
    health_generates=False,
    renamed_endpoints=False,
    graph_by_phase=False,
)

PROFILES: dict[str, MetricsProfile] = {DEFAULT_METRICS_VERSION: CURRENT, "legacy": LEGACY}
METRICS_VERSIONS = tuple(PROFILES)
