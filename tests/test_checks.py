"""Check kinds run against real loopback servers: the emulator and recorded /metrics captures."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from sglguard.checks.base import (
    Check,
    CheckConfig,
    CheckContext,
    CheckResult,
    Measurement,
    Status,
)
from sglguard.checks.http import HttpCheckConfig
from sglguard.checks.registry import CHECKS
from sglguard.client import SGLangClient
from sglguard.config.models import Catalog, TargetConfig
from sglguard.emulator import Emulator
from sglguard.store import Store, queries
from sglguard.store.samples import StoreSamples

from conftest import FakeClock, FixtureServer, StartEmulator, free_port

FIXTURES = Path(__file__).parent / "fixtures"
CAPTURE = "sglang-metrics-v0.5.10-capture.txt"
DOCS_SAMPLE = "sglang-metrics-docs-sample.txt"
HANG_TIMEOUT = 0.3

ServeFixture = Callable[[str], FixtureServer]
Recorded = dict[str, FixtureServer]


def run_check(url: str, **config: Any) -> CheckResult:
    """Validate a check config as the catalog would, run it once against `url`."""
    target = TargetConfig(name="local", url=url)
    model = CheckConfig.model_validate({"name": "probe", "target": "local", **config})
    client = SGLangClient(url)
    try:
        check = CHECKS[model.kind](model, CheckContext(target, client))
        return check.execute()
    finally:
        client.close()


# --- http -----------------------------------------------------------------------------------


def test_http_check_is_ok_with_latency_in_seconds(emulator: Emulator) -> None:
    result = run_check(emulator.url, kind="http")

    assert result.status is Status.OK
    assert result.unit == "s"
    assert result.value is not None
    # health_latency is 10 ms; the value is seconds, not milliseconds.
    assert 0.01 <= result.value < 1.0
    assert "GET /health answered 200" in result.message


def test_http_check_is_critical_with_the_code_while_the_server_starts(
    start_emulator: StartEmulator,
) -> None:
    starting = start_emulator(startup_delay=60.0)

    result = run_check(starting.url, kind="http")

    assert result.status is Status.CRITICAL
    assert "503" in result.message
    assert "expected 200" in result.message
    assert result.value is not None  # it did answer: the latency is still measured


def test_http_check_says_refused_when_nothing_listens() -> None:
    result = run_check(f"http://127.0.0.1:{free_port()}", kind="http", timeout="2s")

    assert result.status is Status.CRITICAL
    assert "refused" in result.message
    assert result.value is None


def test_http_check_timeout_is_critical_by_default(emulator: Emulator) -> None:
    emulator.set_fault("hang")

    result = run_check(emulator.url, kind="http", timeout=HANG_TIMEOUT)

    assert result.status is Status.CRITICAL
    assert f"no answer within {HANG_TIMEOUT:g} s" in result.message
    assert "refused" not in result.message
    assert result.value is None


def test_http_check_timeout_counts_as_configured_by_on_timeout(emulator: Emulator) -> None:
    emulator.set_fault("hang")

    result = run_check(emulator.url, kind="http", timeout=HANG_TIMEOUT, on_timeout="unknown")

    assert result.status is Status.UNKNOWN
    assert f"within {HANG_TIMEOUT:g} s" in result.message


def test_http_check_tells_refused_from_timeout(emulator: Emulator) -> None:
    emulator.set_fault("hang")
    timed_out = run_check(emulator.url, kind="http", timeout=HANG_TIMEOUT, on_timeout="unknown")
    refused = run_check(f"http://127.0.0.1:{free_port()}", kind="http",
                        timeout=HANG_TIMEOUT, on_timeout="unknown")

    # A refused connection means the process is gone, whatever on_timeout says.
    assert (refused.status, timed_out.status) == (Status.CRITICAL, Status.UNKNOWN)
    assert refused.message != timed_out.message


def test_http_check_latency_threshold_gives_warning(emulator: Emulator) -> None:
    emulator.set_fault("slow:0.3")

    result = run_check(emulator.url, kind="http", warning="> 0.2", critical="> 5")

    assert result.status is Status.WARNING
    assert result.value is not None and result.value >= 0.3
    assert "> 0.2 (warning)" in result.message


def test_http_check_wrong_status_is_critical_even_when_fast(emulator: Emulator) -> None:
    result = run_check(emulator.url, kind="http", path="/no_such_path")

    assert result.status is Status.CRITICAL
    assert "answered 404 (expected 200)" in result.message


# --- metric against the emulator ----------------------------------------------------------

QUEUE_THRESHOLDS = {"warning": "> 50", "critical": "> 200"}


@pytest.mark.parametrize(
    ("fault", "status", "value"),
    [("queue:300", Status.CRITICAL, 300.0), ("queue:60", Status.WARNING, 60.0),
     (None, Status.OK, 0.0)],
)
def test_metric_check_judges_queue_length_by_thresholds(
    emulator: Emulator, fault: str | None, status: Status, value: float
) -> None:
    emulator.set_fault(fault)

    result = run_check(emulator.url, kind="metric", metric="sglang:num_queue_reqs",
                       **QUEUE_THRESHOLDS)

    assert (result.status, result.value) == (status, value)


def test_metric_check_message_names_the_breached_threshold(emulator: Emulator) -> None:
    emulator.set_fault("queue:300")

    result = run_check(emulator.url, kind="metric", metric="sglang:num_queue_reqs",
                       unit="requests", **QUEUE_THRESHOLDS)

    assert result.unit == "requests"
    assert "300 requests > 200 (critical)" in result.message


# --- metric against recorded captures ------------------------------------------------------


@pytest.fixture(scope="module")
def recorded() -> Iterator[Recorded]:
    """One server per recorded capture for the module: each FixtureServer takes ~0.5 s to close
    (serve_forever's default poll interval), too slow to pay per test. Read-only, so shared."""
    servers = {name: FixtureServer((FIXTURES / name).read_bytes())
               for name in (CAPTURE, DOCS_SAMPLE)}
    yield servers
    for server in servers.values():
        server.close()


def metric_on(server: FixtureServer, metric: str, **config: Any) -> CheckResult:
    return run_check(server.url, kind="metric", metric=metric, **config)


def test_metric_check_reads_a_gauge_by_name_from_a_real_capture(
    recorded: Recorded,
) -> None:
    result = metric_on(recorded[CAPTURE], "sglang:token_usage")

    assert (result.status, result.value) == (Status.OK, 0.25)
    assert "over 1 series" in result.message


def test_metric_check_selects_series_by_label(recorded: Recorded) -> None:
    server = recorded[CAPTURE]

    result = metric_on(server, "sglang:max_total_num_tokens", labels={"tp_rank": "0"})

    assert (result.status, result.value) == (Status.OK, 430839.0)


def test_metric_check_with_no_matching_series_is_no_data_not_counted(
        recorded: Recorded) -> None:
    result = metric_on(recorded[CAPTURE], "sglang:num_queue_reqs",
                       labels={"tp_rank": "1"}, **QUEUE_THRESHOLDS)

    assert (result.status, result.value, result.counts) == (Status.OK, None, False)
    assert "no data: no series of sglang:num_queue_reqs matches" in result.message


@pytest.mark.parametrize(("how", "status", "value"), [
    ("unknown", Status.UNKNOWN, None), ("critical", Status.CRITICAL, None),
    ("zero", Status.OK, 0.0)])
def test_metric_check_on_absent_says_what_a_missing_series_means(
        recorded: Recorded, how: str, status: Status, value: float | None) -> None:
    result = metric_on(recorded[CAPTURE], "sglang:num_queue_reqs", labels={"tp_rank": "1"},
                       on_absent=how)

    assert (result.status, result.value, result.counts) == (status, value, True)
    assert f"on_absent: {how}" in result.message


def test_metric_check_label_matchers_are_anchored(recorded: Recorded) -> None:
    server = recorded[CAPTURE]

    partial = metric_on(server, "sglang:gen_throughput", labels={"model_name": "opt"})
    full = metric_on(server, "sglang:gen_throughput", labels={"model_name": ".*/opt-.*"})

    assert (partial.value, partial.counts) == (None, False)
    assert (full.status, full.value) == (Status.OK, 425.5)


@pytest.mark.parametrize(("how", "expected"), [("sum", 2.0), ("max", 1.0), ("min", 1.0),
                                               ("avg", 1.0)])
def test_metric_check_aggregates_histogram_buckets_of_a_real_capture(
    recorded: Recorded, how: str, expected: float
) -> None:
    # The capture's TTFT histogram: le="0.1" -> 1 and le="+Inf" -> 1.
    result = metric_on(recorded[CAPTURE], "sglang:time_to_first_token_seconds_bucket",
                       aggregate=how)

    assert (result.status, result.value) == (Status.OK, expected)
    assert "over 2 series" in result.message


# TTFT buckets of the docs sample, in file order (le 0.001 ... 30.0, +Inf):
# 0 0 0 0 1 3 6 6 6 6 6 27 140 314 941 1330 1970 2326 2417 2513 11008 -> sum 23020 over 21.
@pytest.mark.parametrize(
    ("how", "labels", "expected"),
    [
        ("sum", {}, 23020.0),
        ("max", {}, 11008.0),
        ("min", {}, 0.0),
        ("avg", {}, 23020 / 21),
        # le 0.001 0.005 0.01 0.02 0.04 0.06 0.08 -> 0 0 0 0 1 3 6 (0.1 does not fullmatch)
        ("sum", {"le": r"0\.0[0-9]+"}, 10.0),
        ("max", {"le": r"0\.0[0-9]+"}, 6.0),
        ("sum", {"le": r"\+Inf"}, 11008.0),
    ],
)
def test_metric_check_aggregates_distinct_series(
    recorded: Recorded, how: str, labels: dict[str, str], expected: float
) -> None:
    result = metric_on(recorded[DOCS_SAMPLE], "sglang:time_to_first_token_seconds_bucket",
                       aggregate=how, labels=labels)

    assert (result.status, result.value) == (Status.OK, expected)


def test_metric_check_label_regex_that_does_not_compile_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match=r"label tp_rank: invalid regular expression '\['"):
        CheckConfig.model_validate({"name": "q", "target": "local", "kind": "metric",
                                    "metric": "sglang:num_queue_reqs", "labels": {"tp_rank": "["}})


def test_metric_check_absent_metric_is_no_data_not_found(recorded: Recorded) -> None:
    result = metric_on(recorded[CAPTURE], "sglang:num_grammar_queue_reqs")

    assert (result.status, result.counts) == (Status.OK, False)
    assert "not found" in result.message


def test_metric_check_parses_the_docs_sample_of_an_older_release(
    recorded: Recorded,
) -> None:
    server = recorded[DOCS_SAMPLE]

    usage = metric_on(server, "sglang:token_usage")
    queue = metric_on(server, "sglang:num_queue_reqs", **QUEUE_THRESHOLDS)

    assert (usage.status, usage.value) == (Status.OK, 0.28)
    assert (queue.status, queue.value) == (Status.CRITICAL, 2826.0)


def test_metric_check_without_metrics_endpoint_is_unknown(fixture_server: ServeFixture) -> None:
    server = fixture_server(CAPTURE)
    server.status = 404  # a server launched without --enable-metrics

    result = metric_on(server, "sglang:num_queue_reqs", **QUEUE_THRESHOLDS)

    assert result.status is Status.UNKNOWN
    assert "--enable-metrics" in result.message


# --- the base class -------------------------------------------------------------------------


class _Scripted(Check[CheckConfig]):
    """A kind made up for these tests: run() raises or returns what the test sets."""

    kind = "scripted"
    config_model = HttpCheckConfig
    outcome: Measurement | Exception = Measurement(0.0)

    def run(self) -> Measurement:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def scripted(outcome: Measurement | Exception, secrets: tuple[str, ...] = ()) -> CheckResult:
    # The kind is faked (one thing); config, context and client are the real ones.
    url = f"http://127.0.0.1:{free_port()}"
    config = HttpCheckConfig(kind="http", name="scripted", target="local", warning="> 1")
    check = _Scripted(config, CheckContext(TargetConfig(name="local", url=url),
                                           SGLangClient(url), secrets=secrets))
    check.outcome = outcome
    return check.execute()


def test_exception_in_a_kind_becomes_unknown_with_the_exception() -> None:
    result = scripted(ZeroDivisionError("division by zero"))

    assert result.status is Status.UNKNOWN
    assert result.value is None
    assert "ZeroDivisionError: division by zero" in result.message
    assert (result.check, result.target) == ("scripted", "local")


def test_secrets_are_redacted_from_messages() -> None:
    leaked = scripted(Measurement(2.0, "token s3cret in the answer", Status.OK),
                      secrets=("s3cret",))
    raised = scripted(RuntimeError("auth s3cret refused"), secrets=("s3cret",))

    assert leaked.status is Status.WARNING  # the threshold still applies
    for result in (leaked, raised):
        assert "s3cret" not in result.message
        assert "***" in result.message


# --- contract over the registry -------------------------------------------------------------

# A minimal valid config per registered kind (YAML, under `checks:`); a new kind needs one.
KIND_CONFIGS: dict[str, str] = {
    "http": "kind: http\npath: /health",
    "metric": "kind: metric\nmetric: sglang:num_queue_reqs\nwarning: '> 50'",
    "progress": "kind: progress\nwindow: 1m",
    "server_info": "kind: server_info\npath: internal_states.0.memory_usage.kvcache\nunit: GB",
    "generate": "kind: generate\nmeasure: ttft\nwarning: '> 0.5'",
    "structured_output": "kind: structured_output\n"
                         "json_schema: {type: object, properties: {ok: {type: boolean}}}",
    "gpu": "kind: gpu\nmetric: memory_used_mib\non_unavailable: ok",  # hosts without a GPU too
    "host": "kind: host\nmetric: memory_percent",
    "process": "kind: process\nmatch: '.'",  # the oldest process with a command line
    "log": "kind: log\npath: sglguard.yaml\npatterns: [Traceback]",  # the catalog file itself
}


def test_every_check_kind_has_a_contract_config() -> None:
    assert set(KIND_CONFIGS) == set(CHECKS)


@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_check_kind_runs_from_config_to_stored_result(
    kind: str,
    emulator: Emulator,
    store: Store,
    make_catalog: Callable[[str], Catalog],
    clock: FakeClock,
) -> None:
    assert kind in KIND_CONFIGS, f"add a minimal config for check kind {kind!r} to KIND_CONFIGS"
    snippet = textwrap.indent(KIND_CONFIGS[kind], " " * 12).lstrip()
    catalog = make_catalog(f"""
        version: 1
        targets:
          - name: local
            url: {emulator.url}
        checks:
          - name: contract-{kind}
            target: local
            {snippet}
    """)
    config = catalog.checks[0]
    client = SGLangClient(emulator.url)
    check = CHECKS[config.kind](config, CheckContext(
        catalog.target("local"), client, clock=clock, samples=StoreSamples(store)))

    check.execute()  # a windowed kind needs a first sample
    clock.advance(30)
    result = check.execute()
    with store.session() as session:
        queries.add_result(session, result)
    with store.session() as session:
        rows = queries.recent_results(session, f"contract-{kind}", 10)
    client.close()

    assert result.status is Status.OK, result.message
    assert len(rows) == 1
    row = rows[0]
    assert (row.check_name, row.target) == (result.check, result.target)
    assert (row.status, row.value, row.unit) == (result.status.label, result.value, result.unit)
    assert row.message == result.message
    assert row.started_at == clock.now
