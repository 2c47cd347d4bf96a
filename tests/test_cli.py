"""The command line as a user drives it: exit statuses, JSON, dry runs, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sglguard.checks.registry import CHECKS
from sglguard.cli import main
from sglguard.controls.process import ProcessControlConfig, read_pidfile
from sglguard.emulator import Emulator

from conftest import PYTHON, emulator_command, free_port, pid_alive, wait_for


def catalog_for(directory: Path, url: str, port: int | None = None, extra: str = "") -> Path:
    control = ""
    if port is not None:
        control = f"""
    control:
      kind: process
      start: {json.dumps(emulator_command(port))}
      pidfile: local.pid
      startup_timeout: 10s"""
    path = directory / "sglguard.yaml"
    path.write_text(f"""\
version: 1
targets:
  - name: local
    url: {url}{control}
checks:
  - {{name: liveness, kind: http, target: local, interval: 2s, timeout: 1s}}
  - name: queue
    kind: metric
    target: local
    metric: sglang:num_queue_reqs
    warning: "> 50"
    critical: "> 200"
remediations:
  - {{name: restart, kind: restart}}
notifiers:
  - {{name: ops, urls: ["json://user:hunter2@127.0.0.1:9/alerts"]}}
{extra}""")
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_validate_summarises_a_good_catalog_without_secrets(tmp_path: Path) -> None:
    result = invoke("validate", "--config", str(catalog_for(tmp_path, "http://127.0.0.1:1")))
    assert result.exit_code == 0
    assert "check liveness: http on local every 2s" in result.output
    assert "notifier ops: json://" in result.output
    assert "hunter2" not in result.output


def test_validate_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\ntargets: [{name: a, url: 'ftp://x'}]\nchecks: [{kind: nope}]\n")
    result = invoke("validate", "--config", str(path))
    assert result.exit_code == 2
    assert "2 problems" in result.output
    assert "targets[0].url (line 2)" in result.output
    kinds = ", ".join(sorted(CHECKS))
    assert f"checks[0] (line 3): unknown check kind 'nope': valid kinds are {kinds}" in (
        result.output)
    assert "Traceback" not in result.output


def test_validate_warns_of_checks_that_cannot_work_on_this_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Warnings, not errors: exit 0, and the same in --json."""
    monkeypatch.setitem(sys.modules, "pynvml", None)  # the one boundary faked: no NVML here
    path = tmp_path / "sglguard.yaml"
    path.write_text("""\
version: 1
targets:
  - name: local
    url: http://127.0.0.1:1
    control: {kind: process, start: [sglang], pidfile: missing-folder/sglang.pid}
checks:
  - {name: gpu-temp, kind: gpu, target: local, metric: temperature_c}
  - {name: errors, kind: log, target: local, patterns: [Traceback]}
  - {name: other-log, kind: log, target: local, path: nowhere.log, patterns: [Traceback]}
""")
    result = invoke("validate", "--config", str(path))

    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        f"warning: target local: the folder of its pidfile, {tmp_path / 'missing-folder'}, does "
        "not exist: the process control cannot start the server until it does",
        "warning: check gpu-temp (gpu): NVML is not available on this host (the pynvml module "
        "is not installed (nvidia-ml-py)); it will report UNKNOWN",
        f"warning: check errors (log): {tmp_path / 'missing-folder/sglang.log'}, the log its "
        "target's control writes, does not exist yet; it appears when the control first starts "
        "the server, and the check reports UNKNOWN until then",
        f"warning: check other-log (log): {tmp_path / 'nowhere.log'} does not exist; the check "
        "reports UNKNOWN until it does",
    ]
    shown = json.loads(invoke("validate", "--config", str(path), "--json").output)
    assert shown["valid"] is True
    assert shown["warnings"] == [line.removeprefix("warning: ") for line in warnings]
    assert [item["name"] for item in shown["checks"]] == ["gpu-temp", "errors", "other-log"]


def test_without_a_catalog_the_hint_is_to_write_one_with_init(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sglguard.config import loader

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loader, "DEFAULT_PATHS", (Path("sglguard.yaml"),
                                                  tmp_path / "etc/sglguard.yaml"))
    result = invoke("validate")
    assert result.exit_code == 2
    assert "no catalog found: write one with `sglguard init`" in result.output
    assert "`sglguard init --system` for a service on this host" in result.output


def test_missing_catalog_is_exit_2(tmp_path: Path) -> None:
    result = invoke("validate", "--config", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2 and "file not found" in result.output


def test_check_json_and_exit_status_is_the_worst(tmp_path: Path, emulator: Emulator) -> None:
    path = catalog_for(tmp_path, emulator.url)
    ok = invoke("check", "--config", str(path), "--json")
    assert ok.exit_code == 0, ok.output
    items = json.loads(ok.output)
    assert {item["check"]: item["status"] for item in items} == {"liveness": "ok", "queue": "ok"}
    assert set(items[0]) >= {"check", "target", "status", "value", "message", "duration_ms",
                             "unit"}
    emulator.set_fault("queue:60")
    assert invoke("check", "--config", str(path), "--only", "queue").exit_code == 1
    emulator.set_fault("queue:300")
    critical = invoke("check", "--config", str(path), "--only", "queue", "--json")
    assert critical.exit_code == 2 and json.loads(critical.output)[0]["value"] == 300


def test_check_of_a_dead_server_is_critical_and_unknown(tmp_path: Path) -> None:
    path = catalog_for(tmp_path, f"http://127.0.0.1:{free_port()}")
    result = invoke("check", "--config", str(path), "--json")
    statuses = {item["check"]: item["status"] for item in json.loads(result.output)}
    assert statuses == {"liveness": "critical", "queue": "unknown"}
    assert result.exit_code == 2  # critical outranks unknown, as monitoring plugins combine


def test_check_exit_status_is_unknown_only_without_a_warning_or_critical() -> None:
    from sglguard.checks.base import CheckResult, Status
    from sglguard.output import worst

    def result(status: Status) -> CheckResult:
        return CheckResult("c", "t", status, None, "", "", 0.0, datetime.now(UTC))

    assert worst([result(Status.UNKNOWN), result(Status.OK)]) is Status.UNKNOWN
    assert worst([result(Status.UNKNOWN), result(Status.WARNING)]) is Status.WARNING
    assert worst([result(Status.CRITICAL), result(Status.UNKNOWN)]) is Status.CRITICAL


def test_check_catalog_and_usage_errors_exit_3_with_their_message(tmp_path: Path) -> None:
    missing = invoke("check", "--config", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 3 and "file not found" in missing.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntargets: [{name: a, url: 'ftp://x'}]\n")
    invalid = invoke("check", "--config", str(bad))
    assert invalid.exit_code == 3 and "targets[0].url (line 2)" in invalid.output
    usage = invoke("check", "--no-such-option")
    assert usage.exit_code == 3 and "no such option" in usage.output.lower()


def test_dependent_checks_are_skipped_while_their_dependency_fails(tmp_path: Path) -> None:
    path = catalog_for(tmp_path, f"http://127.0.0.1:{free_port()}")
    path.write_text(path.read_text().replace("    critical: \"> 200\"",
                                             "    critical: \"> 200\"\n    depends_on: liveness"))
    result = invoke("check", "--config", str(path), "--json")
    items = {item["check"]: item for item in json.loads(result.output)}
    assert items["liveness"]["status"] == "critical"
    assert items["queue"]["status"] == "skipped"
    assert items["queue"]["message"].startswith("skipped: liveness is critical")
    assert result.exit_code == 2  # a skipped run says nothing about the server
    only = invoke("check", "--config", str(path), "--only", "queue", "--json")
    assert json.loads(only.output)[0]["status"] == "skipped"  # from the stored state


def test_check_results_are_stored_and_shown_by_history(tmp_path: Path,
                                                       emulator: Emulator) -> None:
    path = catalog_for(tmp_path, emulator.url)
    invoke("check", "--config", str(path))
    invoke("check", "--config", str(path), "--only", "liveness")
    history = json.loads(invoke("history", "--config", str(path), "--json").output)
    assert [item["check"] for item in history] == ["liveness", "queue", "liveness"]
    only = json.loads(invoke("history", "--config", str(path), "--check", "queue", "--limit",
                             "5", "--json").output)
    assert [item["check"] for item in only] == ["queue"]
    table = invoke("history", "--config", str(path))
    assert table.exit_code == 0 and "liveness" in table.output


def test_output_into_a_pipe_is_never_wrapped_whatever_the_width(tmp_path: Path) -> None:
    """Not a terminal (a pipe, a file, CliRunner) at COLUMNS=40: whole lines, no split words."""
    port = free_port()
    path = catalog_for(tmp_path, f"http://127.0.0.1:{port}", port=port)
    narrow = CliRunner(env={"COLUMNS": "40"})
    refused = (f"GET /health: connection refused at http://127.0.0.1:{port} (nothing is "
               "listening: the server process is gone)")
    checked = narrow.invoke(main, ["check", "--config", str(path)])
    assert refused in checked.output, checked.output
    plan = narrow.invoke(main, ["remediate", "restart", "--dry-run", "--config", str(path)])
    assert plan.exit_code == 0, plan.output
    assert f"wait up to 10 s for GET http://127.0.0.1:{port}/health to answer 200" in (
        plan.output)
    piped = subprocess.run([PYTHON, "-m", "sglguard", "history", "--config", str(path)],
                           capture_output=True, text=True, timeout=30,
                           env={**os.environ, "COLUMNS": "40"})
    assert piped.returncode == 0, piped.stderr
    assert refused in piped.stdout
    assert max(len(line) for line in piped.stdout.splitlines()) > 40


def test_unknown_check_or_remediation_is_exit_2(tmp_path: Path) -> None:
    path = catalog_for(tmp_path, "http://127.0.0.1:1")
    result = invoke("check", "--config", str(path), "--only", "nope")
    assert result.exit_code == 3 and "known: liveness, queue" in result.output  # a plugin
    result = invoke("remediate", "reboot", "--config", str(path))
    assert result.exit_code == 2 and "unknown remediation 'reboot'" in result.output
    result = invoke("remediate", "restart", "--target", "x", "--config", str(path))
    assert result.exit_code == 2 and "unknown target 'x'" in result.output


@pytest.fixture
def managed(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A catalog whose emulator was started by `sglguard remediate restart`."""
    port = free_port()
    path = catalog_for(tmp_path, f"http://127.0.0.1:{port}", port)
    started = invoke("remediate", "restart", "--config", str(path))
    assert started.exit_code == 0, started.output
    pid = read_pidfile(tmp_path / "local.pid")
    assert pid is not None
    yield path, pid
    invoke("remediate", "restart", "--config", str(path), "--dry-run")
    current = read_pidfile(tmp_path / "local.pid")
    if current is not None and pid_alive(current):
        import os

        os.kill(current, signal.SIGTERM)


def test_remediate_dry_run_prints_the_plan_and_changes_nothing(
        managed: tuple[Path, int], tmp_path: Path) -> None:
    path, pid = managed
    result = invoke("remediate", "restart", "--target", "local", "--dry-run",
                    "--config", str(path))
    assert result.exit_code == 0, result.output
    assert f"send SIGTERM to the process group of pid {pid}" in result.output
    assert "-m sglguard emulator --port" in result.output
    assert "nothing was changed" in result.output
    assert read_pidfile(tmp_path / "local.pid") == pid and pid_alive(pid)
    incidents = json.loads(invoke("incidents", "--config", str(path), "--json").output)
    assert incidents == []
    from sglguard.config.loader import load_catalog
    from sglguard.store import Store, queries

    store = Store.open(load_catalog(path).store.url)
    with store.session() as session:
        runs = [(run.dry_run, run.outcome, run.trigger) for run in queries.manual_runs(session, 5)]
    store.close()
    assert runs == [(True, "planned", "manual"), (False, "succeeded", "manual")]


def test_remediate_restarts_the_server_with_a_new_pid(managed: tuple[Path, int],
                                                      tmp_path: Path) -> None:
    path, pid = managed
    result = invoke("remediate", "restart", "--config", str(path))
    assert result.exit_code == 0, result.output
    assert "succeeded" in result.output
    new_pid = read_pidfile(tmp_path / "local.pid")
    assert new_pid not in (None, pid) and not pid_alive(pid)


def test_run_stops_cleanly_on_sigterm(tmp_path: Path, emulator: Emulator) -> None:
    path = catalog_for(tmp_path, emulator.url)
    process = subprocess.Popen([PYTHON, "-m", "sglguard", "run", "--config", str(path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store_file = tmp_path / "sglguard.db"
    wait_for(lambda: store_file.exists() and _results(store_file) >= 2, 15)
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr.decode()
    assert time.monotonic() - began < 5
    assert b"sglguard stopped" in stderr


def test_bad_arguments_are_exit_2() -> None:
    assert invoke("history", "--limit", "zero").exit_code == 2
    assert invoke("emulator", "--port", "1", "--fault", "melt").exit_code == 2


def _results(store_file: Path, check: str | None = None) -> int:
    import sqlite3

    query = "select count(*) from check_results"
    if check is not None:
        query += f" where check_name = '{check}'"
    try:
        with sqlite3.connect(store_file) as connection:
            return int(connection.execute(query).fetchone()[0])
    except sqlite3.Error:
        return 0


def test_sighup_reloads_a_good_catalog_and_keeps_running_on_a_bad_one(
        tmp_path: Path, emulator: Emulator) -> None:
    path = catalog_for(tmp_path, emulator.url)
    # Quiet results written each second, so the test sees the checks go on.
    good = path.read_text().replace("version: 1\n", "version: 1\nstore: {flush_interval: 1s}\n")
    path.write_text(good)
    process = subprocess.Popen([PYTHON, "-m", "sglguard", "run", "--config", str(path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store_file = tmp_path / "sglguard.db"
    try:
        wait_for(lambda: store_file.exists() and _results(store_file) >= 2, 15)
        path.write_text(good.replace("kind: http, target: local", "kind: htp, target: local"))
        process.send_signal(signal.SIGHUP)
        before = _results(store_file)
        wait_for(lambda: _results(store_file) > before + 1, 15)  # still checking
        assert process.poll() is None
        path.write_text(good.replace("interval: 2s", "interval: 0.2s").replace(
            "name: liveness", "name: alive"))
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: _results(store_file, "alive") >= 3, 15)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert b"reload refused, still running the previous catalog" in stderr
    assert b"unknown check kind 'htp'" in stderr
    assert b"reloaded" in stderr


def test_silence_add_list_expire(tmp_path: Path) -> None:
    path = catalog_for(tmp_path, "http://127.0.0.1:1")
    added = invoke("silence", "add", "--config", str(path), "--target", "local", "--check",
                   "queue", "--for", "2h", "--reason", "upgrade", "--by", "ana")
    assert added.exit_code == 0 and added.output.startswith("silence #1: local/queue until")
    listed = json.loads(invoke("silence", "list", "--config", str(path), "--json").output)
    assert [(item["id"], item["check"], item["active"], item["by"]) for item in listed] == [
        (1, "queue", True, "ana")]
    assert invoke("silence", "expire", "--config", str(path), "1").exit_code == 0
    assert json.loads(invoke("silence", "list", "--config", str(path), "--json").output) == []
    bad = invoke("silence", "add", "--config", str(path), "--target", "nope", "--for", "1h",
                 "--reason", "x")
    assert bad.exit_code == 2 and "unknown target 'nope'" in bad.output
    assert invoke("silence", "expire", "--config", str(path), "9").exit_code == 2


def test_incidents_show_prints_the_timeline(tmp_path: Path) -> None:
    from sglguard.checks.base import CheckResult, Status
    from sglguard.config.loader import load_catalog
    from sglguard.engine import IncidentEngine
    from sglguard.store import Store

    path = catalog_for(tmp_path, "http://127.0.0.1:1")
    catalog = load_catalog(path)
    store = Store.open(catalog.store.url)
    engine = IncidentEngine(catalog, store)
    from sglguard.clock import utcnow

    for _ in range(3):
        engine.record(CheckResult("liveness", "local", Status.CRITICAL, None, "s", "refused",
                                  1.0, utcnow()))
    engine.record(CheckResult("liveness", "local", Status.OK, 0.1, "s", "fine", 1.0, utcnow()))
    store.close()
    shown = invoke("incidents", "--config", str(path), "--show", "1")
    assert shown.exit_code == 0, shown.output
    assert "incident #1 local/liveness resolved" in shown.output
    assert "opened" in shown.output and "3 consecutive failed runs" in shown.output
    assert "None" not in shown.output  # the refused runs had no value: none is shown
    assert invoke("incidents", "--config", str(path), "--show", "7").exit_code == 2


def test_demo_ports_are_chosen_on_the_command_line(tmp_path: Path) -> None:
    from sglguard.config.loader import load_catalog
    from sglguard.demo import demo_catalog

    path = tmp_path / "sglguard.yaml"
    path.write_text(demo_catalog(31001, 9099))
    catalog = load_catalog(path)
    assert catalog.targets[0].url == "http://127.0.0.1:31001"
    control = catalog.targets[0].control
    assert isinstance(control, ProcessControlConfig)
    assert control.start[-2:] == ("--port", "31001")
    assert catalog.notifiers[0].urls[0].get_secret_value() == "json://127.0.0.1:9099/alerts"

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        result = invoke("demo", "--dir", str(tmp_path / "demo"), "--port", str(busy),
                        "--receiver-port", str(free_port()))
    assert result.exit_code == 2
    assert f"port {busy} on 127.0.0.1 is in use" in result.output
    assert "choose others with --port and --receiver-port" in result.output
    same = invoke("demo", "--port", "31001", "--receiver-port", "31001")
    assert same.exit_code == 2 and "give them different ports" in same.output


def test_remediate_json_gives_the_run_and_its_plan(tmp_path: Path) -> None:
    port = free_port()
    path = catalog_for(tmp_path, f"http://127.0.0.1:{port}", port=port)
    result = invoke("remediate", "restart", "--dry-run", "--json", "--config", str(path))
    assert result.exit_code == 0, result.output
    run = json.loads(result.output)
    assert (run["remediation"], run["target"], run["dry_run"], run["outcome"]) == (
        "restart", "local", True, "planned")
    assert run["plan"][-1] == (f"wait up to 10 s for GET http://127.0.0.1:{port}/health to "
                               "answer 200")
