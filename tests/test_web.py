"""sglguard's listener over a real loopback socket: the API against the store, the page's
escaping, /metrics through Prometheus' parser, /healthz, and the token off loopback."""

from __future__ import annotations

import base64
import socket
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from sglguard.checks.base import CheckResult, Status
from sglguard.config.loader import ConfigError
from sglguard.config.models import Catalog
from sglguard.engine import IncidentEngine
from sglguard.notify.reminders import acknowledge
from sglguard.store import Store, queries
from sglguard.store.models import CheckResultRow, IncidentRow
from sglguard.web.links import check_url, incident_url
from sglguard.web.server import WebServer, serve

from conftest import FakeClock, feed, free_port

SECRET = "hunter2-token-in-url"
CATALOG = f"""\
version: 1
targets:
  - name: local
    url: http://127.0.0.1:1
    control: {{kind: process, start: [/bin/true], pidfile: local.pid}}
checks:
  - {{name: liveness, kind: http, target: local, failure_threshold: 2, interval: 2s,
     warning: "> 0.5", critical: "> 2", remediate: [restart]}}
  - {{name: info, kind: server_info, target: local, path: a.b, interval: 1m}}
remediations:
  - {{name: restart, kind: restart, budget: {{max: 3, within: 30m}}}}
notifiers:
  - {{name: ops, urls: ["json://user:{SECRET}@127.0.0.1:9/alerts"]}}
"""

Serve = Callable[..., WebServer]


@pytest.fixture
def start_web(store: Store, clock: FakeClock) -> Iterator[Serve]:
    started: list[WebServer] = []

    def start(catalog: Catalog, listen: str | None = None) -> WebServer:
        web = serve(catalog, store, listen=listen or f"127.0.0.1:{free_port()}")
        web.app.view.clock = clock
        started.append(web)
        return web

    yield start
    for web in started:
        web.stop()


def get(web: WebServer, path: str, **options: Any) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{web.port}{path}", timeout=5, **options)


def with_liveness_cycle(catalog: Catalog, store: Store, clock: FakeClock) -> int:
    """ok, then two critical runs (an incident opens, a restart runs, a message fails), then
    ok again (it resolves); returns the incident's id."""
    engine = IncidentEngine(catalog, store, clock)
    feed(engine, clock, Status.OK)
    feed(engine, clock, Status.CRITICAL)
    opened = feed(engine, clock, Status.CRITICAL).opened
    assert opened is not None
    clock.advance(1)
    with store.session() as session:
        run = queries.start_run(session, incident_id=opened, remediation="restart",
                                kind="restart", target="local", trigger="incident",
                                dry_run=False, plan=["kill -TERM 42", "start emulator"],
                                outcome="running", at=clock())
        queries.finish_run(session, run.id, outcome="succeeded", detail="restarted",
                           error=None, at=clock())
    clock.advance(1)
    with store.session() as session:
        queries.add_attempt(session, incident_id=opened, event="incident_opened",
                            notifier="ops", attempt=1, outcome="failed",
                            error=f"json://user:{SECRET}@127.0.0.1:9 refused", title="t",
                            body="b", at=clock())
    clock.advance(1)
    acknowledge(store, opened, "ana", "on it", clock())
    clock.advance(1)
    feed(engine, clock, Status.OK)
    return opened


def test_api_checks_and_results_are_what_the_store_holds(
        make_catalog: Callable[[str], Catalog], store: Store, clock: FakeClock,
        start_web: Serve) -> None:
    catalog = make_catalog(CATALOG)
    incident = with_liveness_cycle(catalog, store, clock)
    web = start_web(catalog)
    checks = get(web, "/api/v1/checks").json()["checks"]
    with store.session() as session:
        rows = session.scalars(select(CheckResultRow).where(
            CheckResultRow.check_name == "liveness").order_by(CheckResultRow.id)).all()
        stored = [(row.status, row.started_at.isoformat()) for row in rows]
    liveness = next(item for item in checks if item["name"] == "liveness")
    assert [(run["status"], run["started_at"]) for run in liveness["runs"]] == stored
    assert (liveness["status"], liveness["warning"], liveness["critical"]) == (
        "ok", "> 0.5", "> 2")
    assert liveness["incident_id"] is None
    info = next(item for item in checks if item["name"] == "info")
    assert info["status"] == "pending"  # never ran: listed, with no result
    results = get(web, "/api/v1/checks/liveness/results?limit=2").json()["results"]
    assert [item["started_at"] for item in results] == [at for _, at in stored[::-1][:2]]
    assert get(web, "/api/v1/checks/nope").status_code == 404
    assert get(web, "/api/v1/checks/liveness/results?limit=zero").status_code == 400
    one = get(web, f"/api/v1/incidents/{incident}").json()
    assert (one["status"], one["acknowledged_by"]) == ("resolved", "ana")
    assert [entry["kind"] for entry in one["timeline"]] == [
        "opened", "remediation_run", "notification", "acknowledged", "resolved"]
    assert one["timeline"][1]["plan"] == ["kill -TERM 42", "start emulator"]
    # Written by this process: each row names this host as its agent.
    assert one["agent"] == one["remediations"][0]["agent"] == socket.gethostname()
    assert {run["agent"] for run in liveness["runs"]} == {socket.gethostname()}
    assert get(web, "/api/v1/incidents?open=1").json()["incidents"] == []


def test_targets_show_the_server_from_the_latest_server_info_result_and_the_budget_left(
        make_catalog: Callable[[str], Catalog], store: Store, clock: FakeClock,
        start_web: Serve) -> None:
    catalog = make_catalog(CATALOG)
    with_liveness_cycle(catalog, store, clock)
    with store.session() as session:
        queries.add_result(session, CheckResult(
            "info", "local", Status.OK, 3.0, "GB", "a.b = 3 GB (server 0.5.23, model org/m-8B)",
            5.0, clock()))
    target = get(start_web(catalog), "/api/v1/targets").json()["targets"][0]
    assert target["server"]["version"] == "0.5.23"
    assert target["server"]["model"] == "org/m-8B"
    assert target["budgets"] == [{"remediation": "restart", "used": 1, "max": 3, "left": 2,
                                  "within": "30m"}]
    assert target["quiet"] is None and target["open_incidents"] == []


def test_a_silenced_or_maintained_target_says_so_on_the_page_and_in_the_api(
        make_catalog: Callable[[str], Catalog], store: Store, clock: FakeClock,
        start_web: Serve) -> None:
    from sglguard.silences import add_silence

    catalog = make_catalog(CATALOG)
    add_silence(store, target="local", check=None, starts=clock(), length=timedelta(hours=1),
                reason="<b>kernel upgrade</b>", by="ana")
    web = start_web(catalog)
    quiet = get(web, "/api/v1/targets").json()["targets"][0]["quiet"]
    assert quiet == "silence #1 by ana: <b>kernel upgrade</b>"
    assert "quiet: silence #1 by ana: &lt;b&gt;kernel upgrade&lt;/b&gt;" in get(web, "/").text
    maintained = make_catalog(CATALOG + "maintenance:\n  - {name: always, cron: '* * * * *', "
                                        "duration: 1h, targets: [local]}\n")
    web = start_web(maintained)
    assert get(web, "/api/v1/targets").json()["targets"][0]["quiet"] == \
        "maintenance window always"
    assert "quiet: maintenance window always" in get(web, "/").text


def test_a_drained_worker_shows_on_its_target_until_it_is_back(
        make_catalog: Callable[[str], Catalog], store: Store, clock: FakeClock,
        start_web: Serve) -> None:
    from sglguard.remediations import drained

    catalog = make_catalog(CATALOG)
    incident = with_liveness_cycle(catalog, store, clock)
    row = drained.record(store, target="local", remediation="drain",
                         gateway="http://admin:gw-secret@127.0.0.1:30000",
                         body={"url": "http://127.0.0.1:8001", "worker_type": "regular"},
                         incident_id=incident, at=clock())
    drained.update(store, row, state="out")
    web = start_web(catalog)
    [target] = get(web, "/api/v1/targets").json()["targets"]
    assert [(item["worker"], item["state"], item["incident_id"]) for item in target["drained"]
            ] == [("http://127.0.0.1:8001", "out", incident)]
    assert target["drained"][0]["gateway"] == "http://***@127.0.0.1:30000"
    page = get(web, "/").text
    section = page[page.index('<tr class="target" data-name="local">'):]
    section = section[:section.index("</tr>")]
    assert '<b class="drained">drained</b> http://127.0.0.1:8001' in section
    assert f'href="incidents/{incident}"' in section and "gw-secret" not in page
    drained.update(store, row, state="returned", returned_at=clock())
    assert get(web, "/api/v1/targets").json()["targets"][0]["drained"] == []
    assert 'class="drained"' not in get(web, "/").text


def test_no_secret_leaves_the_listener(make_catalog: Callable[[str], Catalog], store: Store,
                                       clock: FakeClock, start_web: Serve) -> None:
    catalog = make_catalog(CATALOG)
    incident = with_liveness_cycle(catalog, store, clock)
    web = start_web(catalog)
    for path in ("/", f"/incidents/{incident}", "/api/v1/incidents", "/metrics",
                 f"/api/v1/incidents/{incident}", "/checks/liveness"):
        response = get(web, path)
        assert response.status_code == 200, path
        assert SECRET not in response.text, path
    assert "json://user:***@127.0.0.1:9 refused" in get(
        web, f"/api/v1/incidents/{incident}").text


def test_server_strings_are_escaped_and_scripts_are_forbidden(
        make_catalog: Callable[[str], Catalog], store: Store, clock: FakeClock,
        start_web: Serve) -> None:
    catalog = make_catalog(CATALOG)
    with store.session() as session:
        queries.add_result(session, CheckResult(
            "liveness", "local", Status.WARNING, 0.7, "s",
            '<script>alert("x")</script><img src=x onerror=alert(1)>', 5.0, clock()))
    web = start_web(catalog)
    for path in ("/", "/checks/liveness"):
        page = get(web, path)
        assert "<script>" not in page.text and "<img src=x" not in page.text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert requests.post(f"http://127.0.0.1:{web.port}/api/v1/checks", timeout=5
                         ).status_code == 405


def test_metrics_parse_and_their_counters_move_with_the_runs(
        make_catalog: Callable[[str], Catalog], store: Store, clock: FakeClock,
        start_web: Serve) -> None:
    catalog = make_catalog(CATALOG)
    web = start_web(catalog)
    with_liveness_cycle(catalog, store, clock)

    def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = get(web, "/metrics").text
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples}

    before = samples()
    runs = ("sglguard_check_runs_total", (("check", "liveness"), ("status", "ok"),
                                          ("target", "local")))
    assert before[runs] == 2
    assert before[("sglguard_check_runs_total", (("check", "liveness"), ("status", "critical"),
                                                 ("target", "local")))] == 2
    assert before[("sglguard_check_status", (("check", "liveness"), ("target", "local")))] == 0
    assert before[("sglguard_remediation_runs_total",
                   (("kind", "restart"), ("outcome", "succeeded")))] == 1
    assert before[("sglguard_notification_attempts_total",
                   (("notifier", "ops"), ("outcome", "failed")))] == 1
    assert before[("sglguard_store_up", ())] == 1
    # No worker runs here: the messages the incident owes and the restart it asks for wait.
    assert before[("sglguard_outbox_unclaimed", (("kind", "message"),))] >= 2
    assert before[("sglguard_outbox_unclaimed", (("kind", "remediation"),))] == 1
    engine = IncidentEngine(catalog, store, clock)
    feed(engine, clock, Status.CRITICAL)
    feed(engine, clock, Status.CRITICAL)
    after = samples()
    assert after[runs] == 2
    assert after[("sglguard_check_status", (("check", "liveness"), ("target", "local")))] == 2
    assert after[("sglguard_incidents_open", (("check", "liveness"), ("severity", "critical"),
                                              ("target", "local")))] == 1


def test_healthz_apart_from_the_service_fails_until_a_result_is_written_and_when_they_stop(
        make_catalog: Callable[[str], Catalog], store: Store, clock: FakeClock,
        start_web: Serve) -> None:
    catalog = make_catalog(CATALOG)
    web = start_web(catalog)
    assert get(web, "/healthz").status_code == 503
    feed(IncidentEngine(catalog, store, clock), clock, Status.CRITICAL)
    healthy = get(web, "/healthz")
    assert healthy.status_code == 200 and healthy.json()["status"] == "ok"
    clock.advance(timedelta(minutes=4).total_seconds())  # 3 x 1m interval + 30s flush < 4m
    stale = get(web, "/healthz")
    assert stale.status_code == 503
    assert stale.json()["reason"] == "no check result written recently"


def test_beyond_loopback_a_token_is_required(make_catalog: Callable[[str], Catalog],
                                             store: Store, clock: FakeClock,
                                             start_web: Serve) -> None:
    with pytest.raises(ConfigError, match="beyond loopback: set `token`"):
        make_catalog(CATALOG + "http: {listen: 0.0.0.0:9466}\n")
    plain = make_catalog(CATALOG)
    with pytest.raises(ValueError, match="beyond loopback"):
        serve(plain, store, listen="0.0.0.0:0")
    catalog = make_catalog(CATALOG + "http: {listen: 0.0.0.0:9466, token: s3cret}\n")
    web = start_web(catalog, listen=f"0.0.0.0:{free_port()}")
    refused = get(web, "/api/v1/checks")
    assert refused.status_code == 401 and "Basic" in refused.headers["WWW-Authenticate"]
    assert get(web, "/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert get(web, "/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    basic = base64.b64encode(b"anyone:s3cret").decode()
    assert get(web, "/", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert get(web, "/", auth=("anyone", "nope")).status_code == 401
    assert get(web, "/healthz").status_code == 503  # open, and says nothing secret


def test_pages_link_checks_and_incidents(make_catalog: Callable[[str], Catalog], store: Store,
                                         clock: FakeClock, start_web: Serve) -> None:
    catalog = make_catalog(CATALOG + "http: {external_url: 'https://gpu-7.example/sg/'}\n")
    incident = with_liveness_cycle(catalog, store, clock)
    web = start_web(catalog)
    page = get(web, "/").text
    assert 'href="checks/liveness"' in page and f'href="incidents/{incident}"' in page
    assert 'href="../checks/liveness"' in get(web, f"/incidents/{incident}").text
    assert get(web, "/incidents/999").status_code == 404
    assert incident_url(catalog, incident) == f"https://gpu-7.example/sg/incidents/{incident}"
    assert check_url(catalog, "a/b") == "https://gpu-7.example/sg/checks/a%2Fb"
    assert incident_url(make_catalog(CATALOG), 1) is None
    with store.session() as session:
        assert session.get(IncidentRow, incident) is not None


def test_the_api_and_metrics_read_postgresql_the_same(
        make_catalog: Callable[[str], Catalog], postgres_url: str, clock: FakeClock) -> None:
    catalog = make_catalog(CATALOG)
    store = Store.open(postgres_url)
    try:
        incident = with_liveness_cycle(catalog, store, clock)
        with store.session() as session:
            queries.add_result(session, CheckResult(
                "info", "local", Status.OK, 3.0, "GB", "a.b = 3 (server 0.5.23, model m)", 5.0,
                clock()))
        web = serve(catalog, store, listen=f"127.0.0.1:{free_port()}")
        web.app.view.clock = clock
        try:
            timeline = get(web, f"/api/v1/incidents/{incident}").json()["timeline"]
            assert [entry["kind"] for entry in timeline] == [
                "opened", "remediation_run", "notification", "acknowledged", "resolved"]
            assert get(web, "/api/v1/targets").json()["targets"][0]["server"]["model"] == "m"
            assert 'sglguard_check_runs_total{check="liveness",status="ok",target="local"} 2.0' \
                in get(web, "/metrics").text
            assert get(web, "/").status_code == 200
        finally:
            web.stop()
    finally:
        store.close()


def test_without_a_token_only_known_host_names_are_answered(
        make_catalog: Callable[[str], Catalog], start_web: Serve) -> None:
    catalog = make_catalog(CATALOG + "http: {external_url: 'https://gpu-7.example/sg'}\n")
    web = start_web(catalog)
    for host in ("127.0.0.1", f"127.0.0.1:{web.port}", "localhost", "gpu-7.example:443"):
        assert get(web, "/api/v1/targets", headers={"Host": host}).status_code == 200, host
    rebound = get(web, "/api/v1/targets", headers={"Host": f"attacker.example:{web.port}"})
    assert rebound.status_code == 421
    assert "local" not in rebound.text


def test_an_empty_store_shows_every_check_pending(make_catalog: Callable[[str], Catalog],
                                                  start_web: Serve) -> None:
    web = start_web(make_catalog(CATALOG))
    for path in ("/", "/checks/liveness", "/checks/info", "/api/v1/targets"):
        assert get(web, path).status_code == 200, path
    checks = get(web, "/api/v1/checks").json()["checks"]
    assert {item["status"] for item in checks} == {"pending"}
    assert "no chart yet" in get(web, "/checks/liveness").text
    head = requests.head(f"http://127.0.0.1:{web.port}/", timeout=5)
    assert head.status_code == 200 and head.content == b""


def test_the_fleet_view_shows_every_agent_of_a_shared_postgresql_and_a_silent_one_at_once(
        make_catalog: Callable[[str], Catalog], postgres_url: str, clock: FakeClock) -> None:
    from sglguard.agents import Agents
    from sglguard.store.writer import ResultWriter

    catalog = make_catalog(CATALOG)
    shared = Store.open(postgres_url)
    try:
        hosts = []
        for host in ("gpu-a", "gpu-b"):  # one agent per inference host, one store
            agent = Agents(shared, name=f"{host}:100:0000", clock=clock)
            agent.register(["local"])
            hosts.append(agent)
        # Each agent writes its own check's results; gpu-a's quiet ones go through the
        # batching writer, its failures (and the incident they open) straight to the store.
        writer = ResultWriter(shared, interval=3600)
        engine_a = IncidentEngine(catalog, shared, clock, writer=writer, agent=hosts[0].host)
        engine_b = IncidentEngine(catalog, shared, clock, agent=hosts[1].host)
        for status in (Status.OK, Status.OK, Status.OK, Status.CRITICAL, Status.CRITICAL):
            feed(engine_a, clock, status)
            feed(engine_b, clock, Status.OK, check="info")
        writer.flush()
        clock.advance(30)
        hosts[0].beat()  # gpu-b stopped reporting 30 s ago...
        clock.advance(30)  # ...and is silent past the 45 s bound now
        web = serve(catalog, shared, listen=f"127.0.0.1:{free_port()}")
        web.app.view.clock = clock
        try:
            fleet = get(web, "/api/v1/agents").json()
            page = get(web, "/").text
            runs = get(web, "/api/v1/checks/liveness/results").json()["results"]
        finally:
            web.stop()
        with shared.session() as session:
            written = {(check, agent) for check, agent in session.execute(
                select(CheckResultRow.check_name, CheckResultRow.agent).distinct())}
            opened_by = session.scalars(select(IncidentRow.agent)).all()
    finally:
        shared.close()
    states = {item["host"]: item["state"] for item in fleet["agents"]}
    assert states == {"gpu-a": "running", "gpu-b": "silent"}
    assert "gpu-b:100:0000" in page and "<b>silent</b>" in page
    assert written == {("liveness", "gpu-a"), ("info", "gpu-b")}
    assert opened_by == ["gpu-a"]
    assert {run["agent"] for run in runs} == {"gpu-a"} and len(runs) == 5
    grouped = {group["agent"]: [(item["check"], item["status"]) for item in group["checks"]]
               for group in fleet["results"]}
    assert grouped == {"gpu-a": [("liveness", "critical")], "gpu-b": [("info", "ok")]}
    assert 'class="by-agent" data-agent="gpu-a"' in page
