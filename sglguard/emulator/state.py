"""Live state of an emulated server: requests in flight, counters, gauges and histograms."""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

# Sized like Llama-3.1-8B in bf16 on one 80 GB GPU at mem_fraction_static 0.88:
# 32 layers x 8 KV heads x 128 dims x (K, V) x 2 bytes = 128 KiB per token.
WEIGHT_GB = 14.99
KV_CACHE_GB = 54.4
GRAPH_GB = {"decode": 0.62, "prefill": 0.31}
MAX_TOTAL_NUM_TOKENS = int(KV_CACHE_GB * 8192)


def _bounds(text: str) -> tuple[float, ...]:
    return tuple(float(bound) for bound in text.split())


TTFT_BUCKETS = _bounds("0.1 0.2 0.4 0.6 0.8 1 2 4 6 8 10 20 40 60 80 100 200 400")
ITL_BUCKETS = _bounds(
    "0.002 0.004 0.006 0.008 0.010 0.015 0.020 0.025 0.030 0.035 0.040 0.060 0.080 0.100 "
    "0.200 0.400 0.600 0.800 1 2 4 6 8"
)
TPOT_BUCKETS = _bounds(
    "0.002 0.005 0.010 0.020 0.030 0.040 0.050 0.060 0.070 0.080 0.090 0.100 0.150 0.200 "
    "0.300 0.400 0.600 0.800 1 2 4 6 8"
)
E2E_BUCKETS = _bounds("0.1 0.2 0.4 0.6 0.8 1 2 4 6 8 10 20 40 60 80 100 200 400 600 1200 1800 2400")
QUEUE_BUCKETS = _bounds(
    "0 0.001 0.005 0.01 0.05 0.1 0.2 0.5 1 2 5 10 20 30 60 120 300 600 1200 2400"
)

# Histogram name (without the `sglang:` prefix) -> bucket bounds.
HISTOGRAM_BUCKETS: dict[str, tuple[float, ...]] = {
    "time_to_first_token_seconds": TTFT_BUCKETS,
    "inter_token_latency_seconds": ITL_BUCKETS,
    "request_time_per_output_token_seconds": TPOT_BUCKETS,
    "e2e_request_latency_seconds": E2E_BUCKETS,
    "queue_time_seconds": QUEUE_BUCKETS,
}

COUNTER_NAMES = (
    "prompt_tokens_total",
    "generation_tokens_total",
    "cached_tokens_total",
    "num_requests_total",
    "num_aborted_requests_total",
    "num_retracted_requests_total",
    "num_grammar_aborted_total",
    "num_grammar_timeout_total",
)

PREFIX_CACHE_TOKENS = 4096  # per remembered prompt
PREFIX_CACHE_PROMPTS = 32

# SGLang's gen_throughput describes recent decoding; after this long idle it reads 0.
THROUGHPUT_WINDOW_S = 10.0


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


@dataclass(frozen=True)
class GenerationRecord:
    """What one finished generation adds to the metrics."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    queue_time: float
    ttft: float
    itl: float
    e2e: float
    streaming: bool


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy of everything the metrics and info endpoints report."""

    num_running_reqs: int
    num_queue_reqs: int
    num_used_tokens: int
    max_total_num_tokens: int
    max_running_requests: int
    token_usage: float
    cache_hit_rate: float
    gen_throughput: float
    last_gen_throughput: float
    utilization: float
    num_grammar_queue_reqs: int
    num_retracted_reqs: int
    counters: dict[str, int]
    histograms: dict[tuple[str, str], HistogramView]
    http_requests: dict[tuple[str, str], int]
    http_responses: dict[tuple[str, str, str], int]
    http_active: dict[tuple[str, str], int]


@dataclass
class _Flight:
    tokens: int
    running: bool = False
    aborted: bool = False


@dataclass
class _Flags:
    ready_at: float = math.inf
    draining: bool = False
    paused: bool = False
    stopping: bool = False


@dataclass
class _Http:
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    responses: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    active: Counter[tuple[str, str]] = field(default_factory=Counter)


class EmulatorState:
    """Everything /metrics, /v1/loads and /server_info report, behind one lock."""

    def __init__(self, max_running_requests: int) -> None:
        self.cond = threading.Condition()
        self.max_running_requests = max_running_requests
        self.flags = _Flags()
        self.queued_by_fault = 0
        self._flights: dict[str, _Flight] = {}
        self._counters = dict.fromkeys(COUNTER_NAMES, 0)
        self._histograms: dict[tuple[str, str], Histogram] = {}
        self._http = _Http()
        self._prefixes: deque[tuple[str, ...]] = deque(maxlen=PREFIX_CACHE_PROMPTS)
        self._last_throughput = 0.0
        self._last_finished = -math.inf

    # -- lifecycle flags -------------------------------------------------------------------

    def mark_started(self, startup_delay: float) -> None:
        with self.cond:
            self.flags.ready_at = time.monotonic() + startup_delay
            self.cond.notify_all()

    def is_starting(self) -> bool:
        with self.cond:
            return time.monotonic() < self.flags.ready_at

    def set_flag(self, name: str, value: bool) -> None:
        with self.cond:
            setattr(self.flags, name, value)
            self.cond.notify_all()

    def wait_unpaused(self, timeout: float) -> bool:
        """Wait up to `timeout` for generation to continue; True if it is not paused."""
        with self.cond:
            return (
                self.cond.wait_for(
                    lambda: not self.flags.paused or self.flags.stopping, timeout=timeout
                )
                and not self.flags.paused
            )

    def pause_for(self, seconds: float) -> bool:
        """Sleep, cut short by draining or stopping; True if neither happened."""
        with self.cond:
            self.cond.wait_for(lambda: self.flags.draining or self.flags.stopping, timeout=seconds)
            return not (self.flags.draining or self.flags.stopping)

    def wait_idle(self, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(self._idle, timeout=timeout)

    def is_idle(self) -> bool:
        with self.cond:
            return self._idle()

    def _idle(self) -> bool:
        return not self._flights and self.queued_by_fault == 0

    def flush_prefix_cache(self) -> None:
        with self.cond:
            self._prefixes.clear()

    def set_fault_queue(self, count: int) -> None:
        with self.cond:
            self.queued_by_fault = count
            self.cond.notify_all()

    # -- requests in flight ----------------------------------------------------------------

    def admit(self, rid: str, prompt: Sequence[str]) -> int:
        """Register a request as waiting; return how many prompt tokens the prefix cache holds."""
        # Comparing the head of each prompt is enough to emulate hits and keeps admission cheap.
        key = tuple(prompt[:PREFIX_CACHE_TOKENS])
        tokens = len(prompt)
        with self.cond:
            cached = max((_common_prefix(key, seen) for seen in self._prefixes), default=0)
            # As in SGLang, at least one prompt token is always computed, never all from cache.
            cached = max(0, min(cached, tokens - 1))
            self._prefixes.append(key)
            self._flights[rid] = _Flight(tokens=tokens)
            return cached

    def wait_to_run(self, rid: str) -> bool:
        """Wait while paused or at max_running_requests; False if aborted or stopping."""
        with self.cond:
            flight = self._flights[rid]
            self.cond.wait_for(lambda: flight.aborted or self.flags.stopping or self._can_run())
            if flight.aborted or self.flags.stopping:
                return False
            flight.running = True
            return True

    def _can_run(self) -> bool:
        running = sum(1 for f in self._flights.values() if f.running)
        return not self.flags.paused and running < self.max_running_requests

    def was_aborted(self, rid: str) -> bool:
        with self.cond:
            flight = self._flights.get(rid)
            return flight is None or flight.aborted

    def release(self, rid: str) -> None:
        with self.cond:
            self._flights.pop(rid, None)
            self.cond.notify_all()

    def abort(self, rid: str | None) -> int:
        """Abort one request (by rid) or, with None, everything running or waiting."""
        with self.cond:
            hits = [f for r, f in self._flights.items() if (rid is None or r == rid)]
            hits = [f for f in hits if not f.aborted]
            for flight in hits:
                flight.aborted = True
            aborted = len(hits)
            if rid is None:
                aborted += self.queued_by_fault
                self.queued_by_fault = 0
            self._counters["num_aborted_requests_total"] += aborted
            self.cond.notify_all()
            return aborted

    # -- metrics ---------------------------------------------------------------------------

    def record(self, rec: GenerationRecord) -> None:
        with self.cond:
            counters = self._counters
            counters["prompt_tokens_total"] += rec.prompt_tokens
            counters["generation_tokens_total"] += rec.completion_tokens
            counters["cached_tokens_total"] += rec.cached_tokens
            counters["num_requests_total"] += 1
            streaming = "true" if rec.streaming else "false"
            self._observe("time_to_first_token_seconds", streaming, rec.ttft)
            self._observe("e2e_request_latency_seconds", streaming, rec.e2e)
            self._observe("queue_time_seconds", "", rec.queue_time)
            if rec.completion_tokens > 1:
                self._observe(
                    "inter_token_latency_seconds", streaming, rec.itl, rec.completion_tokens - 1
                )
                tpot = (rec.e2e - rec.ttft) / (rec.completion_tokens - 1)
                self._observe("request_time_per_output_token_seconds", streaming, tpot)
            if rec.completion_tokens > 0 and rec.e2e > rec.ttft:
                self._last_throughput = rec.completion_tokens / (rec.e2e - rec.ttft)
            self._last_finished = time.monotonic()

    def count_grammar_abort(self) -> None:
        with self.cond:
            self._counters["num_grammar_aborted_total"] += 1

    def _observe(self, name: str, streaming: str, value: float, times: int = 1) -> None:
        key = (name, streaming)
        histogram = self._histograms.get(key)
        if histogram is None:
            histogram = self._histograms[key] = Histogram(HISTOGRAM_BUCKETS[name])
        histogram.observe(value, times)

    def http_started(self, endpoint: str, method: str) -> None:
        with self.cond:
            self._http.requests[endpoint, method] += 1
            self._http.active[endpoint, method] += 1

    def http_finished(self, endpoint: str, method: str, status: int | None) -> None:
        with self.cond:
            self._http.active[endpoint, method] -= 1
            if status is not None:
                self._http.responses[endpoint, str(status), method] += 1

    def snapshot(self) -> Snapshot:
        with self.cond:
            running = [f for f in self._flights.values() if f.running]
            used = sum(f.tokens for f in running)
            prompt = self._counters["prompt_tokens_total"]
            recent = time.monotonic() - self._last_finished < THROUGHPUT_WINDOW_S
            return Snapshot(
                num_running_reqs=len(running),
                num_queue_reqs=len(self._flights) - len(running) + self.queued_by_fault,
                num_used_tokens=used,
                max_total_num_tokens=MAX_TOTAL_NUM_TOKENS,
                max_running_requests=self.max_running_requests,
                token_usage=used / MAX_TOTAL_NUM_TOKENS,
                cache_hit_rate=self._counters["cached_tokens_total"] / prompt if prompt else 0.0,
                gen_throughput=self._last_throughput if recent else 0.0,
                last_gen_throughput=self._last_throughput,
                utilization=len(running) / self.max_running_requests,
                num_grammar_queue_reqs=0,  # grammars compile at once here
                num_retracted_reqs=0,  # the emulated KV cache never runs short
                counters=dict(self._counters),
                histograms={k: h.view() for k, h in self._histograms.items()},
                http_requests=dict(self._http.requests),
                http_responses=dict(self._http.responses),
                http_active=dict(self._http.active),
            )

    def close(self) -> None:
        self.set_flag("stopping", True)


def _common_prefix(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length
