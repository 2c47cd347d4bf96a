"""Windowed metric values, checked against values computed by hand: rates across resets,
histogram quantiles as Prometheus interpolates them, error ratios, gauge trends."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sglguard.checks.base import CheckContext, CheckResult, Status
from sglguard.checks.metric import MetricCheck, MetricCheckConfig
from sglguard.checks.promql import carry, histogram_quantile, increases, window_increases
from sglguard.config.models import Catalog
from sglguard.service import build_clients
from sglguard.store import Store
from sglguard.store.samples import StoreSamples

from conftest import FIXTURES, FakeClock, FixtureServer


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    buckets = {0.1: 10.0, 0.2: 30.0, 0.4: 40.0, math.inf: 40.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.15)  # 0.1 + 0.1 * 10/20
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.36)  # 0.2 + 0.2 * 8/10
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)  # rank 10 ends bucket 1
    assert histogram_quantile(0.05, buckets) == pytest.approx(0.02)  # 0 + 0.1 * 2/10


def test_histogram_quantile_in_the_inf_bucket_is_the_last_finite_bound() -> None:
    assert histogram_quantile(0.99, {0.1: 1.0, 0.2: 2.0, math.inf: 10.0}) == 0.2


def test_histogram_quantile_of_nothing_is_none() -> None:
    assert histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    assert histogram_quantile(0.5, {0.1: 3.0}) is None  # no +Inf bucket: not a histogram


def test_counter_increase_never_goes_negative_across_a_reset() -> None:
    assert increases({"a": 100, "b": 50}, {"a": 130, "b": 10, "c": 5}) == {
        "a": 30, "b": 10, "c": 5}


def test_carried_totals_count_every_reset_inside_the_window() -> None:
    first = carry(None, {"a": 100})
    middle = carry(first, {"a": 160})   # +60
    after_reset = carry(middle, {"a": 30})  # restarted: +30
    assert window_increases(first, after_reset) == {"a": 90}


def page(counters: dict[str, float], buckets: dict[str, float] | None = None,
         queue: float = 0) -> bytes:
    lines = ["# TYPE sglang:num_queue_reqs gauge",
             f'sglang:num_queue_reqs{{model_name="m",tp_rank="0"}} {queue}',
             "# TYPE sglang:http_responses_total counter"]
    for code, value in counters.items():
        lines.append(f'sglang:http_responses_total{{endpoint="/generate",method="POST",'
                     f'status_code="{code}"}} {value}')
    if buckets is not None:
        lines.append("# TYPE sglang:time_to_first_token_seconds histogram")
        for dp, (bound, value) in enumerate(buckets.items()):
            del dp
            lines.append(f'sglang:time_to_first_token_seconds_bucket{{le="{bound}",'
                         f'model_name="m"}} {value}')
        lines.append(f'sglang:time_to_first_token_seconds_count{{model_name="m"}} '
                     f'{buckets["+Inf"]}')
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def server() -> Iterator[FixtureServer]:
    running = FixtureServer(page({"200": 0}))
    yield running
    running.close()


@pytest.fixture
def run(server: FixtureServer, make_catalog: Callable[[str], Catalog], store: Store,
        clock: FakeClock) -> Callable[[str], CheckResult]:
    """Run a metric check (YAML fields) against `server`, as a fresh object each time, as
    separate `sglguard check` invocations would."""

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


def test_rate_is_unknown_until_the_window_has_two_samples(run: Callable[[str], CheckResult],
                                                          server: FixtureServer,
                                                          clock: FakeClock) -> None:
    fields = 'metric: "sglang:http_responses_total", rate: true, window: 5m'
    first = run(fields)
    assert (first.status, first.counts) == (Status.OK, False)
    assert "no data: collecting samples for the 5m window" in first.message
    server.body = page({"200": 120})
    clock.advance(60)
    second = run(fields)
    assert second.status is Status.OK
    assert second.value == pytest.approx(2.0) and second.unit == "/s"  # 120 in 60 s


def test_rate_across_a_server_restart_counts_both_sides(run: Callable[[str], CheckResult],
                                                        server: FixtureServer,
                                                        clock: FakeClock) -> None:
    fields = 'metric: "sglang:http_responses_total", increase: true, window: 5m'
    server.body = page({"200": 100})
    run(fields)
    server.body = page({"200": 160})
    clock.advance(30)
    assert run(fields).value == pytest.approx(60)
    server.body = page({"200": 30})  # restarted, then served 30
    clock.advance(30)
    assert run(fields).value == pytest.approx(90)


def test_error_ratio_of_5xx_over_all_responses(run: Callable[[str], CheckResult],
                                               server: FixtureServer, clock: FakeClock) -> None:
    fields = ('metric: "sglang:http_responses_total", labels: {status_code: "5.."}, '
              'window: 2m, critical: "> 0.01", '
              'ratio_to: {metric: "sglang:http_responses_total"}')
    server.body = page({"200": 1000, "503": 10})
    run(fields)
    server.body = page({"200": 1194, "503": 16})  # +194 ok, +6 errors: 6/200
    clock.advance(60)
    result = run(fields)
    assert result.value == pytest.approx(0.03) and result.status is Status.CRITICAL
    assert result.unit == "ratio"
    server.body = page({"200": 1194, "503": 16})
    clock.advance(90)  # the window now starts at the second sample: nothing moved
    quiet = run(fields)
    assert quiet.value is None and quiet.status is Status.OK and "undefined" in quiet.message


def test_p95_from_bucket_increases_over_the_window(run: Callable[[str], CheckResult],
                                                   server: FixtureServer,
                                                   clock: FakeClock) -> None:
    fields = ('metric: "sglang:time_to_first_token_seconds", quantile: 0.95, window: 5m, '
              'warning: "> 0.5"')
    server.body = page({}, {"0.1": 100, "0.2": 200, "0.4": 300, "0.8": 300, "+Inf": 300})
    run(fields)
    # increases: 0.1: +10, 0.2: +30 (cum), 0.4: +40, 0.8: +100, +Inf: +100
    server.body = page({}, {"0.1": 110, "0.2": 230, "0.4": 340, "0.8": 400, "+Inf": 400})
    clock.advance(60)
    result = run(fields)
    # rank 95 falls in (0.4, 0.8]: 0.4 + 0.4 * (95 - 40) / 60
    assert result.value == pytest.approx(0.4 + 0.4 * 55 / 60)
    assert result.status is Status.WARNING and result.unit == "s"
    assert "100 observations" in result.message


def test_gauge_change_over_a_window(run: Callable[[str], CheckResult], server: FixtureServer,
                                    clock: FakeClock) -> None:
    fields = 'metric: "sglang:num_queue_reqs", change_over: 3m, critical: "> 100"'
    server.body = page({}, queue=20)
    run(fields)
    server.body = page({}, queue=90)
    clock.advance(60)
    assert run(fields).value == pytest.approx(70)
    server.body = page({}, queue=150)
    clock.advance(60)
    result = run(fields)
    assert result.value == pytest.approx(130) and result.status is Status.CRITICAL
    clock.advance(200)  # the first samples left the window: compare with the newest one only
    assert run(fields).counts is False


def test_windows_survive_a_new_store_object(run: Callable[[str], CheckResult],
                                            server: FixtureServer, clock: FakeClock,
                                            tmp_path: Path) -> None:
    fields = 'metric: "sglang:http_responses_total", increase: true, window: 10m'
    server.body = page({"200": 5})
    run(fields)
    reopened = Store.open(f"sqlite:///{tmp_path / 'sglguard.db'}")  # as after a restart
    assert StoreSamples(reopened).latest("c") is not None
    reopened.close()
    server.body = page({"200": 12})
    clock.advance(5)
    assert run(fields).value == pytest.approx(7)


def test_legacy_tpot_name_answers_for_the_new_one(run: Callable[[str], CheckResult],
                                                  server: FixtureServer,
                                                  clock: FakeClock) -> None:
    sample = (FIXTURES / "sglang-metrics-docs-sample.txt").read_bytes()
    server.body = sample
    fields = ('metric: "sglang:request_time_per_output_token_seconds", quantile: 0.5, '
              'window: 5m')
    run(fields)
    clock.advance(30)
    result = run(fields)
    assert "time_per_output_token_seconds" in result.message
    assert result.status is Status.OK and result.value is None  # nothing new in the window


@pytest.mark.parametrize(("fields", "error"), [
    ("rate: true", "rate needs a `window:`"),
    ("rate: true, increase: true, window: 1m", "choose one of rate, increase"),
    ("window: 1m", "`window:` needs one of"),
    ("change_over: 3m, window: 3m", "change_over is itself the window"),
    ("quantile: 1.5, window: 1m", "less than or equal to 1"),
    ("quantile: 0.9, window: 1m, on_absent: zero", "on_absent: zero does not apply to a "
                                                    "quantile"),
    ("on_absent: maybe", "on_absent"),
])
def test_window_config_errors(fields: str, error: str,
                              make_catalog: Callable[[str], Catalog]) -> None:
    from sglguard.config.loader import ConfigError

    with pytest.raises(ConfigError, match=error):
        make_catalog(f"""\
            version: 1
            targets: [{{name: t, url: "http://127.0.0.1:1"}}]
            checks: [{{name: c, kind: metric, target: t, metric: m, {fields}}}]
            """)
