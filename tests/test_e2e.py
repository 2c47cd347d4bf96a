"""End to end with real processes: `sglguard run` restarts a killed emulator, or escalates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sglguard.controls.process import read_pidfile
from sglguard.receiver import AlertReceiver

from conftest import PYTHON, ServiceProcess, emulator_command, free_port, pid_alive, wait_for


def write_catalog(directory: Path, port: int, alerts: int, start: list[str], *,
                  budget: int = 3, backoff: str = "{initial: 0.2s, max: 1s}",
                  flapping: str = "{enabled: true}") -> Path:
    """The reference catalog, on free ports and with short intervals."""
    path = directory / "sglguard.yaml"
    path.write_text(f"""\
version: 1
store:
  url: sqlite:///sglguard-e2e.db
targets:
  - name: local
    url: http://127.0.0.1:{port}
    control:
      kind: process
      start: {json.dumps(start)}
      pidfile: sglguard-local.pid
      startup_timeout: 15s
checks:
  - name: liveness
    kind: http
    target: local
    path: /health
    interval: 0.3s
    timeout: 1s
    failure_threshold: 2
    flapping: {flapping}
    remediate: [restart]
  - name: queue
    kind: metric
    target: local
    metric: sglang:num_queue_reqs
    aggregate: sum
    warning: "> 50"
    critical: "> 200"
    interval: 5s
remediations:
  - name: restart
    kind: restart
    budget: {{max: {budget}, within: 30m}}
    backoff: {backoff}
notifications:
  group_wait: 0.2s
notifiers:
  - name: ops
    urls: ["json://127.0.0.1:{alerts}/alerts"]
""")
    return path


@pytest.fixture
def receiver() -> Iterator[AlertReceiver]:
    server = AlertReceiver().start()
    yield server
    server.stop()


def titles(receiver: AlertReceiver) -> list[str]:
    return [alert["title"] for alert in receiver.received()]


def test_killed_server_is_detected_restarted_resolved_and_notified(
        tmp_path: Path, receiver: AlertReceiver) -> None:
    port = free_port()
    catalog = write_catalog(tmp_path, port, receiver.port, emulator_command(port))
    pidfile = tmp_path / "sglguard-local.pid"
    first = subprocess.Popen(emulator_command(port), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pidfile.write_text(f"{first.pid}\n")
    wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok
             if _listening(port) else False)
    service = ServiceProcess(catalog)
    try:
        wait_for(lambda: service.query("select 1 from check_results where status = 'ok'"), 15)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        wait_for(lambda: service.query("select 1 from incidents where status = 'resolved'"), 30)
        new_pid = read_pidfile(pidfile)
        assert new_pid is not None and new_pid != first.pid and pid_alive(new_pid)
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        wait_for(lambda: any("incident resolved" in title for title in titles(receiver)), 15)
    finally:
        code = service.stop()
    assert code == 0, (tmp_path / "service.log").read_text()
    incidents = service.query("select id, status from incidents")
    assert [status for _, status in incidents] == ["resolved"]
    got = titles(receiver)
    assert any("liveness: incident opened" in title for title in got), got
    assert any("liveness: restart succeeded" in title for title in got), got
    assert any("liveness: incident resolved" in title for title in got), got
    runs = service.query("select outcome, dry_run from remediation_runs")
    assert [tuple(run) for run in runs] == [("succeeded", 0)]
    os.kill(new_pid, signal.SIGTERM)


def test_failing_restarts_stop_at_the_budget_and_escalate_once(
        tmp_path: Path, receiver: AlertReceiver) -> None:
    port = free_port()
    catalog = write_catalog(tmp_path, port, receiver.port, [PYTHON, "-c", "raise SystemExit(1)"])
    service = ServiceProcess(catalog)
    try:
        escalated = wait_for(lambda: service.query(
            "select escalated_at from incidents where escalated_at is not null"), 30)
        since = escalated[0][0]
        # Several more failing runs after the escalation: no further action on the incident.
        wait_for(lambda: len(service.query(
            f"select 1 from check_results where started_at > '{since}'")) >= 5, 15)
        wait_for(lambda: any("ESCALATION" in title for title in titles(receiver)), 15)
    finally:
        code = service.stop()
    assert code == 0
    runs = [run[0] for run in service.query("select outcome from remediation_runs order by id")]
    assert runs == ["failed", "failed", "failed", "skipped"], runs
    assert sum("ESCALATION" in title for title in titles(receiver)) == 1, titles(receiver)
    assert len(service.query("select 1 from incidents")) == 1


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0




def test_two_services_on_one_database_restart_the_target_once(
        tmp_path: Path, receiver: AlertReceiver) -> None:
    port = free_port()
    catalog = write_catalog(tmp_path, port, receiver.port, emulator_command(port))
    first, second = ServiceProcess(catalog, "first.log"), ServiceProcess(catalog, "second.log")
    try:
        wait_for(lambda: first.query(
            "select 1 from remediation_runs where outcome = 'succeeded'"), 30)
        wait_for(lambda: first.query("select 1 from incidents where status = 'resolved'"), 30)
    finally:
        codes = [first.stop(), second.stop()]
    assert codes == [0, 0]
    runs = first.query("select outcome from remediation_runs")
    assert [run[0] for run in runs] == ["succeeded"], runs
    pid = read_pidfile(tmp_path / "sglguard-local.pid")
    assert pid is not None
    os.kill(pid, signal.SIGTERM)


def test_crash_looping_server_gets_no_more_restarts_than_the_budget(
        tmp_path: Path, receiver: AlertReceiver) -> None:
    port = free_port()
    # Each start answers /health, passes verification, and crashes a few seconds later.
    catalog = write_catalog(tmp_path, port, receiver.port,
                            emulator_command(port, "--fault", "crash:3"),
                            budget=2, backoff="{initial: 2s, max: 8s}")
    service = ServiceProcess(catalog)
    try:
        wait_for(lambda: service.query(
            "select 1 from incidents where escalated_at is not null"), 40)
        wait_for(lambda: any("ESCALATION" in title for title in titles(receiver)), 10)
    finally:
        code = service.stop()
    assert code == 0
    runs = [tuple(run) for run in service.query(
        "select outcome, trigger from remediation_runs where outcome != 'skipped' order by id")]
    # The server's first start (nothing ran before, never seen healthy) is not a repair.
    assert runs == [("succeeded", "first_start"), ("succeeded", "incident"),
                    ("succeeded", "incident")], runs
    backoff = service.query(
        "select detail from incident_events where kind = 'remediation_deferred'")
    assert any("backoff" in row[0] for row in backoff), backoff
    assert sum("ESCALATION" in title for title in titles(receiver)) == 1


def test_a_crash_loop_that_trips_flapping_still_pages_and_restarts_every_crash(
        tmp_path: Path, receiver: AlertReceiver) -> None:
    port = free_port()
    # Each start passes, then crashes a few seconds later: liveness flaps from the second crash.
    catalog = write_catalog(tmp_path, port, receiver.port,
                            emulator_command(port, "--fault", "crash:3"), budget=3,
                            backoff="{initial: 0.2s, max: 0.5s}",
                            flapping="{high: 10, low: 5}")
    service = ServiceProcess(catalog)
    try:
        wait_for(lambda: service.query(
            "select 1 from incidents where escalated_at is not null"), 60)
        wait_for(lambda: any("ESCALATION" in title for title in titles(receiver)), 10)
    finally:
        code = service.stop()
    assert code == 0
    got = titles(receiver)
    flapped = next((index for index, title in enumerate(got) if "[FLAPPING]" in title), None)
    assert flapped is not None, got  # flapping did trip...
    after = got[flapped:]
    # ...and a crash after it still paged and was restarted, within the budget.
    assert any("incident opened" in title for title in after), got
    assert any("restart succeeded" in title for title in after), got
    repairs = service.query("select count(*) from remediation_runs where trigger = 'incident' "
                            "and outcome = 'succeeded'")
    assert repairs[0][0] == 3, repairs
    opened = service.query("select count(*) from incidents")[0][0]
    assert sum("incident opened" in title for title in got) == opened, got  # every crash paged


def test_a_restart_by_hand_beside_the_running_service_is_performed_by_it(
        tmp_path: Path, receiver: AlertReceiver) -> None:
    port = free_port()
    # A server that takes 3 s to start: the planned restart must page nothing.
    catalog = write_catalog(tmp_path, port, receiver.port,
                            emulator_command(port, "--startup-delay", "3"))
    service = ServiceProcess(catalog)  # starts the server (its child), as under systemd
    try:
        wait_for(lambda: any("incident resolved" in title for title in titles(receiver)), 30)
        first = read_pidfile(tmp_path / "sglguard-local.pid")
        paged = len(receiver.received())
        by_hand = subprocess.run(
            [PYTHON, "-m", "sglguard", "remediate", "restart", "--config", str(catalog)],
            capture_output=True, text=True, timeout=60)
        assert by_hand.returncode == 0, by_hand.stdout + by_hand.stderr
        assert "handed over to the running service" in by_hand.stderr
        assert "succeeded" in by_hand.stdout
        second = read_pidfile(tmp_path / "sglguard-local.pid")
        assert second is not None and second != first and pid_alive(second)
        wait_for(lambda: service.query(
            "select 1 from check_results where status = 'ok' and started_at > "
            "(select max(started_at) from remediation_runs)"), 15)
    finally:
        code = service.stop()
    assert code == 0
    runs = [tuple(run) for run in service.query(
        "select trigger, outcome from remediation_runs order by id")]
    assert runs[-1] == ("manual", "succeeded"), runs
    assert len(receiver.received()) == paged  # the planned restart paged nobody
    assert len(service.query("select 1 from incidents")) == 1
    os.kill(second, signal.SIGTERM)
