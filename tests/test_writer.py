"""Batched writes of quiet results: what is queued, when it reaches the store, and that nothing
is lost or misjudged on the way (a failing store, another process changing the state)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from sglguard.checks.base import Status
from sglguard.config.loader import ConfigError
from sglguard.config.models import Catalog
from sglguard.emulator import Emulator
from sglguard.engine import IncidentEngine
from sglguard.service import Service
from sglguard.store import Store, queries
from sglguard.store.models import CheckResultRow, CheckStateRow
from sglguard.store.writer import ResultWriter

from conftest import FakeClock, feed, wait_for

CATALOG = """\
version: 1
targets: [{name: local, url: "http://127.0.0.1:1"}]
checks:
  - {name: liveness, kind: http, target: local}
  - {name: sticky, kind: http, target: local, failure_threshold: 1, success_threshold: 2}
"""


class Ticks:
    """The writer's monotonic clock, moved by hand (the one faked boundary here)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ticks() -> Ticks:
    return Ticks()


@pytest.fixture
def writer(store: Store, ticks: Ticks) -> ResultWriter:
    return ResultWriter(store, interval=10.0, monotonic=ticks)


@pytest.fixture
def engine(make_catalog: Callable[[str], Catalog], store: Store, clock: FakeClock,
           writer: ResultWriter) -> IncidentEngine:
    return IncidentEngine(make_catalog(CATALOG), store, clock, writer=writer)


def stored(store: Store, check: str = "liveness") -> list[str]:
    """Statuses of the check's stored results, oldest first."""
    with store.session() as session:
        return [row.status for row in reversed(queries.recent_results(session, check, 1000))]


def state(store: Store, check: str = "liveness") -> Any:
    with store.session() as session:
        return queries.check_state(session, check, "local")


def test_quiet_results_are_queued_and_written_together(engine: IncidentEngine, store: Store,
                                                       clock: FakeClock,
                                                       writer: ResultWriter) -> None:
    feed(engine, clock, Status.OK)  # the first result reads and writes the state at once
    assert stored(store) == ["ok"] and writer.pending == 0
    for _ in range(5):
        assert feed(engine, clock, Status.OK).evaluated
    assert writer.pending == 5
    assert stored(store) == ["ok"] and state(store).consecutive_successes == 1
    assert writer.flush()
    assert writer.pending == 0 and stored(store) == ["ok"] * 6
    written = state(store)
    assert written.consecutive_successes == 6 and written.recent == "oooooo"
    assert written.last_result_at == clock()


def test_the_run_that_finds_the_queue_due_writes_it(engine: IncidentEngine, store: Store,
                                                    clock: FakeClock, writer: ResultWriter,
                                                    ticks: Ticks) -> None:
    feed(engine, clock, Status.OK)
    feed(engine, clock, Status.OK)
    ticks.now += 9.9
    feed(engine, clock, Status.OK)
    assert writer.pending == 2
    ticks.now += 0.2  # the oldest queued row has now waited the interval
    feed(engine, clock, Status.OK)
    assert writer.pending == 0 and stored(store) == ["ok"] * 4


def test_a_failure_is_written_at_once_after_what_was_queued(engine: IncidentEngine,
                                                            store: Store, clock: FakeClock,
                                                            writer: ResultWriter) -> None:
    for _ in range(3):
        feed(engine, clock, Status.OK)
    decision = feed(engine, clock, Status.CRITICAL, "liveness")
    assert writer.pending == 0
    assert stored(store) == ["ok", "ok", "ok", "critical"]
    with store.session() as session:  # row order is run order
        rows = session.query(CheckResultRow).order_by(CheckResultRow.id).all()
        assert [row.started_at for row in rows] == sorted(row.started_at for row in rows)
    assert state(store).consecutive_failures == 1 and decision.evaluated
    feed(engine, clock, Status.OK)  # back to OK: written at once, the state was not quiet
    assert writer.pending == 0 and state(store).status == "ok"


def test_an_incident_opens_and_resolves_as_without_batching(engine: IncidentEngine,
                                                            store: Store, clock: FakeClock,
                                                            writer: ResultWriter) -> None:
    for _ in range(3):
        feed(engine, clock, Status.OK, "sticky")
    opened = feed(engine, clock, Status.CRITICAL, "sticky").opened
    assert opened is not None
    assert feed(engine, clock, Status.OK, "sticky").resolved is None  # success_threshold: 2
    assert feed(engine, clock, Status.OK, "sticky").resolved == opened
    assert writer.pending == 0 and stored(store, "sticky") == ["ok"] * 3 + ["critical"] + [
        "ok"] * 2


def test_rows_are_kept_while_the_store_refuses_them(engine: IncidentEngine, store: Store,
                                                   clock: FakeClock, writer: ResultWriter,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    feed(engine, clock, Status.OK)
    for _ in range(3):
        feed(engine, clock, Status.OK)
    with store.engine.begin() as connection:
        connection.execute(text("alter table check_results rename to check_results_gone"))
    with caplog.at_level(logging.ERROR, logger="sglguard.store.writer"):
        assert not writer.flush()
    assert writer.pending == 3
    assert "could not write 3 check results, 3 held" in caplog.text
    feed(engine, clock, Status.OK)  # a run while the store is down still queues
    with store.engine.begin() as connection:
        connection.execute(text("alter table check_results_gone rename to check_results"))
    assert writer.flush() and writer.pending == 0
    assert stored(store) == ["ok"] * 5 and state(store).consecutive_successes == 5


def test_the_oldest_rows_go_first_when_the_store_stays_down(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    writer = ResultWriter(store, limit=3)
    with caplog.at_level(logging.ERROR, logger="sglguard.store.writer"):
        for number in range(5):
            writer.add({"message": str(number)})
    assert writer.pending == 3 and writer.dropped == 2
    assert "oldest check results dropped" in caplog.text


def test_a_state_changed_by_another_process_is_read_again(
        engine: IncidentEngine, make_catalog: Callable[[str], Catalog], store: Store,
        clock: FakeClock, writer: ResultWriter) -> None:
    feed(engine, clock, Status.OK, "sticky")
    feed(engine, clock, Status.OK, "sticky")  # queued, on the engine's copy of the state
    other = IncidentEngine(make_catalog(CATALOG), store, clock)  # a second sglguard
    opened = feed(other, clock, Status.CRITICAL, "sticky").opened
    assert opened is not None
    assert writer.flush()  # the queued counters no longer apply: the stored state is not quiet
    assert state(store, "sticky").incident_id == opened
    assert feed(engine, clock, Status.OK, "sticky").resolved is None  # read from the store
    assert feed(engine, clock, Status.OK, "sticky").resolved == opened


def liveness_service(make_catalog: Callable[[str], Catalog], store: Store, emulator: Emulator,
                     flush_interval: str) -> Service:
    """A service with one `liveness` check every 0.2 s on the emulator."""
    return Service(make_catalog(f"""\
        version: 1
        store: {{flush_interval: {flush_interval}}}
        targets: [{{name: local, url: "{emulator.url}"}}]
        checks: [{{name: liveness, kind: http, target: local, interval: 0.2s, timeout: 1s}}]
        """), store)


def test_stopping_the_service_writes_what_is_queued(
        make_catalog: Callable[[str], Catalog], store: Store, emulator: Emulator) -> None:
    service = liveness_service(make_catalog, store, emulator, "5m")
    assert service.writer is not None
    service.start()
    wait_for(lambda: service.writer is not None and service.writer.pending >= 4)
    service.stop()
    assert service.writer.pending == 0 and len(stored(store)) >= 4


def test_a_zero_flush_interval_writes_every_result_at_once(
        make_catalog: Callable[[str], Catalog], store: Store, emulator: Emulator) -> None:
    service = liveness_service(make_catalog, store, emulator, "0s")
    assert service.writer is None and service.engine.writer is None
    for _ in range(3):
        service.run_check("liveness")
    assert stored(store) == ["ok"] * 3


def test_a_flush_interval_over_five_minutes_is_refused(
        make_catalog: Callable[[str], Catalog]) -> None:
    with pytest.raises(ConfigError, match=r"store\.flush_interval.*5 minutes"):
        make_catalog("version: 1\nstore: {flush_interval: 10m}\n")


def test_batches_and_stale_states_on_postgresql(postgres_url: str,
                                                make_catalog: Callable[[str], Catalog],
                                                clock: FakeClock) -> None:
    store = Store.open(postgres_url)
    try:
        writer = ResultWriter(store, interval=3600.0)
        engine = IncidentEngine(make_catalog(CATALOG), store, clock, writer=writer)
        for _ in range(3):
            feed(engine, clock, Status.OK, "sticky")
        assert writer.pending == 2
        other = IncidentEngine(make_catalog(CATALOG), store, clock)
        opened = feed(other, clock, Status.CRITICAL, "sticky").opened  # flushes nothing of ours
        assert writer.flush() and stored(store, "sticky") == ["ok", "ok", "ok", "critical"]
        assert state(store, "sticky").incident_id == opened  # the stale counters were not applied
        feed(engine, clock, Status.OK, "sticky")
        assert feed(engine, clock, Status.OK, "sticky").resolved == opened
    finally:
        store.close()


def rows(count: int) -> list[dict[str, Any]]:
    """Result rows of `liveness`, one second apart."""
    from datetime import UTC, datetime, timedelta

    from sglguard.checks.base import CheckResult

    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [queries.result_values(CheckResult("liveness", "local", Status.OK, 0.1, "s", "", 1.0,
                                              start + timedelta(seconds=n)), evaluated=False)
            for n in range(count)]


def test_a_full_batch_is_written_by_one_run_without_waiting_for_the_interval(
        store: Store) -> None:
    ticks = Ticks()
    writer = ResultWriter(store, interval=30.0, batch=3, monotonic=ticks)
    told = [writer.add(row) for row in rows(5)]
    assert told == [False, False, True, False, False]  # one run is told; the others go on
    assert writer.flush() and writer.pending == 0
    assert len(stored(store)) == 5


def test_a_drop_says_whether_the_store_refused_or_results_came_too_fast(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    writer = ResultWriter(store, limit=2, batch=2)
    with caplog.at_level(logging.ERROR, logger="sglguard.store.writer"):
        for row in rows(3):
            writer.add(row)
    assert "results came faster than the store took them" in caplog.text
    caplog.clear()
    with store.engine.begin() as connection:
        connection.execute(text("alter table check_results rename to check_results_gone"))
    with caplog.at_level(logging.ERROR, logger="sglguard.store.writer"):
        assert not writer.flush()
        for row in rows(1000):
            writer.add(row)
    assert "the store refused the last write" in caplog.text


def stored_state(store: Store, check: str) -> Any:
    """The check's state row as stored, None when it has none."""
    with store.session() as session:
        return session.get(CheckStateRow, check)


def test_after_priming_a_new_checks_first_results_are_queued_and_its_state_made_by_the_flush(
        engine: IncidentEngine, store: Store, clock: FakeClock, writer: ResultWriter) -> None:
    engine.prime()
    for _ in range(3):
        assert feed(engine, clock, Status.OK).evaluated
    assert writer.pending == 3 and stored(store) == [] and stored_state(store, "liveness") is None
    assert writer.flush()
    made = stored_state(store, "liveness")
    assert stored(store) == ["ok"] * 3
    assert (made.target, made.status, made.consecutive_successes, made.recent) == (
        "local", "ok", 3, "ooo")


def test_a_state_another_process_made_before_the_flush_is_kept(
        make_catalog: Callable[[str], Catalog], store: Store, engine: IncidentEngine,
        clock: FakeClock, writer: ResultWriter) -> None:
    engine.prime()
    feed(engine, clock, Status.OK, "sticky")  # queued, with a state to be made by the flush
    other = IncidentEngine(make_catalog(CATALOG), store, clock)  # a second sglguard
    opened = feed(other, clock, Status.CRITICAL, "sticky").opened
    assert opened is not None
    assert writer.flush()  # the row exists and is not quiet: neither made again nor updated
    assert stored_state(store, "sticky").incident_id == opened
    assert stored(store, "sticky") == ["ok", "critical"]
    assert feed(engine, clock, Status.OK, "sticky").resolved is None  # read from the store
    assert feed(engine, clock, Status.OK, "sticky").resolved == opened


def test_priming_reads_stored_states_so_the_first_result_after_a_restart_is_queued(
        make_catalog: Callable[[str], Catalog], store: Store, engine: IncidentEngine,
        clock: FakeClock, writer: ResultWriter) -> None:
    feed(engine, clock, Status.OK)  # written at once: this engine had no copy of the state
    assert writer.pending == 0
    restarted = IncidentEngine(make_catalog(CATALOG), store, clock, writer=writer)
    restarted.prime()
    feed(restarted, clock, Status.OK)
    assert writer.pending == 1 and stored(store) == ["ok"]


def test_new_states_made_by_the_flush_on_postgresql(postgres_url: str,
                                                    make_catalog: Callable[[str], Catalog],
                                                    clock: FakeClock) -> None:
    store = Store.open(postgres_url)
    try:
        writer = ResultWriter(store, interval=3600.0)
        engine = IncidentEngine(make_catalog(CATALOG), store, clock, writer=writer)
        engine.prime()
        for _ in range(2):
            feed(engine, clock, Status.OK)
            feed(engine, clock, Status.OK, "sticky")
        other = IncidentEngine(make_catalog(CATALOG), store, clock)
        opened = feed(other, clock, Status.CRITICAL, "sticky").opened  # makes sticky's row
        assert writer.pending == 4 and stored_state(store, "liveness") is None
        assert writer.flush()
        assert stored_state(store, "liveness").consecutive_successes == 2
        assert stored_state(store, "sticky").incident_id == opened
        assert stored(store, "sticky") == ["ok", "ok", "critical"]
    finally:
        store.close()


def test_a_first_round_is_one_batch_written_within_a_second_not_an_interval(
        engine: IncidentEngine, store: Store, clock: FakeClock, writer: ResultWriter,
        ticks: Ticks) -> None:
    engine.prime()
    feed(engine, clock, Status.OK)
    feed(engine, clock, Status.OK, "sticky")
    writer.flush_if_due()  # the timer looks at once: not due yet
    assert writer.pending == 2 and stored(store) == []
    ticks.now += 1.0  # the timer's next look: new checks' first results go now
    assert writer.flush_if_due()
    assert writer.pending == 0 and stored(store) == ["ok"] and stored(store, "sticky") == ["ok"]
    feed(engine, clock, Status.OK)  # a known state's quiet result waits for the interval
    ticks.now += 1.0
    writer.flush_if_due()
    assert writer.pending == 1
    ticks.now += 9.0
    assert writer.flush_if_due() and writer.pending == 0
