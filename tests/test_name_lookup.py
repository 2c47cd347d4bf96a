"""A host name is looked up within the check's timeout: a resolver that never answers cannot hold
a run past its deadline.

One boundary is faked: `socket.getaddrinfo`, the call into the system's resolver (changing the
host's resolver needs root). For the chosen name it blocks until the test ends, as a resolver
that does not answer does; every other name goes to the real resolver. Everything past it is
real: loopback servers, urllib3 connections, the check's run."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sglguard.checks.base import CheckConfig, CheckContext, CheckResult, Status
from sglguard.checks.registry import CHECKS
from sglguard.client import SGLangClient, TargetError, TargetTimeout
from sglguard.config.models import TargetConfig
from sglguard.resolver import RESOLVER

from conftest import Loopback, Reply, Request, wait_for

HUNG = "hung-resolver.sglguard.test"
SLACK = 2.0  # a loaded test machine's lag beyond a deadline


class FakeResolver:
    """socket.getaddrinfo where HUNG hangs (until released) and other names are real."""

    def __init__(self) -> None:
        self.real = socket.getaddrinfo
        self.release = threading.Event()
        self.asked: list[str] = []
        self.answer_with = "127.0.0.1"

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == HUNG:
            self.asked.append(host)
            self.release.wait(30)
            return self.real(self.answer_with, port, *args, **kwargs)
        return self.real(host, port, *args, **kwargs)


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeResolver]:
    fake = FakeResolver()
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    yield fake
    fake.release.set()
    wait_for(lambda: RESOLVER.in_flight() == 0, 10)


@pytest.fixture
def server() -> Iterator[Loopback]:
    def respond(request: Request) -> Reply:
        if request[1] == "/metrics":
            return 200, "text/plain", b"sglang:num_queue_reqs 3\n"
        return 200, "text/plain", b"ok"

    loopback = Loopback(respond)
    yield loopback
    loopback.close()


def run_check(url: str, client: SGLangClient | None = None, **config: Any) -> CheckResult:
    target = TargetConfig(name="local", url=url)
    model = CheckConfig.model_validate({"name": "probe", "target": "local", **config})
    own = client or SGLangClient(url)
    try:
        return CHECKS[model.kind](model, CheckContext(target, own)).execute()
    finally:
        own.close()


def named(server: Loopback, host: str) -> str:
    return f"http://{host}:{server.server.server_address[1]}"


def timed(call: Any) -> tuple[Any, float]:
    began = time.monotonic()
    try:
        outcome = call()
    except Exception as exc:  # the outcome under test may be an error
        outcome = exc
    return outcome, time.monotonic() - began


@pytest.mark.parametrize("kind", [
    {"kind": "http"},
    {"kind": "metric", "metric": "sglang:num_queue_reqs"},
], ids=["http", "metric"])
def test_a_run_whose_name_lookup_hangs_ends_within_its_timeout_naming_the_lookup(
        resolver: FakeResolver, server: Loopback, kind: dict[str, str]) -> None:
    result, took = timed(lambda: run_check(named(server, HUNG), timeout="0.5s", **kind))
    assert took < 0.5 + SLACK
    assert result.status in (Status.CRITICAL, Status.UNKNOWN)
    assert f"resolving the host name '{HUNG}' did not finish within 0.5 s" in result.message
    assert not server.requests


def test_a_name_the_resolver_answers_reaches_the_server(resolver: FakeResolver,
                                                        server: Loopback) -> None:
    resolver.release.set()  # this resolver answers at once
    result = run_check(named(server, HUNG), kind="http", timeout="2s")
    assert result.status is Status.OK, result.message
    assert len(server.requests) == 1


def test_localhost_is_looked_up_by_the_real_resolver(server: Loopback) -> None:
    result = run_check(named(server, "localhost"), kind="metric",
                       metric="sglang:num_queue_reqs", timeout="2s")
    assert result.status is Status.OK, result.message
    assert result.value == 3


def test_an_unknown_name_is_an_error_naming_the_lookup(server: Loopback) -> None:
    client = SGLangClient(named(server, "no-such-host.invalid"))
    outcome, _ = timed(lambda: client.probe("GET", "/health", timeout=2))
    assert isinstance(outcome, TargetError), outcome
    assert "could not resolve the host name" in str(outcome)


def test_runs_waiting_on_one_hung_name_share_one_lookup(resolver: FakeResolver,
                                                        server: Loopback) -> None:
    results: list[CheckResult] = []
    runs = [threading.Thread(target=lambda: results.append(
        run_check(named(server, HUNG), kind="http", timeout="0.5s"))) for _ in range(4)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(0.5 + SLACK * 2)
    assert len(results) == 4
    assert all("resolving the host name" in result.message for result in results)
    assert resolver.asked == [HUNG]  # one thread held by the hung resolver, not four
    assert RESOLVER.in_flight() == 1


def test_a_later_run_asks_again_once_the_resolver_answers(resolver: FakeResolver,
                                                          server: Loopback) -> None:
    first = run_check(named(server, HUNG), kind="http", timeout="0.3s")
    assert "resolving the host name" in first.message
    resolver.release.set()
    wait_for(lambda: RESOLVER.in_flight() == 0, 10)
    second = run_check(named(server, HUNG), kind="http", timeout="2s")
    assert second.status is Status.OK, second.message


def test_stopping_abandons_a_fetch_waiting_on_a_name_lookup(resolver: FakeResolver,
                                                            server: Loopback) -> None:
    client = SGLangClient(named(server, HUNG))
    outcome: list[Any] = []
    fetch = threading.Thread(target=lambda: outcome.append(
        timed(lambda: client.probe("GET", "/health", timeout=30))))
    fetch.start()
    wait_for(lambda: resolver.asked, 10)
    client.abort()
    fetch.join(SLACK * 2)
    assert outcome, "the fetch still waits on the resolver"
    error, took = outcome[0]
    assert isinstance(error, TargetError) and not isinstance(error, TargetTimeout), error
    assert "abandoned, sglguard is stopping" in str(error)
    assert took < SLACK * 2


def test_a_gateway_worker_name_whose_lookup_hangs_is_compared_by_name(
        resolver: FakeResolver) -> None:
    from sglguard.remediations.gateway import LOOKUP_S, normalised

    outcome, took = timed(lambda: normalised(f"http://{HUNG}:30000"))
    assert outcome == ("http", HUNG, 30000)
    assert took < LOOKUP_S + SLACK
    resolver.release.set()  # answered later: asked again, not the name kept from the timeout
    wait_for(lambda: RESOLVER.in_flight() == 0, 10)
    assert normalised(f"http://{HUNG}:30000") == ("http", "127.0.0.1", 30000)
