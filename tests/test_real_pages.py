"""Parsing and windows on a page rendered by SGLang 0.5.23's own collector code (8 DP ranks):
series that vanish on a restart and come back on first use keep what they counted."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest

from sglguard.checks.base import CheckContext, CheckResult, Status
from sglguard.checks.metric import MetricCheck, MetricCheckConfig
from sglguard.checks.promql import Scrape, carry, window_increases
from sglguard.config.models import Catalog
from sglguard.service import build_clients
from sglguard.store import Store
from sglguard.store.samples import StoreSamples

from conftest import FIXTURES, FakeClock, FixtureServer

DP8 = (FIXTURES / "sglang-0.5.23-dp8-page.txt").read_text()
MODEL = 'engine_type="unified",model_name="meta-llama/Llama-3.1-8B-Instruct"'
INFERENCE = {"endpoint": "/generate|/v1/.*"}
TTFT_BOUNDS = ("0.1", "0.2", "0.4", "0.6", "0.8", "1.0", "2.0", "4.0", "6.0", "8.0", "10.0",
               "20.0", "40.0", "60.0", "80.0", "100.0", "200.0", "400.0", "+Inf")


def without(*families: str) -> str:
    """The dp8 page without the sample lines of `families` (as after a restart)."""
    names = "|".join(map(re.escape, families))
    pattern = re.compile(rf"^({names})(_total|_bucket|_count|_sum)?\{{")
    return "\n".join(line for line in DP8.splitlines() if not pattern.match(line)) + "\n"


def responses(counts: dict[tuple[str, str], float]) -> str:
    """The dp8 page with http_responses_total replaced by `counts` (endpoint, status_code)."""
    lines = [f'sglang:http_responses_total{{endpoint="{endpoint}",method="POST",'
             f'status_code="{code}"}} {value}' for (endpoint, code), value in counts.items()]
    base = without("sglang:http_responses")
    marker = "# TYPE sglang:http_responses_total counter\n"
    return base.replace(marker, marker + "\n".join(lines) + "\n")


def ttft(counts: dict[str, float] | None) -> str:
    """The dp8 page with one TTFT series of cumulative `counts` (bound -> count), or none."""
    base = without("sglang:time_to_first_token_seconds")
    if counts is None:
        return base
    cumulative, lines = 0.0, []
    for bound in TTFT_BOUNDS:
        cumulative += counts.get(bound, 0.0)
        lines.append(f'sglang:time_to_first_token_seconds_bucket{{{MODEL},is_streaming="false",'
                     f'le="{bound}"}} {cumulative}')
    lines.append(f'sglang:time_to_first_token_seconds_count{{{MODEL},is_streaming="false"}} '
                 f"{cumulative}")
    marker = "# TYPE sglang:time_to_first_token_seconds histogram\n"
    return base.replace(marker, marker + "\n".join(lines) + "\n")


def test_the_dp8_page_parses_whole_with_every_family() -> None:
    scrape = Scrape.parse(DP8)
    assert len({name for name in scrape.samples if name.startswith("sglang:")}) > 100
    queue = scrape.select("sglang:num_queue_reqs", {})
    assert (len(queue), sum(queue.values())) == (8, 108.0)  # one series per DP rank
    decode = scrape.select("sglang:realtime_tokens_total", {"mode": re.compile("decode")})
    assert (len(decode), sum(decode.values())) == (8, 40000.0)
    retracted = scrape.select("sglang:num_retracted_reqs", {})
    assert all("pid=" in key and "dp_rank=" in key for key in retracted)


def test_only_the_families_asked_for_are_parsed() -> None:
    scrape = Scrape.parse(DP8, only=["sglang:num_queue_reqs", "sglang:http_responses_total"])
    assert set(scrape.samples) == {"sglang:num_queue_reqs", "sglang:http_responses_total"}


def test_carried_totals_survive_a_series_that_vanishes_and_returns() -> None:
    first = carry(None, {"503": 100.0, "200": 1000.0})
    restarted = carry(first, {"200": 20.0})          # 503 gone until its next event
    returned = carry(restarted, {"200": 110.0, "503": 10.0})  # counts from 0 on top
    assert window_increases(first, returned) == {"503": 10.0, "200": 110.0}
    assert window_increases(first, restarted) == {"503": 0.0, "200": 20.0}


@pytest.fixture
def server() -> Iterator[FixtureServer]:
    running = FixtureServer(DP8.encode())
    yield running
    running.close()


@pytest.fixture
def run(server: FixtureServer, make_catalog: Callable[[str], Catalog], store: Store,
        clock: FakeClock) -> Callable[[str], CheckResult]:
    def go(fields: str) -> CheckResult:
        catalog = make_catalog(f"""\
            version: 1
            targets: [{{name: t, url: "{server.url}"}}]
            checks: [{{name: c, kind: metric, target: t, {fields}}}]
            """)
        config = catalog.checks[0]
        assert isinstance(config, MetricCheckConfig)
        context = CheckContext(target=catalog.targets[0], client=build_clients(catalog)["t"],
                               clock=clock, samples=StoreSamples(store))
        return MetricCheck(config, context).execute()

    return go


ERROR_RATIO = ('metric: "sglang:http_responses_total", '
               'labels: {status_code: "5..", endpoint: "/generate|/v1/.*"}, window: 5m, '
               'critical: "> 0.05", ratio_to: {metric: "sglang:http_responses_total", '
               'labels: {endpoint: "/generate|/v1/.*"}}')


def test_error_ratio_stays_critical_through_a_restart_with_lingering_errors(
        run: Callable[[str], CheckResult], server: FixtureServer, clock: FakeClock) -> None:
    steps = [
        {("/generate", "200"): 1000, ("/generate", "503"): 100},
        {("/generate", "200"): 1090, ("/generate", "503"): 110},  # +90 ok, +10 errors
        {("/generate", "200"): 20},                                # restarted: 503 not yet
        {("/generate", "200"): 110, ("/generate", "503"): 10},    # +90 ok, +10 errors again
    ]
    results = []
    for counts in steps:
        server.body = responses(counts).encode()
        results.append(run(ERROR_RATIO))
        clock.advance(30)
    last = results[-1]
    # 20 errors in 10 + 90 + 20 + 90 + 10 = 220 responses
    assert last.value == pytest.approx(20 / 220)
    assert last.status is Status.CRITICAL
    assert [result.status for result in results[1:]] == [Status.CRITICAL] * 3


def test_quantile_counts_buckets_of_a_histogram_that_vanished_and_returned(
        run: Callable[[str], CheckResult], server: FixtureServer, clock: FakeClock) -> None:
    fields = ('metric: "sglang:time_to_first_token_seconds", quantile: 0.95, window: 5m, '
              'warning: "> 0.5"')
    server.body = ttft({"0.1": 500}).encode()
    run(fields)
    clock.advance(30)
    server.body = ttft(None).encode()  # restarted with --skip-server-warmup: not served yet
    gap = run(fields)
    assert (gap.status, gap.value, gap.counts) == (Status.OK, None, False)
    assert "no data" in gap.message
    clock.advance(30)
    server.body = ttft({"2.0": 40}).encode()  # the first 40 requests after it, all slow
    slow = run(fields)
    assert slow.status is Status.WARNING
    assert slow.value == pytest.approx(1.0 + 1.0 * 38 / 40)  # inside (1, 2]
    assert "40 observations" in slow.message


def test_counter_created_on_first_use_counts_as_zero_then_counts_its_first_burst(
        run: Callable[[str], CheckResult], server: FixtureServer, clock: FakeClock) -> None:
    fields = 'metric: "sglang:num_aborted_requests_total", increase: true, window: 5m'
    server.body = without("sglang:num_aborted_requests").encode()
    first = run(fields)
    assert first.counts is False  # collecting: the window has one sample
    clock.advance(30)
    quiet = run(fields)
    assert (quiet.status, quiet.value) == (Status.OK, 0.0)
    assert "not counted yet" in quiet.message
    clock.advance(30)
    server.body = DP8.encode()  # the first aborts: the series appears with 5
    assert run(fields).value == pytest.approx(5.0)


def test_on_absent_unknown_keeps_the_old_reading(run: Callable[[str], CheckResult],
                                                 server: FixtureServer,
                                                 clock: FakeClock) -> None:
    fields = ('metric: "sglang:num_aborted_requests_total", increase: true, window: 5m, '
              'on_absent: unknown')
    server.body = without("sglang:num_aborted_requests").encode()
    run(fields)
    clock.advance(30)
    result = run(fields)
    assert result.status is Status.UNKNOWN and "on_absent: unknown" in result.message


def test_priority_totals_are_read_through_the_empty_priority(
        run: Callable[[str], CheckResult], server: FixtureServer) -> None:
    series = [(None, 0), ("", 70), ("0", 30), ("1", 40)]  # plain page has no priority label
    lines = [f'sglang:num_queue_reqs{{{MODEL},dp_rank="0",moe_ep_rank="0",pp_rank="0",'
             f'priority="{priority}",tp_rank="0"}} {value}' for priority, value in series
             if priority is not None]
    base = without("sglang:num_queue_reqs")
    marker = "# TYPE sglang:num_queue_reqs gauge\n"
    server.body = base.replace(marker, marker + "\n".join(lines) + "\n").encode()
    assert run('metric: "sglang:num_queue_reqs"').value == 140  # the doubled plain sum
    total = run('metric: "sglang:num_queue_reqs", labels: {priority: ""}')
    assert total.value == 70


def test_error_ratio_on_inference_endpoints_ignores_probe_routes(
        run: Callable[[str], CheckResult], server: FixtureServer, clock: FakeClock) -> None:
    server.body = responses({("/generate", "200"): 100, ("/health", "200"): 10}).encode()
    run(ERROR_RATIO)
    clock.advance(30)
    # a slow start-up: the monitor's own /health probes got 503s; inference was fine
    server.body = responses({("/generate", "200"): 200, ("/health", "200"): 10,
                             ("/health", "503"): 60}).encode()
    result = run(ERROR_RATIO)
    assert (result.status, result.value) == (Status.OK, 0.0)
