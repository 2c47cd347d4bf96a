"""The service and output check kinds against the emulator (and a stub for refusals)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sglguard.checks.base import CheckContext, CheckResult, Status
from sglguard.checks.registry import CHECKS
from sglguard.config.loader import ConfigError
from sglguard.config.models import Catalog
from sglguard.emulator import Emulator, EmulatorOptions
from sglguard.service import build_clients
from sglguard.store import Store
from sglguard.store.samples import StoreSamples

from conftest import FakeClock, Loopback

SCHEMA = ("json_schema: {type: object, properties: {status: {type: string}}, "
          "required: [status]}")


@pytest.fixture
def run(make_catalog: Callable[[str], Catalog], store: Store,
        clock: FakeClock) -> Callable[[str, str], CheckResult]:
    def go(url: str, fields: str) -> CheckResult:
        catalog = make_catalog(f"""\
            version: 1
            targets: [{{name: t, url: "{url}"}}]
            checks: [{{name: c, target: t, timeout: 1s, {fields}}}]
            """)
        config = catalog.checks[0]
        context = CheckContext(target=catalog.targets[0], client=build_clients(catalog)["t"],
                               clock=clock, samples=StoreSamples(store))
        return CHECKS[config.kind](config, context).execute()

    return go


class Stub(Loopback):
    """Answers every request with one canned reply."""

    def __init__(self, status: int, body: bytes, content_type: str = "application/json"):
        super().__init__(lambda _request: (status, content_type, body))


@pytest.fixture
def stub() -> Iterator[Callable[..., Stub]]:
    made: list[Stub] = []

    def make(status: int, body: Any, content_type: str = "application/json") -> Stub:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        made.append(Stub(status, raw, content_type))
        return made[-1]

    yield make
    for server in made:
        server.close()


# --- generate ------------------------------------------------------------------------------

def test_generate_measures_time_to_first_token(run: Callable[[str, str], CheckResult],
                                               emulator: Emulator) -> None:
    result = run(emulator.url, "kind: generate, measure: ttft")
    assert result.status is Status.OK and result.unit == "s"
    assert result.value is not None and 0 < result.value < 1
    assert "characters" in result.message


def test_generate_total_through_chat_completions(run: Callable[[str, str], CheckResult],
                                                 emulator: Emulator) -> None:
    result = run(emulator.url, "kind: generate, endpoint: chat, measure: total")
    assert result.status is Status.OK and result.value is not None


def test_generate_error_status_is_critical_with_the_reason(
        run: Callable[[str, str], CheckResult], emulator: Emulator) -> None:
    emulator.set_fault("error:503")
    result = run(emulator.url, "kind: generate")
    assert result.status is Status.CRITICAL
    assert result.message.startswith("POST /generate answered 503")


def test_generate_timeout_is_critical(run: Callable[[str, str], CheckResult],
                                      emulator: Emulator) -> None:
    emulator.set_fault("hang")
    result = run(emulator.url, "kind: generate")
    emulator.set_fault(None)
    assert result.status is Status.CRITICAL and "timed out" in result.message


def test_generate_empty_output_is_critical(run: Callable[[str, str], CheckResult],
                                           stub: Callable[..., Stub]) -> None:
    server = stub(200, {"text": "", "meta_info": {"finish_reason": {"type": "stop"}}})
    result = run(server.url, "kind: generate, measure: total")
    assert result.status is Status.CRITICAL and "empty output" in result.message


def test_generate_ttft_over_chat_is_a_config_error(run: Callable[[str, str], CheckResult]) -> None:
    with pytest.raises(ConfigError, match="measure: ttft needs endpoint: generate"):
        run("http://127.0.0.1:1", "kind: generate, endpoint: chat")


# --- structured_output ---------------------------------------------------------------------

def test_structured_output_valid_json_passes(run: Callable[[str, str], CheckResult],
                                             emulator: Emulator) -> None:
    result = run(emulator.url, f"kind: structured_output, {SCHEMA}")
    assert result.status is Status.OK, result.message
    assert "matches the schema" in result.message


def test_structured_output_regex_passes(run: Callable[[str, str], CheckResult],
                                        emulator: Emulator) -> None:
    result = run(emulator.url, 'kind: structured_output, regex: "(yes|no)"')
    assert result.status is Status.OK, result.message


def test_output_that_breaks_the_schema_is_reported(run: Callable[[str, str], CheckResult],
                                                   stub: Callable[..., Stub]) -> None:
    server = stub(200, {"text": '{"state": "up"}', "meta_info": {}})
    result = run(server.url, f"kind: structured_output, {SCHEMA}")
    assert result.status is Status.CRITICAL
    assert "invalid output: (root): 'status' is a required property" in result.message


def test_output_that_is_not_json_is_reported(run: Callable[[str, str], CheckResult],
                                             stub: Callable[..., Stub]) -> None:
    server = stub(200, {"text": '{"status": "up"', "meta_info": {}})
    result = run(server.url, f"kind: structured_output, {SCHEMA}")
    assert result.status is Status.CRITICAL and "invalid output: not JSON" in result.message


def test_server_refusing_the_schema_is_reported_as_such(
        run: Callable[[str, str], CheckResult], stub: Callable[..., Stub]) -> None:
    server = stub(400, {"error": {"message": "Failed to compile json_schema grammar: bad"}})
    result = run(server.url, f"kind: structured_output, {SCHEMA}")
    assert result.status is Status.CRITICAL
    assert result.message == ("the server refused the constraint: Failed to compile "
                              "json_schema grammar: bad")


def test_abort_chunk_in_a_stream_is_reported(run: Callable[[str, str], CheckResult],
                                             stub: Callable[..., Stub]) -> None:
    abort = {"text": "", "meta_info": {"finish_reason": {
        "type": "abort", "message": "Failed to compile regex grammar", "status_code": 400}}}
    events = f"data: {json.dumps(abort)}\n\ndata: [DONE]\n\n".encode()
    server = stub(200, events, "text/event-stream")
    result = run(server.url, f"kind: structured_output, stream: true, {SCHEMA}")
    assert result.status is Status.CRITICAL
    assert result.message == "POST /generate aborted: Failed to compile regex grammar"


def test_json_schema_is_sent_as_a_string(run: Callable[[str, str], CheckResult],
                                         emulator: Emulator) -> None:
    # The emulator, as SGLang, answers 400 to a schema sent as an object: passing proves a string.
    assert run(emulator.url, f"kind: structured_output, {SCHEMA}").status is Status.OK


@pytest.mark.parametrize(("fields", "error"), [
    ("kind: structured_output", "give exactly one of json_schema or regex"),
    ("kind: structured_output, regex: '(', ", "regex does not compile"),
    ("kind: structured_output, json_schema: {type: 12}", "not a valid JSON Schema"),
])
def test_structured_output_config_errors(fields: str, error: str,
                                         run: Callable[[str, str], CheckResult]) -> None:
    with pytest.raises(ConfigError, match=error):
        run("http://127.0.0.1:1", fields.rstrip(", "))


# --- server_info ---------------------------------------------------------------------------

def test_server_info_reads_a_path_and_records_the_version(
        run: Callable[[str, str], CheckResult], emulator: Emulator) -> None:
    result = run(emulator.url, "kind: server_info, path: internal_states.0.memory_usage.kvcache, "
                               "unit: GB")
    assert result.status is Status.OK and result.unit == "GB"
    assert result.value is not None and result.value > 0
    assert "(server 0.5.23, model " in result.message


def test_server_info_never_shows_the_api_key(run: Callable[[str, str], CheckResult]) -> None:
    server = Emulator(EmulatorOptions(port=0, api_key="k-secret", health_latency=0.01))
    server.start()
    try:
        from sglguard.checks.server_info import lookup  # noqa: F401 (the path syntax)

        result = run(server.url, "kind: server_info, path: api_key")
    finally:
        server.stop()
    assert "k-secret" not in result.message
    assert result.status is Status.UNKNOWN  # redacted to a string: not a number


def test_server_info_missing_path_is_unknown(run: Callable[[str, str], CheckResult],
                                             emulator: Emulator) -> None:
    result = run(emulator.url, "kind: server_info, path: internal_states.7.nothing")
    assert result.status is Status.UNKNOWN
    assert result.message.startswith("no internal_states.7.nothing in /server_info")


# --- progress ------------------------------------------------------------------------------

def test_progress_is_ok_when_idle(run: Callable[[str, str], CheckResult], emulator: Emulator,
                                  clock: FakeClock) -> None:
    first = run(emulator.url, "kind: progress, window: 1m")
    assert (first.status, first.counts) == (Status.OK, False)
    assert "collecting samples" in first.message
    clock.advance(30)
    second = run(emulator.url, "kind: progress, window: 1m")
    assert second.status is Status.OK and "idle" in second.message and second.unit == "tokens"


def test_progress_counts_generated_tokens(run: Callable[[str, str], CheckResult],
                                          emulator: Emulator, clock: FakeClock) -> None:
    run(emulator.url, "kind: progress, window: 1m")
    run(emulator.url, "kind: generate, measure: total")
    clock.advance(30)
    result = run(emulator.url, "kind: progress, window: 1m")
    assert result.status is Status.OK and result.value is not None and result.value > 0


def test_progress_calls_a_stall_a_hang(run: Callable[[str, str], CheckResult],
                                       clock: FakeClock) -> None:
    server = Emulator(EmulatorOptions(port=0, health_latency=0.01, fault="stall"))
    server.start()
    try:
        run(server.url, "kind: progress, window: 1m")
        clock.advance(20)
        early = run(server.url, "kind: progress, window: 1m")
        clock.advance(20)
        result = run(server.url, "kind: progress, window: 1m")
    finally:
        server.stop()
    assert early.status is Status.OK and not early.counts  # 20 s is too short to judge
    assert result.status is Status.CRITICAL
    assert result.message.startswith("hung: no token generated in 40 s while")


def test_bad_output_from_the_server_is_invalid_output(run: Callable[[str, str], CheckResult],
                                                      emulator: Emulator) -> None:
    emulator.set_fault("bad_output")
    result = run(emulator.url, f"kind: structured_output, {SCHEMA}")
    assert result.status is Status.CRITICAL and result.message.startswith("invalid output:")
    regex = run(emulator.url, 'kind: structured_output, regex: "(yes|no)"')
    assert regex.status is Status.CRITICAL
    assert "does not fully match the regex" in regex.message


def test_slow_first_token_breaches_the_ttft_threshold(run: Callable[[str, str], CheckResult],
                                                      emulator: Emulator) -> None:
    emulator.set_fault("slow_ttft:0.3")
    result = run(emulator.url, "kind: generate, measure: ttft, warning: '> 0.2'")
    assert result.status is Status.WARNING and result.value is not None
    assert result.value >= 0.3


def test_memory_growth_shows_as_change_over(run: Callable[[str, str], CheckResult],
                                            clock: FakeClock) -> None:
    ticks = [0.0]
    server = Emulator(EmulatorOptions(port=0, health_latency=0.01), clock=lambda: ticks[0])
    server.start()
    try:
        server.set_fault("memory_growth:300")
        fields = ("kind: server_info, path: internal_states.0.memory_usage.kvcache, unit: GB, "
                  "change_over: 3m, critical: '> 0.25'")
        run(server.url, fields)
        ticks[0] += 60.0  # the emulator's clock: one minute, 300 MiB more
        clock.advance(60)
        result = run(server.url, fields)
    finally:
        server.stop()
    assert result.value == pytest.approx(300 / 1024)
    assert result.status is Status.CRITICAL
