"""Safety rails, each shown holding: leases, backoff, verification, flapping, silences."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from sglguard.checks.base import CheckResult, Status
from sglguard.cli.service import run_by_hand
from sglguard.config.models import Catalog
from sglguard.engine import IncidentEngine
from sglguard.rails import Leases, next_run_allowed
from sglguard.receiver import AlertReceiver
from sglguard.service import Service
from sglguard.silences import add_silence, expire_silence, list_silences, quiet
from sglguard.store import Store, queries
from sglguard.store.models import (
    CheckResultRow,
    IncidentEventRow,
    IncidentRow,
    RemediationRunRow,
)

from conftest import PYTHON, FakeClock, emulator_command, free_port, wait_for


def test_only_one_holder_gets_a_target_lease(store: Store, clock: FakeClock) -> None:
    first, second = Leases(store, "a"), Leases(store, "b")
    assert first.claim("local", clock(), timedelta(minutes=5))
    assert not second.claim("local", clock(), timedelta(minutes=5))
    assert second.holder_of("local") == "a"
    first.release("local")
    assert second.claim("local", clock(), timedelta(minutes=5))


def test_an_expired_lease_can_be_taken_over(store: Store, clock: FakeClock) -> None:
    assert Leases(store, "crashed").claim("local", clock(), timedelta(seconds=30))
    clock.advance(31)
    assert Leases(store, "b").claim("local", clock(), timedelta(seconds=30))


RAILS = """\
version: 1
targets: [{name: local, url: "http://127.0.0.1:1"}]
checks: [{name: liveness, kind: http, target: local}]
remediations:
  - {name: fix, kind: restart, backoff: {initial: 10s, max: 40s, reset_after: 10m},
     cooldown: 15s}
"""


def add_run(store: Store, at: datetime, seconds: float = 1.0) -> None:
    with store.session() as session:
        session.add(RemediationRunRow(
            remediation="fix", kind="restart", target="local", trigger="incident",
            dry_run=False, plan="[]", outcome="failed", detail="", started_at=at,
            finished_at=at + timedelta(seconds=seconds)))


def test_backoff_doubles_to_its_cap_and_resets_after_a_clean_period(
        make_catalog: Callable[[str], Catalog], store: Store, clock: FakeClock) -> None:
    config = make_catalog(RAILS).remediation("fix")
    assert next_run_allowed(store, config, "local", clock()) is None
    waits = []
    for _ in range(4):
        add_run(store, clock(), seconds=0)
        wait = next_run_allowed(store, config, "local", clock())
        assert wait is not None
        waits.append((wait.until - clock()).total_seconds())
        clock.now = wait.until
    assert waits == [15, 20, 40, 40]  # cooldown 15 s beats the first 10 s; then 20, 40, cap
    clock.advance(600)
    assert next_run_allowed(store, config, "local", clock()) is None


def test_flapping_check_is_announced_once_and_not_remediated(
        make_catalog: Callable[[str], Catalog], store: Store, clock: FakeClock) -> None:
    catalog = make_catalog("""\
        version: 1
        targets: [{name: local, url: "http://127.0.0.1:1"}]
        checks:
          - {name: liveness, kind: server_info, path: max_running_requests, target: local,
             failure_threshold: 1,
             remediate: [restart]}
        remediations: [{name: restart, kind: restart}]
        """.replace("checks:\n", "checks:\n").replace(
        'url: "http://127.0.0.1:1"}]', 'url: "http://127.0.0.1:1", control: {kind: process, '
        'start: [x], pidfile: p.pid}}]'))
    engine = IncidentEngine(catalog, store, clock)
    remediations, flips = [], []
    for index in range(16):
        clock.advance(10)
        status = Status.CRITICAL if index % 2 == 0 else Status.OK
        decision = engine.record(CheckResult("liveness", "local", status, None, "s", "",
                                             1.0, clock()))
        remediations.append(decision.remediate)
        if decision.flapping is not None:
            flips.append((index, decision.flapping))
    assert [flip for _, flip in flips] == [True]
    started = flips[0][0]
    assert all(remediation is None for remediation in remediations[started:])
    assert any(remediation is not None for remediation in remediations[:started])
    for _ in range(21):  # it settles: one "stopped" and no more
        clock.advance(10)
        decision = engine.record(CheckResult("liveness", "local", Status.OK, None, "s", "",
                                             1.0, clock()))
        if decision.flapping is not None:
            flips.append((0, decision.flapping))
    assert [flip for _, flip in flips] == [True, False]


def test_a_dead_server_is_paged_and_repaired_however_much_its_liveness_flaps(
        make_catalog: Callable[[str], Catalog], store: Store, clock: FakeClock) -> None:
    catalog = make_catalog("""\
        version: 1
        targets: [{name: local, url: "http://127.0.0.1:1",
                   control: {kind: process, start: [x], pidfile: p.pid}}]
        checks:
          - {name: liveness, kind: http, target: local, failure_threshold: 1,
             remediate: [restart]}
        remediations: [{name: restart, kind: restart}]
        """)
    engine = IncidentEngine(catalog, store, clock)
    flapping, opened, requested = False, 0, 0
    for index in range(16):  # a crash loop: down, restarted, down again...
        clock.advance(10)
        status = Status.CRITICAL if index % 2 == 0 else Status.OK
        decision = engine.record(CheckResult("liveness", "local", status, None, "s",
                                             "connection refused", 1.0, clock()))
        flapping = flapping or decision.flapping is True
        opened += any(item.event == "incident_opened" for item in decision.messages)
        requested += decision.requested
    assert flapping
    assert opened == 8 and requested == 8  # every crash paged and its restart requested


def test_silences_cover_their_target_and_check_until_they_end_or_expire(
        store: Store, clock: FakeClock) -> None:
    first = add_silence(store, target="local", check=None, starts=clock(),
                        length=timedelta(hours=2), reason="upgrade", by="ana")
    add_silence(store, target="other", check="queue", starts=clock(),
                length=timedelta(hours=1), reason="", by="")
    assert quiet(store, (), "local", "liveness", clock()) is not None
    assert quiet(store, (), "other", "liveness", clock()) is None
    assert quiet(store, (), "other", "queue", clock()) is not None
    assert [row.id for row in list_silences(store, clock(), include_ended=False)] == [first, 2]
    assert expire_silence(store, first, clock())
    assert quiet(store, (), "local", "liveness", clock()) is None
    clock.advance(3601)
    assert quiet(store, (), "other", "queue", clock()) is None


def test_recurring_maintenance_window_follows_its_time_zone(
        make_catalog: Callable[[str], Catalog], store: Store) -> None:
    catalog = make_catalog("""\
        version: 1
        targets: [{name: local, url: "http://127.0.0.1:1"}]
        maintenance:
          - {name: weekly, cron: "0 3 * * sun", duration: 1h, timezone: Europe/Berlin,
             remediate: true}
        """)
    windows = catalog.maintenance
    sunday_0230_utc = datetime(2026, 11, 22, 2, 30, tzinfo=UTC)  # 03:30 in Berlin
    found = quiet(store, windows, "local", "liveness", sunday_0230_utc)
    assert found is not None and found.remediate and not found.notify
    assert quiet(store, windows, "local", "liveness", sunday_0230_utc + timedelta(hours=1)) is None


@pytest.fixture
def receiver() -> Iterator[AlertReceiver]:
    server = AlertReceiver().start()
    yield server
    server.stop()


def service_catalog(tmp_path: Path, port: int, alerts: int, start: list[str],
                    extra: str = "", verify: str = "") -> str:
    return f"""\
version: 1
targets:
  - name: local
    url: http://127.0.0.1:{port}
    control: {{kind: process, start: {json.dumps(start)}, pidfile: local.pid,
               startup_timeout: 5s, stop_timeout: 2s}}
checks:
  - {{name: liveness, kind: http, target: local, interval: 0.2s, timeout: 1s,
     failure_threshold: 1, remediate: [restart]}}
  - {{name: queue, kind: metric, target: local, metric: "sglang:num_queue_reqs",
     critical: "> 200", interval: 30s, timeout: 1s}}
remediations:
  - {{name: restart, kind: restart, backoff: {{initial: 0.1s, max: 0.2s}}{verify}}}
notifications: {{group_wait: 0.2s}}
notifiers: [{{name: ops, urls: ["json://127.0.0.1:{alerts}/alerts"]}}]
{extra}"""


def test_a_silenced_target_gets_no_notification(
        tmp_path: Path, make_catalog: Callable[[str], Catalog], store: Store,
        receiver: AlertReceiver) -> None:
    catalog = make_catalog(service_catalog(tmp_path, free_port(), receiver.port,
                                           [PYTHON, "-c", "raise SystemExit(1)"]))
    add_silence(store, target="local", check=None, starts=datetime.now(UTC),
                length=timedelta(hours=1), reason="planned work", by="ana")
    service = Service(catalog, store)
    service.start()
    try:
        wait_for(lambda: _events(store, "silenced"))
        assert service.notifications.flush(5)
    finally:
        service.stop()
    assert receiver.received() == []
    assert _events(store, "remediation_withheld")
    with store.session() as session:
        assert session.query(RemediationRunRow).count() == 0


def test_restart_that_does_not_fix_the_check_is_not_verified_and_escalates(
        tmp_path: Path, make_catalog: Callable[[str], Catalog], store: Store,
        receiver: AlertReceiver) -> None:
    port = free_port()
    catalog = make_catalog(service_catalog(
        tmp_path, port, receiver.port, emulator_command(port, "--fault", "queue:300"),
        verify=", verify: queue, verify_within: 1s"))
    service = Service(catalog, store)
    service.start()
    try:
        wait_for(lambda: _events(store, "not_verified"), 15)
        wait_for(lambda: any("ESCALATION" in alert["title"] for alert in receiver.received()))
    finally:
        service.stop()
        control = service.runner.control(catalog.targets[0])
        if control is not None:
            control.stop()
    with store.session() as session:
        runs = session.query(RemediationRunRow).all()
        assert [(run.outcome, run.verified) for run in runs] == [("succeeded", False)]
        assert "queue did not pass within" in (runs[0].verification or "")
        first = queries.incidents(session, open_only=False, limit=5)[-1]
        assert first.check_name == "liveness" and first.escalated_at is not None


def test_no_data_after_a_restart_does_not_verify_it(
        tmp_path: Path, make_catalog: Callable[[str], Catalog], store: Store,
        receiver: AlertReceiver) -> None:
    port = free_port()
    text = service_catalog(tmp_path, port, receiver.port,
                           emulator_command(port, "--skip-server-warmup"),
                           verify=", verify: ttft, verify_within: 3s")
    text = text.replace("remediations:", """\
  - {name: ttft, kind: metric, target: local, metric: "sglang:time_to_first_token_seconds",
     quantile: 0.95, window: 5m, warning: "> 0.5", interval: 30s, timeout: 1s}
remediations:""")
    catalog = make_catalog(text)
    service = Service(catalog, store)
    service.start()
    try:
        wait_for(lambda: _events(store, "not_verified"), 15)
    finally:
        service.stop()
        control = service.runner.control(catalog.targets[0])
        if control is not None:
            control.stop()
    with store.session() as session:
        runs = session.query(RemediationRunRow).all()
        assert runs[0].verified is False
        assert "no data" in (runs[0].verification or "")  # restarted, no request since


def test_a_restart_by_hand_with_a_slow_start_up_opens_no_incident(
        tmp_path: Path, make_catalog: Callable[[str], Catalog], store: Store,
        receiver: AlertReceiver) -> None:
    port = free_port()
    catalog = make_catalog(service_catalog(
        tmp_path, port, receiver.port, emulator_command(port, "--startup-delay", "1.5")))
    service = Service(catalog, store)
    control = service.runner.control(catalog.targets[0])
    assert control is not None
    control.start()
    wait_for(lambda: _healthy(port), 10)
    service.start()
    try:
        wait_for(lambda: _latest_status(store, "liveness") == "ok")
        outcome = run_by_hand(service.runner, store, "restart", "local")
        assert outcome.outcome == "succeeded"
        wait_for(lambda: _latest_status(store, "liveness") == "ok")
    finally:
        service.stop()
        control.stop()
    with store.session() as session:
        assert queries.incidents(session, open_only=False, limit=5) == []
        failed = [row for row in session.query(CheckResultRow).filter_by(check_name="liveness")
                  if row.status != "ok"]
    assert failed and not any(row.evaluated for row in failed)  # seen, in grace, not counted
    assert receiver.received() == []


def test_a_restart_that_leaves_errors_is_not_verified_by_the_error_ratio(
        tmp_path: Path, make_catalog: Callable[[str], Catalog], store: Store,
        receiver: AlertReceiver) -> None:
    port = free_port()
    start = emulator_command(port, "--load", "50", "--fault", "errors:0.5")
    inference = "/generate|/v1/(chat/)?completions"
    catalog = make_catalog(f"""\
version: 1
targets:
  - name: local
    url: http://127.0.0.1:{port}
    control: {{kind: process, start: {json.dumps(start)}, pidfile: local.pid,
               startup_timeout: 5s, stop_timeout: 2s}}
checks:
  - {{name: error-ratio, kind: metric, target: local, metric: sglang:http_responses_total,
     labels: {{status_code: "5..", endpoint: "{inference}"}}, window: 5m,
     ratio_to: {{metric: sglang:http_responses_total, labels: {{endpoint: "{inference}"}}}},
     critical: "> 0.05", interval: 0.5s, timeout: 1s, failure_threshold: 1,
     remediate: [restart]}}
remediations:
  - {{name: restart, kind: restart, verify: error-ratio, verify_within: 1s,
     budget: {{max: 1, within: 1h}},
     backoff: {{initial: 0.1s, max: 0.2s}}}}
notifications: {{group_wait: 0.2s}}
notifiers: [{{name: ops, urls: ["json://127.0.0.1:{receiver.port}/alerts"]}}]
""")
    service = Service(catalog, store)
    control = service.runner.control(catalog.targets[0])
    assert control is not None
    control.start()
    wait_for(lambda: _healthy(port), 10)
    service.start()
    try:
        wait_for(lambda: _events(store, "not_verified"), 20)
    finally:
        service.stop()
        control.stop()
    with store.session() as session:
        runs = session.query(RemediationRunRow).all()
    assert [(run.outcome, run.verified) for run in runs] == [("succeeded", False)]
    assert "critical" in (runs[0].verification or "")  # the errors went on after the restart


def _healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _latest_status(store: Store, check: str) -> str | None:
    with store.session() as session:
        return queries.latest_status(session, check)


def _events(store: Store, kind: str) -> list[str]:
    with store.session() as session:
        return [row.detail for row in session.query(IncidentEventRow).filter_by(kind=kind)]


def test_the_service_steps_a_lowered_level_back_up_after_restore_after(
        make_catalog: Callable[[str], Catalog], store: Store, clock: FakeClock) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start = json.dumps(emulator_command(port, "--max-running-requests", "256"))
    catalog = make_catalog(f"""\
        version: 1
        targets:
          - name: local
            url: {url}
            control: {{kind: process, start: {start}, pidfile: local.pid,
                       startup_timeout: 10s, stop_timeout: 5s}}
        checks: [{{name: liveness, kind: http, target: local, remediate: [shed]}}]
        remediations:
          - {{name: shed, kind: reduce_concurrency, factor: 0.5, restore_after: 30m}}
        """)
    service = Service(catalog, store, clock=clock)  # its timers are called by hand here
    try:
        assert service.runner.run("shed", "local", trigger="manual").outcome == "failed"
        service.runner.control(catalog.targets[0]).start()  # type: ignore[union-attr]
        wait_for(lambda: _answers(url))
        with store.session() as session:  # the step is taken for an incident (resolved since)
            incident = IncidentRow(check_name="liveness", target="local", status="resolved",
                                   severity="critical", opened_at=clock(), resolved_at=clock(),
                                   first_message="", last_message="")
            session.add(incident)
            session.flush()
            incident_id = incident.id
        assert service.runner.run("shed", "local", trigger="manual",
                                  incident_id=incident_id).outcome == "succeeded"
        assert _max_running(url) == 128
        assert service.restore_levels() == []
        clock.advance(31 * 60)
        assert service.restore_levels() == ["local"]
        assert _max_running(url) == 256
        assert Leases(store).holder_of("local") is None  # the lease was given back
        with store.session() as session:  # the step's incident tells its restore too
            events = [(event.kind, event.detail) for event in
                      queries.events_of(session, incident_id)]
        assert [kind for kind, _ in events] == ["restore_started", "restore_succeeded"], events
        assert "max_running_requests: 128 -> 256" in events[1][1]
    finally:
        service.stop()
        control = service.runner.control(catalog.targets[0])
        if control is not None:
            control.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=1).ok
    except requests.RequestException:
        return False


def _max_running(url: str) -> int:
    info = requests.get(f"{url}/server_info", timeout=5).json()
    return int(info["internal_states"][0]["effective_max_running_requests_per_dp"])


def test_the_service_says_once_that_a_check_flaps_and_once_that_it_stopped(
        make_catalog: Callable[[str], Catalog], store: Store, clock: FakeClock,
        receiver: AlertReceiver) -> None:
    catalog = make_catalog(f"""\
        version: 1
        targets: [{{name: local, url: "http://127.0.0.1:1"}}]
        checks: [{{name: liveness, kind: http, target: local, failure_threshold: 1}}]
        notifications: {{group_wait: 0s}}
        notifiers: [{{name: ops, urls: ["json://127.0.0.1:{receiver.port}/alerts"]}}]
        """)
    service = Service(catalog, store, clock=clock)
    service.notifications.start()
    statuses = [Status.CRITICAL, Status.OK] * 8 + [Status.OK] * 22
    try:
        for status in statuses:
            clock.advance(10)
            result = CheckResult("liveness", "local", status, None, "s", "", 1.0, clock())
            service.engine.record(result)
        assert service.notifications.flush(10)
    finally:
        service.stop()
    flaps = [alert["title"] for alert in receiver.received() if "FLAPPING" in alert["title"]
             or "STABLE" in alert["title"]]
    assert len(flaps) == 2, flaps
    assert flaps[0].startswith("[FLAPPING] local/liveness")
    assert flaps[1].startswith("[STABLE] local/liveness")


def test_verify_within_alone_bounds_the_verification_of_the_trigger(
        tmp_path: Path, make_catalog: Callable[[str], Catalog], store: Store,
        receiver: AlertReceiver) -> None:
    port = free_port()
    start = json.dumps(emulator_command(port, "--fault", "queue:300"))
    catalog = make_catalog(f"""\
        version: 1
        targets:
          - name: local
            url: http://127.0.0.1:{port}
            control: {{kind: process, start: {start}, pidfile: local.pid,
                       startup_timeout: 20s, stop_timeout: 2s}}
        checks:
          - {{name: queue, kind: metric, target: local, metric: "sglang:num_queue_reqs",
             critical: "> 200", interval: 0.3s, timeout: 1s, failure_threshold: 1,
             remediate: [restart]}}
        remediations:
          - {{name: restart, kind: restart, verify_within: 1s}}
        """)
    service = Service(catalog, store)
    service.runner.control(catalog.targets[0]).start()  # type: ignore[union-attr]
    service.start()
    try:
        wait_for(lambda: _events(store, "not_verified"), 15)
    finally:
        service.stop()
        control = service.runner.control(catalog.targets[0])
        if control is not None:
            control.stop()
    # The trigger (no `verify:`) had the 1 s given, not the 20 s start-up budget.
    assert _events(store, "not_verified")[0].startswith(
        "not verified: queue did not pass within 0:00:01")
