"""The incident engine: soft/hard state, one incident per breach, grace, escalation once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from sglguard.checks.base import CheckResult, Status
from sglguard.config.models import Catalog
from sglguard.engine import IncidentEngine
from sglguard.store import Store, queries
from sglguard.store.writer import ResultWriter

from conftest import FakeClock, feed

CATALOG = """\
version: 1
targets: [{name: local, url: "http://127.0.0.1:1"}]
checks:
  - {name: liveness, kind: http, target: local, failure_threshold: 2}
  - {name: sticky, kind: http, target: local, failure_threshold: 1, success_threshold: 2}
  - {name: held, kind: http, target: local, for: 2m}
notifiers: [{name: ops, urls: ["json://127.0.0.1:1/alerts"]}]
"""


@pytest.fixture(params=["each result at once", "quiet results batched"])
def engine(request: pytest.FixtureRequest, make_catalog: Callable[[str], Catalog], store: Store,
           clock: FakeClock) -> IncidentEngine:
    """Every engine test holds with and without the batch writer: batching changes when quiet
    results reach the store, never what is decided."""
    writer = ResultWriter(store, interval=3600.0) if request.param.endswith("batched") else None
    return IncidentEngine(make_catalog(CATALOG), store, clock, writer=writer)


def open_incidents(store: Store) -> list[int]:
    with store.session() as session:
        return [item.id for item in queries.incidents(session, open_only=True, limit=10)]


def test_incident_opens_once_at_the_failure_threshold(engine: IncidentEngine, store: Store,
                                                      clock: FakeClock) -> None:
    first = feed(engine, clock, Status.CRITICAL)
    assert first.opened is None and open_incidents(store) == []
    second = feed(engine, clock, Status.CRITICAL)
    assert second.opened is not None and second.remediate == second.opened
    assert [message.event for message in second.messages] == ["incident_opened"]
    third = feed(engine, clock, Status.CRITICAL)
    assert third.opened is None and third.messages == []
    assert open_incidents(store) == [second.opened]


def test_incident_resolves_on_the_first_ok_by_default(engine: IncidentEngine, store: Store,
                                                      clock: FakeClock) -> None:
    feed(engine, clock, Status.CRITICAL)
    opened = feed(engine, clock, Status.CRITICAL).opened
    resolved = feed(engine, clock, Status.OK)
    assert resolved.resolved == opened
    assert [message.event for message in resolved.messages] == ["incident_resolved"]
    assert open_incidents(store) == []
    with store.session() as session:
        events = [event.kind for event in queries.events_of(session, opened or 0)]
    assert events == ["opened", "resolved"]


def test_success_threshold_asks_for_more_passing_runs(engine: IncidentEngine, store: Store,
                                                      clock: FakeClock) -> None:
    opened = feed(engine, clock, Status.WARNING, "sticky").opened
    assert feed(engine, clock, Status.OK, "sticky").resolved is None
    assert feed(engine, clock, Status.OK, "sticky").resolved == opened


def test_a_pass_between_failures_resets_the_count(engine: IncidentEngine, store: Store,
                                                  clock: FakeClock) -> None:
    for status in (Status.CRITICAL, Status.OK, Status.CRITICAL, Status.OK):
        assert feed(engine, clock, status).opened is None
    assert open_incidents(store) == []


def test_unknown_counts_as_not_ok(engine: IncidentEngine, clock: FakeClock) -> None:
    feed(engine, clock, Status.UNKNOWN)
    assert feed(engine, clock, Status.UNKNOWN).opened is not None


def test_failures_in_grace_are_recorded_but_not_counted(engine: IncidentEngine, store: Store,
                                                        clock: FakeClock) -> None:
    feed(engine, clock, Status.OK)
    engine.begin_grace("local", clock.now + timedelta(seconds=60))
    for _ in range(5):
        decision = feed(engine, clock, Status.CRITICAL)
        assert not decision.evaluated and decision.opened is None
    with store.session() as session:
        rows = queries.recent_results(session, "liveness", 10)
    assert [row.evaluated for row in rows[:5]] == [False] * 5
    clock.advance(60)
    feed(engine, clock, Status.CRITICAL)
    assert feed(engine, clock, Status.CRITICAL).opened is not None


def test_a_pass_ends_the_grace_of_that_check(engine: IncidentEngine, clock: FakeClock) -> None:
    feed(engine, clock, Status.OK)
    engine.begin_grace("local", clock.now + timedelta(minutes=10))
    assert feed(engine, clock, Status.CRITICAL).evaluated is False
    feed(engine, clock, Status.OK)
    assert feed(engine, clock, Status.CRITICAL).evaluated is True


def test_still_failing_open_incident_asks_for_remediation_until_escalated(
        engine: IncidentEngine, clock: FakeClock) -> None:
    feed(engine, clock, Status.CRITICAL)
    opened = feed(engine, clock, Status.CRITICAL).opened
    assert opened is not None
    assert feed(engine, clock, Status.CRITICAL).remediate == opened
    assert engine.escalate(opened, "budget spent") is not None
    assert engine.escalate(opened, "budget spent") is None
    assert feed(engine, clock, Status.CRITICAL).remediate is None


def test_severity_rises_with_the_worst_result(engine: IncidentEngine, clock: FakeClock) -> None:
    feed(engine, clock, Status.WARNING)
    opened = feed(engine, clock, Status.WARNING).opened
    feed(engine, clock, Status.CRITICAL)
    assert engine.incident(opened or 0).severity == "critical"


def test_for_opens_only_after_the_breach_has_held_that_long(engine: IncidentEngine,
                                                           clock: FakeClock) -> None:
    for _ in range(30):  # the first failing run, then 58 s more of them, every 2 s
        assert feed(engine, clock, Status.CRITICAL, "held").opened is None
    clock.advance(60)  # the next run comes 62 s later: 120 s since the breach began
    assert feed(engine, clock, Status.CRITICAL, "held").opened is not None


def test_for_restarts_its_clock_after_a_pass(engine: IncidentEngine, clock: FakeClock) -> None:
    feed(engine, clock, Status.CRITICAL, "held")
    clock.advance(100)
    feed(engine, clock, Status.OK, "held")
    feed(engine, clock, Status.CRITICAL, "held")
    clock.advance(100)
    assert feed(engine, clock, Status.CRITICAL, "held").opened is None
    clock.advance(30)
    assert feed(engine, clock, Status.CRITICAL, "held").opened is not None


def test_skipped_results_are_stored_never_counted_and_restart_the_window(
        engine: IncidentEngine, store: Store, clock: FakeClock) -> None:
    feed(engine, clock, Status.CRITICAL)
    skipped = CheckResult("liveness", "local", Status.UNKNOWN, None, "", "skipped: x", 0.0,
                          clock(), skipped=True)
    for _ in range(3):
        assert engine.record(skipped).opened is None
    if engine.writer is not None:
        # The first skip restarts the window (written at once); the next change nothing.
        assert engine.writer.pending == 2
        engine.writer.flush()
    with store.session() as session:
        assert [row.status for row in queries.recent_results(session, "liveness", 2)] == [
            "skipped", "skipped"]
        state = queries.check_state(session, "liveness", "local")
        assert state.consecutive_failures == 0 and state.failing_since is None
    # After the outage, one failure is one failure: failure_threshold 2 is not met by it.
    assert feed(engine, clock, Status.CRITICAL).opened is None
    assert feed(engine, clock, Status.CRITICAL).opened is not None


@pytest.mark.parametrize("rule", ["for: 10s", "failures: {count: 3, within: 5}"])
def test_for_and_x_of_y_start_again_after_skipped_runs(
        make_catalog: Callable[[str], Catalog], store: Store, clock: FakeClock,
        rule: str) -> None:
    catalog = make_catalog(f"""\
        version: 1
        targets: [{{name: local, url: "http://127.0.0.1:1"}}]
        checks: [{{name: latency, kind: http, target: local, {rule}}}]
        """)
    engine = IncidentEngine(catalog, store, clock)
    # Failing for 8 s (`for: 10s` not yet held), or 2 of the last 5 failed (3 needed)...
    feed(engine, clock, Status.CRITICAL, "latency")
    feed(engine, clock, Status.OK if "failures" in rule else Status.CRITICAL, "latency")
    feed(engine, clock, Status.CRITICAL, "latency")
    feed(engine, clock, Status.OK if "failures" in rule else Status.CRITICAL, "latency")
    # ...then the check is skipped for a minute while a dependency is down.
    for _ in range(30):
        clock.advance(2)
        engine.record(CheckResult("latency", "local", Status.UNKNOWN, None, "", "skipped: x",
                                  0.0, clock(), skipped=True))
    assert feed(engine, clock, Status.CRITICAL, "latency").opened is None


def test_a_window_still_filling_is_recorded_but_never_opens_an_incident(
        engine: IncidentEngine, store: Store, clock: FakeClock) -> None:
    for _ in range(5):
        clock.advance(2)
        decision = engine.record(CheckResult("liveness", "local", Status.UNKNOWN, None, "",
                                             "collecting samples", 1.0, clock(), counts=False))
        assert decision.opened is None and not decision.evaluated
    with store.session() as session:
        assert queries.check_state(session, "liveness", "local").consecutive_failures == 0


def no_data(engine: IncidentEngine, clock: FakeClock) -> None:
    clock.advance(2)
    decision = engine.record(CheckResult("liveness", "local", Status.OK, None, "",
                                         "no data: no observations", 1.0, clock(), counts=False))
    assert not decision.evaluated and decision.resolved is None


def test_no_data_neither_counts_toward_failure_nor_resolves(
        engine: IncidentEngine, store: Store, clock: FakeClock) -> None:
    feed(engine, clock, Status.CRITICAL)
    no_data(engine, clock)  # between two failures: transparent, no reset
    opened = feed(engine, clock, Status.CRITICAL).opened
    assert opened is not None
    for _ in range(3):
        no_data(engine, clock)  # a server with no traffic after a restart proves nothing
    assert open_incidents(store) == [opened]
    assert feed(engine, clock, Status.OK).resolved == opened


def test_no_data_does_not_end_a_grace(engine: IncidentEngine, store: Store,
                                      clock: FakeClock) -> None:
    feed(engine, clock, Status.CRITICAL)  # the state row exists
    engine.begin_grace("local", clock() + timedelta(minutes=5))
    no_data(engine, clock)
    with store.session() as session:
        assert queries.check_state(session, "liveness", "local").grace_until is not None
