"""What an emulated server reports: one snapshot of its state, and what one request adds."""

from __future__ import annotations

from dataclasses import dataclass, field

from .histograms import HistogramView

# One series: its family (without `sglang:`), the DP rank of its scheduler (None: written by
# the tokenizer process) and its own labels (is_streaming, mode, priority, ...), sorted.
Extra = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, int | None, Extra]

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
    structured: bool = False  # a grammar-constrained request: counted in num_so_requests_total


@dataclass(frozen=True)
class RankView:
    """The gauges one scheduler (DP rank) writes."""

    num_running_reqs: int
    num_queue_reqs: int
    running_by_priority: dict[int, int]
    queue_by_priority: dict[int, int]
    num_used_tokens: int
    max_total_num_tokens: int
    token_usage: float
    cache_hit_rate: float
    gen_throughput: float
    utilization: float
    num_grammar_queue_reqs: int
    num_retracted_reqs: int
    num_paused_reqs: int
    kv_used_tokens: int
    kv_available_tokens: int
    kv_evictable_tokens: int


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
    counters: dict[SeriesKey, float]
    histograms: dict[SeriesKey, HistogramView]
    http_requests: dict[tuple[str, str], int]
    http_responses: dict[tuple[str, str, str], int]
    http_active: dict[tuple[str, str], int]
    ranks: tuple[RankView, ...] = ()
    priorities: tuple[int, ...] = ()  # every priority seen, as SGLang keeps writing them
    startup: dict[str, float] = field(default_factory=dict)  # phase -> seconds, once started

    def counter(self, name: str) -> float:
        """The sum of every series of one counter family (0 when it has none yet)."""
        return sum(value for (family, _, _), value in self.counters.items() if family == name)
