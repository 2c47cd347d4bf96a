"""Remediation kinds against real loopback servers: reduce_concurrency restarting the emulator
with a lower value and restoring it, flush_cache, abort_requests, drain against a gateway written
here, webhook to a receiver; and the registry contract over every kind.

Fake boundaries: the clock (the `clock` fixture) everywhere; the `systemctl` executable in the
systemd test, as its docstring says. The SGLang servers are the project's emulator; the gateway
and webhook receivers are real HTTP servers on loopback."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import requests
from test_controls import FakeTool

from sglguard.config.loader import ConfigError
from sglguard.config.models import Catalog
from sglguard.emulator import Emulator
from sglguard.receiver import AlertReceiver
from sglguard.remediations.drained import return_workers
from sglguard.remediations.levels import Level, lowered, restore_is_due, stepped_up
from sglguard.remediations.registry import REMEDIATIONS
from sglguard.remediations.restore import restore_due, restore_level
from sglguard.remediations.runner import RemediationRunner
from sglguard.service import build_clients
from sglguard.store import Store, queries
from sglguard.store.models import CheckResultRow, IncidentRow, RemediationRunRow

from conftest import (
    PYTHON,
    FakeClock,
    Loopback,
    Reply,
    Request,
    emulator_command,
    free_port,
    wait_for,
)


@pytest.fixture
def make_runner(make_catalog: Callable[[str], Catalog], store: Store,
                clock: FakeClock) -> Iterator[Callable[[str], RemediationRunner]]:
    runners: list[RemediationRunner] = []

    def make(text: str) -> RemediationRunner:
        catalog = make_catalog(text)
        runner = RemediationRunner(catalog, store, build_clients(catalog), clock=clock)
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        control = runner.control(runner.catalog.targets[0])
        if control is not None and control.kind == "process":
            control.stop()


def target(url: str, control: str = "") -> str:
    """The catalog's head, indented as the snippets appended to it (make_catalog dedents)."""
    line = f"\n            control: {control}" if control else ""
    return f"""\
        version: 1
        targets:
          - name: local
            url: {url}{line}
"""


def max_running(url: str) -> int:
    info = requests.get(f"{url}/server_info", timeout=5).json()
    effective = info["internal_states"][0]["effective_max_running_requests_per_dp"]
    assert effective == info["max_running_requests"]
    return int(effective)


def queue_gauge(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=5).text
    return sum(float(value) for value in
               re.findall(r"^sglang:num_queue_reqs(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE))


# reduce_concurrency ---------------------------------------------------------------------------

def test_reduce_concurrency_restarts_lower_keeps_it_and_restores_later(
        make_runner: Callable[[str], RemediationRunner], store: Store,
        clock: FakeClock) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start = json.dumps(emulator_command(port, "--max-running-requests", "256"))
    runner = make_runner(target(url, "{kind: process, start: " + start + ", pidfile: local.pid, "
                                     "startup_timeout: 10s, stop_timeout: 5s}") + """\
        remediations:
          - {name: restart, kind: restart}
          - {name: shed, kind: reduce_concurrency, factor: 0.5, min: 8, restore_after: 30m}
        """)
    assert runner.run("restart", "local", trigger="manual").outcome == "succeeded"
    assert max_running(url) == 256

    planned = runner.run("shed", "local", trigger="manual", dry_run=True)
    assert planned.plan[0] == "max_running_requests: 256 -> 128"
    assert planned.plan[1].startswith("launch now: ") and planned.plan[1].endswith(
        "--max-running-requests 256")
    assert planned.plan[2].endswith("--max-running-requests 128")
    assert max_running(url) == 256

    reduced = runner.run("shed", "local", trigger="manual")
    assert reduced.outcome == "succeeded", reduced
    assert max_running(url) == 128
    with store.session() as session:
        [level] = queries.target_levels(session, "local")
        assert (level.setting, level.original, level.current, level.steps) == (
            "max_running_requests", 256, 128, 1)

    again = runner.run("restart", "local", trigger="manual")
    assert again.outcome == "succeeded" and max_running(url) == 128
    assert "--max-running-requests 128" in " ".join(again.plan)

    clock.advance(29 * 60)
    assert restore_due(store, runner.catalog, clock()) == []
    clock.advance(2 * 60)
    [due] = restore_due(store, runner.catalog, clock())
    assert (due.target, due.remediation) == ("local", "shed")
    restored = restore_level(runner, due)
    assert restored.outcome == "succeeded", restored
    assert "max_running_requests: 128 -> 256 (original)" in restored.detail
    assert max_running(url) == 256
    assert restore_due(store, runner.catalog, clock()) == []
    with store.session() as session:
        assert queries.target_levels(session) == []
        assert [run.trigger for run in queries.manual_runs(session, 1)] == ["restore"]


@pytest.mark.parametrize(("current", "factor", "floor", "integer", "expected"), [
    (256, 0.5, 8, True, 128), (255, 0.5, 8, True, 127), (12, 0.5, 8, True, 8),
    (8, 0.5, 8, True, None), (100, 0.7, 8, True, 70), (0.88, 0.9, 0.5, False, 0.792),
    (0.5, 0.9, 0.5, False, None), (3, 0.9, 1, True, 2),
])
def test_a_reduction_rounds_down_and_stops_at_the_minimum(
        current: float, factor: float, floor: float, integer: bool,
        expected: float | None) -> None:
    assert lowered(current, factor, floor, integer=integer) == expected


def test_restore_steps_up_one_level_at_a_time_and_lands_on_the_original(
        clock: FakeClock) -> None:
    level = Level("max_running_requests", 200, 25, 3, clock())
    steps = []
    while (up := stepped_up(level, 0.5, clock())) is not None:
        steps.append((up.current, up.steps))
        level = up
    assert steps == [(50, 2), (100, 1)]  # and then the original, 200: the row goes
    capped = Level("max_running_requests", 20, 8, 2, clock())  # 20 -> 10 -> 8 (the floor)
    assert stepped_up(capped, 0.5, clock()) is not None
    assert stepped_up(Level("max_running_requests", 20, 16, 2, clock()), 0.5, clock()) is None
    fraction = stepped_up(Level("mem_fraction_static", 0.9, 0.729, 3, clock()), 0.9, clock())
    assert fraction is not None and fraction.current == 0.81


@pytest.mark.parametrize(("minutes_since_change", "open_incident", "resolved_ago", "due"), [
    (31, False, None, True), (29, False, None, False), (31, True, None, False),
    (60, False, 10, False), (60, False, 30, True),
])
def test_restore_is_due_after_healthy_running_only(
        minutes_since_change: int, open_incident: bool, resolved_ago: int | None, due: bool,
        clock: FakeClock) -> None:
    now = clock()
    levels = [Level("max_running_requests", 256, 128, 1,
                    now - timedelta(minutes=minutes_since_change))]
    resolved = now - timedelta(minutes=resolved_ago) if resolved_ago is not None else None
    assert restore_is_due(levels, timedelta(minutes=30), now, open_incident=open_incident,
                          last_resolved=resolved) is due
    assert not restore_is_due([], timedelta(minutes=30), now, open_incident=False,
                              last_resolved=None)


def test_reduce_concurrency_at_the_minimum_fails_permanently_without_restarting(
        make_runner: Callable[[str], RemediationRunner], emulator: Emulator,
        tmp_path: Path) -> None:
    runner = make_runner(target(emulator.url, f"{{kind: process, start: [{PYTHON}], "
                                              "pidfile: never.pid}") + """\
        remediations:
          - {name: shed, kind: reduce_concurrency, min: 300}
        """)
    outcome = runner.run("shed", "local", trigger="manual")
    assert outcome.outcome == "failed" and outcome.permanent
    assert "already at the minimum (256, min 300)" in (outcome.error or "")
    assert not (tmp_path / "never.pid").exists()


def test_reduce_concurrency_through_systemd_writes_the_drop_in_and_checks_it_took(
        make_runner: Callable[[str], RemediationRunner], emulator: Emulator,
        tmp_path: Path) -> None:
    """Fake boundary: the systemctl executable. The emulator keeps answering 256 because no
    unit reads the variable, which the remediation must notice rather than report success."""
    systemctl = FakeTool(tmp_path, "systemctl")
    runner = make_runner(target(emulator.url, f"{{kind: systemd, unit: sglang, systemctl: "
                                              f"{systemctl.path}, dropin_dir: units, "
                                              "startup_timeout: 5s}") + """\
        remediations:
          - {name: shed, kind: reduce_concurrency}
        """)
    dropin = tmp_path / "units" / "sglguard-concurrency.conf"
    plan = runner.run("shed", "local", trigger="manual", dry_run=True).plan
    assert f"launch now: the unit as configured (no {dropin})" in plan
    assert (f"launch after: {dropin}: [Service] | Environment=SGLANG_MAX_RUNNING_REQUESTS=128"
            in plan)
    assert systemctl.calls() == []
    outcome = runner.run("shed", "local", trigger="manual")
    assert outcome.outcome == "failed" and outcome.permanent
    assert "runs with max_running_requests 256, not 128" in (outcome.error or "")
    assert "Environment=SGLANG_MAX_RUNNING_REQUESTS=128" in dropin.read_text()
    assert systemctl.calls()[:2] == [["daemon-reload"], ["restart", "sglang.service"]]


def test_reduce_concurrency_on_a_docker_target_is_a_config_error(
        make_catalog: Callable[[str], Catalog]) -> None:
    with pytest.raises(ConfigError) as caught:
        make_catalog(target("http://127.0.0.1:1", "{kind: docker, container: sglang}") + """\
        checks:
          - {name: queue, kind: http, target: local, remediate: [shed]}
        remediations:
          - {name: shed, kind: reduce_concurrency}
        """)
    assert any("remediation 'shed' (reduce_concurrency) cannot change launch flags through the "
               "docker control of target 'local' (controls that can: command, process, systemd)"
               in problem for problem in caught.value.problems), caught.value.problems


def test_restore_waits_while_the_target_has_an_open_incident(
        make_runner: Callable[[str], RemediationRunner], store: Store, clock: FakeClock) -> None:
    runner = make_runner(target("http://127.0.0.1:1") + """\
        remediations:
          - {name: shed, kind: reduce_concurrency, restore_after: 10m}
        """)
    with store.session() as session:
        queries.save_level(session, target="local", setting="max_running_requests",
                           original=256, current=128, steps=1, at=clock())
        incident = IncidentRow(check_name="queue", target="local", status="open",
                               severity="critical", opened_at=clock())
        session.add(incident)
    clock.advance(11 * 60)
    assert restore_due(store, runner.catalog, clock()) == []
    with store.session() as session:
        row = session.get_one(IncidentRow, incident.id)
        row.status, row.resolved_at = "resolved", clock()
    clock.advance(9 * 60)
    assert restore_due(store, runner.catalog, clock()) == []  # healthy for 9 min only
    clock.advance(60)
    assert [due.target for due in restore_due(store, runner.catalog, clock())] == ["local"]


# flush_cache and abort_requests ---------------------------------------------------------------

FLUSH = """\
        remediations:
          - {name: flush, kind: flush_cache, timeout: 0.2s}
          - {name: shed-load, kind: abort_requests}
        """


def test_flush_cache_succeeds_when_idle(make_runner: Callable[[str], RemediationRunner],
                                        emulator: Emulator) -> None:
    runner = make_runner(target(emulator.url) + FLUSH)
    outcome = runner.run("flush", "local", trigger="manual")
    assert (outcome.outcome, outcome.detail) == ("succeeded", "prefix cache flushed")
    assert outcome.plan == [f"POST {emulator.url}/flush_cache?timeout=0.2 "
                            "(200: flushed; 400: busy, not flushed)"]


def test_flush_cache_on_a_busy_server_is_a_failure_saying_so(
        make_runner: Callable[[str], RemediationRunner], emulator: Emulator) -> None:
    emulator.set_fault("queue:5")
    runner = make_runner(target(emulator.url) + FLUSH)
    outcome = runner.run("flush", "local", trigger="manual")
    assert outcome.outcome == "failed" and not outcome.permanent
    assert "cache not flushed: the server is busy" in (outcome.error or "")
    assert "Timed out waiting for idle state." in (outcome.error or "")


def test_abort_requests_sheds_the_queue(make_runner: Callable[[str], RemediationRunner],
                                        emulator: Emulator) -> None:
    emulator.set_fault("queue:50")
    assert queue_gauge(emulator.url) == 50
    runner = make_runner(target(emulator.url) + FLUSH)
    outcome = runner.run("shed-load", "local", trigger="manual")
    assert outcome.outcome == "succeeded", outcome
    assert queue_gauge(emulator.url) == 0


# drain ----------------------------------------------------------------------------------------

class Recorder(Loopback):
    """Records every request and answers through `respond` (JSON both ways)."""

    def __init__(self, respond: Callable[[str, str, Any], tuple[int, Any]]) -> None:
        def answer(request: Request) -> Reply:
            method, path, _, raw = request
            status, body = respond(method, unquote(path), json.loads(raw) if raw else None)
            return status, "application/json", json.dumps(body).encode()

        super().__init__(answer)

    @property
    def calls(self) -> list[tuple[str, str, Any]]:
        return [(method, unquote(path), json.loads(raw) if raw else None)
                for method, path, _, raw in self.requests]

    @property
    def headers(self) -> list[dict[str, str]]:
        return [headers for _, _, headers, _ in self.requests]


class Gateway:
    """An SGLang gateway's worker API in both styles, over a list of workers."""

    def __init__(self, workers: dict[str, str]) -> None:
        self.workers = dict(workers)  # id -> url

    def respond(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if (method, path) == ("GET", "/workers"):
            return 200, {"workers": [{"id": k, "url": v} for k, v in self.workers.items()],
                         "total": len(self.workers)}
        if method == "DELETE" and path.startswith("/workers/"):
            return (202, {"status": "accepted"}) if self.workers.pop(path[9:], None) else (
                404, {"error": "Worker not found"})
        if (method, path) == ("POST", "/workers"):
            self.workers[f"w-{len(self.workers) + 7}"] = body["url"]
            return 202, {"status": "accepted"}
        if method == "POST" and path.startswith(("/remove_worker?url=", "/add_worker?url=")):
            return 200, {}
        return 404, {"error": "no route"}


@pytest.fixture
def recorders() -> Iterator[Callable[[Callable[[str, str, Any], tuple[int, Any]]], Recorder]]:
    made: list[Recorder] = []

    def make(respond: Callable[[str, str, Any], tuple[int, Any]]) -> Recorder:
        made.append(Recorder(respond))
        return made[-1]

    yield make
    for recorder in made:
        recorder.close()


def test_drain_with_the_legacy_router_api(make_runner: Callable[[str], RemediationRunner],
                                          recorders: Callable[..., Recorder]) -> None:
    server = recorders(Gateway({}).respond)
    runner = make_runner(target("http://10.0.0.5:30000") + f"""\
        remediations:
          - {{name: drain, kind: drain, gateway: {server.url}, api: legacy,
              worker_url: "http://sglang-5:30000"}}
        """)
    outcome = runner.run("drain", "local", trigger="manual")
    assert outcome.outcome == "succeeded", outcome
    assert outcome.plan == [f"POST {server.url}/remove_worker?url=http://sglang-5:30000",
                            "re-added once well (verified, incident resolved, or `sglguard "
                            f"undrain local`): POST {server.url}/add_worker"
                            "?url=http://sglang-5:30000"]
    assert return_workers(runner.store, runner.catalog, "local", by="test") == [
        f"added http://sglang-5:30000 back to {server.url} (legacy API)"]
    assert [call[:2] for call in server.calls] == [
        ("POST", "/remove_worker?url=http://sglang-5:30000"),
        ("POST", "/add_worker?url=http://sglang-5:30000")]


# webhook --------------------------------------------------------------------------------------

def hook(url: str) -> str:
    return f"""\
        remediations:
          - name: page
            kind: webhook
            url: {url}
            headers: {{Authorization: "Bearer ${{HOOK_TOKEN}}"}}
            body: {{runbook: "https://runbooks/sglang", target: overwritten}}
            timeout: 2s
        """


def test_webhook_posts_sglangs_fields_merged_with_the_configured_body(
        make_runner: Callable[[str], RemediationRunner], store: Store,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_TOKEN", "s3cr3t-token")
    receiver = AlertReceiver().start()
    try:
        runner = make_runner(target("http://127.0.0.1:1") +
                             hook(f"http://127.0.0.1:{receiver.port}/hook?key=abc"))
        outcome = runner.run("page", "local", trigger="manual")
        assert outcome.outcome == "succeeded", outcome
        assert runner.build("page", "local", incident_id=7).execute().endswith("answered 200")
        first, second = receiver.received()
    finally:
        receiver.stop()
    assert first["target"] == "local" and first["remediation"] == "page"
    assert first["runbook"] == "https://runbooks/sglang" and "incident_id" not in first
    assert second["incident_id"] == 7
    assert "Authorization" in outcome.plan[0] and "key=***" in outcome.plan[0]
    with store.session() as session:
        stored = json.dumps([run.plan + run.detail for run in queries.manual_runs(session, 5)])
    assert "s3cr3t-token" not in stored + " ".join(outcome.plan) and "abc" not in stored


def test_webhook_sends_the_configured_headers(make_runner: Callable[[str], RemediationRunner],
                                              recorders: Callable[..., Recorder],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_TOKEN", "s3cr3t-token")
    server = recorders(lambda method, path, body: (204, {}))
    runner = make_runner(target("http://127.0.0.1:1") + hook(f"{server.url}/hook"))
    assert runner.run("page", "local", trigger="manual").outcome == "succeeded"
    assert server.headers[0]["Authorization"] == "Bearer s3cr3t-token"


def test_webhook_answered_500_is_a_failure(make_runner: Callable[[str], RemediationRunner],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_TOKEN", "x")
    receiver = AlertReceiver(status=500).start()
    try:
        runner = make_runner(target("http://127.0.0.1:1") +
                             hook(f"http://127.0.0.1:{receiver.port}/hook"))
        outcome = runner.run("page", "local", trigger="manual")
    finally:
        receiver.stop()
    assert outcome.outcome == "failed" and not outcome.permanent
    assert "answered 500" in (outcome.error or "")


# the registry contract ------------------------------------------------------------------------

SNIPPETS = {
    "restart": "{name: it, kind: restart}",
    "reduce_concurrency": "{name: it, kind: reduce_concurrency, factor: 0.5, min: 8, "
                          "restore_after: 30m, max_queued_requests: {factor: 0.5, min: 16}}",
    "flush_cache": "{name: it, kind: flush_cache, timeout: 5s}",
    "abort_requests": "{name: it, kind: abort_requests}",
    "drain": "{name: it, kind: drain, gateway: 'http://127.0.0.1:9', api: workers}",
    "webhook": "{name: it, kind: webhook, url: 'http://127.0.0.1:9/hook', body: {a: 1}}",
}


def test_the_contract_covers_every_registered_kind() -> None:
    assert set(SNIPPETS) == set(REMEDIATIONS)


@pytest.mark.parametrize("kind", sorted(SNIPPETS))
def test_every_remediation_kind_builds_from_the_catalog_and_plans(
        kind: str, make_runner: Callable[[str], RemediationRunner], emulator: Emulator,
        store: Store) -> None:
    runner = make_runner(target(emulator.url, f"{{kind: process, start: [{PYTHON}], "
                                              "pidfile: p.pid}") + f"""\
        remediations:
          - {SNIPPETS[kind]}
        """)
    outcome = runner.run("it", "local", trigger="manual", dry_run=True)
    assert outcome.outcome == "planned", outcome
    assert outcome.plan and all(step.strip() for step in outcome.plan)
    with store.session() as session:
        [run] = queries.manual_runs(session, 5)
    assert (run.kind, run.dry_run, json.loads(run.plan)) == (kind, True, outcome.plan)


# restart: the server answering must be the one started ------------------------------------------

def test_a_restart_onto_a_port_held_by_another_process_fails_at_once_naming_it(
        make_runner: Callable[[str], RemediationRunner], tmp_path: Path) -> None:
    port = free_port()
    foreign = subprocess.Popen(emulator_command(port), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url))
        runner = make_runner(target(url, json.dumps({
            "kind": "process", "start": emulator_command(port), "pidfile": "server.pid",
            "startup_timeout": "20s"})) + """\
        remediations: [{name: restart, kind: restart}]
        """)
        outcome = runner.run("restart", "local", trigger="manual")
    finally:
        foreign.terminate()
        foreign.wait(10)
    assert outcome.outcome == "failed" and outcome.permanent, outcome
    assert f"port {port} of local is held by pid {foreign.pid}" in (outcome.error or "")
    assert "sglguard emulator" in (outcome.error or "")
    assert not (tmp_path / "server.pid").exists()  # nothing was started


def test_a_restart_is_a_success_only_when_the_started_server_holds_the_port(
        make_runner: Callable[[str], RemediationRunner], tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    runner = make_runner(target(url, json.dumps({
        "kind": "process", "start": emulator_command(port), "pidfile": "server.pid",
        "startup_timeout": "20s"})) + """\
        remediations: [{name: restart, kind: restart}]
        """)
    outcome = runner.run("restart", "local", trigger="manual")
    assert outcome.outcome == "succeeded", outcome
    pid = int((tmp_path / "server.pid").read_text())
    assert f"started pid {pid}" in outcome.detail


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_the_servers_first_start_is_not_counted_against_the_budget_a_repair_is(
        make_runner: Callable[[str], RemediationRunner], store: Store, clock: FakeClock) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    runner = make_runner(target(url, json.dumps({
        "kind": "process", "start": emulator_command(port), "pidfile": "server.pid",
        "startup_timeout": "20s"})) + """\
        checks: [{name: liveness, kind: http, target: local}]
        remediations: [{name: restart, kind: restart, budget: {max: 1, within: 1h}}]
        """)
    first = runner.run("restart", "local")
    assert first.outcome == "succeeded"
    with store.session() as session:
        assert queries.budget_used(session, "restart", "local", clock() - timedelta(hours=1)) == 0
        session.add(CheckResultRow(check_name="liveness", target="local", status="ok",
                                   value=0.01, unit="s", message="", duration_ms=1.0,
                                   started_at=clock(), evaluated=True))
    clock.advance(60)
    runner.control(runner.catalog.targets[0]).stop()  # type: ignore[union-attr]
    second = runner.run("restart", "local")  # the server was seen well: this is a repair
    assert second.outcome == "succeeded"
    with store.session() as session:
        assert queries.budget_used(session, "restart", "local", clock() - timedelta(hours=1)) == 1
        triggers = [run.trigger for run in session.query(RemediationRunRow).order_by(
            RemediationRunRow.id)]
    assert triggers == ["first_start", "incident"]
