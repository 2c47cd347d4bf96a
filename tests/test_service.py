"""The scheduler service in-process: its jobs, pauses during remediation, and resilience."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import text

from sglguard.config.models import Catalog
from sglguard.emulator import Emulator
from sglguard.service import Service, first_round
from sglguard.store import Store, queries
from sglguard.store.models import RemediationRunRow

from conftest import wait_for


@pytest.fixture
def service(make_catalog: Callable[[str], Catalog], store: Store,
            emulator: Emulator) -> Iterator[Service]:
    catalog = make_catalog(f"""\
        version: 1
        store: {{flush_interval: 1s}}
        targets: [{{name: local, url: "{emulator.url}"}}]
        checks:
          - {{name: liveness, kind: http, target: local, interval: 0.2s, timeout: 1s}}
          - {{name: queue, kind: metric, target: local, metric: "sglang:num_queue_reqs",
              interval: 30s}}
        """)
    running = Service(catalog, store)
    yield running
    running.stop()


def results(store: Store, check: str) -> int:
    with store.session() as session:
        return len(queries.recent_results(session, check, 1000))


def test_one_job_per_check_with_jitter_and_no_overlap(service: Service) -> None:
    service.start()
    jobs = {job.id: job for job in service.jobs() if not job.id.startswith("_")}
    assert set(jobs) == {"liveness", "queue"}
    assert all(job.max_instances == 1 and job.coalesce for job in jobs.values())
    assert jobs["liveness"].trigger.interval.total_seconds() == pytest.approx(0.2)
    assert jobs["liveness"].trigger.jitter == pytest.approx(0.02)
    assert jobs["queue"].trigger.jitter == pytest.approx(3.0)


def test_checks_run_on_schedule_and_are_stored(service: Service, store: Store) -> None:
    service.start()
    wait_for(lambda: results(store, "liveness") >= 3)
    with store.session() as session:
        state = queries.check_state(session, "liveness", "local")
        assert state.status == "ok" and state.consecutive_successes >= 3


def test_only_the_check_being_verified_waits_for_its_verification(
        service: Service, store: Store) -> None:
    service.responder.verifying.add("liveness")
    assert service.run_check("liveness") is None
    assert results(store, "liveness") == 0
    assert service.run_check("queue") is not None  # the target's other checks go on
    service.responder.verifying.discard("liveness")
    assert service.run_check("liveness") is not None
    assert results(store, "liveness") == 1


def test_a_store_that_breaks_under_the_service_stops_nothing(
        service: Service, store: Store) -> None:
    service.start()
    wait_for(lambda: results(store, "liveness") >= 1)
    with store.engine.begin() as connection:  # the store breaks under the service
        connection.execute(text("alter table check_results rename to check_results_gone"))
    service.engine.forget("liveness")  # its next result is written at once, not queued
    assert service.run_check("liveness") is not None  # held, not raised
    wait_for(lambda: service.backlog.outage)
    with store.engine.begin() as connection:
        connection.execute(text("alter table check_results_gone rename to check_results"))
    before = results(store, "liveness")
    wait_for(lambda: results(store, "liveness") > before + 2)
    assert service.running and not service.backlog.outage


def test_a_dependent_check_is_skipped_while_its_dependency_fails(
        make_catalog: Callable[[str], Catalog], store: Store) -> None:
    from conftest import free_port

    catalog = make_catalog(f"""\
        version: 1
        targets: [{{name: local, url: "http://127.0.0.1:{free_port()}"}}]
        checks:
          - {{name: liveness, kind: http, target: local}}
          - {{name: queue, kind: metric, target: local, metric: "sglang:num_queue_reqs",
              depends_on: liveness}}
        """)
    service = Service(catalog, store)
    try:
        first = service.run_check("queue")  # the dependency has not run yet: nothing known
        assert first is not None and not first.skipped
        liveness = service.run_check("liveness")
        assert liveness is not None and liveness.status.label == "critical"
        skipped = service.run_check("queue")
        assert skipped is not None and skipped.skipped
        assert skipped.message == "skipped: liveness is critical"
    finally:
        service.stop()


def test_retention_deletes_old_results_and_long_resolved_incidents_only(
        make_catalog: Callable[[str], Catalog], store: Store) -> None:
    from datetime import timedelta

    from sglguard.checks.base import CheckResult, Status
    from sglguard.store.models import (
        CheckResultRow,
        IncidentEventRow,
        IncidentRow,
        NotificationAttemptRow,
    )

    from conftest import FakeClock

    clock = FakeClock()
    catalog = make_catalog("""\
        version: 1
        store: {retention: {results: 14d, incidents: 180d}}
        targets: [{name: local, url: "http://127.0.0.1:1"}]
        checks: [{name: liveness, kind: http, target: local}]
        """)
    old, recent = clock() - timedelta(days=200), clock() - timedelta(days=1)
    with store.session() as session:
        for at in (old, recent):
            queries.add_result(session, CheckResult("liveness", "local", Status.OK, 0.1, "s",
                                                    "", 1.0, at))
        incidents = [IncidentRow(check_name="liveness", target="local", status=status,
                                 severity="critical", opened_at=at, resolved_at=resolved,
                                 first_message="", last_message="")
                     for status, at, resolved in (("resolved", old, old),
                                                  ("resolved", recent, recent),
                                                  ("open", old, None))]
        session.add_all(incidents)
        session.flush()
        for incident in incidents:
            queries.add_event(session, incident.id, incident.opened_at, "opened", "")
            queries.add_attempt(session, incident_id=incident.id, event="incident_opened",
                                notifier="ops", attempt=1, outcome="sent", error=None,
                                title="t", body="b", at=incident.opened_at)
        kept = [incident.id for incident in incidents[1:]]
    service = Service(catalog, store, clock=clock)
    try:
        assert service.prune() == 1 + 3  # one result; one incident with its event and attempt
    finally:
        service.stop()
    with store.session() as session:
        assert [row.started_at for row in session.query(CheckResultRow)] == [recent]
        assert sorted(row.id for row in session.query(IncidentRow)) == kept
        assert sorted(row.incident_id for row in session.query(IncidentEventRow)) == kept
        assert session.query(NotificationAttemptRow).count() == 2


def test_a_run_left_running_is_interrupted_at_start_but_not_at_a_reload(
        make_catalog: Callable[[str], Catalog], store: Store, emulator: Emulator) -> None:
    from sglguard.clock import utcnow

    catalog = make_catalog(f"""\
        version: 1
        targets: [{{name: local, url: "{emulator.url}"}}]
        checks: [{{name: liveness, kind: http, target: local, interval: 1h}}]
        """)

    def left_running() -> int:
        with store.session() as session:
            return queries.start_run(session, incident_id=None, remediation="restart",
                                     kind="restart", target="local", trigger="manual",
                                     dry_run=False, plan=[], outcome="running",
                                     at=utcnow()).id

    def outcome(run_id: int) -> str:
        with store.session() as session:
            return session.get_one(RemediationRunRow, run_id).outcome

    still_finishing = left_running()
    reloaded = Service(catalog, store)
    reloaded.start(reloaded=True)  # SIGHUP: the old catalog's remediation thread still runs
    reloaded.stop()
    assert outcome(still_finishing) == "running"
    fresh = Service(catalog, store)
    fresh.start()  # a new process: whoever ran it died
    fresh.stop()
    assert outcome(still_finishing) == "interrupted"


def test_a_store_outage_holds_results_and_writes_them_in_order_when_it_is_back(
        make_catalog: Callable[[str], Catalog], store: Store,
        caplog: pytest.LogCaptureFixture) -> None:
    catalog = make_catalog("""\
        version: 1
        store: {flush_interval: 0s}
        targets: [{name: local, url: "http://127.0.0.1:1"}]
        checks:
          - {name: liveness, kind: http, target: local, failure_threshold: 3, timeout: 1s}
          - {name: rate, kind: metric, target: local, metric: "sglang:num_requests_total",
             aggregate: sum, window: 1m, rate: true, interval: 10s}
        """)
    service = Service(catalog, store)
    with store.engine.begin() as connection:  # the store breaks under the service
        connection.execute(text("alter table check_results rename to check_results_gone"))
    caplog.clear()
    held = [service.run_check("liveness") for _ in range(4)]
    assert all(item is not None for item in held)  # runs go on, nothing raised
    assert service.backlog.pending == 4 and service.backlog.outage
    said = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(said) == 1 and said[0].startswith("store unavailable")  # once per outage
    with store.engine.begin() as connection:
        connection.execute(text("alter table check_results_gone rename to check_results"))
    service._replay_backlog()
    assert service.backlog.pending == 0 and not service.backlog.outage
    assert results(store, "liveness") == 4
    with store.session() as session:
        [incident] = queries.incidents(session, open_only=True, limit=5)
        assert incident.check_name == "liveness"  # the held failures opened it, in order


def test_a_windowed_check_without_its_store_has_no_data_not_an_unknown_server(
        make_catalog: Callable[[str], Catalog], store: Store, emulator: Emulator) -> None:
    catalog = make_catalog(f"""\
        version: 1
        targets: [{{name: local, url: "{emulator.url}"}}]
        checks:
          - {{name: rate, kind: metric, target: local, metric: "sglang:num_requests_total",
             aggregate: sum, window: 1m, rate: true}}
        """)
    service = Service(catalog, store)
    with store.engine.begin() as connection:
        connection.execute(text("alter table check_samples rename to check_samples_gone"))
    result = service.checks["rate"].execute()
    assert result.status.label == "ok" and not result.counts, result
    assert "the store is unavailable" in result.message


def test_a_check_that_stops_producing_results_becomes_stale_and_opens_an_incident(
        make_catalog: Callable[[str], Catalog], store: Store, emulator: Emulator) -> None:
    catalog = make_catalog(f"""\
        version: 1
        targets: [{{name: local, url: "{emulator.url}"}}]
        checks:
          - {{name: liveness, kind: http, target: local, interval: 10s, failure_threshold: 2}}
          - {{name: queue, kind: metric, target: local, metric: "sglang:num_queue_reqs",
             interval: 10s}}
        """)
    service = Service(catalog, store)
    service.run_check("liveness")
    service.run_check("queue")
    assert service.find_stale() == []  # both just ran
    # liveness's runs stop (a thread stuck, a scheduler gone): its last run is 40 s old
    for _ in range(2):
        service._ran["liveness"] -= 40
        assert service.find_stale() == ["liveness"]
    with store.session() as session:
        [result] = queries.recent_results(session, "liveness", 1)
        [incident] = queries.incidents(session, open_only=True, limit=5)
    assert result.status == "unknown" and result.message.startswith("stale: sglguard has not")
    assert incident.check_name == "liveness" and incident.severity == "unknown"
    service.run_check("liveness")  # it runs again, and passes: the incident resolves
    with store.session() as session:
        assert queries.incidents(session, open_only=True, limit=5) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_retention_deletes_old_results_in_small_transactions(
        backend: str, make_catalog: Callable[[str], Catalog], store: Store,
        request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    from sqlalchemy import event

    from sglguard import service as service_module
    from sglguard.checks.base import CheckResult, Status

    from conftest import FakeClock

    if backend == "postgresql":
        store = Store.open(request.getfixturevalue("postgres_url"))
    clock = FakeClock()
    catalog = make_catalog("""\
        version: 1
        store: {retention: {results: 14d}}
        targets: [{name: local, url: "http://127.0.0.1:1"}]
        checks: [{name: liveness, kind: http, target: local}]
        """)
    with store.session() as session:
        for days in [*range(20, 30), 1]:  # ten results past the retention, one within
            queries.add_result(session, CheckResult("liveness", "local", Status.OK, 0.1, "s",
                                                    "", 1.0, clock() - timedelta(days=days)))
    monkeypatch.setattr(service_module, "PRUNE_BATCH", 3)
    deletes: list[int] = []

    def counted(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM CHECK_RESULTS"):
            deletes.append(1)

    event.listen(store.engine, "after_cursor_execute", counted)
    service = Service(catalog, store, clock=clock)
    try:
        assert service.prune() == 10
    finally:
        service.stop()
        event.remove(store.engine, "after_cursor_execute", counted)
    assert len(deletes) == 4  # 3 + 3 + 3 + 1, each in a transaction of its own
    assert results(store, "liveness") == 1
    if backend == "postgresql":
        store.close()


def test_the_first_round_starts_each_check_after_the_checks_it_depends_on(
        make_catalog: Callable[[str], Catalog]) -> None:
    catalog = make_catalog("""\
        version: 1
        targets: [{name: local, url: "http://127.0.0.1:1"}]
        checks:
          - {name: generation, kind: http, target: local, depends_on: [queue, liveness]}
          - {name: queue, kind: http, target: local, depends_on: liveness}
          - {name: other, kind: http, target: local}
          - {name: liveness, kind: http, target: local}
        """)
    assert [config.name for config in first_round(catalog.checks)] == [
        "liveness", "queue", "generation", "other"]
