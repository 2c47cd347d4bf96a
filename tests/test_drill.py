"""`sglguard drill`: faults injected into the emulator and into a plain process, each caught
within the bound its check implies, repaired, and reported; a real server only with --yes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from importlib import resources
from pathlib import Path

import pytest
import requests
import yaml
from click.testing import CliRunner

from sglguard.checks.http import HttpCheckConfig
from sglguard.cli import main
from sglguard.drill.run import detection_bound
from sglguard.receiver import AlertReceiver
from sglguard.store import Store
from sglguard.store.models import IncidentEventRow

from conftest import PYTHON, StartEmulator, emulator_command, free_port, pid_alive, wait_for

PLAIN_SERVER = """\
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"ok" if self.path == "/health" else b"no"
        self.wfile.write(b"HTTP/1.1 %d X\\r\\nContent-Length: %d\\r\\n\\r\\n"
                         % (200 if self.path == "/health" else 404, len(body)) + body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


@pytest.fixture
def receiver() -> Iterator[AlertReceiver]:
    server = AlertReceiver().start()
    yield server
    server.stop()


def catalog_text(port: int, start: list[str], alerts: int, checks: str,
                 remediations: str = "", diagnostics: str = "{timeout: 1s}") -> str:
    return textwrap.dedent(f"""\
        version: 1
        store: {{url: sqlite:///sglguard.db, flush_interval: 0s}}
        targets:
          - name: local
            url: http://127.0.0.1:{port}
            timeout: 1s
            control:
              kind: process
              start: {json.dumps(start)}
              pidfile: server.pid
              startup_timeout: 15s
        notifications: {{group_wait: 0s}}
        notifiers:
          - {{name: ops, urls: ["json://127.0.0.1:{alerts}/alerts"]}}
        diagnostics: {diagnostics}
        """) + checks + remediations


EMULATOR_CHECKS = """\
checks:
  - {name: liveness, kind: http, target: local, path: /health, interval: 0.3s, timeout: 0.5s,
     failure_threshold: 2, remediate: [restart]}
  - {name: generation, kind: generate, target: local, measure: ttft, critical: "> 2",
     interval: 0.5s, timeout: 1s, failure_threshold: 2, depends_on: liveness}
  - {name: queue, kind: metric, target: local, metric: "sglang:num_queue_reqs", aggregate: sum,
     critical: "> 200", interval: 0.5s, timeout: 1s, failure_threshold: 2,
     depends_on: liveness}
"""
RESTART = """\
remediations:
  - {name: restart, kind: restart, budget: {max: 5, within: 30m},
     backoff: {initial: 0.2s, max: 1s}}
"""


def start(directory: Path, command: list[str], port: int) -> subprocess.Popen[bytes]:
    log = (directory / "server.log").open("ab")
    child = subprocess.Popen(command, start_new_session=True, stdout=log,
                             stderr=subprocess.STDOUT)
    (directory / "server.pid").write_text(f"{child.pid}\n")
    wait_for(lambda: _healthy(port), 15)
    return child


def _healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def kill_pidfile(directory: Path) -> None:
    pid = int((directory / "server.pid").read_text())
    if pid_alive(pid):
        os.kill(pid, signal.SIGCONT)
        os.killpg(pid, signal.SIGKILL)


def test_drill_against_the_emulator_reports_each_fault_detected_within_its_bound(
        tmp_path: Path, receiver: AlertReceiver) -> None:
    port = free_port()
    config = tmp_path / "sglguard.yaml"
    config.write_text(catalog_text(port, emulator_command(port), receiver.port,
                                   EMULATOR_CHECKS, RESTART))
    start(tmp_path, emulator_command(port), port)
    try:
        ran = CliRunner().invoke(main, ["drill", "--config", str(config), "--json",
                                        "--fault", "crash", "--fault", "5xx",
                                        "--fault", "queue"])
    finally:
        kill_pidfile(tmp_path)
    report = json.loads(ran.stdout)
    verdicts = {item["fault"]: item for item in report["outcomes"]}
    assert ran.exit_code == 0, json.dumps(verdicts, indent=1) + ran.stderr
    assert report["passed"] and report["emulator"] and report["target"] == "local"
    crash, errors, queue = verdicts["crash"], verdicts["5xx"], verdicts["queue"]
    assert (crash["check"], errors["check"], queue["check"]) == (
        "liveness", "generation", "queue")
    for item in report["outcomes"]:
        assert item["detected"] and item["detection_s"] <= item["bound_s"], item
        assert item["healthy_s"] is not None and item["verdict"] == "pass"
    assert crash["remediation"] == "restart succeeded"
    assert errors["remediation"] == "none (the drill undid the fault)"
    assert any(line.startswith("incident_opened -> ops") for line in crash["notifications"])
    titles = [alert["title"] for alert in receiver.received()]
    assert titles and all(title.startswith("[DRILL] ") for title in titles), titles
    # Drill incidents stay out of the service's history; the report is stored.
    history = CliRunner().invoke(main, ["incidents", "--config", str(config), "--json"])
    assert json.loads(history.stdout) == []
    shown = CliRunner().invoke(main, ["drill", "--config", str(config), "--show",
                                      str(report["id"])])
    assert shown.exit_code == 0 and "PASSED" in shown.output and "liveness" in shown.output
    assert (tmp_path / "sglguard-drills.db").exists()
    evidence = CliRunner().invoke(main, ["diag", str(crash["incident"]), "--drills",
                                         "--config", str(config), "--list"])
    assert evidence.exit_code == 0 and "before restart" in evidence.output, evidence.output


def test_a_plain_process_is_drilled_with_sigstop_only_with_yes_and_resumed(
        tmp_path: Path, receiver: AlertReceiver) -> None:
    port = free_port()
    script = tmp_path / "plain.py"
    script.write_text(PLAIN_SERVER)
    command = [PYTHON, str(script), str(port)]
    config = tmp_path / "sglguard.yaml"
    config.write_text(catalog_text(port, command, receiver.port, """\
checks:
  - {name: liveness, kind: http, target: local, path: /health, interval: 0.3s, timeout: 0.5s,
     failure_threshold: 2}
""", diagnostics=f"{{timeout: 1s, request_dumps: {{folder: {tmp_path / 'requests'}}}}}"))
    child = start(tmp_path, command, port)
    try:
        refused = CliRunner().invoke(main, ["drill", "--config", str(config),
                                            "--fault", "sigstop"])
        assert refused.exit_code == 2, refused.output
        assert "nothing done" in refused.output and f"SIGSTOP pid {child.pid}" in refused.output
        planned = CliRunner().invoke(main, ["drill", "--config", str(config), "--dry-run"])
        assert planned.exit_code == 0 and "sigkill" in planned.output
        assert "crash" not in planned.output  # emulator faults are not offered
        emulator_only = CliRunner().invoke(main, ["drill", "--config", str(config), "--yes",
                                                  "--fault", "hang"])
        assert emulator_only.exit_code == 2 and "only the emulator" in emulator_only.output
        assert _healthy(port)  # none of that touched it
        ran = CliRunner().invoke(main, ["drill", "--config", str(config), "--yes", "--json",
                                        "--fault", "sigstop", "--stop-for", "10s"])
        assert ran.exit_code == 0, ran.output
        [item] = json.loads(ran.stdout)["outcomes"]
        assert item["detected"] and item["check"] == "liveness"
        assert item["detection_s"] <= item["bound_s"] and item["verdict"] == "pass"
        assert _healthy(port) and child.poll() is None  # resumed, same process
        # A real server's logging is left alone without --request-dumps (no POST was tried).
        store = Store.open(f"sqlite:///{tmp_path / 'sglguard-drills.db'}")
        try:
            with store.session() as session:
                kinds = {row.kind for row in session.query(IncidentEventRow)}
                assert kinds and "request_dumps" not in kinds, kinds
        finally:
            store.close()
        with open(f"/proc/{child.pid}/stat") as stat:
            assert stat.read().split(")")[-1].split()[0] != "T"
    finally:
        os.kill(child.pid, signal.SIGCONT)
        child.kill()
        child.wait()


def test_the_bound_is_the_runs_a_check_takes_to_judge() -> None:
    check = HttpCheckConfig(name="c", target="t", kind="http", interval=timedelta(seconds=10),
                            timeout=timedelta(seconds=5), jitter=timedelta(0),
                            failure_threshold=3)
    recording = 1  # from the last run's end to the incident in the store
    assert detection_bound(check) == timedelta(seconds=10 + 2 * 10 + 5 + recording)
    slow = check.model_copy(update={"timeout": timedelta(seconds=20)})
    assert detection_bound(slow) == timedelta(seconds=10 + 2 * 20 + 20 + recording)
    # A run of 25 s misses the two due times that fall within it: the next is 30 s after.
    slower = check.model_copy(update={"timeout": timedelta(seconds=25)})
    assert detection_bound(slower) == timedelta(seconds=10 + 2 * 30 + 25 + recording)
    # Jitter moves a run within its interval: one that starts late and runs 9.5 s of 10 misses
    # the next due time.
    late = check.model_copy(update={"timeout": timedelta(seconds=9.5),
                                    "jitter": timedelta(seconds=1)})
    assert detection_bound(late) == timedelta(seconds=11 + 2 * 21 + 9.5 + recording)


# What catches each emulator fault in the example catalog (the first incident of the target).
EXAMPLE_CATCHES = {
    "crash": {"liveness"},
    "hang": {"liveness", "hang", "queue"},  # the requests sent meanwhile pile up too
    "stall": {"liveness", "hang"},
    "slow_ttft": {"generation", "ttft-p95"},
    "5xx": {"generation", "error-ratio"},
    "bad_output": {"json-output"},
    "queue": {"queue"},
    "memory_growth": {"kv-usage", "kv-cache-memory"},
}
EXAMPLE_SCALE = 0.05


def example_catalog(directory: Path, port: int, alerts: int) -> tuple[Path, list[str]]:
    """The example catalog as `sglguard init` writes it, with only what a test must change: the
    emulator on a free port started by this Python, the alert receiver's port, and no
    maintenance window (one falling during the test would hold the remediations back)."""
    data = yaml.safe_load(
        resources.files("sglguard.config").joinpath("catalog.example.yaml").read_text())
    [target] = data["targets"]
    target["url"] = f"http://127.0.0.1:{port}"
    start = target["control"]["start"]
    assert start[:4] == ["sglguard", "emulator", "--port", "30000"], start
    target["control"]["start"] = [PYTHON, "-m", "sglguard", "emulator", "--port", str(port),
                                  *start[4:]]
    [notifier] = data["notifiers"]
    notifier["urls"] = [f"json://127.0.0.1:{alerts}/alerts"]
    del data["maintenance"]
    config = directory / "sglguard.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config, target["control"]["start"]


def test_every_emulator_fault_is_caught_by_the_example_catalog_within_its_bound(
        tmp_path: Path, receiver: AlertReceiver) -> None:
    port = free_port()
    config, command = example_catalog(tmp_path, port, receiver.port)
    log = tmp_path / "sglguard-local.log"
    with log.open("ab") as out:
        child = subprocess.Popen(command, start_new_session=True, stdout=out,
                                 stderr=subprocess.STDOUT, cwd=tmp_path)
    (tmp_path / "sglguard-local.pid").write_text(f"{child.pid}\n")
    wait_for(lambda: _healthy(port), 15)
    faults = [argument for name in EXAMPLE_CATCHES for argument in ("--fault", name)]
    try:
        ran = CliRunner().invoke(main, ["drill", "--config", str(config), "--json",
                                        "--time-scale", str(EXAMPLE_SCALE), *faults])
    finally:
        pid = int((tmp_path / "sglguard-local.pid").read_text())
        if pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
    report = json.loads(ran.stdout)
    outcomes = {item["fault"]: item for item in report["outcomes"]}
    shown = "\n".join(
        f"{name}: {item['verdict']} by {item['check']} in {item['detection_s']} s of "
        f"{item['bound_s']} s, {item['remediation']}, healthy {item['healthy_s']} {item['note']}"
        for name, item in outcomes.items())
    assert list(outcomes) == list(EXAMPLE_CATCHES), shown
    assert report["time_scale"] == EXAMPLE_SCALE and report["emulator"], shown
    for fault, item in outcomes.items():
        assert item["verdict"] == "pass", (fault, shown)
        assert item["check"] in EXAMPLE_CATCHES[fault], (fault, shown)
        assert item["detected"] and item["detection_s"] <= item["bound_s"], (fault, shown)
    for fault in ("crash", "hang", "stall"):  # the example restarts a dead or hung server
        if outcomes[fault]["check"] == "queue":
            continue  # the queue it piled up paged first; the drill then ended the hang
        assert outcomes[fault]["remediation"].startswith("restart succeeded"), (fault, shown)
    assert ran.exit_code == 0 and report["passed"], shown
    printed = CliRunner().invoke(main, ["drill", "--config", str(config), "--show",
                                        str(report["id"])])
    assert f"x {EXAMPLE_SCALE:g} (--time-scale)" in printed.output, printed.output


def test_the_burst_and_the_impossible_regex_reach_the_server_as_planned(
        tmp_path: Path, start_emulator: StartEmulator) -> None:
    """The two request faults of a real-server drill, seen from the server: its request dumps
    (switched on through /configure_logging) hold exactly the burst and the one regex request."""
    import pickle

    from sglguard.config.loader import parse_catalog
    from sglguard.drill.faults import Burst, ImpossibleRegex, Scene, Settings
    from sglguard.service import build_clients

    server = start_emulator()
    folder = tmp_path / "requests"
    requests.post(f"{server.url}/configure_logging", timeout=5,
                  json={"dump_requests_folder": str(folder), "dump_requests_threshold": 9})
    catalog = parse_catalog(f"version: 1\ntargets: [{{name: s, url: '{server.url}'}}]\n",
                            tmp_path / "sglguard.yaml")
    scene = Scene(catalog.targets[0], build_clients(catalog)["s"], lambda: None,
                  Settings(burst=8, burst_tokens=4))
    burst, regex = Burst(scene), ImpossibleRegex(scene)
    assert burst.plan() == "8 concurrent POST /generate of 4 tokens each, once"
    burst.inject()
    regex.inject()
    [dump] = wait_for(lambda: sorted(folder.glob("*.pkl")), 15)
    with dump.open("rb") as kept:
        sent = [request for request, *_ in pickle.load(kept)["requests"]]
    params = [request["sampling_params"] for request in sent]
    assert sorted(map(json.dumps, params)) == sorted(
        [json.dumps({"max_new_tokens": 4})] * 8
        + [json.dumps({"max_new_tokens": 16, "regex": ImpossibleRegex.REGEX})])


def test_a_time_scale_multiplies_the_schedule_and_leaves_thresholds_and_the_server_alone(
        ) -> None:
    from sglguard.config.loader import load_catalog
    from sglguard.drill.run import RECORDING
    from sglguard.drill.scale import scale_catalog

    with resources.as_file(resources.files("sglguard.config")
                           .joinpath("catalog.example.yaml")) as path:
        catalog = load_catalog(path)
    catalog.check("liveness")  # a lookup made before scaling must not leak into the copy
    scaled = scale_catalog(catalog, 0.1)
    live, tpot = scaled.check("liveness"), scaled.check("tpot-p95")
    assert (live.interval, live.timeout) == (timedelta(seconds=1), timedelta(seconds=2.5))
    assert live.jitter_seconds == 0.1 and live.failure_threshold == 2
    assert (tpot.window, tpot.hold) == (timedelta(seconds=30), timedelta(seconds=12))
    assert tpot.critical == catalog.check("tpot-p95").critical
    restart = scaled.remediation("restart")
    assert restart.backoff.initial == timedelta(seconds=1) and restart.budget.max == 3
    assert restart.budget.within == timedelta(minutes=3)
    assert scaled.notifications.group_wait == timedelta(seconds=1)
    assert scaled.targets == catalog.targets  # start-up and stop take what they take
    # the bound scales with it, but for the moment an incident takes to record
    real = detection_bound(catalog.check("liveness"))
    assert detection_bound(live) == (real - RECORDING) * 0.1 + RECORDING
    assert scale_catalog(catalog, 1) is catalog
    for wrong in (0, 1.5):
        with pytest.raises(ValueError, match="at most 1"):
            scale_catalog(catalog, wrong)


def test_a_plain_process_killed_by_the_drill_is_restarted_by_the_catalog(
        tmp_path: Path, receiver: AlertReceiver) -> None:
    port = free_port()
    script = tmp_path / "plain.py"
    script.write_text(PLAIN_SERVER)
    command = [PYTHON, str(script), str(port)]
    config = tmp_path / "sglguard.yaml"
    config.write_text(catalog_text(port, command, receiver.port, """\
checks:
  - {name: liveness, kind: http, target: local, path: /health, interval: 0.3s, timeout: 0.5s,
     failure_threshold: 2, remediate: [restart]}
""", RESTART))
    child = start(tmp_path, command, port)
    try:
        ran = CliRunner().invoke(main, ["drill", "--config", str(config), "--yes", "--json",
                                        "--fault", "sigkill"])
        assert ran.exit_code == 0, ran.output
        [item] = json.loads(ran.stdout)["outcomes"]
        assert item["check"] == "liveness" and item["verdict"] == "pass", item
        assert item["remediation"] == "restart succeeded", item
        assert child.wait(5) == -signal.SIGKILL  # the drill's kill, not a stop
        restarted = int((tmp_path / "server.pid").read_text())
        assert restarted != child.pid and pid_alive(restarted) and _healthy(port)
    finally:
        kill_pidfile(tmp_path)
