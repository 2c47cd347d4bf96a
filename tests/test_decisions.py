"""What decisions owe, and that every page is true: acting only for a run that will happen,
resolutions to whoever was told, flapping notices in pairs; the store's guarantees (one open
incident per check, leases of dead holders, incidents of removed checks), the first round."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sglguard.agents import Agents
from sglguard.checks.base import CheckResult, Status
from sglguard.config.models import Catalog
from sglguard.engine import IncidentEngine
from sglguard.rails import Leases
from sglguard.receiver import AlertReceiver
from sglguard.service import Service
from sglguard.store import Store, queries
from sglguard.store.models import IncidentRow, NotificationAttemptRow, RemediationRunRow

from conftest import PYTHON, FakeClock, Loopback, Reply, Request, wait_for


@pytest.fixture
def inbox() -> Iterator[AlertReceiver]:
    server = AlertReceiver().start()
    yield server
    server.stop()


@pytest.fixture
def down() -> Iterator[Loopback]:
    """A server whose /health answers 503, and a hook that answers 200 and fixes nothing."""

    def answer(request: Request) -> Reply:
        return (200, "application/json", b"{}") if request[1] == "/hook" else (
            503, "text/plain", b"down")

    server = Loopback(answer)
    yield server
    server.close()


def titles(inbox: AlertReceiver) -> list[str]:
    return [alert["title"] for alert in inbox.received()]


def result(check: str, status: Status, at: datetime) -> CheckResult:
    return CheckResult(check, "local", status, None, "", status.label, 1.0, at)


CATALOG = """\
version: 1
targets: [{{name: local, url: "{url}"}}]
checks:
  - {{name: liveness, kind: http, target: local, failure_threshold: 1, remediate: [hook],
     flapping: {{high: 30, low: 20}}}}
remediations:
  - {{name: hook, kind: webhook, url: "{url}/hook", budget: {{max: 1, within: 1h}},
     verify_within: 1s}}
notifications: {{group_wait: 0s}}
notifiers:
  - {{name: ops, urls: ["json://127.0.0.1:{port}/ops"]}}
  - {{name: pager, urls: ["json://127.0.0.1:{port}/pager"], events: [incident_escalated]}}
"""


def make(make_catalog: Callable[[str], Catalog], down: Loopback, inbox: AlertReceiver) -> Catalog:
    return make_catalog(CATALOG.format(url=down.url, port=inbox.port))


def test_a_run_the_budget_refuses_is_never_announced_as_acting(
        make_catalog: Callable[[str], Catalog], store: Store, down: Loopback,
        inbox: AlertReceiver) -> None:
    catalog = make(make_catalog, down, inbox)
    service = Service(catalog, store)
    service.notifications.start()
    try:
        with store.session() as session:  # the budget of 1 is already spent
            session.add(RemediationRunRow(
                remediation="hook", kind="webhook", target="local", trigger="incident",
                dry_run=False, plan="[]", outcome="succeeded", detail="",
                started_at=service.clock() - timedelta(hours=2)))
            session.add(RemediationRunRow(
                remediation="hook", kind="webhook", target="local", trigger="incident",
                dry_run=False, plan="[]", outcome="succeeded", detail="",
                started_at=service.clock() - timedelta(minutes=5)))
        decision = service.engine.record(result("liveness", Status.CRITICAL, service.clock()))
        assert decision.opened is not None and decision.requested
        assert service.responder.respond(catalog.check("liveness"), decision.opened) == "skipped"
        assert service.notifications.flush(10)
    finally:
        service.stop()
    got = titles(inbox)
    assert not any("[ACTING]" in title for title in got), got
    assert sum("[ESCALATION]" in title for title in got) == 2, got  # ops and pager


def test_whoever_heard_of_an_incident_hears_it_resolve_and_nobody_else(
        make_catalog: Callable[[str], Catalog], store: Store, down: Loopback,
        inbox: AlertReceiver) -> None:
    catalog = make(make_catalog, down, inbox)
    service = Service(catalog, store)
    service.notifications.start()
    try:
        opened = service.engine.record(result("liveness", Status.CRITICAL, service.clock()))
        assert opened.opened is not None
        assert service.responder.respond(catalog.check("liveness"), opened.opened) \
            == "not verified"  # the hook fixes nothing: escalated
        service.engine.record(result("liveness", Status.OK, service.clock()))
        assert service.notifications.flush(10)
    finally:
        service.stop()
    with store.session() as session:
        sent = {(row.notifier, row.event) for row in session.query(NotificationAttemptRow)
                if row.outcome == "sent"}
    # The pager took only the escalation, and so it is told of the resolution too.
    assert ("pager", "incident_escalated") in sent and ("pager", "incident_resolved") in sent
    assert ("pager", "incident_opened") not in sent
    assert ("ops", "incident_opened") in sent and ("ops", "incident_resolved") in sent


def test_flapping_that_starts_while_an_incident_is_open_is_announced_then_ended(
        make_catalog: Callable[[str], Catalog], store: Store, down: Loopback,
        inbox: AlertReceiver) -> None:
    catalog = make(make_catalog, down, inbox)
    engine = IncidentEngine(catalog, store)
    engine.notifications.start()
    try:
        # Failing, then flipping while its incident is open (as during a verification).
        statuses = [Status.CRITICAL] + [Status.OK, Status.CRITICAL] * 5 + [Status.OK] * 25
        flips = [engine.record(result("liveness", status, engine.clock())).flapping
                 for status in statuses]
        assert True in flips and False in flips
        assert engine.notifications.flush(10)
    finally:
        engine.notifications.stop()
    got = [title.split(" ")[0] for title in titles(inbox)
           if "FLAPPING" in title or "STABLE" in title]
    assert got == ["[FLAPPING]", "[STABLE]"], titles(inbox)


def test_no_longer_flapping_is_withheld_where_flapping_was_never_told(
        make_catalog: Callable[[str], Catalog], store: Store, down: Loopback,
        inbox: AlertReceiver) -> None:
    from sglguard.notify import messages

    catalog = make(make_catalog, down, inbox)
    engine = IncidentEngine(catalog, store)
    stopped = messages.flapping(catalog.check("liveness"), catalog.target("local"), False, 5.0)
    assert engine.notifications.deliver(engine.notifications.notifiers["ops"], stopped) is False
    assert titles(inbox) == []


def test_two_processes_on_one_sqlite_file_open_one_incident(
        make_catalog: Callable[[str], Catalog], tmp_path: Path, down: Loopback,
        inbox: AlertReceiver) -> None:
    catalog = make(make_catalog, down, inbox)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    assert open_incidents_after_two_engines_race(catalog, url) == 1


def test_two_processes_on_one_postgresql_store_open_one_incident(
        make_catalog: Callable[[str], Catalog], postgres_url: str, down: Loopback,
        inbox: AlertReceiver) -> None:
    catalog = make(make_catalog, down, inbox)
    assert open_incidents_after_two_engines_race(catalog, postgres_url) == 1


def test_the_store_itself_refuses_a_second_open_incident_of_a_check(
        store: Store) -> None:
    from sqlalchemy.exc import IntegrityError

    def incident(status: str) -> IncidentRow:
        return IncidentRow(check_name="liveness", target="local", status=status,
                           severity="critical", opened_at=Agents(store).clock(),
                           first_message="", last_message="")

    with store.session() as session:
        session.add_all([incident("resolved"), incident("resolved"), incident("open")])
    with pytest.raises(IntegrityError), store.session() as session:
        session.add(incident("open"))


def open_incidents_after_two_engines_race(catalog: Catalog, url: str) -> int:
    """Two engines, each with its own store connection, record failures of one check at
    once; how many incidents are open after."""
    stores = [Store.open(url), Store.open(url)]
    engines = [IncidentEngine(catalog, one) for one in stores]
    barrier = threading.Barrier(2)

    def hammer(engine: IncidentEngine) -> None:
        barrier.wait()
        for _ in range(15):
            engine.record(result("liveness", Status.CRITICAL, engine.clock()))

    threads = [threading.Thread(target=hammer, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    with stores[0].session() as session:
        opened = session.query(IncidentRow).filter(IncidentRow.status == "open").count()
    for one in stores:
        one.close()
    return opened


def test_a_lease_whose_holder_died_is_taken_over_at_once(store: Store) -> None:
    gone = subprocess.run([PYTHON, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)
    holder = f"{socket.gethostname()}:{gone.stdout.strip()}:deadbeef"
    now = Agents(store).clock()
    assert Leases(store, holder).claim("local", now, timedelta(hours=1))
    survivor = Agents(store)
    assert Leases(store, agents=survivor).claim("local", now, timedelta(minutes=5))
    assert Leases(store).holder_of("local") == survivor.name


def test_a_lease_of_a_live_holder_is_respected(store: Store) -> None:
    live = Agents(store)
    live.register(["local"])
    now = live.clock()
    assert Leases(store, agents=live).claim("local", now, timedelta(hours=1))
    assert not Leases(store, agents=Agents(store)).claim("local", now, timedelta(minutes=5))


def test_a_lease_is_renewed_while_its_holder_works(store: Store, clock: FakeClock) -> None:
    from sglguard.store.models import TargetLeaseRow

    def expires() -> datetime | None:
        with store.session() as session:
            return session.get_one(TargetLeaseRow, "local").expires_at

    worker = Leases(store, "worker")
    ttl = timedelta(minutes=2)
    assert worker.claim("local", clock(), ttl)
    with worker.kept("local", ttl, clock, every=0.02):
        clock.advance(10 * 60)  # the work outlasts its first lease several times over
        wait_for(lambda: (expires() or clock()) > clock())
        assert not Leases(store, "other").claim("local", clock(), timedelta(minutes=5))
    worker.release("local")
    assert Leases(store, "other").claim("local", clock(), timedelta(minutes=5))


def test_a_lease_no_longer_renewed_runs_out(store: Store, clock: FakeClock) -> None:
    worker = Leases(store, "worker")
    assert worker.claim("local", clock(), timedelta(minutes=2))
    with worker.kept("local", timedelta(minutes=2), clock, every=0.02):
        pass  # the work ended (or its process died): nothing renews it any more
    clock.advance(3 * 60)
    assert Leases(store, "other").claim("local", clock(), timedelta(minutes=5))


@pytest.mark.parametrize("service_running", [True, False])
def test_a_run_by_hand_that_the_lease_refuses_says_why(
        make_catalog: Callable[[str], Catalog], tmp_path: Path, store: Store, down: Loopback,
        inbox: AlertReceiver, service_running: bool) -> None:
    from click.testing import CliRunner

    from sglguard.cli import main

    catalog = make(make_catalog, down, inbox)
    busy = Agents(store, role="cli")
    busy.register(["local"])
    assert Leases(store, agents=busy).claim("local", busy.clock(), timedelta(hours=1))
    service = Service(catalog, store)
    if service_running:
        service.start()
    try:
        said = CliRunner().invoke(main, ["remediate", "hook", "--config",
                                         str(tmp_path / "sglguard.yaml")])
    finally:
        service.stop()
    assert said.exit_code == 1, said.output
    assert ("handed over to the running service" in said.output) is service_running
    assert f"local is being remediated by {busy.name}; try again when it is done" \
        in said.output
    assert not [request for request in down.requests if request[1] == "/hook"]  # nothing ran


def test_incidents_of_a_check_removed_from_the_catalog_are_closed_on_reload(
        make_catalog: Callable[[str], Catalog], tmp_path: Path, store: Store, down: Loopback,
        inbox: AlertReceiver) -> None:
    from sglguard.cli.service import reloaded

    catalog = make(make_catalog, down, inbox)
    service = Service(catalog, store)
    service.start()
    try:
        opened = service.engine.record(result("liveness", Status.CRITICAL,
                                              service.clock())).opened
        assert opened is not None
        smaller = (tmp_path / "sglguard.yaml").read_text().replace(
            "checks:\n  - {name: liveness,", "checks:\n  - {name: other, interval: 1h,")
        assert "name: other" in smaller
        (tmp_path / "sglguard.yaml").write_text(smaller)
        service = reloaded(tmp_path / "sglguard.yaml", service)
        assert [check.name for check in service.catalog.checks] == ["other"]
        wait_for(lambda: any("[CLOSED]" in title for title in titles(inbox)), 10)
    finally:
        service.stop()
    with store.session() as session:
        incident = session.get_one(IncidentRow, opened)
        events = [(event.kind, event.detail) for event in queries.events_of(session, opened)]
    assert incident.status == "resolved"
    assert ("closed", "the check is no longer in the catalog") in events


def test_incidents_of_a_check_removed_from_the_catalog_are_closed_on_start(
        make_catalog: Callable[[str], Catalog], store: Store, down: Loopback,
        inbox: AlertReceiver) -> None:
    catalog = make(make_catalog, down, inbox)
    engine = IncidentEngine(catalog, store)
    opened = engine.record(result("liveness", Status.CRITICAL, engine.clock())).opened
    assert opened is not None
    assert engine.notifications.flush(10)
    engine.notifications.stop()
    smaller = make_catalog(f"""\
        version: 1
        targets: [{{name: local, url: "{down.url}"}}]
        checks: [{{name: other, kind: http, target: local, interval: 1h}}]
        notifications: {{group_wait: 0s}}
        notifiers: [{{name: ops, urls: ["json://127.0.0.1:{inbox.port}/ops"]}}]
        """)
    service = Service(smaller, store)
    service.start()
    try:
        wait_for(lambda: any("[CLOSED]" in title for title in titles(inbox)), 10)
    finally:
        service.stop()
    with store.session() as session:
        incident = session.get_one(IncidentRow, opened)
        events = [event.kind for event in queries.events_of(session, opened)]
    assert incident.status == "resolved" and "closed" in events


def test_on_the_first_round_a_check_waits_for_the_check_it_depends_on(
        make_catalog: Callable[[str], Catalog], store: Store, down: Loopback) -> None:
    catalog = make_catalog(f"""\
        version: 1
        targets: [{{name: local, url: "{down.url}"}}]
        checks:
          - {{name: liveness, kind: http, target: local, interval: 1h, timeout: 2s}}
          - {{name: models, kind: http, target: local, path: /v1/models, interval: 1h,
             depends_on: [liveness]}}
        """)
    service = Service(catalog, store)
    dependant = threading.Thread(target=service.run_check, args=("models",))
    dependant.start()  # starts first, but waits for liveness's first run
    threading.Event().wait(0.2)
    service.run_check("liveness")
    dependant.join(10)
    with store.session() as session:
        [models] = queries.recent_results(session, "models", 5)
    assert models.status == "skipped" and "liveness is critical" in models.message


@pytest.mark.parametrize("opt_in", [False, True])
def test_a_check_that_cannot_evaluate_never_restarts_unless_it_opts_in(
        make_catalog: Callable[[str], Catalog], store: Store, opt_in: bool) -> None:
    catalog = make_catalog(f"""\
        version: 1
        targets: [{{name: local, url: "http://127.0.0.1:1",
                    control: {{kind: process, start: ["true"], pidfile: x.pid}}}}]
        checks: [{{name: ttft, kind: http, target: local, failure_threshold: 2,
                   remediate: [restart], remediate_on_unknown: {str(opt_in).lower()}}}]
        remediations: [{{name: restart, kind: restart}}]
        """)
    engine = IncidentEngine(catalog, store)
    decisions = [engine.record(result("ttft", Status.UNKNOWN, engine.clock()))
                 for _ in range(4)]
    assert decisions[1].opened is not None
    assert any(decision.requested for decision in decisions) is opt_in
    with store.session() as session:
        events = {event.kind: event.detail for event in
                  queries.events_of(session, decisions[1].opened)}
    if not opt_in:
        assert "no measured breach" in events["remediation_withheld"]
        # A measured breach is evidence of harm: the restart is requested then.
        assert engine.record(result("ttft", Status.CRITICAL, engine.clock())).requested


def test_lower_concurrency_waits_until_its_check_judges_only_data_from_after_the_last_step(
        make_catalog: Callable[[str], Catalog], store: Store, clock: FakeClock) -> None:
    from sglguard.remediations.levels import Level, TargetLevels

    catalog = make_catalog("""\
        version: 1
        targets: [{name: local, url: "http://127.0.0.1:1",
                   control: {kind: process, start: ["true"], pidfile: x.pid}}]
        checks:
          - {name: e2e, kind: metric, target: local, metric: sglang:e2e_request_latency_seconds,
             quantile: 0.95, window: 5m, critical: "> 5", interval: 30s,
             failure_threshold: 2, remediate: [shed]}
        remediations: [{name: shed, kind: reduce_concurrency, factor: 0.5, min: 8}]
        """)
    service = Service(catalog, store, clock=clock)
    check = catalog.check("e2e")
    with store.session() as session:
        incident = IncidentRow(check_name="e2e", target="local", status="open",
                               severity="critical", opened_at=clock(), first_message="",
                               last_message="")
        session.add(incident)
        session.flush()
        incident_id = incident.id
    TargetLevels(store, "local", clock).save([Level("max_running_requests", 256, 128, 1,
                                                     clock())])
    clock.advance(60)  # a minute after the step, the 5-minute window still holds older data
    assert service.responder.respond(check, incident_id) == "deferred"
    with store.session() as session:
        [note] = [event.detail for event in queries.events_of(session, incident_id)
                  if event.kind == "remediation_deferred"]
    assert "judges only data from after it" in note
    clock.advance(6 * 60)  # the window (5m) and two runs (1m) are all from after the step
    assert service.responder._fresh_after_step(check, clock()) is None


def test_a_worker_going_back_into_its_gateway_delays_a_new_incidents_chain_not_drops_it(
        make_catalog: Callable[[str], Catalog], store: Store, down: Loopback,
        inbox: AlertReceiver) -> None:
    catalog = make(make_catalog, down, inbox)
    service = Service(catalog, store)
    undrain = Leases(store, "host:undrain:abc123")
    assert undrain.claim("local", service.clock(), timedelta(minutes=1))
    decision = service.engine.record(result("liveness", Status.CRITICAL, service.clock()))
    assert decision.opened is not None
    assert service.responder.respond(catalog.check("liveness"), decision.opened) == "deferred"
    assert service.responder.deferred_until[decision.opened] > service.clock()
    undrain.release("local")
    # once the worker is back, the same incident's chain runs (the hook fixes nothing here)
    assert service.responder.respond(catalog.check("liveness"), decision.opened) \
        == "not verified"
    service.stop()


def test_a_crash_during_another_checks_verification_is_acted_on_at_once(
        make_catalog: Callable[[str], Catalog], store: Store) -> None:
    state = {"health": True, "other": True, "fixed_live": 0.0}

    def answer(request: Request) -> Reply:
        path = request[1]
        if path == "/fix-live":
            state["fixed_live"] = time.monotonic()
            state["health"] = True
            return 200, "application/json", b"{}"
        if path == "/fix-other":
            return 200, "application/json", b"{}"  # fixes nothing: its verification drags on
        ok = state["health"] if path == "/health" else state["other"]
        return (200, "text/plain", b"") if ok else (503, "text/plain", b"no")

    server = Loopback(answer)
    catalog = make_catalog(f"""\
        version: 1
        targets: [{{name: local, url: "{server.url}"}}]
        checks:
          - {{name: liveness, kind: http, target: local, path: /health, interval: 0.2s,
             timeout: 1s, failure_threshold: 1, remediate: [fix-live]}}
          - {{name: other, kind: http, target: local, path: /other, interval: 0.2s,
             timeout: 1s, failure_threshold: 1, remediate: [fix-other]}}
        remediations:
          - {{name: fix-live, kind: webhook, url: "{server.url}/fix-live"}}
          - {{name: fix-other, kind: webhook, url: "{server.url}/fix-other",
             verify_within: 30s}}
        """)
    service = Service(catalog, store)
    service.start()
    try:
        state["other"] = False
        wait_for(lambda: "other" in service.responder.verifying, 10)
        crashed = time.monotonic()
        state["health"] = False  # the server crashes while `other` is being verified
        wait_for(lambda: state["fixed_live"], 10)
        assert "other" in service.responder.verifying  # that verification still runs
    finally:
        service.stop()
        server.close()
    assert state["fixed_live"] - crashed < 5.0


def test_a_slow_but_alive_server_is_paged_about_but_never_restarted(tmp_path: Path) -> None:
    """A real `sglguard run` watching a real server whose /health answers at once and whose
    /metrics answers late: the metric check cannot evaluate (UNKNOWN), which pages but is no
    evidence of harm, so its restart is withheld."""
    from conftest import ServiceProcess

    def answer(request: Request) -> Reply:
        if request[1].startswith("/metrics"):
            time.sleep(1.5)  # past the check's timeout: every read times out
            return 200, "text/plain", b"sglang:num_queue_reqs 0\n"
        return 200, "text/plain", b""

    server = Loopback(answer)
    path = tmp_path / "sglguard.yaml"
    path.write_text(f"""\
version: 1
store: {{url: "sqlite:///sglguard-e2e.db", flush_interval: 0s}}
targets:
  - name: local
    url: "{server.url}"
    control: {{kind: process, start: ["true"], pidfile: local.pid, startup_timeout: 5s}}
checks:
  - {{name: liveness, kind: http, target: local, path: /health, interval: 0.3s, timeout: 1s,
     failure_threshold: 2, remediate: [restart]}}
  - {{name: queue, kind: metric, target: local, metric: "sglang:num_queue_reqs",
     critical: "> 100", interval: 0.3s, timeout: 0.3s, failure_threshold: 2,
     remediate: [restart]}}
remediations: [{{name: restart, kind: restart}}]
""")
    service = ServiceProcess(path)
    try:
        wait_for(lambda: service.query(
            "select 1 from incident_events where kind = 'remediation_withheld'"), 20)
        seen = len(service.query("select 1 from check_results where check_name = 'queue'"))
        wait_for(lambda: len(service.query(  # a few more timed-out reads: still nothing acts
            "select 1 from check_results where check_name = 'queue'")) >= seen + 3, 20)
    finally:
        code = service.stop()
        server.close()
    assert code == 0
    assert service.query("select check_name, severity from incidents") == [("queue", "unknown")]
    assert service.query("select 1 from remediation_runs") == []
