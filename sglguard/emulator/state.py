"""Live state of an emulated server: requests in flight, counters, gauges and histograms."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from .histograms import Histogram, HistogramView
from .profiles import CURRENT, HistogramFamily, Source

# Sized like Llama-3.1-8B in bf16 on one 80 GB GPU at mem_fraction_static 0.88:
# 32 layers x 8 KV heads x 128 dims x (K, V) x 2 bytes = 128 KiB per token.
WEIGHT_GB = 14.99
KV_CACHE_GB = 54.4
GRAPH_GB = {"decode": 0.62, "prefill": 0.31}
TOKENS_PER_GB = 8192
MAX_TOTAL_NUM_TOKENS = int(KV_CACHE_GB * TOKENS_PER_GB)


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
    stalled: bool = False  # the `stall` fault: nothing advances
    stopping: bool = False


@dataclass
class _Http:
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    responses: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    active: Counter[tuple[str, str]] = field(default_factory=Counter)


class EmulatorState:
    """Everything /metrics, /v1/loads and /server_info report, behind one lock."""

    def __init__(
        self,
        max_running_requests: int,
        histograms: tuple[HistogramFamily, ...] = CURRENT.histograms,
    ) -> None:
        self.cond = threading.Condition()
        self._families = histograms
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

    def wait_for_output(self, timeout: float) -> bool:
        """Wait up to `timeout` until generation can produce output (not paused nor stalled)."""
        with self.cond:
            self.cond.wait_for(lambda: self._producing() or self.flags.stopping, timeout=timeout)
            return self._producing() and not self.flags.stopping

    def _producing(self) -> bool:
        return not (self.flags.paused or self.flags.stalled)

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
        return not self._flights and self.queued_by_fault == 0 and not self.flags.stalled

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

    def hold(self, rid: str, seconds: float) -> bool:
        """Keep a request running for `seconds`; False if it is aborted or the server stops."""
        with self.cond:
            flight = self._flights[rid]
            if seconds > 0:
                self.cond.wait_for(lambda: flight.aborted or self.flags.stopping, timeout=seconds)
            return not (flight.aborted or self.flags.stopping)

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

    def record(self, rid: str, rec: GenerationRecord) -> float | None:
        """Count a finished request; while stalled, wait first (the wait counts as latency).

        Returns the seconds waited, or None if the request was aborted or the server stopped.
        """
        with self.cond:
            flight = self._flights.get(rid)
            began = time.monotonic()
            self.cond.wait_for(
                lambda: (
                    not self.flags.stalled
                    or self.flags.stopping
                    or flight is None
                    or flight.aborted
                )
            )
            if self.flags.stopping or flight is None or flight.aborted:
                return None
            waited = time.monotonic() - began
            self._add(replace(rec, ttft=rec.ttft + waited, e2e=rec.e2e + waited))
            return waited

    def _add(self, rec: GenerationRecord) -> None:
        counters = self._counters
        counters["prompt_tokens_total"] += rec.prompt_tokens
        counters["generation_tokens_total"] += rec.completion_tokens
        counters["cached_tokens_total"] += rec.cached_tokens
        counters["num_requests_total"] += 1
        tokens = rec.completion_tokens
        values: dict[Source, tuple[float, int]] = {
            "ttft": (rec.ttft, 1),
            "e2e": (rec.e2e, 1),
            "queue": (rec.queue_time, 1),
        }
        if tokens > 1:
            values["itl"] = (rec.itl, tokens - 1)
            values["tpot"] = ((rec.e2e - rec.ttft) / (tokens - 1), 1)
        streaming = "true" if rec.streaming else "false"
        for family in self._families:
            if family.source in values:
                value, times = values[family.source]
                self._observe(family, streaming if family.streaming_label else "", value, times)
        if tokens > 0 and rec.e2e > rec.ttft:
            self._last_throughput = tokens / (rec.e2e - rec.ttft)
        self._last_finished = time.monotonic()

    def count_grammar_abort(self) -> None:
        with self.cond:
            self._counters["num_grammar_aborted_total"] += 1

    def _observe(self, family: HistogramFamily, streaming: str, value: float, times: int) -> None:
        key = (family.name, streaming)
        histogram = self._histograms.get(key)
        if histogram is None:
            histogram = self._histograms[key] = Histogram(family.buckets)
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

    def snapshot(self, leaked_tokens: int = 0) -> Snapshot:
        """Copy the state; `leaked_tokens` (the memory_growth fault) count as used KV tokens."""
        with self.cond:
            running = [f for f in self._flights.values() if f.running]
            # A stalled scheduler shows at least the request it is stuck on.
            num_running = max(len(running), 1) if self.flags.stalled else len(running)
            used = min(sum(f.tokens for f in running) + leaked_tokens, MAX_TOTAL_NUM_TOKENS)
            prompt = self._counters["prompt_tokens_total"]
            recent = time.monotonic() - self._last_finished < THROUGHPUT_WINDOW_S
            return Snapshot(
                num_running_reqs=num_running,
                num_queue_reqs=len(self._flights) - len(running) + self.queued_by_fault,
                num_used_tokens=used,
                max_total_num_tokens=MAX_TOTAL_NUM_TOKENS,
                max_running_requests=self.max_running_requests,
                token_usage=used / MAX_TOTAL_NUM_TOKENS,
                cache_hit_rate=self._counters["cached_tokens_total"] / prompt if prompt else 0.0,
                gen_throughput=self._last_throughput if recent and not self.flags.stalled else 0.0,
                last_gen_throughput=self._last_throughput,
                utilization=num_running / self.max_running_requests,
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
