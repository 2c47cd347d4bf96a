"""Decisions are rows before they are actions: `sglguard run` killed with SIGKILL at points of
the loop and started again delivers every owed message and finishes every owed remediation.

Real processes throughout: the service is a child process, the server it watches and the
remediation's webhook are loopback HTTP servers of the test, the notifier is a real receiver.
The webhook is the repair: when it is called, the server turns healthy."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sglguard.receiver import AlertReceiver

from conftest import Loopback, Reply, Request, ServiceProcess, wait_for

DATABASE = "durable.db"


class World:
    """The watched server, its repair hook and the on-call's inbox."""

    def __init__(self) -> None:
        self.healthy = True
        self.hook_gate = threading.Event()
        self.hook_gate.set()
        self.hook_calls = 0
        self.heal_after = 0.0  # seconds between the repair and the server answering again
        self.server = Loopback(self._health)
        self.hook = Loopback(self._repair)
        self.alert_gate = threading.Event()
        self.alert_gate.set()
        self.inbox = AlertReceiver(on_alert=lambda _alert: self.alert_gate.wait(20)).start()

    def _health(self, _request: Request) -> Reply:
        return (200, "text/plain", b"") if self.healthy else (503, "text/plain", b"down")

    def _repair(self, _request: Request) -> Reply:
        self.hook_calls += 1
        self.hook_gate.wait(20)
        if self.heal_after:
            threading.Timer(self.heal_after, self._heal).start()
        else:
            self.healthy = True
        return 200, "application/json", b"{}"

    def _heal(self) -> None:
        self.healthy = True

    def titles(self) -> list[str]:
        return [alert["title"] for alert in self.inbox.received()]

    def count(self, words: str) -> int:
        return sum(words in title for title in self.titles())

    def close(self) -> None:
        self.hook_gate.set()
        self.alert_gate.set()
        self.server.close()
        self.hook.close()
        self.inbox.stop()


@pytest.fixture
def world() -> Iterator[World]:
    made = World()
    yield made
    made.close()


def catalog(directory: Path, world: World, *, group_wait: str = "1s",
            url: str = f"sqlite:///{DATABASE}") -> Path:
    path = directory / "sglguard.yaml"
    path.write_text(f"""\
version: 1
store: {{url: "{url}", flush_interval: 0s}}
targets:
  - {{name: local, url: "{world.server.url}", timeout: 1s}}
checks:
  - name: liveness
    kind: http
    target: local
    path: /health
    interval: 0.2s
    timeout: 1s
    failure_threshold: 1
    remediate: [repair]
remediations:
  - name: repair
    kind: webhook
    url: "{world.hook.url}/repair"
    timeout: 30s
    budget: {{max: 5, within: 1h}}
    backoff: {{initial: 0.1s, max: 0.2s}}
    verify_within: 20s
notifications: {{group_wait: {group_wait}}}
notifiers:
  - {{name: ops, urls: ["json://127.0.0.1:{world.inbox.port}/alerts"]}}
""")
    return path


def start(path: Path, url: str | None = None) -> ServiceProcess:
    service = ServiceProcess(path, database=DATABASE, url=url)
    wait_for(lambda: service.query("select 1 from check_results where status = 'ok'"), 20)
    return service


def running(service: ServiceProcess) -> None:
    """Until the service has registered itself (its signal handlers are in place by then)."""
    wait_for(lambda: service.query(
        f"select 1 from agents where pid = {service.process.pid}"), 20)


def open_incident(service: ServiceProcess) -> None:
    """Until an incident has opened (it may be resolved already when this looks)."""
    wait_for(lambda: service.query("select 1 from incidents"), 30)


def test_a_kill_inside_group_wait_and_mid_remediation_loses_no_page_and_no_repair(
        tmp_path: Path, world: World) -> None:
    path = catalog(tmp_path, world, group_wait="2s")
    service = start(path)
    world.hook_gate.clear()  # the repair hangs: the kill finds it in flight
    world.healthy = False
    open_incident(service)
    wait_for(lambda: world.hook_calls >= 1, 30)
    assert world.titles() == []  # the opening still waits for its group window
    service.kill()
    world.hook_gate.set()
    service = ServiceProcess(path, database=DATABASE)
    try:
        running(service)
        wait_for(lambda: service.query("select 1 from incidents where status = 'resolved'"), 30)
        wait_for(lambda: world.count("incident resolved") >= 1, 15)
    finally:
        assert service.stop() == 0, (tmp_path / "service.log").read_text()[-3000:]
    assert world.count("incident opened") == 1, world.titles()
    assert world.count("incident resolved") == 1, world.titles()
    runs = [row[0] for row in service.query("select outcome from remediation_runs order by id")]
    assert runs[-1] == "succeeded" and set(runs[:-1]) <= {"interrupted"}, runs
    owed = service.query("select status from outbox where status not in ('done', 'cancelled')")
    assert owed == [], owed


def test_a_kill_while_a_message_is_being_delivered_redelivers_it_once_and_says_so(
        tmp_path: Path, world: World) -> None:
    path = catalog(tmp_path, world, group_wait="0s")
    service = start(path)
    world.alert_gate.clear()  # the receiver takes the opening but never answers
    world.healthy = False
    wait_for(lambda: world.count("incident opened") == 1, 30)
    service.kill()
    world.alert_gate.set()
    service = ServiceProcess(path, database=DATABASE)
    try:
        running(service)
        wait_for(lambda: world.count("incident resolved") == 1, 30)
    finally:
        assert service.stop() == 0
    assert world.count("incident opened") == 2, world.titles()  # one duplicate, at most
    assert world.count("incident resolved") == 1, world.titles()
    notes = service.query("select error from notification_attempts "
                          "where event = 'incident_opened' and outcome = 'sent'")
    assert [row[0] for row in notes] == ["redelivered: an earlier attempt was cut off "
                                         "mid-delivery"], notes


@pytest.mark.parametrize("kill_after", [0.0, 0.3, 0.8])
def test_a_kill_at_any_point_after_an_incident_opens_still_pages_once(
        tmp_path: Path, world: World, kill_after: float) -> None:
    path = catalog(tmp_path, world, group_wait="0.5s")
    service = start(path)
    world.healthy = False
    open_incident(service)
    threading.Event().wait(kill_after)
    service.kill()
    service = ServiceProcess(path, database=DATABASE)
    try:
        running(service)
        wait_for(lambda: world.count("incident resolved") == 1, 30)
    finally:
        assert service.stop() == 0
    assert world.count("incident opened") == 1, world.titles()
    assert world.hook_calls >= 1


def test_a_reload_during_a_remediation_lets_it_finish_under_its_own_rules(
        tmp_path: Path, world: World) -> None:
    path = catalog(tmp_path, world, group_wait="0s")
    service = start(path)
    world.hook_gate.clear()  # the repair is in flight...
    world.healthy = False
    wait_for(lambda: world.hook_calls == 1, 10)
    service.process.send_signal(signal.SIGHUP)  # ...when the catalog is reloaded
    wait_for(lambda: "reloaded" in (tmp_path / "service.log").read_text(), 10)
    world.heal_after = 2.0  # and its verification is still waiting when...
    world.hook_gate.set()
    threading.Event().wait(1.0)
    service.process.send_signal(signal.SIGHUP)  # ...a second reload comes
    try:
        wait_for(lambda: world.count("incident resolved") == 1, 30)
        wait_for(lambda: service.query("select 1 from remediation_runs where verified"), 10)
    finally:
        assert service.stop() == 0
    log = (tmp_path / "service.log").read_text()
    assert world.hook_calls == 1, log[-3000:]  # not run a second time
    runs = service.query("select outcome, verified from remediation_runs")
    assert [tuple(run) for run in runs] == [("succeeded", 1)], runs
    got = world.titles()
    assert not any("[FAILED]" in title or "[ESCALATION]" in title for title in got), got


def test_a_kill_mid_remediation_loses_nothing_on_postgresql_too(
        tmp_path: Path, world: World, postgres_url: str) -> None:
    path = catalog(tmp_path, world, group_wait="1s", url=postgres_url)
    service = start(path, postgres_url)
    world.hook_gate.clear()  # the repair hangs: the kill finds it in flight
    world.healthy = False
    wait_for(lambda: world.hook_calls >= 1, 30)
    service.kill()
    world.hook_gate.set()
    service = ServiceProcess(path, url=postgres_url)
    try:
        running(service)
        wait_for(lambda: world.count("incident resolved") == 1, 30)
    finally:
        assert service.stop() == 0
    assert world.count("incident opened") == 1, world.titles()
    owed = service.query("select status from outbox where status not in ('done', 'cancelled')")
    assert owed == [], owed
