"""Diagnostics bundles: captured for a crash, a hang and a restart, within their time and size
bounds, readable from the CLI and attached to the e-mail of the incident."""

from __future__ import annotations

import email
import gzip
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiosmtpd.controller import Controller
from click.testing import CliRunner

from sglguard.cli import main
from sglguard.config.loader import load_catalog
from sglguard.diag.bundle import build, decode
from sglguard.diag.collect import py_spy
from sglguard.service import Service
from sglguard.store import Store
from sglguard.store.evidence import DiagnosticRow, bundles_of
from sglguard.store.models import IncidentEventRow, IncidentRow

from conftest import emulator_command, free_port, pid_alive, wait_for


class Inbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def write_catalog(directory: Path, port: int, smtp_port: int, *, remediate: str = "[restart]",
                  extra: str = "", queue_interval: str = "30s") -> Path:
    path = directory / "sglguard.yaml"
    path.write_text(f"""\
version: 1
store:
  url: sqlite:///sglguard.db
  flush_interval: 0s
targets:
  - name: local
    url: http://127.0.0.1:{port}
    timeout: 1s
    crash_dump_folder: dumps
    control:
      kind: process
      start: {json.dumps(emulator_command(port))}
      pidfile: server.pid
      startup_timeout: 15s
checks:
  - name: liveness
    kind: http
    target: local
    path: /health
    interval: 0.3s
    timeout: 0.5s
    failure_threshold: 2
    remediate: {remediate}
  - name: queue
    kind: metric
    target: local
    metric: sglang:num_queue_reqs
    aggregate: sum
    critical: "> 200"
    interval: {queue_interval}
remediations:
  - name: restart
    kind: restart
    budget: {{max: 3, within: 30m}}
    backoff: {{initial: 0.2s, max: 1s}}
notifications:
  group_wait: 0s
notifiers:
  - name: mail
    urls: ["mailto://127.0.0.1:{smtp_port}?from=sg@example.org&to=oncall@example.org&mode=insecure"]
diagnostics:
  timeout: 1.5s
  max_bytes: 60000
  log_lines: 100000
{extra}""")
    return path


def start_server(directory: Path, port: int) -> subprocess.Popen[bytes]:
    """The server as the process control would have started it: its pidfile and its log."""
    log = (directory / "server.log").open("ab")
    child = subprocess.Popen(emulator_command(port), start_new_session=True, stdout=log,
                             stderr=subprocess.STDOUT)
    (directory / "server.pid").write_text(f"{child.pid}\n")
    wait_for(lambda: _healthy(port), 15)
    return child


def _healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok
    except requests.RequestException:
        return False


def fault(port: int, mode: str | None) -> None:
    requests.post(f"http://127.0.0.1:{port}/_emulator/fault", json={"mode": mode}, timeout=2)


def bundles(store: Store) -> list[DiagnosticRow]:
    with store.session() as session:
        rows = [bundles_of(session, incident.id) for incident in session.query(IncidentRow)]
        return [row for group in rows for row in group]


def attachments(mail: bytes) -> dict[str, bytes]:
    parsed = email.message_from_bytes(mail)
    return {part.get_filename(): part.get_payload(decode=True)
            for part in parsed.walk() if part.get_filename()}


def stop_pidfile_server(directory: Path) -> None:
    pid = int((directory / "server.pid").read_text())
    if pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)


def test_a_crash_is_captured_when_it_opens_and_before_the_restart_and_mailed(
        tmp_path: Path, smtp: tuple[Inbox, int]) -> None:
    inbox, smtp_port = smtp
    port = free_port()
    (tmp_path / "dumps" / "host").mkdir(parents=True)
    (tmp_path / "dumps" / "host" / "crash_dump_2026.pkl").write_bytes(b"requests" * 100)
    (tmp_path / "server.log").write_text("".join(f"old line {n}\n" for n in range(20_000)))
    catalog = load_catalog(write_catalog(tmp_path, port, smtp_port))
    first = start_server(tmp_path, port)
    store = Store.open(catalog.store.url)
    service = Service(catalog, store)
    service.start()
    try:
        wait_for(lambda: service._latest.get("liveness") == "ok", 10)
        fault(port, "crash:0.2")  # the emulator exits as SGLang does when a child dies
        first.wait(10)
        wait_for(lambda: len(bundles(store)) >= 2, 20)
        with store.session() as session:
            wait_for(lambda: session.query(IncidentRow).filter_by(status="resolved").count(), 20)
        wait_for(lambda: len(inbox.messages) >= 2, 15)
    finally:
        service.stop()
        stop_pidfile_server(tmp_path)
    opened, before = bundles(store)[:2]
    assert (opened.stage, before.stage) == ("incident opened", "before restart")
    for row in (opened, before):
        assert row.size <= 60_000 and len(gzip.decompress(row.data)) == row.size
        assert row.took_ms <= 1500 + 500  # the capture's bound, with its scheduling
    document = decode(opened.data)
    sections = document["sections"]
    assert "not running" in sections["process"]["reason"]
    assert sections["crash_dump"]["name"].endswith("crash_dump_2026.pkl")
    assert sections["crash_dump"]["size"] == 800 and "content_base64" in sections["crash_dump"]
    assert sections["log"]["lines"][-1]  # the newest lines, cut to fit the bound
    assert any(item.startswith("log: kept the last") for item in document["truncated"])
    assert "NVML" in sections["gpu"].get("reason", "") or sections["gpu"]["available"]
    assert sections["host"]["memory"]["total"] > 0
    assert sections["stacks"] == {"taken": False, "reason": "not a hang"}
    # The opening e-mail carries the summary and the bundle.
    mails = [mail for mail in inbox.messages if b"incident opened" in mail]
    assert mails, [mail[:300] for mail in inbox.messages]
    files = attachments(mails[0])
    name = f"sglguard-incident-{opened.incident_id}-diagnostics.json.gz"
    assert name in files, list(files)
    assert decode(files[name])["stage"] == "incident opened"
    assert b"Diagnostics (incident opened" in email.message_from_bytes(mails[0]).as_bytes() or \
        "Diagnostics (incident opened" in _text(mails[0])
    # The CLI shows and exports them.
    config = str(tmp_path / "sglguard.yaml")
    shown = CliRunner().invoke(main, ["incidents", "--config", config, "--show",
                                      str(opened.incident_id)])
    assert shown.exit_code == 0, shown.output
    assert "diagnostics #" in shown.output and "before restart" in shown.output
    out = tmp_path / "bundle.json"
    exported = CliRunner().invoke(main, ["diag", str(opened.incident_id), "--config", config,
                                         "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert json.loads(out.read_text())["stage"] == "before restart"
    missing = CliRunner().invoke(main, ["diag", "999", "--config", config])
    assert missing.exit_code == 2 and "no incident #999" in missing.output
    store.close()


def _text(mail: bytes) -> str:
    parsed = email.message_from_bytes(mail)
    return "".join(str(part.get_payload(decode=True) or b"", "utf-8", "replace")
                   for part in parsed.walk() if part.get_content_type() == "text/plain")


def test_a_hang_is_captured_within_its_bound_with_stacks_or_why_not(
        tmp_path: Path, smtp: tuple[Inbox, int]) -> None:
    _, smtp_port = smtp
    port = free_port()
    catalog = load_catalog(write_catalog(tmp_path, port, smtp_port, remediate="[]"))
    child = start_server(tmp_path, port)
    store = Store.open(catalog.store.url)
    service = Service(catalog, store)
    service.start()
    try:
        wait_for(lambda: service._latest.get("liveness") == "ok", 10)
        fault(port, "hang")
        [row] = wait_for(lambda: bundles(store), 15)
    finally:
        service.stop()
        fault(port, None)
        child.kill()
        child.wait()
    document = decode(row.data)
    assert document["hang"] is True
    assert row.took_ms <= 1500 + 500 and row.size <= 60_000
    sections = document["sections"]
    assert "timed out" in json.dumps(sections["server_info"]).lower()
    assert sections["process"]["pid"] == child.pid
    if py_spy() is None:
        assert sections["stacks"] == {"taken": False,
                                      "reason": "py-spy is not installed (pip install py-spy)"}
    else:
        assert sections["stacks"]["taken"] is True
        assert str(child.pid) in sections["stacks"]["processes"]
    store.close()


def test_a_bundle_is_held_under_its_size_bound() -> None:
    sections = {"log": {"path": "x", "lines": [f"line {n} " + "x" * 80 for n in range(50_000)]},
                "crash_dump": {"name": "d", "size": 9, "content_base64": "A" * 300_000},
                "stacks": {"taken": True, "processes": {"1": "frame\n" * 100_000}}}
    bundle = build({"stage": "incident opened", "took_ms": 10.0}, sections, 50_000)
    assert bundle.size <= 50_000
    assert decode(bundle.data)["sections"]["log"]["lines"][-1].startswith("line 49999 ")
    assert "crash dump not copied" in " ".join(bundle.document["truncated"])
    assert "- log: " in bundle.summary


def test_a_capture_that_cannot_reach_anything_never_fails_and_keeps_its_bound(
        tmp_path: Path) -> None:
    port = free_port()  # nothing listens
    catalog = load_catalog(write_catalog(tmp_path, port, free_port()))
    store = Store.open(catalog.store.url)
    service = Service(catalog, store)
    began = time.monotonic()
    service.diagnostics.before(1, "liveness", "restart")
    assert time.monotonic() - began < 1.5 + 1.0
    [row] = [row for row in _all(store)]
    assert row.stage == "before restart"
    assert "refused" in json.dumps(decode(row.data)["sections"]["server_info"]).lower()
    store.close()


def _all(store: Store) -> list[DiagnosticRow]:
    with store.session() as session:
        return list(session.query(DiagnosticRow))


def test_without_py_spy_a_hang_bundle_says_so(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The one faked boundary: py-spy's presence on this host."""
    from sglguard.diag import collect

    monkeypatch.setattr(collect, "py_spy", lambda: None)
    catalog = load_catalog(write_catalog(tmp_path, free_port(), free_port()))
    job = collect.Job(target=catalog.targets[0], client=None,  # type: ignore[arg-type]
                      control=None, settings=catalog.diagnostics, metrics=frozenset(),
                      hang=True)
    assert collect.stacks(job) == {"taken": False,
                                   "reason": "py-spy is not installed (pip install py-spy)"}


def test_a_bundle_round_trips_through_postgresql(tmp_path: Path, postgres_url: str) -> None:
    catalog = load_catalog(write_catalog(tmp_path, free_port(), free_port()))
    store = Store.open(postgres_url)
    service = Service(catalog, store)
    row_id = service.diagnostics.capture(None, "liveness", "incident opened")
    assert row_id is not None
    with store.session() as session:
        row = session.get(DiagnosticRow, row_id)
        assert row is not None and decode(row.data)["stage"] == "incident opened"
        assert row.summary.startswith("Diagnostics (incident opened")
    store.close()


def timeline(store: Store, kind: str) -> list[str]:
    with store.session() as session:
        return [row.detail for row in session.query(IncidentEventRow).filter_by(kind=kind)
                .order_by(IncidentEventRow.id)]


def test_request_dumps_are_switched_on_while_an_incident_is_open_and_back_when_it_resolves(
        tmp_path: Path) -> None:
    port, folder = free_port(), tmp_path / "requests"
    dumps = f"  request_dumps: {{folder: {folder}, threshold: 1}}\n"
    catalog = load_catalog(write_catalog(tmp_path, port, free_port(), remediate="[]",
                                         queue_interval="1s", extra=dumps))
    child = start_server(tmp_path, port)
    store = Store.open(catalog.store.url)
    service = Service(catalog, store)
    service.start()
    ask = {"text": "Kept?", "sampling_params": {"max_new_tokens": 2}}
    try:
        wait_for(lambda: service._latest.get("queue") == "ok", 10)
        requests.post(f"http://127.0.0.1:{port}/generate", json=ask, timeout=5)
        assert not folder.exists()  # off until an incident opens
        fault(port, "queue:1000")
        [on] = wait_for(lambda: timeline(store, "request_dumps"), 10)
        assert on.startswith(f"request dumps on: POST /configure_logging dump_requests_folder "
                             f"{folder}, a file every 1 requests"), on
        requests.post(f"http://127.0.0.1:{port}/generate", json=ask, timeout=5)
        kept = wait_for(lambda: sorted(folder.glob("*.pkl")), 5)
        fault(port, None)
        wait_for(lambda: len(timeline(store, "request_dumps")) == 2, 15)
        requests.post(f"http://127.0.0.1:{port}/generate", json=ask, timeout=5)
        time.sleep(0.3)  # a dump, if any, is written as the request finishes
        assert sorted(folder.glob("*.pkl")) == kept  # off again
    finally:
        service.stop()
        child.kill()
        child.wait()
    off = timeline(store, "request_dumps")[1]
    assert off == "request dumps off (the incident resolved): POST /configure_logging " \
                  "dump_requests_folder (none)", off
    with store.session() as session:
        [incident] = session.query(IncidentRow).all()
        assert incident.check_name == "queue" and incident.status == "resolved"
    shown = CliRunner().invoke(main, ["incidents", "--config", str(tmp_path / "sglguard.yaml"),
                                      "--show", str(incident.id)])
    assert "request dumps on" in shown.output and "request dumps off" in shown.output, \
        shown.output
    store.close()


def test_request_dumps_that_cannot_be_switched_on_are_recorded_within_the_bound(
        tmp_path: Path) -> None:
    port = free_port()
    dumps = f"  request_dumps: {{folder: {tmp_path / 'requests'}}}\n"
    catalog = load_catalog(write_catalog(tmp_path, port, free_port(), remediate="[]",
                                         extra=dumps))
    child = start_server(tmp_path, port)
    store = Store.open(catalog.store.url)
    service = Service(catalog, store)
    service.start()
    try:
        wait_for(lambda: service._latest.get("liveness") == "ok", 10)
        fault(port, "hang")  # /configure_logging hangs too
        began = time.monotonic()
        [failed] = wait_for(lambda: timeline(store, "request_dumps"), 15)
        took = time.monotonic() - began
        wait_for(lambda: bundles(store), 10)  # the incident's evidence is captured all the same
    finally:
        service.stop()
        fault(port, None)
        child.kill()
        child.wait()
    assert failed.startswith("request dumps not switched on: ") and "timed out" in failed, failed
    # liveness takes two 0.5 s runs 0.3 s apart to open the incident; the switch, 1.5 s at most
    assert took < 0.3 + 2 * 0.8 + 1.5 + 1.0, took
    with store.session() as session:
        [incident] = session.query(IncidentRow).all()
        assert incident.status == "open" and incident.check_name == "liveness"
    store.close()


def test_request_dumps_go_back_when_a_restart_is_verified(tmp_path: Path) -> None:
    port = free_port()
    dumps = f"  request_dumps: {{folder: {tmp_path / 'requests'}, log_requests: true}}\n"
    catalog = load_catalog(write_catalog(tmp_path, port, free_port(), extra=dumps))
    start_server(tmp_path, port)
    store = Store.open(catalog.store.url)
    service = Service(catalog, store)
    service.start()
    try:
        wait_for(lambda: service._latest.get("liveness") == "ok", 10)
        fault(port, "stall")  # /health waits for a token; /configure_logging still answers
        switched = wait_for(lambda: len(timeline(store, "request_dumps")) == 2
                            and timeline(store, "request_dumps"), 30)
    finally:
        service.stop()
        stop_pidfile_server(tmp_path)
    on, off = switched
    assert on.endswith("a file every 100 requests, log_requests on"), on
    # The restart's verification resolved the incident; log_requests goes back to the launch's.
    assert off == "request dumps off (the incident resolved): POST /configure_logging " \
                  "dump_requests_folder (none)", off
    with store.session() as session:
        [incident] = session.query(IncidentRow).all()
        assert incident.status == "resolved"
    store.close()


def test_request_dumps_for_an_unknown_target_is_refused_with_where(tmp_path: Path) -> None:
    from sglguard.config.loader import ConfigError

    path = write_catalog(tmp_path, free_port(), free_port(),
                         extra="  request_dumps: {folder: /srv/requests, targets: [nope]}\n")
    with pytest.raises(ConfigError) as refused:
        load_catalog(path)
    assert "diagnostics.request_dumps.targets[0]" in str(refused.value)
    assert "unknown target 'nope' (known: local)" in str(refused.value)
