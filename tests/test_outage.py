"""A store outage stops nothing: a dead server is restarted while PostgreSQL cannot be reached,
and everything (results, the incident, the run, the messages) is written when it is back; what
was held past the memory bound survives a SIGKILL of sglguard in the spill file.

Real processes throughout: `sglguard run` and the emulator are child processes; the store is
the local PostgreSQL reached through a TCP proxy of the test, which is closed to make the store
unreachable (the shared server itself is never stopped) and opened again on the same port."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from sglguard.config.models import Catalog
from sglguard.controls.process import read_pidfile
from sglguard.domain import CheckResult, Status
from sglguard.receiver import AlertReceiver
from sglguard.service import Service
from sglguard.store import Store
from sglguard.store.models import RemediationRunRow

from conftest import (
    FakeClock,
    ServiceProcess,
    emulator_command,
    free_port,
    pid_alive,
    wait_for,
)


class Proxy:
    """Forwards loopback connections to PostgreSQL; `close` cuts every one and stops listening,
    `open` listens on the same port again."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self.open()

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):  # shutdown wakes the thread in accept()
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for item in sockets:
            with contextlib.suppress(OSError):
                item.shutdown(socket.SHUT_RDWR)
            item.close()


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    made = Proxy(("127.0.0.1", 5432))
    yield made
    made.close()


@pytest.fixture
def receiver() -> Iterator[AlertReceiver]:
    server = AlertReceiver().start()
    yield server
    server.stop()


def through(url: str, proxy: Proxy) -> str:
    return url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")


def write_catalog(directory: Path, url: str, port: int, alerts: int, *,
                  memory: int = 10_000) -> Path:
    path = directory / "sglguard.yaml"
    path.write_text(f"""\
version: 1
store: {{url: "{url}", flush_interval: 0s, backlog: {{memory: {memory}}}}}
targets:
  - name: local
    url: http://127.0.0.1:{port}
    control:
      kind: process
      start: {json.dumps(emulator_command(port))}
      pidfile: sglguard-local.pid
      startup_timeout: 15s
checks:
  - {{name: liveness, kind: http, target: local, path: /health, interval: 0.3s, timeout: 1s,
     failure_threshold: 2, remediate: [restart]}}
remediations:
  - {{name: restart, kind: restart, budget: {{max: 3, within: 30m}},
     backoff: {{initial: 0.2s, max: 1s}}}}
notifications: {{group_wait: 0.2s}}
notifiers:
  - {{name: ops, urls: ["json://127.0.0.1:{alerts}/alerts"]}}
""")
    return path


def start_emulator(directory: Path, port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(emulator_command(port), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (directory / "sglguard-local.pid").write_text(f"{server.pid}\n")
    wait_for(lambda: healthy(port), 15)
    return server


def healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok
    except requests.RequestException:
        return False


def said(directory: Path, words: str) -> int:
    return (directory / "service.log").read_text(errors="replace").count(words)


def test_a_dead_server_is_restarted_during_a_store_outage_and_recorded_afterwards(
        tmp_path: Path, postgres_url: str, proxy: Proxy, receiver: AlertReceiver) -> None:
    port = free_port()
    catalog = write_catalog(tmp_path, through(postgres_url, proxy), port, receiver.port)
    first = start_emulator(tmp_path, port)
    service = ServiceProcess(catalog, url=postgres_url)  # the test reads the store directly
    restarted: int | None = None
    try:
        wait_for(lambda: service.query("select 1 from check_results where status = 'ok'"), 20)
        wait_for(lambda: said(tmp_path, "sglguard running"), 10)
        proxy.close()  # the store is unreachable from here on
        wait_for(lambda: said(tmp_path, "store unavailable"), 15)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        # Repaired while the store is still down.
        wait_for(lambda: (read_pidfile(tmp_path / "sglguard-local.pid") or first.pid)
                 != first.pid and healthy(port), 30)
        restarted = read_pidfile(tmp_path / "sglguard-local.pid")
        assert not service.query("select 1 from incidents")  # nothing written meanwhile
        wait_for(lambda: said(tmp_path, "during the store outage: succeeded"), 10)
        proxy.open()
        wait_for(lambda: service.query(
            "select 1 from incidents where status = 'resolved'"), 30)
        wait_for(lambda: any("incident resolved" in alert["title"]
                             for alert in receiver.received()), 15)
    finally:
        code = service.stop()
        if restarted is not None and pid_alive(restarted):
            os.kill(restarted, signal.SIGTERM)
    log = (tmp_path / "service.log").read_text(errors="replace")
    assert code == 0, log[-3000:]
    runs = service.query("select outcome, verified, trigger, incident_id from remediation_runs")
    assert [tuple(run)[:3] for run in runs] == [("succeeded", 1, "incident")], runs
    assert runs[0][3] is not None  # tied to the incident the held failures opened
    statuses = [row[0] for row in service.query(
        "select status from check_results where check_name = 'liveness' order by id")]
    down = statuses.index("critical")
    assert statuses[down:down + 2] == ["critical", "critical"], statuses  # in order
    assert statuses[-1] == "ok" and statuses.count("critical") >= 2
    events = [row[0] for row in service.query(
        "select kind from incident_events order by at, id")]
    # In the order they happened (the check may see the server well a moment before the
    # restart's own wait for /health ends).
    assert events.index("opened") < events.index("remediation_started") \
        < events.index("resolved"), events
    assert events.index("remediation_started") < events.index("remediation_succeeded") \
        < events.index("verified"), events
    titles = [alert["title"] for alert in receiver.received()]
    for words in ("incident opened", "restart succeeded", "incident resolved"):
        assert sum(words in title for title in titles) == 1, titles
    assert log.count("Traceback") <= 3, log[-5000:]  # said once per outage, not per run


def test_results_spilled_during_an_outage_survive_a_kill_and_are_written_in_order(
        tmp_path: Path, postgres_url: str, proxy: Proxy, receiver: AlertReceiver) -> None:
    port = free_port()
    catalog = write_catalog(tmp_path, through(postgres_url, proxy), port, receiver.port,
                            memory=3)
    server = start_emulator(tmp_path, port)
    spill = tmp_path / "sglguard-backlog.jsonl"
    service = ServiceProcess(catalog, url=postgres_url)
    try:
        wait_for(lambda: service.query("select 1 from check_results where status = 'ok'"), 20)
        before = len(service.query("select 1 from check_results"))
        proxy.close()
        wait_for(lambda: spill.exists() and len(spill.read_text().splitlines()) >= 10, 30)
        service.kill()  # SIGKILL during the outage
        held = [json.loads(line) for line in spill.read_text().splitlines()]
        assert oct(spill.stat().st_mode & 0o777) == "0o600"
        proxy.open()
        service = ServiceProcess(catalog, url=postgres_url)
        wait_for(lambda: not spill.exists(), 30)
        wait_for(lambda: len(service.query("select 1 from check_results"))
                 >= before + len(held), 15)
    finally:
        code = service.stop()
        server.kill()
        server.wait()
    assert code == 0
    stored = [(row[0].replace(tzinfo=None), row[1]) for row in service.query(
        "select started_at, message from check_results order by id")]
    wanted = [(datetime.fromisoformat(item["started_at"]).replace(tzinfo=None), item["message"])
              for item in held]
    assert wanted[0] in stored, (wanted, stored)
    at = stored.index(wanted[0])
    assert stored[at:at + len(wanted)] == wanted, (wanted, stored)  # all, in their order


def local_catalog(port: int, *, mode: str = "active", start: list[str] | None = None) -> str:
    start = start or emulator_command(port)
    return f"""\
        version: 1
        mode: {mode}
        targets:
          - name: local
            url: http://127.0.0.1:{port}
            control: {{kind: process, start: {json.dumps(start)},
                       pidfile: sglguard-local.pid, startup_timeout: 15s}}
        checks:
          - {{name: liveness, kind: http, target: local, failure_threshold: 2,
             remediate: [restart]}}
          - {{name: queue, kind: metric, target: local, metric: "sglang:num_queue_reqs",
             critical: "> 1", failure_threshold: 1, remediate: [restart]}}
        remediations:
          - {{name: restart, kind: restart, budget: {{max: 5, within: 1h}}}}
        """


def down(check: str, at: datetime) -> CheckResult:
    return CheckResult(check=check, target="local", status=Status.CRITICAL, value=None,
                       unit="", message="connection refused", duration_ms=1.0, started_at=at)


def test_the_outage_budget_is_one_restart_per_target_and_only_for_a_dead_server(
        tmp_path: Path, make_catalog: Callable[[str], Catalog], store: Store,
        clock: FakeClock) -> None:
    port = free_port()
    service = Service(make_catalog(local_catalog(port)), store, clock=clock)
    repairs = service.repairs
    repairs.remember_flags()  # as at start, while the store answers
    assert all(repairs.held(down("queue", clock())) is None for _ in range(3))  # not hard-down
    service.engine.begin_grace("local", clock() + timedelta(minutes=5))
    assert all(repairs.held(down("liveness", clock())) is None for _ in range(3))  # a start-up
    service.engine.end_grace("local")
    assert repairs.held(down("liveness", clock())) is None  # the threshold is counted afresh
    run = repairs.held(down("liveness", clock()))
    assert run is not None and service.requests.busy("local")  # one action at a time
    started: int | None = None
    try:
        assert run.done.wait(30)
        started = read_pidfile(tmp_path / "sglguard-local.pid")
        assert run.outcome == "succeeded", run.error
        assert all(repairs.held(down("liveness", clock())) is None for _ in range(4))  # spent
        run.write()  # the store answers again: recorded, and the target is free
        assert not service.requests.busy("local")
        with store.session() as session:
            [row] = session.scalars(select(RemediationRunRow)).all()
            assert (row.remediation, row.outcome) == ("restart", "succeeded")
    finally:
        if started is not None and pid_alive(started):
            os.kill(started, signal.SIGTERM)


def test_no_restart_without_the_store_in_passive_mode(
        make_catalog: Callable[[str], Catalog], store: Store, clock: FakeClock) -> None:
    service = Service(make_catalog(local_catalog(free_port(), mode="passive")), store,
                      clock=clock)
    service.repairs.remember_flags()
    assert all(service.repairs.held(down("liveness", clock())) is None for _ in range(4))
    assert not service.requests.busy("local")


def test_a_reload_during_a_store_outage_keeps_the_held_results_and_the_spent_budget(
        make_catalog: Callable[[str], Catalog], store: Store, clock: FakeClock) -> None:
    from sqlalchemy import text

    catalog = make_catalog(local_catalog(free_port(), start=["false"]))  # never starts
    before = Service(catalog, store, clock=clock)
    before.repairs.remember_flags()
    with store.engine.begin() as connection:  # the store breaks under the service
        connection.execute(text("alter table check_results rename to check_results_gone"))
    before.engine.forget("queue")
    for _ in range(3):
        assert before.run_check("queue") is not None  # nothing listens: held
    run = None
    while run is None:  # its one restart of this outage (which fails at once)
        run = before.repairs.held(down("liveness", clock()))
    assert run.done.wait(15) and run.outcome == "failed"
    run.write()  # (only its table answers) recorded: the target is no longer busy
    after = Service(catalog, store, clock=clock)  # the reloaded catalog's service
    after.take_over(before)
    assert after.backlog.pending == 3 and after.backlog.outage
    assert not after.requests.busy("local")  # only the spent budget refuses now
    after.repairs.remember_flags()  # (its table answers) as the new service's start does
    assert all(after.repairs.held(down("liveness", clock())) is None for _ in range(3))
    with store.engine.begin() as connection:
        connection.execute(text("alter table check_results_gone rename to check_results"))
    after._replay_backlog()
    assert after.backlog.pending == 0 and not after.backlog.outage
    with store.session() as session:
        assert session.scalar(text("select count(*) from check_results")) == 3


def test_a_reload_during_a_store_outage_keeps_watching_and_closes_removed_checks_later(
        tmp_path: Path, postgres_url: str, proxy: Proxy, receiver: AlertReceiver) -> None:
    port = free_port()
    catalog = write_catalog(tmp_path, through(postgres_url, proxy), port, receiver.port)
    text = catalog.read_text()
    gone = ("  - {name: gone, kind: http, target: local, path: /nowhere, interval: 0.3s,\n"
            "     timeout: 1s, failure_threshold: 1}\n")
    catalog.write_text(text.replace("remediations:\n", gone + "remediations:\n"))
    server = start_emulator(tmp_path, port)
    service = ServiceProcess(catalog, url=postgres_url)
    try:
        wait_for(lambda: service.query("select 1 from incidents where check_name = 'gone' "
                                       "and status = 'open'"), 20)
        proxy.close()
        wait_for(lambda: said(tmp_path, "store unavailable"), 15)
        catalog.write_text(text)  # the check `gone` is removed, during the outage
        service.process.send_signal(signal.SIGHUP)
        wait_for(lambda: said(tmp_path, "reloaded"), 15)
        assert service.process.poll() is None  # still running, still watching
        held = said(tmp_path, "check liveness: ok")
        wait_for(lambda: said(tmp_path, "check liveness: ok") > held + 3, 10)
        proxy.open()
        wait_for(lambda: service.query("select 1 from incidents where check_name = 'gone' "
                                       "and status = 'resolved'"), 30)
    finally:
        code = service.stop()
        server.kill()
        server.wait()
    assert code == 0
    events = [row[0] for row in service.query(
        "select detail from incident_events where kind = 'closed'")]
    assert events == ["the check is no longer in the catalog"]
    # what `gone` measured during the outage is kept, as history that judges nothing
    assert service.query("select 1 from check_results where check_name = 'gone' "
                         "and evaluated = false")
    log = (tmp_path / "service.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
