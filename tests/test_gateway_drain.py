"""drain against the real SGLang model gateway (`smg`, pinned in the test extras) in front of
emulators, plain and PD (one prefill worker with a bootstrap port, one decode worker). Every
step is judged by the gateway's own `GET /workers` and by requests sent through it.

The gateway drops a draining worker from its list about 5 s after DELETE (not configurable):
a test that drains waits that long once."""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from gateway import SmgGateway

from sglguard.checks.base import CheckResult, Status
from sglguard.cli import main
from sglguard.clock import utcnow
from sglguard.config.models import Catalog
from sglguard.rails import Leases
from sglguard.receiver import AlertReceiver
from sglguard.remediations.drained import return_when_well, return_workers
from sglguard.remediations.gateway import DISCOVERED_LABELS
from sglguard.remediations.runner import RemediationRunner
from sglguard.service import Service, build_clients
from sglguard.store import Store
from sglguard.store.models import DrainedWorkerRow, IncidentEventRow

from conftest import PYTHON, FakeClock, StartEmulator, emulator_command, free_port, wait_for

StartGateway = Callable[..., SmgGateway]


@pytest.fixture
def smg(tmp_path: Path) -> Iterator[StartGateway]:
    """Start the real gateway; fail (never skip) when it cannot run."""
    started: list[SmgGateway] = []

    def start(*, ready: bool = True, headers: dict[str, str] | None = None,
              **options: Any) -> SmgGateway:
        gateway = SmgGateway(tmp_path / f"smg-{len(started)}.log", **options)
        started.append(gateway)
        if ready:
            gateway.wait_ready(headers)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


def catalog_text(worker: str, gateway: str, *, control: str = "", checks: str = "",
                 drain: str = "") -> str:
    control_line = f"\n            control: {control}" if control else ""
    return f"""\
        version: 1
        targets:
          - name: local
            url: {worker}{control_line}
        checks:
          - {{name: liveness, kind: http, target: local, path: /health, failure_threshold: 1,
              interval: 1s, {checks}}}
        remediations:
          - {{name: drain, kind: drain, gateway: {gateway}, timeout: 15s, {drain}}}
          - {{name: restart, kind: restart}}
        """.rstrip(" ")


@pytest.fixture
def make_runner(make_catalog: Callable[[str], Catalog], store: Store,
                clock: FakeClock) -> Callable[[str], RemediationRunner]:
    def make(text: str) -> RemediationRunner:
        catalog = make_catalog(text)
        return RemediationRunner(catalog, store, build_clients(catalog), clock=clock)
    return make


def add(gateway: SmgGateway, body: dict[str, Any]) -> None:
    response = gateway.session.post(f"{gateway.url}/workers", json=body, timeout=5)
    assert response.status_code == 202, response.text
    gateway.wait_worker(body["url"])


def registered(entry: dict[str, Any] | None) -> tuple[Any, ...]:
    assert entry is not None
    return (entry["url"], entry["worker_type"], entry.get("bootstrap_port"), entry["priority"],
            entry["cost"], entry["labels"].get("zone"), entry.get("model_id"))


def healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=1).ok
    except requests.RequestException:
        return False


def out_rows(store: Store) -> list[DrainedWorkerRow]:
    with store.session() as session:
        rows = list(session.query(DrainedWorkerRow).filter(
            DrainedWorkerRow.returned_at.is_(None)))
        session.expunge_all()
    return rows


# 1, 3: the whole registration, matched whatever the host is called -----------------------------

def test_drain_returns_a_worker_with_its_priority_cost_and_labels_under_its_own_name(
        smg: StartGateway, start_emulator: StartEmulator, store: Store,
        make_runner: Callable[[str], RemediationRunner]) -> None:
    other, sick = start_emulator(), start_emulator()
    gateway = smg(workers=[other.url])
    # The gateway knows the worker as `localhost`, the catalog as 127.0.0.1.
    as_registered = sick.url.replace("127.0.0.1", "localhost")
    add(gateway, {"url": as_registered, "priority": 10, "cost": 2.5, "labels": {"zone": "a"}})
    before = registered(gateway.worker(as_registered))
    runner = make_runner(catalog_text(sick.url, gateway.url))

    outcome = runner.run("drain", "local", trigger="manual")

    assert outcome.outcome == "succeeded", outcome
    assert "already" not in outcome.detail and "priority 10, cost 2.5" in outcome.detail
    assert [item["url"] for item in gateway.workers()] == [other.url]
    assert all(gateway.generate().status_code == 200 for _ in range(3))
    assert runner.build("drain", "local").after_chain(True) is not None  # stays out
    assert gateway.worker(as_registered) is None

    said = return_workers(store, runner.catalog, "local", by="test")

    assert said == [f"added {as_registered} back to {gateway.url} as it was: regular, "
                    "priority 10, cost 2.5, 1 label"]
    assert registered(gateway.worker(as_registered)) == before
    assert sorted(item["url"] for item in gateway.workers()) == sorted([other.url,
                                                                        as_registered])
    assert return_workers(store, runner.catalog, "local", by="test") == []  # nothing owed


def test_a_worker_restarted_into_a_new_release_is_listed_with_its_new_version(
        smg: StartGateway, start_emulator: StartEmulator, store: Store,
        make_runner: Callable[[str], RemediationRunner]) -> None:
    other, sick = start_emulator(), start_emulator(metrics_version="legacy")
    gateway = smg(workers=[other.url])
    add(gateway, {"url": sick.url, "priority": 10, "cost": 2.5, "labels": {"zone": "a"}})
    before = gateway.worker(sick.url)
    assert before is not None and before["labels"]["version"] == "0.4.6"
    # Every other label of a worker registered without any is the gateway's own finding.
    other_entry = gateway.worker(other.url)
    assert other_entry is not None and set(other_entry["labels"]) == DISCOVERED_LABELS
    runner = make_runner(catalog_text(sick.url, gateway.url))
    assert runner.run("drain", "local", trigger="manual").outcome == "succeeded"
    [row] = out_rows(store)
    assert json.loads(row.registration) == {
        "url": sick.url, "worker_type": "regular", "priority": 10, "cost": 2.5,
        "labels": {"zone": "a"}, "model_id": before["model_id"]}
    port = int(sick.url.rsplit(":", 1)[1])
    sick.stop()
    upgraded = start_emulator(port=port)  # the same server, restarted on a new release

    said = return_workers(store, runner.catalog, "local", by="test")

    assert said == [f"added {sick.url} back to {gateway.url} as it was: regular, priority 10, "
                    "cost 2.5, 1 label"]
    after = gateway.worker(upgraded.url)
    assert after is not None
    assert after["labels"]["version"] == "0.5.23" and after["labels"]["zone"] == "a"
    assert registered(after) == registered(before)


def test_a_worker_the_gateway_does_not_hold_is_a_failure_naming_its_workers(
        smg: StartGateway, start_emulator: StartEmulator, store: Store,
        make_runner: Callable[[str], RemediationRunner]) -> None:
    listed, stranger = start_emulator(), start_emulator()
    gateway = smg(workers=[listed.url])
    runner = make_runner(catalog_text(stranger.url, gateway.url))

    outcome = runner.run("drain", "local", trigger="manual")

    assert outcome.outcome == "failed" and outcome.permanent
    assert outcome.error == (f"{stranger.url} is not a worker of {gateway.url} "
                             f"(its workers: {listed.url})")
    assert out_rows(store) == []


# 1 (PD): a prefill worker drained, restarted and returned as a prefill worker ------------------

def test_pd_prefill_worker_is_drained_restarted_and_returned_with_its_bootstrap_port(
        smg: StartGateway, start_emulator: StartEmulator, make_catalog: Callable[[str], Catalog],
        store: Store, tmp_path: Path) -> None:
    port, gateway_port = free_port(), free_port()
    prefill = f"http://127.0.0.1:{port}"
    decode = start_emulator()
    start = json.dumps(emulator_command(port))
    catalog = make_catalog(catalog_text(
        prefill, f"http://127.0.0.1:{gateway_port}", control="{kind: process, start: " + start
        + ", pidfile: prefill.pid, startup_timeout: 10s}",
        checks="remediate: [drain, restart]"))
    service = Service(catalog, store)
    control = service.runner.control(catalog.targets[0])
    assert control is not None
    control.start()  # type: ignore[attr-defined]
    try:
        wait_for(lambda: healthy(prefill), timeout=15)
        gateway = smg(prefill=[(prefill, 8998)], decode=[decode.url], port=gateway_port)
        before = registered(gateway.worker(prefill))
        assert before[1:3] == ("prefill", 8998)
        for url in (prefill, decode.url):  # the gateway's own findings: none goes back
            assert set((gateway.worker(url) or {})["labels"]) <= DISCOVERED_LABELS
        assert gateway.generate().status_code == 200
        decision = service.engine.record(CheckResult(
            "liveness", "local", Status.CRITICAL, None, "s", "refused", 1.0, utcnow()))
        assert decision.remediate is not None

        service.responder.respond(catalog.check("liveness"), decision.remediate)

        assert registered(gateway.worker(prefill)) == before
        stats = gateway.session.get(f"{gateway.url}/workers", timeout=5).json()["stats"]
        assert (stats["prefill_count"], stats["decode_count"]) == (1, 1)
        assert all(gateway.generate().status_code == 200 for _ in range(3))
    finally:
        service.stop()
        control.stop()
    with store.session() as session:
        events = [(row.kind, row.detail) for row in
                  session.query(IncidentEventRow).order_by(IncidentEventRow.id)]
    kinds = [kind for kind, _ in events]
    assert kinds.index("verified") < kinds.index("undrained")
    assert kinds.index("remediation_succeeded") < kinds.index("verified")
    assert any("bootstrap port 8998" in detail for kind, detail in events if kind == "undrained")


# 3: back in only when well ---------------------------------------------------------------------

def test_a_worker_left_out_after_a_failed_chain_returns_when_the_incident_resolves(
        smg: StartGateway, start_emulator: StartEmulator, make_catalog: Callable[[str], Catalog],
        store: Store) -> None:
    other, sick = start_emulator(), start_emulator()
    gateway = smg(workers=[other.url, sick.url])
    catalog = make_catalog(catalog_text(
        sick.url, gateway.url, checks="remediate: [drain, restart]",
        control='{kind: process, start: ["/bin/false"], pidfile: x.pid, startup_timeout: 2s}'))
    service = Service(catalog, store)  # the restart fails: its server exits at once
    sick.set_fault("stall")
    try:
        decision = service.engine.record(CheckResult(
            "liveness", "local", Status.CRITICAL, None, "s", "refused", 1.0, utcnow()))
        assert decision.remediate is not None
        service.responder.respond(catalog.check("liveness"), decision.remediate)
        assert gateway.worker(sick.url) is None
        assert service.return_drained() == []  # the incident is open: it stays out
        assert gateway.worker(sick.url) is None
        sick.set_fault(None)

        service.engine.record(CheckResult("liveness", "local", Status.OK, 1.0, "s", "ok", 1.0,
                                          utcnow()))
        said = service.return_drained()
    finally:
        service.stop()
    assert said == [f"added {sick.url} back to {gateway.url} as it was: regular, priority 50, "
                    "cost 1.0"]
    assert gateway.worker(sick.url) is not None and len(gateway.workers()) == 2


def test_drain_alone_keeps_the_worker_out_until_verification_passes(
        smg: StartGateway, start_emulator: StartEmulator, make_catalog: Callable[[str], Catalog],
        store: Store) -> None:
    other, sick = start_emulator(), start_emulator()
    gateway = smg(workers=[other.url])
    add(gateway, {"url": sick.url})
    sick.set_fault("stall")
    catalog = make_catalog(catalog_text(sick.url, gateway.url,
                                        checks="remediate: [drain]",
                                        drain="verify_within: 20s"))
    service = Service(catalog, store)
    seen: list[bool] = []

    def heal_later() -> None:
        wait_for(lambda: gateway.worker(sick.url) is None, timeout=15)
        for _ in range(5):  # out while the check still fails
            seen.append(gateway.worker(sick.url) is None)
        sick.set_fault(None)

    healer = threading.Thread(target=heal_later)
    healer.start()
    try:
        decision = service.engine.record(CheckResult(
            "liveness", "local", Status.CRITICAL, None, "s", "500", 1.0, utcnow()))
        assert decision.remediate is not None
        service.responder.respond(catalog.check("liveness"), decision.remediate)
    finally:
        healer.join()
        service.stop()
    assert seen == [True] * 5
    assert gateway.worker(sick.url) is not None
    with store.session() as session:
        kinds = [row.kind for row in session.query(IncidentEventRow).order_by(IncidentEventRow.id)]
    assert kinds.index("verified") < kinds.index("undrained")


def test_undrain_by_hand_and_incidents_show_the_worker_that_is_out(
        smg: StartGateway, start_emulator: StartEmulator, make_catalog: Callable[[str], Catalog],
        store: Store, tmp_path: Path) -> None:
    other, sick = start_emulator(), start_emulator()
    gateway = smg(workers=[other.url, sick.url])
    text = catalog_text(sick.url, gateway.url, checks="remediate: [drain]")
    catalog = make_catalog(text)
    path = tmp_path / "sglguard.yaml"
    runner = RemediationRunner(catalog, store, build_clients(catalog))
    service = Service(catalog, store)
    decision = service.engine.record(CheckResult(
        "liveness", "local", Status.CRITICAL, None, "s", "refused", 1.0, utcnow()))
    service.stop()
    assert decision.remediate is not None
    assert runner.run("drain", "local", incident_id=decision.remediate).outcome == "succeeded"
    cli = CliRunner()

    shown = cli.invoke(main, ["incidents", "--config", str(path), "--show",
                              str(decision.remediate)])
    assert shown.exit_code == 0, shown.output
    assert (f"out of gateway: {sick.url} (regular, priority 50, cost 1.0) out of "
            f"{gateway.url} since") in shown.output
    assert "sglguard undrain local" in shown.output
    listed = cli.invoke(main, ["incidents", "--config", str(path)])
    assert listed.exit_code == 0, listed.output
    assert f"out of gateway: {sick.url} (regular" in listed.output
    status = cli.invoke(main, ["status", "--config", str(path)])
    assert (f"out of gateway: {sick.url} (regular, priority 50, cost 1.0) out of "
            f"{gateway.url} since") in status.output
    status_json = json.loads(cli.invoke(main, ["status", "--config", str(path), "--json"]).output)
    assert [(item["target"], item["worker"], item["state"]) for item in
            status_json["drained"]] == [("local", sick.url, "out")]

    done = cli.invoke(main, ["undrain", "--config", str(path), "local"])

    assert done.exit_code == 0, done.output
    assert f"added {sick.url} back to {gateway.url}" in done.output
    assert gateway.worker(sick.url) is not None
    again = cli.invoke(main, ["undrain", "--config", str(path), "local"])
    assert (again.exit_code, again.output) == (0, "local: no worker of it is out of a gateway\n")
    unknown = cli.invoke(main, ["undrain", "--config", str(path), "nope"])
    assert unknown.exit_code == 2 and "unknown target 'nope'" in unknown.output


def test_a_re_add_waits_while_a_restart_in_another_process_or_this_one_holds_the_lease(
        smg: StartGateway, start_emulator: StartEmulator, make_catalog: Callable[[str], Catalog],
        store: Store, tmp_path: Path) -> None:
    port, other = free_port(), start_emulator()
    worker = f"http://127.0.0.1:{port}"
    start = json.dumps(emulator_command(port, "--startup-delay", "2"))
    catalog = make_catalog(catalog_text(
        worker, "http://127.0.0.1:1", control="{kind: process, start: " + start
        + ", pidfile: w.pid, startup_timeout: 20s}"))
    path = tmp_path / "sglguard.yaml"
    control = RemediationRunner(catalog, store, build_clients(catalog)).control(
        catalog.targets[0])
    assert control is not None
    # Started here, and reaped here once the other process stops it.
    first = subprocess.Popen(json.loads(start), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (tmp_path / "w.pid").write_text(f"{first.pid}\n")
    threading.Thread(target=first.wait, daemon=True).start()
    restart: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: healthy(worker), timeout=20)
        gateway = smg(workers=[other.url, worker])
        catalog = make_catalog(path.read_text().replace("http://127.0.0.1:1", gateway.url))
        runner = RemediationRunner(catalog, store, build_clients(catalog))
        assert runner.run("drain", "local", trigger="manual").outcome == "succeeded"
        # Another process restarts the worker by hand: it holds the target's lease meanwhile.
        with (tmp_path / "restart.log").open("wb") as log:
            restart = subprocess.Popen([PYTHON, "-m", "sglguard", "remediate", "restart",
                                        "--config", str(path)], stdout=log,
                                       stderr=subprocess.STDOUT)
        leases = Leases(store)
        wait_for(lambda: leases.holder_of("local") is not None, timeout=15)
        holder = leases.holder_of("local")
        cli = CliRunner()

        refused = cli.invoke(main, ["undrain", "--config", str(path), "local"])

        assert refused.exit_code == 1, refused.output
        assert (f"{worker} stays out of {gateway.url} for now: local is being remediated by "
                f"{holder} (it is re-added once that is done)") in refused.output
        assert "1 worker(s) of local still out of their gateway" in refused.output
        assert gateway.worker(worker) is None
        [row] = out_rows(store)
        assert row.last_error == f"not re-added: local is being remediated by {holder}"
        assert restart.wait(timeout=60) == 0, (tmp_path / "restart.log").read_text()
        assert leases.holder_of("local") is None

        # In this process: a remediation running here holds the lease; the timer's re-add
        # waits for it all the same.
        service = Service(catalog, store)
        try:
            assert service.responder.leases.claim("local", utcnow(), timedelta(minutes=5))
            [said] = service.return_drained()
            assert said.startswith(f"{worker} stays out of {gateway.url} for now: local is "
                                   f"being remediated by {service.responder.leases.holder}")
            assert gateway.worker(worker) is None
            service.responder.leases.release("local")

            assert service.return_drained() == [f"added {worker} back to {gateway.url} as it "
                                                "was: regular, priority 50, cost 1.0"]
        finally:
            service.stop()
        assert gateway.worker(worker) is not None and out_rows(store) == []
        assert leases.holder_of("local") is None
    finally:
        if restart is not None and restart.poll() is None:
            restart.kill()
        control.stop()


def test_a_worker_someone_else_removed_is_not_re_added(
        smg: StartGateway, start_emulator: StartEmulator, store: Store,
        make_catalog: Callable[[str], Catalog]) -> None:
    other, sick = start_emulator(), start_emulator()
    gateway = smg(workers=[other.url])
    catalog = make_catalog(catalog_text(sick.url, gateway.url))
    assert return_when_well(store, catalog) == []
    assert gateway.worker(sick.url) is None


# 4: no request cut -----------------------------------------------------------------------------

def test_drain_waits_for_the_requests_in_flight_before_the_chain_goes_on(
        smg: StartGateway, start_emulator: StartEmulator, store: Store,
        make_runner: Callable[[str], RemediationRunner]) -> None:
    sick = start_emulator()
    gateway = smg(workers=[sick.url])
    sick.set_fault("slow_ttft:7")
    answers: list[requests.Response] = []
    clients = [threading.Thread(target=lambda stream=stream: answers.append(
        gateway.generate(stream=stream))) for stream in (False, True)]
    for client in clients:
        client.start()
    wait_for(lambda: (gateway.worker(sick.url) or {}).get("load") == 2, timeout=5)
    runner = make_runner(catalog_text(sick.url, gateway.url, drain="wait_idle: 20s"))

    outcome = runner.run("drain", "local", trigger="manual")

    assert outcome.outcome == "succeeded", outcome
    assert "no request in flight" in outcome.detail
    assert sick.active_requests == 0
    for client in clients:
        client.join()
    assert [answer.status_code for answer in answers] == [200, 200]
    assert all(b'"text"' in answer.content for answer in answers)  # neither one cut short
    [row] = out_rows(store)
    assert row.in_flight == 0


def test_drain_records_the_requests_still_in_flight_when_wait_idle_runs_out(
        smg: StartGateway, start_emulator: StartEmulator, store: Store,
        make_runner: Callable[[str], RemediationRunner]) -> None:
    sick = start_emulator()
    gateway = smg(workers=[sick.url])
    sick.set_fault("slow_ttft:12")
    client = threading.Thread(target=gateway.generate)
    client.start()
    wait_for(lambda: (gateway.worker(sick.url) or {}).get("load") == 1, timeout=5)
    runner = make_runner(catalog_text(sick.url, gateway.url, drain="wait_idle: 1s"))

    outcome = runner.run("drain", "local", trigger="manual")

    sick.set_fault(None)
    client.join()
    assert outcome.outcome == "succeeded", outcome
    assert "1 request(s) still in flight" in outcome.detail
    assert out_rows(store)[0].in_flight == 1


# 5: a gateway problem never blocks the repair --------------------------------------------------

def test_an_unreachable_gateway_lets_the_restart_go_on_and_says_so(
        start_emulator: StartEmulator, store: Store,
        make_runner: Callable[[str], RemediationRunner]) -> None:
    sick = start_emulator()
    nowhere = f"http://127.0.0.1:{free_port()}"
    runner = make_runner(catalog_text(sick.url, nowhere))

    outcome = runner.run("drain", "local", trigger="manual")

    assert outcome.outcome == "succeeded", outcome
    assert outcome.detail.startswith(f"gateway {nowhere}: GET /workers: ")
    assert outcome.detail.endswith(f"the chain goes on with {sick.url} still registered "
                                   "(if_gateway_down: proceed)")
    failing = make_runner(catalog_text(sick.url, nowhere, drain="if_gateway_down: fail"))
    outcome = failing.run("drain", "local", trigger="manual")
    assert outcome.outcome == "failed" and not outcome.permanent


def test_a_gateway_that_wants_a_key_is_a_permanent_error_that_says_why(
        smg: StartGateway, start_emulator: StartEmulator, store: Store,
        make_runner: Callable[[str], RemediationRunner]) -> None:
    sick = start_emulator()
    gateway = smg(workers=[sick.url], ready=False,
                  extra=["--control-plane-api-keys", "ops:Ops:admin:s3cret-key"])
    gateway.wait_ready({"Authorization": "Bearer s3cret-key"})
    runner = make_runner(catalog_text(sick.url, gateway.url))

    outcome = runner.run("drain", "local", trigger="manual")

    assert outcome.outcome == "failed" and outcome.permanent
    assert outcome.error is not None
    assert "GET /workers answered 401 (the gateway wants a key (set api_key))" in outcome.error
    keyed = make_runner(catalog_text(sick.url, gateway.url, drain="api_key: s3cret-key"))
    assert keyed.run("drain", "local", trigger="manual").outcome == "succeeded"


def test_a_key_without_the_admin_role_is_a_permanent_error_that_says_why(
        smg: StartGateway, start_emulator: StartEmulator, store: Store,
        make_runner: Callable[[str], RemediationRunner]) -> None:
    sick = start_emulator()
    gateway = smg(workers=[sick.url], ready=False,
                  extra=["--control-plane-api-keys", "ops:Ops:admin:s3cret-key",
                         "dash:Dash:user:view-key"])
    gateway.wait_ready({"Authorization": "Bearer s3cret-key"})
    runner = make_runner(catalog_text(sick.url, gateway.url, drain="api_key: view-key"))

    outcome = runner.run("drain", "local", trigger="manual")

    assert outcome.outcome == "failed" and outcome.permanent, outcome
    assert outcome.error is not None
    assert "answered 403 (the gateway refused the key (it needs an admin key))" \
        in outcome.error, outcome.error


def test_the_legacy_routes_smg_no_longer_has_are_a_permanent_error(
        smg: StartGateway, start_emulator: StartEmulator, store: Store,
        make_runner: Callable[[str], RemediationRunner]) -> None:
    sick = start_emulator()
    gateway = smg(workers=[sick.url])
    runner = make_runner(catalog_text(sick.url, gateway.url, drain="api: legacy"))

    outcome = runner.run("drain", "local", trigger="manual")

    assert outcome.outcome == "failed" and outcome.permanent
    assert outcome.error is not None and "answered 404 (the gateway has no such route)" \
        in outcome.error
    assert gateway.worker(sick.url) is not None and out_rows(store) == []


# 3: a drain interrupted by SIGKILL of sglguard ----------------------------------------------------

def test_a_worker_out_when_sglguard_was_killed_returns_after_sglguard_starts_again(
        smg: StartGateway, start_emulator: StartEmulator, tmp_path: Path) -> None:
    sick = start_emulator()
    gateway = smg(workers=[sick.url])
    path = tmp_path / "sglguard.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        store: {{url: "sqlite:///{tmp_path / 'killed.db'}", flush_interval: 0s}}
        targets: [{{name: local, url: "{sick.url}"}}]
        checks:
          - {{name: liveness, kind: http, target: local, path: /health, interval: 0.3s,
              timeout: 1s, failure_threshold: 1, remediate: [drain]}}
        remediations:
          - {{name: drain, kind: drain, gateway: "{gateway.url}", wait_idle: 60s}}
        """))
    database = Store.open(f"sqlite:///{tmp_path / 'killed.db'}")
    sick.set_fault("stall")  # /health fails; a request sent now stays in flight
    stuck = threading.Thread(target=lambda: gateway.generate(timeout=60))
    stuck.start()
    wait_for(lambda: (gateway.worker(sick.url) or {}).get("load") == 1, timeout=5)
    command = [PYTHON, "-m", "sglguard", "run", "--config", str(path)]
    with (tmp_path / "first.log").open("wb") as log:
        first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        # The drain waits for the stuck request: sglguard dies in the middle of it.
        wait_for(lambda: gateway.worker(sick.url) is None and out_rows(database), timeout=20)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    assert [row.state for row in out_rows(database)] == ["draining"]
    sick.set_fault(None)
    stuck.join()
    assert gateway.worker(sick.url) is None

    with (tmp_path / "second.log").open("wb") as log:
        second = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: gateway.worker(sick.url) is not None and not out_rows(database),
                 timeout=15)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=10)
    assert out_rows(database) == []
    assert len(gateway.workers()) == 1
    database.close()


def service_run(catalog: Catalog, store: Store) -> list[tuple[str, str]]:
    """One incident of `liveness` handled by the service's responder; its timeline."""
    service = Service(catalog, store)
    service.notifications.start()
    try:
        decision = service.engine.record(CheckResult(
            "liveness", "local", Status.CRITICAL, None, "s", "refused", 1.0, utcnow()))
        assert decision.remediate is not None
        service.responder.respond(catalog.check("liveness"), decision.remediate)
        assert service.notifications.flush(5)
    finally:
        service.stop()
        control = service.runner.control(catalog.targets[0])
        if control is not None:
            control.stop()
    with store.session() as session:
        return [(row.kind, row.detail) for row in
                session.query(IncidentEventRow).order_by(IncidentEventRow.id)]


def test_with_the_gateway_down_the_restart_still_runs_and_the_notice_says_why(
        make_catalog: Callable[[str], Catalog], store: Store) -> None:
    port, nowhere = free_port(), f"http://127.0.0.1:{free_port()}"
    worker = f"http://127.0.0.1:{port}"
    receiver = AlertReceiver().start()
    try:
        catalog = make_catalog(catalog_text(
            worker, nowhere, checks="remediate: [drain, restart]",
            control="{kind: process, start: " + json.dumps(emulator_command(port))
            + ", pidfile: w.pid, startup_timeout: 10s}") + f"""\
        notifications: {{group_wait: 0s}}
        notifiers: [{{name: ops, urls: ["json://127.0.0.1:{receiver.port}/alerts"]}}]
        """)
        events = service_run(catalog, store)
        wait_for(lambda: any("still registered" in json.dumps(alert)
                             for alert in receiver.received()), timeout=5)
    finally:
        receiver.stop()
    kinds = [kind for kind, _ in events]
    assert "remediation_succeeded" in kinds and "verified" in kinds
    drained_note = next(detail for kind, detail in events
                        if kind == "remediation_succeeded" and detail.startswith("drain:"))
    assert f"gateway {nowhere}: GET /workers" in drained_note
    assert "restart" in [detail for kind, detail in events if kind == "remediation_started"]


def test_a_gateway_key_missing_escalates_at_once_with_the_reason(
        smg: StartGateway, start_emulator: StartEmulator,
        make_catalog: Callable[[str], Catalog], store: Store) -> None:
    sick = start_emulator()
    gateway = smg(workers=[sick.url], ready=False,
                  extra=["--control-plane-api-keys", "ops:Ops:admin:s3cret-key"])
    gateway.wait_ready({"Authorization": "Bearer s3cret-key"})
    catalog = make_catalog(catalog_text(
        sick.url, gateway.url, checks="remediate: [drain, restart]",
        control='{kind: process, start: ["/bin/true"], pidfile: x.pid, startup_timeout: 2s}'))

    events = service_run(catalog, store)

    kinds = [kind for kind, _ in events]
    assert kinds.count("remediation_started") == 1  # no restart, no retry
    assert "escalated" in kinds
    escalated = next(detail for kind, detail in events if kind == "escalated")
    assert "answered 401 (the gateway wants a key (set api_key))" in escalated


# the gateway as a target: the example catalog ---------------------------------------------------

GATEWAY_CHECKS = ["gateway-ready", "gateway-workers-healthy", "gateway-breaker",
                  "gateway-5xx-ratio", "gateway-retries", "gateway-latency-p95"]
WORKER_CHECKS = ["worker-a-health", "worker-b-health"]


def test_the_gateway_example_is_quiet_while_healthy_and_loud_when_a_worker_is_lost(
        smg: StartGateway, start_emulator: StartEmulator, store: Store, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import resources

    from sglguard.config.loader import parse_catalog
    from sglguard.service import run_once

    a, b = start_emulator(), start_emulator()
    gateway = smg(workers=[a.url, b.url], extra=["--cb-failure-threshold", "2"])
    for name, value in (("SMG_URL", gateway.url), ("SMG_METRICS_URL", gateway.metrics_url),
                        ("WORKER_A_URL", a.url), ("WORKER_B_URL", b.url)):
        monkeypatch.setenv(name, value)
    text = resources.files("sglguard.config").joinpath("gateway.example.yaml").read_text()
    catalog = parse_catalog(text, tmp_path / "gateway.yaml")
    assert all(gateway.generate().status_code == 200 for _ in range(4))

    def statuses() -> dict[str, str]:
        return {result.check: result.status.label
                for result in run_once(catalog, store, [*GATEWAY_CHECKS, *WORKER_CHECKS])}

    quiet = statuses()
    assert set(quiet) == {check.name for check in catalog.checks}
    assert {quiet[name] for name in [*GATEWAY_CHECKS[:3], *WORKER_CHECKS]} == {"ok"}, quiet
    assert not {"warning", "critical"} & set(quiet.values()), quiet

    b.set_fault("error:500")  # its breaker opens after two failed requests
    wait_for(lambda: [gateway.generate() for _ in range(2)]
             and statuses()["gateway-breaker"] == "critical", timeout=10)
    b.stop()  # lost: the gateway's health check marks it unhealthy
    wait_for(lambda: statuses()["gateway-workers-healthy"] == "critical", timeout=10)
    lost = statuses()
    assert (lost["gateway-ready"], lost["worker-a-health"], lost["worker-b-health"]) == (
        "ok", "ok", "critical")  # one worker is still healthy
    a.stop()
    wait_for(lambda: statuses()["gateway-ready"] == "critical", timeout=10)


def test_init_gateway_writes_the_gateway_example_and_it_validates(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    cli = CliRunner()
    written = cli.invoke(main, ["init", "--gateway", "--path", str(path)])
    assert written.exit_code == 0, written.output
    assert "smg_worker_cb_state" in path.read_text()
    checked = cli.invoke(main, ["validate", "--config", str(path)])
    assert checked.exit_code == 0, checked.output
    assert "remediate: drain-a, restart" in checked.output


def test_checks_aimed_at_the_gateways_main_port_say_it_is_a_gateway(
        smg: StartGateway, start_emulator: StartEmulator, store: Store,
        make_catalog: Callable[[str], Catalog]) -> None:
    from sglguard.service import run_once

    worker = start_emulator()
    gateway = smg(workers=[worker.url])
    catalog = make_catalog(f"""\
        version: 1
        targets: [{{name: gateway, url: "{gateway.url}"}}]
        checks:
          - {{name: queue, kind: metric, target: gateway, metric: "sglang:num_queue_reqs",
              critical: "> 100"}}
          - {{name: running, kind: server_info, target: gateway,
              path: max_running_requests, critical: "< 1"}}
        """)

    results = {result.check: result for result in run_once(catalog, store,
                                                            ["queue", "running"])}

    queue, running = results["queue"], results["running"]
    assert queue.status is Status.UNKNOWN and "--enable-metrics" not in queue.message
    assert (f"{gateway.url} is an SGLang gateway (smg), whose metrics are on its "
            "--prometheus-port") in queue.message
    # Before, the gateway handed /get_server_info to its worker: a worker's figure, quietly.
    assert running.status is Status.UNKNOWN and running.value is None
    assert "is an SGLang gateway (smg), which has no server info of its own" in running.message


def test_a_target_declared_a_gateway_is_probed_and_described_as_one(
        smg: StartGateway, start_emulator: StartEmulator, store: Store,
        make_catalog: Callable[[str], Catalog]) -> None:
    from sglguard.service import run_once

    worker = start_emulator()
    gateway = smg(workers=[worker.url])
    catalog = make_catalog(f"""\
        version: 1
        targets:
          - {{name: gateway, role: gateway, url: "{gateway.url}",
              metrics_url: "{gateway.metrics_url}/metrics"}}
        checks:
          - {{name: ready, kind: http, target: gateway}}
          - {{name: alive, kind: http, target: gateway, path: /health}}
          - {{name: pool, kind: metric, target: gateway, metric: smg_worker_pool_size,
              critical: "< 1"}}
          - {{name: queue, kind: metric, target: gateway, metric: "sglang:num_queue_reqs",
              critical: "> 100"}}
        """)

    def results() -> dict[str, CheckResult]:
        return {result.check: result for result in run_once(
            catalog, store, ["ready", "alive", "pool", "queue"])}

    first = results()
    assert first["ready"].status is Status.OK, first["ready"]
    assert first["ready"].message.startswith("GET /readiness answered 200")
    assert first["pool"].status is Status.OK and first["pool"].value == 1
    queue = first["queue"]
    assert queue.value is None and not queue.counts and "--enable-metrics" not in queue.message
    assert ("sglang:num_queue_reqs is not a gateway's metric: a gateway serves smg_* families; "
            "an SGLang server's are read from the worker's own target") in queue.message

    worker.stop()  # the gateway's only worker is lost: /health stays 200, /readiness tells
    wait_for(lambda: results()["ready"].status is Status.CRITICAL, timeout=15)
    lost = results()
    assert lost["ready"].message.startswith("GET /readiness answered 503 (expected 200)")
    assert lost["ready"].message.endswith(": the gateway has no healthy worker")
    assert lost["alive"].status is Status.OK


def test_checks_that_only_a_server_can_answer_are_refused_on_a_gateway_target(
        tmp_path: Path) -> None:
    from sglguard.config.loader import ConfigError, parse_catalog

    text = textwrap.dedent("""\
        version: 1
        targets:
          - {name: gw, role: gateway, url: "http://127.0.0.1:1"}
          - {name: worker, url: "http://127.0.0.1:2"}
        checks:
          - {name: version, kind: server_info, target: gw, path: max_running_requests,
             critical: "< 1"}
          - {name: steps, kind: progress, target: gw}
          - {name: queue, kind: metric, target: gw, metric: smg_worker_pool_size,
             critical: "< 1"}
          - {name: fine, kind: server_info, target: worker, path: max_running_requests,
             critical: "< 1"}
        """)
    with pytest.raises(ConfigError) as caught:
        parse_catalog(text, tmp_path / "sglguard.yaml")
    said = str(caught.value)
    assert ("target 'gw' is a gateway: a gateway has no server info of its own (its "
            "/server_info would be one worker's): aim this check at a worker's target") in said
    assert "target 'gw' is a gateway: a gateway runs no decode steps of its own" in said
    assert ("target 'gw' is a gateway, whose metrics are on its own port (--prometheus-port, "
            "default 29000): give the target a metrics_url") in said
    assert "checks[3]" not in said and said.count("is a gateway") == 3


def test_validate_warns_of_a_health_check_on_a_gateway(tmp_path: Path) -> None:
    path = tmp_path / "sglguard.yaml"
    path.write_text(textwrap.dedent("""\
        version: 1
        targets: [{name: gw, role: gateway, url: "http://127.0.0.1:1"}]
        checks:
          - {name: alive, kind: http, target: gw, path: /health}
          - {name: ready, kind: http, target: gw}
        """))

    checked = CliRunner().invoke(main, ["validate", "--config", str(path)])

    assert checked.exit_code == 0, checked.output
    assert ("warning: check alive (http): GET /health of gateway gw answers 200 even with no "
            "worker left; /readiness answers 503 when no worker is healthy") in checked.output
    assert "check ready (http)" not in checked.output.split("warning:", 1)[1]
