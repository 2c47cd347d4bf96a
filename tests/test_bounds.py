"""Every answer has a deadline and a size cap, whatever the server does: hostile loopback
servers (slow-loris, endless streams, compression bombs, huge pages, redirects elsewhere)."""

from __future__ import annotations

import gzip
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from sglguard.bounded import budget
from sglguard.checks.base import CheckConfig, CheckContext, CheckResult, Status
from sglguard.checks.registry import CHECKS
from sglguard.client import (
    AnswerTooLarge,
    SGLangClient,
    TargetError,
    TargetTimeout,
    post_json,
)
from sglguard.config.models import TargetConfig
from sglguard.emulator.hostile import (
    HostileServer,
    answer,
    drip,
    endless,
    gzip_bomb,
    huge,
    redirect,
    slow_body,
    slow_headers,
    wait_started,
)

from conftest import PYTHON, Loopback, wait_for

DP8_PAGE = Path("/work/shared/fixtures/sglang-0.5.23-dp8-page.txt")
FIXTURE_PAGE = Path(__file__).parent / "fixtures" / "sglang-metrics-v0.5.10-capture.txt"
# The slack a loaded test machine needs beyond a deadline; a run without a wall-clock
# deadline takes as long as the server likes (forever for these servers).
SLACK = 2.0


@pytest.fixture
def hostile() -> Iterator[Any]:
    started: list[HostileServer] = []

    def start(behaviour: Any) -> HostileServer:
        server = HostileServer(behaviour).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def run_check(url: str, **config: Any) -> CheckResult:
    target = TargetConfig(name="local", url=url)
    model = CheckConfig.model_validate({"name": "probe", "target": "local", **config})
    client = SGLangClient(url)
    try:
        return CHECKS[model.kind](model, CheckContext(target, client)).execute()
    finally:
        client.close()


def timed(call: Any) -> tuple[Any, float]:
    began = time.monotonic()
    try:
        outcome = call()
    except Exception as exc:  # the outcome under test may be an error
        outcome = exc
    return outcome, time.monotonic() - began


@pytest.mark.parametrize("behaviour", [slow_headers(0.1), slow_body(0.1)],
                         ids=["headers", "body"])
def test_a_probe_at_one_byte_a_tick_times_out_at_the_deadline(hostile: Any,
                                                              behaviour: Any) -> None:
    server = hostile(behaviour)
    client = SGLangClient(server.url)
    outcome, took = timed(lambda: client.probe("GET", "/health", timeout=0.5))
    assert isinstance(outcome, TargetTimeout), outcome
    assert "no answer within 0.5 s" in str(outcome)
    assert took < 0.5 + SLACK


@pytest.mark.parametrize("behaviour", [slow_headers(0.1), slow_body(0.1)],
                         ids=["headers", "body"])
def test_a_request_at_one_byte_a_tick_times_out_at_the_deadline(hostile: Any,
                                                                behaviour: Any) -> None:
    server = hostile(behaviour)
    client = SGLangClient(server.url)
    outcome, took = timed(lambda: client.server_info(timeout=0.5))
    assert isinstance(outcome, TargetTimeout), outcome
    assert took < 0.5 + SLACK


def test_a_slow_loris_health_is_critical_within_the_checks_timeout(hostile: Any) -> None:
    server = hostile(slow_body(0.1))
    result, took = timed(lambda: run_check(server.url, kind="http", timeout="0.5s"))
    assert result.status is Status.CRITICAL
    assert "timed out, no answer within 0.5 s" in result.message
    assert took < 0.5 + SLACK


def test_the_checks_timeout_bounds_the_whole_run_not_each_request(hostile: Any) -> None:
    # server_info asks /server_info, then /get_server_info on a 404: one deadline for both.
    server = hostile(slow_headers(0.1))
    client = SGLangClient(server.url)
    began = time.monotonic()
    with budget(0.6), pytest.raises(TargetTimeout):
        client.server_info(timeout=5)
    assert time.monotonic() - began < 0.6 + SLACK


def test_an_endless_stream_is_cut_at_the_cap(hostile: Any) -> None:
    server = hostile(endless())
    result = run_check(server.url, kind="metric", metric="sglang:num_queue_reqs",
                       timeout="5s", max_answer="1MiB")
    assert result.status is Status.UNKNOWN
    assert "GET /metrics: answer larger than 1 MiB, stopped reading (max_answer)" \
        in result.message


def test_a_gzip_bomb_is_cut_at_the_cap_after_decompression(hostile: Any) -> None:
    server = hostile(gzip_bomb(64 << 20))
    client = SGLangClient(server.url)
    with budget(5, max_bytes=4 << 20), pytest.raises(AnswerTooLarge, match="larger than 4 MiB"):
        client.probe("GET", "/metrics")
    with budget(5, max_bytes=4 << 20), pytest.raises(AnswerTooLarge):
        client.server_info()


def test_a_gzipped_page_is_read_whole(hostile: Any) -> None:
    page = FIXTURE_PAGE.read_bytes()
    server = hostile(answer(200, gzip.compress(page), headers={"Content-Encoding": "gzip"}))
    assert SGLangClient(server.url).probe("GET", "/metrics").body == page


def test_an_unknown_content_encoding_is_an_error_not_garbage(hostile: Any) -> None:
    server = hostile(answer(200, b"\x00\x01", headers={"Content-Encoding": "br"}))
    with pytest.raises(TargetError, match="unsupported content encoding 'br'"):
        SGLangClient(server.url).probe("GET", "/metrics")


def test_a_huge_page_over_the_cap_is_unknown_with_its_reason(hostile: Any) -> None:
    server = hostile(huge(40 << 20))
    result = run_check(server.url, kind="metric", metric="sglang:num_queue_reqs",
                       timeout="5s", max_answer="2MiB")
    assert result.status is Status.UNKNOWN
    assert "answer larger than 2 MiB" in result.message


@pytest.mark.skipif(not DP8_PAGE.exists(), reason="the 8-DP page fixture is not here")
def test_the_default_cap_reads_an_8_dp_metrics_page(hostile: Any) -> None:
    page = DP8_PAGE.read_bytes()
    server = hostile(answer(200, page))
    result = run_check(server.url, kind="metric", metric="sglang:num_running_reqs",
                       timeout="5s")
    assert result.status is not Status.UNKNOWN, result.message


def test_max_answer_is_a_size_with_a_unit() -> None:
    base = {"name": "x", "target": "local", "kind": "http"}
    assert CheckConfig.model_validate({**base, "max_answer": "2MiB"}).max_answer == 2 << 20
    assert CheckConfig.model_validate({**base, "max_answer": "500KB"}).max_answer == 500_000
    assert CheckConfig.model_validate(base).max_answer == 16 << 20
    with pytest.raises(ValidationError, match="invalid size '2 parsecs'"):
        CheckConfig.model_validate({**base, "max_answer": "2 parsecs"})


def test_a_streamed_generation_that_never_ends_stops_at_the_deadline(hostile: Any) -> None:
    server = hostile(drip(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
                          + b'data: {"text": "a"}\n\n' * 1000, 0.01))
    client = SGLangClient(server.url)
    outcome, took = timed(lambda: client.generate({"text": "hi", "stream": True},
                                                  timeout=0.8))
    assert isinstance(outcome, TargetTimeout), outcome
    assert took < 0.8 + SLACK


def test_a_streamed_generation_without_newlines_stops_at_the_cap(hostile: Any) -> None:
    server = hostile(endless(b"data: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"))
    client = SGLangClient(server.url)
    with budget(5, max_bytes=1 << 20), pytest.raises(AnswerTooLarge):
        client.generate({"text": "hi", "stream": True}, timeout=5)


def test_a_webhook_that_drips_its_answer_times_out(hostile: Any) -> None:
    server = hostile(slow_body(0.1))
    outcome, took = timed(lambda: post_json(server.url + "/hook", {"a": 1}, headers={},
                                            timeout=0.5))
    assert isinstance(outcome, TargetTimeout), outcome
    assert took < 0.5 + SLACK


# --- redirects ------------------------------------------------------------------------------


def test_a_redirect_to_another_server_is_not_followed(hostile: Any) -> None:
    elsewhere = Loopback(lambda request: (200, "application/json", b"{}"))
    try:
        server = hostile(redirect(f"{elsewhere.url}/server_info"))
        client = SGLangClient(server.url, api_key="sk-secret")
        with pytest.raises(TargetError, match=r"redirected to another server .*not followed"):
            client.server_info()
        with pytest.raises(TargetError, match=r"redirected to another server"):
            post_json(server.url + "/hook", {}, headers={"X-Auth-Token": "t0k"}, timeout=2)
        assert elsewhere.requests == []
    finally:
        elsewhere.close()


def test_a_redirect_on_the_same_server_is_followed(hostile: Any) -> None:
    replies = [redirect("/server_info", 307), answer(200, b'{"version": "0.5.10"}')]

    def behave(conn: Any, stopping: Any) -> None:
        replies.pop(0)(conn, stopping)

    server = hostile(behave)
    assert SGLangClient(server.url).server_info()["version"] == "0.5.10"
    assert server.requests == 2

    # Same host and scheme, another port: another server, not followed.
    hop = hostile(redirect(f"{server.url}/server_info", 307))
    with pytest.raises(TargetError, match="redirected to another server"):
        SGLangClient(hop.url).server_info()


# --- the service ----------------------------------------------------------------------------


def test_sigterm_stops_the_service_within_seconds_while_a_target_drips(
        hostile: Any, tmp_path: Path) -> None:
    server = hostile(slow_body(0.5))
    path = tmp_path / "sglguard.yaml"
    path.write_text(f"""\
version: 1
targets:
  - {{name: local, url: "{server.url}"}}
checks:
  - {{name: liveness, kind: http, target: local, interval: 30s, timeout: 60s}}
  - {{name: queue, kind: metric, target: local, metric: sglang:num_queue_reqs,
      interval: 30s, timeout: 60s}}
""")
    process = subprocess.Popen([PYTHON, "-m", "sglguard", "run", "--config", str(path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_started(server, 15)
        wait_for(lambda: server.requests >= 2, 10)
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr.decode()
    assert time.monotonic() - began < 5
    assert b"sglguard stopped" in stderr


def test_a_tls_handshake_that_drips_times_out_at_the_deadline(hostile: Any) -> None:
    # The server accepts, then sends a TLS record one byte a tick: the handshake never ends.
    server = hostile(drip(b"\x16\x03\x03\x00\x40" + b"\x00" * 64, 0.1))
    client = SGLangClient(server.url.replace("http://", "https://"))
    outcome, took = timed(lambda: client.probe("GET", "/health", timeout=0.5))
    assert isinstance(outcome, TargetTimeout), outcome
    assert took < 0.5 + SLACK
