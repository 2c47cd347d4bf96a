"""Live state of an emulated server: requests in flight, counters, gauges and histograms."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from .histograms import Histogram
from .profiles import CURRENT, HistogramFamily, Source
from .snapshot import GenerationRecord, RankView, SeriesKey, Snapshot

# Sized like Llama-3.1-8B in bf16 on one 80 GB GPU at mem_fraction_static 0.88:
# 32 layers x 8 KV heads x 128 dims x (K, V) x 2 bytes = 128 KiB per token.
WEIGHT_GB = 14.99
KV_CACHE_GB = 54.4
GRAPH_GB = {"decode": 0.62, "prefill": 0.31}
TOKENS_PER_GB = 8192
MAX_TOTAL_NUM_TOKENS = int(KV_CACHE_GB * TOKENS_PER_GB)


PREFIX_CACHE_TOKENS = 4096  # per remembered prompt
PREFIX_CACHE_PROMPTS = 32

# SGLang's gen_throughput describes recent decoding; after this long idle it reads 0.
THROUGHPUT_WINDOW_S = 10.0

# With priority scheduling and no --default-priority-value, SGLang 0.5.23's scheduler gives a
# request sent without a priority the lowest one (-sys.maxsize - 1, higher values first): its
# queue/running gauges are labelled with that number, while the tokenizer's request counters
# keep the empty priority label.
LOWEST_PRIORITY = -(2**63)

# SGLang notices that the client of a non-streamed request hung up when its wait for output
# times out (SGLANG_REQUEST_STATE_WAIT_TIMEOUT, 4 s); a stream's, as soon as the HTTP server
# does (at once, or at its next write). Either way the request is aborted and counted once.
NON_STREAM_DISCONNECT_CHECK_S = 4.0
STREAM_DISCONNECT_CHECK_S = 0.2


@dataclass
class _Flight:
    tokens: int
    rank: int = 0
    priority: int | None = None  # as the tokenizer labels it (None: priority="")
    queue_priority: int | None = None  # as the scheduler's gauges label it
    running: bool = False
    aborted: bool = False
    decode_target: int = 0  # tokens to decode in real time (--decode-speed), 0: none
    decoded: float = 0.0  # of those, counted in realtime_tokens_total so far
    last_step: float = 0.0
    retracted: bool = False  # sent back to the queue (pause mode "retract") until resumed
    # Whether the HTTP client hung up (None: no client, e.g. synthetic load) and when to ask.
    client_gone: Callable[[], bool] | None = None
    streaming: bool = False
    next_check: float = 0.0
    disconnected: bool = False


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
        *,
        dp_size: int = 1,
        priority_scheduling: bool = False,
        prefill_only: bool = False,
        decode_only: bool = False,
        decode_speed: float = 0.0,
        streaming_counters: bool = True,
        default_priority_value: int | None = None,
    ) -> None:
        self.cond = threading.Condition()
        self._families = histograms
        self.max_running_requests = max_running_requests  # per DP rank, as SGLang's
        self.dp_size = dp_size
        self.priority_scheduling = priority_scheduling
        self.default_priority_value = default_priority_value
        self.prefill_only = prefill_only  # a PD prefill worker: no decode, no TTFT/ITL/TPOT
        self.decode_only = decode_only  # a PD decode worker: its KV arrives, no prefill step
        self.decode_speed = decode_speed
        self.streaming_counters = streaming_counters
        self.flags = _Flags()
        self.queued_by_fault = 0
        self._flights: dict[str, _Flight] = {}
        self._next_rank = 0
        self._priorities: set[int] = set()
        # Series exist once first written (created on first use), as in prometheus_client.
        self._counters: dict[SeriesKey, float] = {}
        self._histograms: dict[SeriesKey, Histogram] = {}
        self._http = _Http()
        self._prefixes: deque[tuple[str, ...]] = deque(maxlen=PREFIX_CACHE_PROMPTS)
        self._prompt_tokens = 0
        self._cached_tokens = 0
        self._last_throughput = 0.0
        self._last_finished = -math.inf
        self._startup: dict[str, float] = {}
        self._watcher: threading.Thread | None = None

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

    def in_flight(self) -> int:
        """Requests admitted and not yet released (waiting or running)."""
        with self.cond:
            return len(self._flights)

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

    def admit(self, rid: str, prompt: Sequence[str], priority: int | None = None, *,
              client_gone: Callable[[], bool] | None = None, streaming: bool = False) -> int:
        """Register a request as waiting (on the next DP rank, round robin); return how many
        prompt tokens the prefix cache holds. `client_gone` tells whether its HTTP client hung
        up: if it does while the request is in flight, the request is aborted."""
        # Comparing the head of each prompt is enough to emulate hits and keeps admission cheap.
        key = tuple(prompt[:PREFIX_CACHE_TOKENS])
        tokens = len(prompt)
        with self.cond:
            cached = max((_common_prefix(key, seen) for seen in self._prefixes), default=0)
            # As in SGLang, at least one prompt token is always computed, never all from cache.
            cached = max(0, min(cached, tokens - 1))
            self._prefixes.append(key)
            queue_priority = None
            if self.priority_scheduling:
                # The tokenizer fills in --default-priority-value; the scheduler gives what is
                # still missing the lowest priority.
                if priority is None:
                    priority = self.default_priority_value
                queue_priority = LOWEST_PRIORITY if priority is None else priority
                self._priorities.add(queue_priority)
            rank, self._next_rank = self._next_rank, (self._next_rank + 1) % self.dp_size
            self._flights[rid] = _Flight(
                tokens=tokens, rank=rank, priority=priority, queue_priority=queue_priority,
                client_gone=client_gone, streaming=streaming,
                next_check=time.monotonic() + _disconnect_check_s(streaming))
            if client_gone is not None and self._watcher is None:
                self._watcher = threading.Thread(target=self._watch_clients, daemon=True,
                                                 name="emulator-disconnects")
                self._watcher.start()
            return cached

    def _watch_clients(self) -> None:
        """Abort the requests whose client hung up, as SGLang's tokenizer manager does."""
        while True:
            with self.cond:
                if self.flags.stopping:
                    return
                now = time.monotonic()
                due: list[tuple[str, _Flight, Callable[[], bool]]] = []
                for rid, flight in self._flights.items():
                    if (flight.client_gone is not None and not flight.aborted
                            and flight.next_check <= now):
                        flight.next_check = now + _disconnect_check_s(flight.streaming)
                        due.append((rid, flight, flight.client_gone))
            gone = [(rid, flight) for rid, flight, client_gone in due if client_gone()]
            with self.cond:
                for rid, flight in gone:
                    flight.disconnected = True
                    self._abort(rid)
                self.cond.wait(STREAM_DISCONNECT_CHECK_S)

    def client_disconnected(self, rid: str) -> bool:
        """Whether the request was aborted because its client hung up."""
        with self.cond:
            flight = self._flights.get(rid)
            return flight is not None and flight.disconnected

    def wait_to_run(self, rid: str) -> bool:
        """Wait while paused or at max_running_requests; False if aborted or stopping."""
        with self.cond:
            flight = self._flights[rid]
            self.cond.wait_for(
                lambda: flight.aborted or self.flags.stopping or self._can_run(flight.rank))
            if flight.aborted or self.flags.stopping:
                return False
            flight.running = True
            return True

    def _can_run(self, rank: int) -> bool:
        running = sum(1 for f in self._flights.values() if f.running and f.rank == rank)
        return not self.flags.paused and running < self.max_running_requests

    def begin_decode(self, rid: str, tokens: int) -> None:
        """From now on the request decodes `tokens` at decode_speed: each step counts."""
        with self.cond:
            flight = self._flights.get(rid)
            if flight is not None:
                flight.decode_target, flight.last_step = tokens, time.monotonic()

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
        """Abort one request (by rid) or, with None, everything running or waiting; return how
        many. As SGLang, num_aborted_requests_total counts the abort call once (abort_all
        included), and nothing for a rid it does not know."""
        with self.cond:
            return self._abort(rid)

    def _abort(self, rid: str | None) -> int:
        hits = [f for r, f in self._flights.items() if (rid is None or r == rid)]
        hits = [f for f in hits if not f.aborted]
        for flight in hits:
            flight.aborted = True
        aborted = len(hits)
        if rid is None:
            aborted += self.queued_by_fault
            self.queued_by_fault = 0
        if rid is None or hits:
            self._count("num_aborted_requests_total", 1)
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
            self._add(replace(rec, ttft=rec.ttft + waited, e2e=rec.e2e + waited), flight)
            return waited

    def record_aborted(self, rid: str, rec: GenerationRecord) -> None:
        """Count a request aborted while running as SGLang's tokenizer does when the abort
        comes back as its finish: a finished request (its prompt, the tokens decoded so far,
        its e2e latency), without TTFT or TPOT. One aborted while waiting is not counted."""
        with self.cond:
            flight = self._flights.get(rid)
            if flight is None:
                return
            self._step(time.monotonic())
            decoded = int(flight.decoded)
            labels = self._tokenizer_labels(flight, rec.streaming if self.streaming_counters
                                            else None)
            self._count("prompt_tokens_total", rec.prompt_tokens, None, labels)
            self._count("generation_tokens_total", decoded, None, labels)
            self._count("num_requests_total", 1, None, labels)
            if rec.structured:
                self._count("num_so_requests_total", 1)
            if not self.decode_only:
                computed = rec.prompt_tokens - rec.cached_tokens
                self._realtime(flight.rank, "prefill_compute", computed)
                self._realtime(flight.rank, "prefill_cache", rec.cached_tokens)
            self._observe(replace(rec, completion_tokens=decoded), flight, sources=("e2e",))

    def _count(self, name: str, amount: float, rank: int | None = None,
               labels: dict[str, str] | None = None) -> None:
        key = (name, rank, tuple(sorted((labels or {}).items())))
        self._counters[key] = self._counters.get(key, 0.0) + amount

    def _tokenizer_labels(self, flight: _Flight, streaming: bool | None) -> dict[str, str]:
        labels = {} if streaming is None else {"is_streaming": "true" if streaming else "false"}
        if self.priority_scheduling and flight.priority is not None:
            labels["priority"] = str(flight.priority)  # else the collector's own priority=""
        return labels

    def _add(self, rec: GenerationRecord, flight: _Flight) -> None:
        self._step(time.monotonic())
        per_request = self._tokenizer_labels(
            flight, rec.streaming if self.streaming_counters else None)
        self._count("prompt_tokens_total", rec.prompt_tokens, None, per_request)
        self._count("generation_tokens_total", rec.completion_tokens, None, per_request)
        self._count("num_requests_total", 1, None, per_request)
        if rec.structured:  # as SGLang, when the request finishes
            self._count("num_so_requests_total", 1)
        if rec.cached_tokens:
            self._count("cached_tokens_total", rec.cached_tokens, None, {"cache_source": "device"})
        self._prompt_tokens += rec.prompt_tokens
        self._cached_tokens += rec.cached_tokens
        if not self.decode_only:
            self._realtime(flight.rank, "prefill_compute", rec.prompt_tokens - rec.cached_tokens)
            self._realtime(flight.rank, "prefill_cache", rec.cached_tokens)
        if not self.prefill_only:
            self._realtime(flight.rank, "decode", rec.completion_tokens - flight.decoded)
        self._observe(rec, flight)
        tokens = rec.completion_tokens
        if tokens > 0 and rec.e2e > rec.ttft:
            self._last_throughput = tokens / (rec.e2e - rec.ttft)
        self._last_finished = time.monotonic()

    def _observe(self, rec: GenerationRecord, flight: _Flight,
                 sources: tuple[Source, ...] | None = None) -> None:
        """The latency histograms one finished request adds to (none of TTFT, ITL and TPOT on
        a PD prefill worker; only `sources` when given)."""
        tokens = rec.completion_tokens
        values: dict[Source, tuple[float, int]] = {
            "ttft": (rec.ttft, 1),
            "e2e": (rec.e2e, 1),
            "queue": (rec.queue_time, 1),
        }
        if tokens > 1:
            values["itl"] = (rec.itl, tokens - 1)
            values["tpot"] = ((rec.e2e - rec.ttft) / (tokens - 1), 1)
        for family in self._families:
            if family.source not in values or (family.latency and self.prefill_only):
                continue
            if sources is not None and family.source not in sources:
                continue
            value, times = values[family.source]
            if family.collector == "scheduler":
                key: SeriesKey = (family.name, flight.rank, ())
            else:
                labels = self._tokenizer_labels(
                    flight, rec.streaming if family.streaming_label else None)
                key = (family.name, None, tuple(sorted(labels.items())))
            histogram = self._histograms.get(key)
            if histogram is None:
                histogram = self._histograms[key] = Histogram(family.buckets)
            histogram.observe(value, times)

    def _realtime(self, rank: int, mode: str, tokens: float) -> None:
        if tokens > 0:  # SGLang skips a zero delta: each mode appears with its first token
            self._count("realtime_tokens_total", tokens, rank, {"mode": mode})

    def _step(self, now: float) -> None:
        """Count the decode steps of requests decoding in real time since the last look (none
        while stalled or paused: a stuck scheduler decodes nothing)."""
        for flight in self._flights.values():
            if not flight.decode_target or not flight.running or flight.aborted:
                continue
            if self._producing() and not self.prefill_only:
                left = flight.decode_target - flight.decoded
                done = min(left, self.decode_speed * (now - flight.last_step))
                flight.decoded += done
                self._realtime(flight.rank, "decode", done)
            flight.last_step = now

    def retract_running(self) -> int:
        """Send every running request back to the queue, counting the retraction and its
        tokens as SGLang's scheduler does; return how many."""
        with self.cond:
            hits = [f for f in self._flights.values()
                    if f.running and not f.retracted and not f.aborted]
            for flight in hits:
                flight.retracted = True
                self._count("num_retracted_requests_total", 1, flight.rank)
                self._count("num_retracted_input_tokens_total", flight.tokens, flight.rank)
                self._count("num_retracted_output_tokens_total", int(flight.decoded),
                            flight.rank)
            return len(hits)

    def resume_retracted(self) -> None:
        with self.cond:
            for flight in self._flights.values():
                flight.retracted = False
            self.cond.notify_all()

    def count_grammar_abort(self) -> None:
        with self.cond:
            self._count("num_grammar_aborted_total", 1, 0)

    def set_startup(self, phases: dict[str, float]) -> None:
        with self.cond:
            self._startup = dict(phases)

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
            self._step(time.monotonic())
            ranks = tuple(self._rank_view(rank, leaked_tokens if rank == 0 else 0)
                          for rank in range(self.dp_size))
            running = sum(view.num_running_reqs for view in ranks)
            used = sum(view.num_used_tokens for view in ranks)
            capacity = MAX_TOTAL_NUM_TOKENS * self.dp_size
            prompt = self._prompt_tokens
            recent = time.monotonic() - self._last_finished < THROUGHPUT_WINDOW_S
            return Snapshot(
                num_running_reqs=running,
                num_queue_reqs=sum(view.num_queue_reqs for view in ranks),
                num_used_tokens=used,
                max_total_num_tokens=capacity,
                max_running_requests=self.max_running_requests,
                token_usage=used / capacity,
                cache_hit_rate=self._cached_tokens / prompt if prompt else 0.0,
                gen_throughput=self._last_throughput if recent and not self.flags.stalled else 0.0,
                last_gen_throughput=self._last_throughput,
                utilization=running / (self.max_running_requests * self.dp_size),
                num_grammar_queue_reqs=0,  # grammars compile at once here
                num_retracted_reqs=sum(view.num_retracted_reqs for view in ranks),
                counters=dict(self._counters),
                histograms={k: h.view() for k, h in self._histograms.items()},
                http_requests=dict(self._http.requests),
                http_responses=dict(self._http.responses),
                http_active=dict(self._http.active),
                ranks=ranks,
                priorities=tuple(sorted(self._priorities)),
                startup=dict(self._startup),
            )

    def _rank_view(self, rank: int, leaked_tokens: int) -> RankView:
        flights = [f for f in self._flights.values() if f.rank == rank]
        running = [f for f in flights if f.running and not f.retracted]
        waiting = [f for f in flights if not f.running or f.retracted]
        # A stalled scheduler shows at least the request it is stuck on.
        num_running = max(len(running), 1) if self.flags.stalled and rank == 0 else len(running)
        used = min(sum(f.tokens for f in running) + leaked_tokens, MAX_TOTAL_NUM_TOKENS)
        evictable = min(sum(len(p) for p in self._prefixes) // self.dp_size,
                        MAX_TOTAL_NUM_TOKENS - used)
        recent = time.monotonic() - self._last_finished < THROUGHPUT_WINDOW_S
        queued = len(waiting) + (self.queued_by_fault if rank == 0 else 0)
        prompt = self._prompt_tokens
        return RankView(
            num_running_reqs=num_running,
            num_queue_reqs=queued,
            running_by_priority=_by_priority(running, self._priorities),
            queue_by_priority=_by_priority(waiting, self._priorities),
            num_used_tokens=used,
            max_total_num_tokens=MAX_TOTAL_NUM_TOKENS,
            token_usage=used / MAX_TOTAL_NUM_TOKENS,
            cache_hit_rate=self._cached_tokens / prompt if prompt else 0.0,
            gen_throughput=(self._last_throughput / self.dp_size
                            if recent and not self.flags.stalled else 0.0),
            utilization=num_running / self.max_running_requests,
            num_grammar_queue_reqs=0,
            num_retracted_reqs=sum(1 for f in flights if f.retracted),
            num_paused_reqs=len(running) if self.flags.paused else 0,
            kv_used_tokens=used,
            kv_available_tokens=MAX_TOTAL_NUM_TOKENS - used - evictable,
            kv_evictable_tokens=evictable,
        )

    def close(self) -> None:
        self.set_flag("stopping", True)


def _disconnect_check_s(streaming: bool) -> float:
    return STREAM_DISCONNECT_CHECK_S if streaming else NON_STREAM_DISCONNECT_CHECK_S


def _by_priority(flights: Sequence[_Flight], known: set[int]) -> dict[int, int]:
    counts = dict.fromkeys(known, 0)
    for flight in flights:
        if flight.queue_priority is not None:
            counts[flight.queue_priority] = counts.get(flight.queue_priority, 0) + 1
    return counts


def _common_prefix(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length
