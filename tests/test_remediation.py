"""Restart through the process control, with real child processes; budget and dry run."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from sglguard.config.models import Catalog
from sglguard.controls.process import read_pidfile
from sglguard.remediations.runner import RemediationRunner
from sglguard.service import build_clients
from sglguard.store import Store, queries

from conftest import PYTHON, FakeClock, emulator_command, free_port, pid_alive, wait_for


def catalog_text(port: int, start: list[str], *, startup: str = "10s",
                 stop_timeout: str = "5s", budget: int = 3) -> str:
    return f"""\
version: 1
targets:
  - name: local
    url: http://127.0.0.1:{port}
    control:
      kind: process
      start: {json.dumps(start)}
      pidfile: local.pid
      startup_timeout: {startup}
      stop_timeout: {stop_timeout}
remediations:
  - {{name: restart, kind: restart, budget: {{max: {budget}, within: 30m}}}}
"""


@pytest.fixture
def make_runner(make_catalog: Callable[[str], Catalog], store: Store,
                clock: FakeClock) -> Iterator[Callable[..., RemediationRunner]]:
    runners: list[RemediationRunner] = []

    def make(text: str, use_clock: bool = False) -> RemediationRunner:
        catalog = make_catalog(text)
        runner = RemediationRunner(catalog, store, build_clients(catalog),
                                   **({"clock": clock} if use_clock else {}))
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        control = runner.control(runner.catalog.targets[0])
        if control is not None:
            control.stop()


def test_restart_starts_the_server_and_waits_for_health(
        make_runner: Callable[..., RemediationRunner], tmp_path: Path) -> None:
    port = free_port()
    runner = make_runner(catalog_text(port, emulator_command(port)))
    outcome = runner.run("restart", "local", trigger="manual")
    assert outcome.outcome == "succeeded", outcome
    pid = read_pidfile(tmp_path / "local.pid")
    assert pid is not None and pid_alive(pid)
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    assert (tmp_path / "local.log").exists()

    again = runner.run("restart", "local", trigger="manual")
    assert again.outcome == "succeeded", again
    new_pid = read_pidfile(tmp_path / "local.pid")
    assert new_pid != pid and new_pid is not None and pid_alive(new_pid)
    assert not pid_alive(pid)
    assert f"stopped pid {pid} with SIGTERM" in again.detail


def test_stop_kills_a_process_that_ignores_sigterm(make_runner: Callable[..., RemediationRunner],
                                                   tmp_path: Path) -> None:
    port = free_port()
    ready = tmp_path / "ignoring-sigterm"
    stubborn = [PYTHON, "-c", "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, "
                "signal.SIG_IGN); pathlib.Path(sys.argv[1]).touch(); time.sleep(120)", str(ready)]
    runner = make_runner(catalog_text(port, stubborn, stop_timeout="0.5s"))
    control = runner.control(runner.catalog.targets[0])
    assert control is not None
    pid = control.start()  # type: ignore[attr-defined]
    wait_for(ready.exists)
    assert "SIGKILL after 0.5 s" in control.stop()  # type: ignore[attr-defined]
    assert not pid_alive(pid)


def test_start_that_exits_at_once_fails_fast(make_runner: Callable[..., RemediationRunner]) -> None:
    port = free_port()
    runner = make_runner(catalog_text(port, [PYTHON, "-c", "raise SystemExit(3)"],
                                      startup="60s"))
    outcome = runner.run("restart", "local", trigger="manual")
    assert outcome.outcome == "failed"
    assert outcome.error is not None and "exited with status 3" in outcome.error


def test_missing_start_program_is_a_permanent_failure(
        make_runner: Callable[..., RemediationRunner]) -> None:
    runner = make_runner(catalog_text(free_port(), ["/nonexistent/sglang-server"]))
    outcome = runner.run("restart", "local")
    assert outcome.outcome == "failed" and outcome.permanent
    assert "start command not found" in (outcome.error or "")


def test_budget_stops_runs_and_survives_a_restart_of_sglguard(
        make_runner: Callable[..., RemediationRunner], store: Store, clock: FakeClock) -> None:
    text = catalog_text(free_port(), [PYTHON, "-c", "raise SystemExit(1)"], budget=2)
    runner = make_runner(text, use_clock=True)
    outcomes = [runner.run("restart", "local").outcome for _ in range(3)]
    assert outcomes == ["failed", "failed", "skipped"]
    restarted = make_runner(text, use_clock=True)  # a new process reading the same store
    assert restarted.run("restart", "local").budget_spent
    clock.advance(31 * 60)
    assert restarted.run("restart", "local").outcome == "failed"  # the window has moved on


def test_manual_runs_are_not_refused_by_the_budget(
        make_runner: Callable[..., RemediationRunner]) -> None:
    runner = make_runner(catalog_text(free_port(), [PYTHON, "-c", "raise SystemExit(1)"],
                                      budget=1))
    assert runner.run("restart", "local").outcome == "failed"
    assert runner.run("restart", "local").outcome == "skipped"
    assert runner.run("restart", "local", trigger="manual").outcome == "failed"


def test_dry_run_changes_nothing_and_is_recorded(make_runner: Callable[..., RemediationRunner],
                                                 store: Store, tmp_path: Path) -> None:
    port = free_port()
    runner = make_runner(catalog_text(port, emulator_command(port)))
    runner.run("restart", "local", trigger="manual")
    pid = read_pidfile(tmp_path / "local.pid")
    mtime = os.stat(tmp_path / "local.pid").st_mtime_ns
    planned = runner.run("restart", "local", trigger="manual", dry_run=True)
    assert planned.outcome == "planned"
    assert read_pidfile(tmp_path / "local.pid") == pid and pid is not None and pid_alive(pid)
    assert os.stat(tmp_path / "local.pid").st_mtime_ns == mtime
    assert f"send SIGTERM to the process group of pid {pid}" in planned.plan[0]
    assert "-m sglguard emulator --port" in planned.plan[1]
    assert "/health to answer 200" in planned.plan[-1]
    with store.session() as session:
        runs = queries.manual_runs(session, 10)
    assert [(run.outcome, run.dry_run) for run in runs] == [("planned", True),
                                                            ("succeeded", False)]
