"""The example catalog on emulated SGLang 0.5.23 servers of every common shape: quiet while
healthy (plain, DP 8, priority scheduling, PD prefill and decode, skip-warmup, no GPU), loud
when sick; and the scenarios that misled it: a long generation, first-use counters, priority
totals, its own probes in the error ratio, a restart with lingering errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from sglguard.checks.base import CheckContext, CheckResult, Status
from sglguard.checks.registry import CHECKS
from sglguard.config.models import Catalog
from sglguard.emulator import Emulator, EmulatorOptions
from sglguard.receiver import AlertReceiver
from sglguard.service import Service, build_clients, run_once
from sglguard.store import Store, queries
from sglguard.store.models import CheckResultRow
from sglguard.store.samples import StoreSamples

from conftest import FakeClock, StartEmulator, free_port, wait_for

# Kinds that read the server (the process and log checks need the control of a real launch;
# the host check reads this machine).
SERVER_KINDS = {"http", "progress", "metric", "server_info", "generate", "structured_output",
                "gpu"}


def example(url: str, **target: Any) -> str:
    catalog: dict[str, Any] = yaml.safe_load(
        resources.files("sglguard.config").joinpath("catalog.example.yaml").read_text())
    catalog["targets"][0].update(url=url, **target)
    catalog["targets"][0].pop("control")
    catalog["checks"] = [check for check in catalog["checks"] if check["kind"] in SERVER_KINDS]
    for key in ("notifiers", "maintenance", "remediations"):
        catalog.pop(key, None)
    for check in catalog["checks"]:
        check.pop("remediate", None)
    catalog.pop("store", None)
    return yaml.safe_dump(catalog, sort_keys=False)


Rounds = Callable[..., list[list[CheckResult]]]


@pytest.fixture
def rounds(make_catalog: Callable[[str], Catalog], store: Store, clock: FakeClock) -> Rounds:
    """Run the example's server checks `count` times, 30 s apart on the clock (a little real
    time between, so that load moves the counters)."""

    def go(url: str, count: int, **target: Any) -> list[list[CheckResult]]:
        catalog = make_catalog(example(url, **target))
        names = [check.name for check in catalog.checks]
        seen = []
        for _ in range(count):
            seen.append(run_once(catalog, store, names, clock))
            clock.advance(30)
            time.sleep(0.1)
        return seen

    return go


def failing(results: list[CheckResult]) -> dict[str, str]:
    """Results that would count toward an incident."""
    return {result.check: f"{result.status.label}: {result.message}" for result in results
            if result.status is not Status.OK and result.counts and not result.skipped}


HEALTHY = {
    "plain": {"load": 20},
    "dp 8": {"load": 20, "dp_size": 8},
    "priority scheduling": {"load": 20, "enable_priority_scheduling": True},
    "PD prefill worker": {"load": 20, "disaggregation_mode": "prefill"},
    "PD decode worker": {"load": 20, "disaggregation_mode": "decode"},
    "skip-warmup, no traffic yet": {"skip_server_warmup": True},
}


@pytest.mark.parametrize("shape", list(HEALTHY))
def test_example_catalog_is_quiet_on_a_healthy_server(start_emulator: StartEmulator,
                                                      rounds: Rounds, shape: str) -> None:
    emulator = start_emulator(health_latency=0.01, **{"skip_server_warmup": False,
                                                      **HEALTHY[shape]})
    seen = rounds(emulator.url, 7)  # 3 minutes on the clock, 30 s apart
    for results in seen:
        assert failing(results) == {}, shape
    last = {result.check: result for result in seen[-1]}
    assert last["liveness"].status is Status.OK
    assert last["hang"].counts  # judged, not still collecting


@pytest.mark.parametrize(("fault", "checks"), [
    ("errors:0.3", {"error-ratio"}), ("queue:300", {"queue"}),
    ("stall", {"hang", "liveness"})])  # /health gives up after its timeout (0.2 s here)
def test_example_catalog_is_loud_on_a_sick_server(start_emulator: StartEmulator,
                                                  rounds: Rounds, fault: str,
                                                  checks: set[str]) -> None:
    emulator = start_emulator(health_latency=0.01, load=20, skip_server_warmup=False)
    rounds(emulator.url, 1)
    emulator.set_fault(fault)
    seen = rounds(emulator.url, 3)
    assert checks & set(failing(seen[-1])), [r.message for r in seen[-1]]


# --- the scenarios, one check at a time -----------------------------------------------------

@pytest.fixture
def run(make_catalog: Callable[[str], Catalog], store: Store,
        clock: FakeClock) -> Callable[[str, str], CheckResult]:
    def go(url: str, fields: str) -> CheckResult:
        catalog = make_catalog(f"""\
            version: 1
            targets: [{{name: t, url: "{url}"}}]
            checks: [{{name: c, target: t, {fields}}}]
            """)
        config = catalog.checks[0]
        context = CheckContext(target=catalog.targets[0], client=build_clients(catalog)["t"],
                               clock=clock, samples=StoreSamples(store))
        return CHECKS[config.kind](config, context).execute()

    return go


def test_one_long_generation_is_progress_not_a_hang(
        start_emulator: StartEmulator, run: Callable[[str, str], CheckResult],
        clock: FakeClock) -> None:
    emulator = start_emulator(decode_speed=50.0)  # 5000 tokens: 100 s of decoding
    body = {"text": "Write a long story.", "rid": "long",
            "sampling_params": {"max_new_tokens": 5000}}
    worker = threading.Thread(target=requests.post, args=(f"{emulator.url}/generate",),
                              kwargs={"json": body, "timeout": 30}, daemon=True)
    worker.start()
    wait_for(lambda: emulator.active_requests >= 1)
    progress, finished_only = [], []
    for _ in range(3):
        progress.append(run(emulator.url, "kind: progress, window: 1m"))
        finished_only.append(run(emulator.url, "kind: progress, window: 1m, "
                                 'tokens_metric: "sglang:not_served"'))
        clock.advance(30)
        time.sleep(0.3)  # ~15 decode steps
    requests.post(f"{emulator.url}/abort_request", json={"rid": "long"}, timeout=5)
    worker.join(10)
    assert progress[-1].status is Status.OK and progress[-1].value
    assert "realtime_tokens_total" in progress[-1].message
    assert "1 requests running" in progress[-1].message
    # generation_tokens_total moves only when a request finishes: it alone would call a hang
    assert finished_only[-1].status is Status.CRITICAL


def test_first_use_counter_reads_zero_then_counts_its_first_burst(
        start_emulator: StartEmulator, run: Callable[[str, str], CheckResult],
        clock: FakeClock) -> None:
    emulator = start_emulator()
    fields = ('kind: metric, metric: "sglang:num_aborted_requests_total", increase: true, '
              'window: 5m, critical: "> 2"')
    first = run(emulator.url, fields)
    assert (first.status, first.counts) == (Status.OK, False)  # collecting: not counted
    clock.advance(30)
    assert (run(emulator.url, fields).status, run(emulator.url, fields).value) == (
        Status.OK, 0.0)
    for _ in range(3):
        requests.post(f"{emulator.url}/abort_request", json={"abort_all": True}, timeout=5)
    clock.advance(30)
    burst = run(emulator.url, fields)
    assert (burst.status, burst.value) == (Status.CRITICAL, 3.0)


@pytest.mark.parametrize("priorities", [(0, 1, 1, 2), (None, None, 1, None)])
def test_queue_totals_with_priority_scheduling_come_from_the_empty_priority(
        start_emulator: StartEmulator, run: Callable[[str, str], CheckResult],
        priorities: tuple[int | None, ...]) -> None:
    emulator = start_emulator(enable_priority_scheduling=True, max_running_requests=1,
                              decode_speed=20.0)
    # a request sent without a priority is queued under the lowest one, a series of its own
    bodies = [{"text": "x", "sampling_params": {"max_new_tokens": 200},
               **({} if priority is None else {"priority": priority})}
              for priority in priorities]
    workers = [threading.Thread(target=requests.post, args=(f"{emulator.url}/generate",),
                                kwargs={"json": body, "timeout": 30}, daemon=True)
               for body in bodies]
    for worker in workers:
        worker.start()
    wait_for(lambda: emulator.active_requests >= 4)
    try:
        plain = run(emulator.url, 'kind: metric, metric: "sglang:num_queue_reqs"')
        total = run(emulator.url, 'kind: metric, metric: "sglang:num_queue_reqs", '
                                  'labels: {priority: ""}')
    finally:
        requests.post(f"{emulator.url}/abort_request", json={"abort_all": True}, timeout=5)
    assert (plain.value, total.value) == (6.0, 3.0)  # the plain sum doubles the queue


def test_error_ratio_on_inference_endpoints_ignores_health_probes_during_a_slow_start(
        start_emulator: StartEmulator, run: Callable[[str, str], CheckResult],
        clock: FakeClock) -> None:
    emulator = start_emulator(startup_delay=0.5)
    inference = "/generate|/v1/.*"
    fields = (f'kind: metric, metric: "sglang:http_responses_total", window: 5m, '
              f'labels: {{status_code: "5..", endpoint: "{inference}"}}, critical: "> 0.01", '
              f'ratio_to: {{metric: "sglang:http_responses_total", '
              f'labels: {{endpoint: "{inference}"}}}}')
    run(emulator.url, fields)
    for _ in range(5):
        requests.get(f"{emulator.url}/health", timeout=5)  # 503: still starting
    wait_for(lambda: requests.get(f"{emulator.url}/health", timeout=5).status_code == 200)
    for _ in range(5):
        requests.post(f"{emulator.url}/generate", json={"text": "hi"}, timeout=5)
    clock.advance(30)
    result = run(emulator.url, fields)
    assert (result.status, result.value) == (Status.OK, 0.0)
    page = requests.get(f"{emulator.url}/metrics", timeout=5).text
    assert 'endpoint="/health",method="GET",status_code="503"' in page  # there, not counted


def test_latency_quantiles_of_a_prefill_worker_are_no_data_not_unknown(
        start_emulator: StartEmulator, run: Callable[[str, str], CheckResult],
        clock: FakeClock) -> None:
    emulator = start_emulator(disaggregation_mode="prefill", load=20, skip_server_warmup=False)
    fields = ('kind: metric, metric: "sglang:time_to_first_token_seconds", quantile: 0.95, '
              'window: 5m, warning: "> 0.5"')
    run(emulator.url, fields)
    clock.advance(30)
    time.sleep(0.2)
    result = run(emulator.url, fields)
    assert (result.status, result.counts) == (Status.OK, False)
    assert "no data" in result.message


def test_dp8_queue_sums_ranks_and_kv_usage_takes_the_fullest(
        start_emulator: StartEmulator, run: Callable[[str, str], CheckResult]) -> None:
    emulator = start_emulator(dp_size=8, max_running_requests=1, decode_speed=20.0)
    workers = [threading.Thread(target=requests.post, args=(f"{emulator.url}/generate",),
                                kwargs={"json": {"text": "x " * 50, "sampling_params": {
                                    "max_new_tokens": 200}}, "timeout": 30}, daemon=True)
               for _ in range(10)]
    for worker in workers:
        worker.start()
    wait_for(lambda: emulator.active_requests >= 10)
    try:
        running = run(emulator.url, 'kind: metric, metric: "sglang:num_running_reqs"')
        queue = run(emulator.url, 'kind: metric, metric: "sglang:num_queue_reqs"')
        loads = requests.get(f"{emulator.url}/v1/loads", timeout=5).json()
    finally:
        requests.post(f"{emulator.url}/abort_request", json={"abort_all": True}, timeout=5)
    assert (running.value, queue.value) == (8.0, 2.0)  # one running per rank, two waiting
    assert "over 8 series" in running.message
    assert loads["dp_rank_count"] == 8 and len(loads["loads"]) == 8


@pytest.fixture
def port() -> Iterator[int]:
    yield free_port()


def test_error_ratio_stays_critical_through_a_restart_with_lingering_errors(
        port: int, run: Callable[[str, str], CheckResult], clock: FakeClock) -> None:
    url = f"http://127.0.0.1:{port}"
    fields = ('kind: metric, metric: "sglang:http_responses_total", window: 5m, '
              'labels: {status_code: "5..", endpoint: "/generate|/v1/.*"}, '
              'critical: "> 0.05", ratio_to: {metric: "sglang:http_responses_total", '
              'labels: {endpoint: "/generate|/v1/.*"}}')
    options = {"port": port, "health_latency": 0.01, "skip_server_warmup": True}

    def answer(server: Emulator, statuses: list[int]) -> CheckResult:
        for status in statuses:
            server.set_fault("error:503" if status == 503 else None)
            requests.post(f"{url}/generate", json={"text": "x"}, timeout=5)
        result = run(url, fields)
        clock.advance(30)
        return result

    before = Emulator(EmulatorOptions(**options))
    before.start()
    try:
        answer(before, [503, 503, 200, 200, 200])
    finally:
        before.stop()
    # Restarted: the counters start over and the 503 series is gone until its next error.
    after = Emulator(EmulatorOptions(**options))
    after.start()
    try:
        fresh = answer(after, [200])
        lingering = answer(after, [503, 503])
    finally:
        after.stop()
    assert (fresh.status, fresh.value) == (Status.OK, 0.0)  # one answer since, no error
    assert lingering.status is Status.CRITICAL  # 2 errors in 3 responses since the first scrape
    assert lingering.value == pytest.approx(2 / 3)


def test_a_burst_past_max_running_requests_queues_and_slows_ttft(
        start_emulator: StartEmulator) -> None:
    emulator = start_emulator(max_running_requests=1, decode_speed=100.0)
    body = {"text": "x", "sampling_params": {"max_new_tokens": 20}}  # 0.2 s each
    answers: list[dict[str, Any]] = []
    workers = [threading.Thread(target=lambda: answers.append(requests.post(
        f"{emulator.url}/generate", json=body, timeout=10).json()), daemon=True)
        for _ in range(4)]
    for worker in workers:
        worker.start()
    wait_for(lambda: '"} 3.0' in next(
        line for line in requests.get(f"{emulator.url}/metrics", timeout=5).text.splitlines()
        if line.startswith("sglang:num_queue_reqs{")))
    for worker in workers:
        worker.join(10)
    page = requests.get(f"{emulator.url}/metrics", timeout=5).text
    ttft_sum = float(next(line.split()[-1] for line in page.splitlines()
                          if line.startswith("sglang:time_to_first_token_seconds_sum")))
    # queued behind 0, 1, 2 and 3 requests of 0.2 s each: at least 0 + 0.2 + 0.4 + 0.6
    assert ttft_sum >= 1.1
    assert len(answers) == 4


def test_a_slow_start_up_fires_no_metric_check(start_emulator: StartEmulator,
                                               rounds: Rounds) -> None:
    emulator = start_emulator(startup_delay=60.0, health_latency=0.01)
    for results in rounds(emulator.url, 3):
        reading = [result for result in results if result.check not in (
            "liveness", "hang", "gpu-memory-growth", "gpu-temperature")]
        assert all(result.skipped for result in reading), failing(results)
        assert "hang" not in failing(results)  # on its own signal: nothing running, no hang
        assert {result.check: result.status for result in results}["liveness"] is (
            Status.CRITICAL)  # what the restart's start-up grace is for


def test_a_dead_server_pages_through_liveness_only(make_catalog: Callable[[str], Catalog],
                                                   store: Store, clock: FakeClock) -> None:
    text = resources.files("sglguard.config").joinpath("catalog.example.yaml").read_text()
    catalog = make_catalog(text.replace("http://127.0.0.1:30000",
                                        f"http://127.0.0.1:{free_port()}"))
    results = {result.check: result for result in run_once(
        catalog, store, ["liveness", "server-process", "hang", "queue"], clock)}
    assert results["liveness"].status is Status.CRITICAL
    assert all(results[name].skipped for name in ("server-process", "queue"))
    # The progress check has no depends_on: it cannot read /metrics, which is "no data".
    hang = results["hang"]
    assert not hang.skipped and not hang.counts and hang.message.startswith("no data: cannot "
                                                                              "read /metrics")
    assert "hang" not in failing(list(results.values()))


def test_the_example_progress_check_calls_a_stall_a_hang_on_its_own_signal(
        start_emulator: StartEmulator, rounds: Rounds) -> None:
    emulator = start_emulator(fault="stall", health_latency=0.01)
    last = {result.check: result for result in rounds(emulator.url, 3)[-1]}
    assert last["liveness"].status is Status.CRITICAL  # /health times out on a stall too
    hang = last["hang"]  # not skipped for it: the decode counter is its own evidence
    assert not hang.skipped and hang.status is Status.CRITICAL, hang
    assert hang.message.startswith("hung: no token generated")


def test_the_start_up_grace_covers_the_example_progress_check(
        make_catalog: Callable[[str], Catalog], store: Store, clock: FakeClock) -> None:
    from datetime import timedelta

    from sglguard.engine import IncidentEngine

    catalog = make_catalog(example(f"http://127.0.0.1:{free_port()}"))
    engine = IncidentEngine(catalog, store, clock)

    def hang(status: Status) -> CheckResult:
        return CheckResult(check="hang", target="local", status=status, value=0.0,
                           unit="tokens", message="hung" if status is Status.CRITICAL
                           else "idle", duration_ms=1.0, started_at=clock())

    engine.record(hang(Status.OK))
    engine.begin_grace("local", clock() + timedelta(minutes=10))  # a restart began
    clock.advance(1)
    decisions = []
    for _ in range(3):  # past its failure_threshold of 2
        decisions.append(engine.record(hang(Status.CRITICAL)))
        clock.advance(15)
    assert [decision.evaluated for decision in decisions] == [False, False, False]
    assert all(decision.opened is None for decision in decisions)


def test_every_example_check_that_fires_on_a_value_has_a_threshold() -> None:
    """Kinds whose only verdict is a threshold on their value: without one, they never fire
    (the drill's 129 GB of KV cache read OK)."""
    catalog = yaml.safe_load(
        resources.files("sglguard.config").joinpath("catalog.example.yaml").read_text())
    valued = {"metric", "server_info", "gpu", "host", "log"}
    unjudged = [check["name"] for check in catalog["checks"]
                if (check["kind"] in valued or (check["kind"] == "process"
                                                and check.get("metric", "alive") != "alive"))
                and not ({"warning", "critical"} & set(check))]
    assert unjudged == []


def test_one_outage_opens_one_incident_and_pages_once(
        tmp_path: Path, make_catalog: Callable[[str], Catalog], store: Store) -> None:
    receiver = AlertReceiver().start()
    catalog: dict[str, Any] = yaml.safe_load(
        resources.files("sglguard.config").joinpath("catalog.example.yaml").read_text())
    target = catalog["targets"][0]
    target["url"] = f"http://127.0.0.1:{free_port()}"  # nothing listens: the server is down
    target["control"]["pidfile"] = str(tmp_path / "server.pid")
    # no log beside the pidfile either: this control never started the server
    for check in catalog["checks"]:  # every check of the example, at a test's pace
        check.update(interval="0.2s", timeout="1s")
        check.pop("remediate", None)  # the outage stays
    catalog["notifiers"][0]["urls"] = [f"json://127.0.0.1:{receiver.port}/alerts"]
    catalog["notifications"] = {"group_wait": "0.2s"}
    for key in ("store", "maintenance"):
        catalog.pop(key)
    service = Service(make_catalog(yaml.safe_dump(catalog, sort_keys=False)), store)
    service.start()
    try:
        wait_for(lambda: receiver.received(), 15)
        # a good many rounds of every check after the page
        wait_for(lambda: _results(store, "server-process") >= 10, 30)
        wait_for(lambda: _results(store, "server-log") >= 10, 30)
    finally:
        service.stop()
        receiver.stop()
    with store.session() as session:
        opened = [row.check_name for row in queries.incidents(session, open_only=False,
                                                              limit=10)]
    assert opened == ["liveness"]
    titles = [alert["title"] for alert in receiver.received()]
    assert len(titles) == 1 and "liveness: incident opened" in titles[0], titles


def _results(store: Store, check: str) -> int:
    with store.session() as session:
        return session.query(CheckResultRow).filter_by(check_name=check).count()
