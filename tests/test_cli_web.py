"""`sglguard status`, `runs` and `serve` as a user drives them."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import requests
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families

from sglguard.checks.base import CheckResult, Status
from sglguard.cli import main
from sglguard.config.loader import load_catalog
from sglguard.engine import IncidentEngine
from sglguard.store import Store, queries

from conftest import PYTHON, FakeClock, free_port, wait_for


def invoke(*args: str) -> Result:
    return CliRunner(env={"COLUMNS": "200"}).invoke(main, list(args), catch_exceptions=False)


def write(directory: Path, extra: str = "") -> Path:
    path = directory / "sglguard.yaml"
    path.write_text(f"""\
version: 1
store: {{url: sqlite:///status.db}}
targets:
  - name: local
    url: http://127.0.0.1:1
    control: {{kind: process, start: [/bin/true], pidfile: local.pid}}
checks:
  - {{name: liveness, kind: http, target: local, failure_threshold: 1}}
  - {{name: queue, kind: metric, target: local, metric: q, warning: "> 5"}}
  - {{name: never, kind: http, target: local}}
remediations:
  - {{name: restart, kind: restart}}
{extra}""")
    return path


def record(path: Path) -> None:
    catalog = load_catalog(path)
    store = Store.open(catalog.store.url)
    clock = FakeClock()
    engine = IncidentEngine(catalog, store, clock)
    engine.record(CheckResult("queue", "local", Status.WARNING, 9.0, "", "9 > 5", 1.0, clock()))
    clock.advance(1)
    engine.record(CheckResult("liveness", "local", Status.CRITICAL, None, "s", "refused", 1.0,
                              clock()))
    store.close()


def test_status_lists_checks_worst_first_and_exits_as_check(tmp_path: Path) -> None:
    path = write(tmp_path)
    record(path)
    shown = invoke("status", "--config", str(path))
    assert shown.exit_code == 2  # critical, as `sglguard check` would exit
    lines = [line for line in shown.output.splitlines() if "local" in line]
    assert [line.split("│")[2].strip() for line in lines] == ["liveness", "queue", "never"]
    as_json = invoke("status", "--config", str(path), "--json")
    checks = json.loads(as_json.output)["checks"]
    assert [(item["name"], item["status"]) for item in checks] == [
        ("liveness", "critical"), ("queue", "warning"), ("never", "pending")]
    assert checks[0]["incident_id"] == 1 and checks[1]["value"] == 9.0
    assert as_json.exit_code == 2


def test_status_of_nothing_recorded_is_ok(tmp_path: Path) -> None:
    result = invoke("status", "--config", str(write(tmp_path)))
    assert result.exit_code == 0
    assert "never run" in result.output or "never" in result.output


def test_runs_lists_remediation_runs_with_their_outcome(tmp_path: Path) -> None:
    path = write(tmp_path)
    catalog = load_catalog(path)
    store = Store.open(catalog.store.url)
    clock = FakeClock()
    with store.session() as session:
        run = queries.start_run(session, incident_id=None, remediation="restart",
                                kind="restart", target="local", trigger="manual",
                                dry_run=False, plan=["stop", "start"], outcome="running",
                                at=clock())
        queries.finish_run(session, run.id, outcome="failed", detail="", error="exit 1",
                           at=clock())
    store.close()
    assert invoke("remediate", "restart", "--config", str(path), "--dry-run").exit_code == 0
    shown = invoke("runs", "--config", str(path))
    assert shown.exit_code == 0
    assert "planned (dry run)" in shown.output and "exit 1" in shown.output
    runs = json.loads(invoke("runs", "--config", str(path), "--json").output)
    assert [(item["outcome"], item["trigger"], item["dry_run"]) for item in runs] == [
        ("planned", "manual", True), ("failed", "manual", False)]


def test_serve_shows_the_page_until_sigterm(tmp_path: Path) -> None:
    path = write(tmp_path)
    record(path)
    port = free_port()
    process = subprocess.Popen([PYTHON, "-m", "sglguard", "serve", "--config", str(path),
                                "--listen", f"127.0.0.1:{port}"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def answered() -> requests.Response | None:
            try:
                return requests.get(f"http://127.0.0.1:{port}/", timeout=2)
            except requests.ConnectionError:
                return None

        page = wait_for(answered, 15)
        assert page.status_code == 200 and 'data-name="liveness"' in page.text
        checks = requests.get(f"http://127.0.0.1:{port}/api/v1/checks", timeout=2).json()
        assert checks["checks"][0]["name"] == "liveness"
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=10)[0].decode()
    assert process.returncode == 0, output
    assert f"serving http://127.0.0.1:{port}/" in output


def test_serve_beyond_loopback_without_a_token_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--config", str(write(tmp_path)),
                                       "--listen", "0.0.0.0:9466"])
    assert result.exit_code == 2
    assert "beyond loopback" in result.output and "http.token" in result.output
    bad = CliRunner().invoke(main, ["serve", "--config", str(write(tmp_path)),
                                    "--listen", "nowhere"])
    assert bad.exit_code == 2 and "--listen: invalid listen address" in bad.output


def test_run_serves_the_catalogs_listener_and_a_reload_serves_the_new_catalog(
        tmp_path: Path) -> None:
    port = free_port()
    path = write(tmp_path, f"http: {{listen: 127.0.0.1:{port}}}\n")
    process = subprocess.Popen([PYTHON, "-m", "sglguard", "run", "--config", str(path)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def names() -> list[str]:
        try:
            found = requests.get(f"http://127.0.0.1:{port}/api/v1/checks", timeout=2).json()
        except requests.RequestException:
            return []
        return sorted(item["name"] for item in found["checks"])

    def runs_timed() -> float:  # the service's own histogram, beside the store's figures
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        return sum(sample.value for family in text_string_to_metric_families(text)
                   for sample in family.samples
                   if sample.name == "sglguard_check_run_duration_seconds_count")

    def healthy() -> bool:  # every check fails here: health is the scheduler's, not theirs
        try:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        assert wait_for(names, 15) == ["liveness", "never", "queue"]
        wait_for(healthy, 15)
        timed = wait_for(runs_timed, 15)
        path.write_text(path.read_text().replace(
            "checks:\n", "checks:\n  - {name: added, kind: http, target: local}\n"))
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: "added" in names(), 15)
        wait_for(healthy, 15)
        assert runs_timed() >= timed  # handed on across the reload, not reset
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=15)[0].decode()
    assert process.returncode == 0, output
    assert output.count("status page, API and /metrics on") == 2
