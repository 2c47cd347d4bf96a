"""The store: schema by migration on first use, UTC times, SQLite and PostgreSQL."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import StatementError

from sglguard.checks.base import CheckResult, Status
from sglguard.store import Store, StoreError, queries
from sglguard.store.db import MIGRATIONS
from sglguard.store.models import CheckResultRow

HEAD = ScriptDirectory(str(MIGRATIONS)).get_current_head()
TABLES = {"check_samples", "check_results", "check_states", "incidents", "incident_events",
          "remediation_runs",
          "notification_attempts", "alembic_version"}


def result(at: datetime, status: Status = Status.OK) -> CheckResult:
    return CheckResult("liveness", "local", status, 0.5, "s", "fine", 1.0, at)


def test_first_use_creates_the_schema_by_migration(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    Store.open(url).close()
    engine = create_engine(url)
    assert set(inspect(engine).get_table_names()) >= TABLES
    with engine.connect() as connection:
        assert connection.scalar(text("select version_num from alembic_version")) == HEAD
    engine.dispose()


def test_a_store_made_by_an_older_release_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(text(
            "insert into check_states (check_name, target, status, consecutive_failures, "
            "consecutive_successes) values ('liveness', 'local', 'critical', 2, 0)"))
    engine.dispose()
    store = Store.open(url)
    with store.session() as session:
        state = queries.check_state(session, "liveness", "local")
        assert (state.consecutive_failures, state.failing_since) == (2, None)
    with store.engine.connect() as connection:
        assert connection.scalar(text("select version_num from alembic_version")) == HEAD
    store.close()


def test_opening_again_keeps_what_was_stored(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'again.db'}"
    first = Store.open(url)
    with first.session() as session:
        queries.add_result(session, result(datetime.now(UTC)))
    first.close()
    second = Store.open(url)
    with second.session() as session:
        assert len(queries.recent_results(session, "liveness", 10)) == 1
    second.close()


def test_times_come_back_in_utc_whatever_zone_went_in(store: Store) -> None:
    local = datetime(2026, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=-5)))
    with store.session() as session:
        queries.add_result(session, result(local))
    with store.session() as session:
        row = queries.recent_results(session, None, 1)[0]
    assert row.started_at == datetime(2026, 3, 1, 14, 30, tzinfo=UTC)
    assert row.started_at.tzinfo == UTC


def test_naive_times_are_refused(store: Store) -> None:
    with pytest.raises(StatementError, match="naive datetime"), store.session() as session:
        queries.add_result(session, result(datetime(2026, 1, 1)))
        session.flush()


def test_unreachable_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open store"):
        Store.open(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")


def test_unknown_driver_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="invalid store url"):
        Store.open("nosuchdb://somewhere/x")


def test_postgresql_store_migrates_and_round_trips(postgres_url: str) -> None:
    store = Store.open(postgres_url)
    at = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    with store.session() as session:
        queries.add_result(session, result(at, Status.CRITICAL))
        state = queries.check_state(session, "liveness", "local")
        state.consecutive_failures = 2
    with store.session() as session:
        row = session.query(CheckResultRow).one()
        assert (row.status, row.started_at, row.value) == ("critical", at, 0.5)
        assert queries.check_state(session, "liveness", "local").consecutive_failures == 2
    assert set(inspect(store.engine).get_table_names()) >= TABLES
    store.close()
    Store.open(postgres_url).close()  # a second start finds the schema current


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_rows_from_before_agents_were_named_keep_no_agent_and_new_ones_name_theirs(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = (f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite"
           else request.getfixturevalue("postgres_url"))
    engine = create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0007")
        connection.execute(text(
            "insert into check_results (check_name, target, status, unit, message, "
            "duration_ms, started_at, evaluated) values ('liveness', 'local', 'ok', 's', "
            "'old', 1.0, '2026-05-01 08:00:00', true)"))
    store = Store.open(url)
    with store.session() as session:
        queries.add_result(session, result(datetime(2026, 5, 1, 8, 1, tzinfo=UTC)),
                           agent="gpu-a")
        queries.add_result(session, result(datetime(2026, 5, 1, 8, 2, tzinfo=UTC)))
    with store.session() as session:
        agents = [row.agent for row in session.query(CheckResultRow).order_by(
            CheckResultRow.id)]
    store.close()
    assert agents == [None, "gpu-a", socket.gethostname()]
    with engine.begin() as connection:  # and the step back works on both backends
        config.attributes["connection"] = connection
        command.downgrade(config, "0007")
        assert "agent" not in {column["name"] for column in
                               inspect(connection).get_columns("check_results")}
    engine.dispose()


def test_an_agent_named_in_the_environment_is_named_on_its_rows_and_claims(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from sglguard.agents import Agents

    monkeypatch.setenv("SGLGUARD_AGENT", "rack4:gpu-a")  # a colon would split claim names
    with store.session() as session:
        queries.add_result(session, result(datetime(2026, 5, 1, 8, 1, tzinfo=UTC)))
    with store.session() as session:
        assert [row.agent for row in session.query(CheckResultRow)] == ["rack4-gpu-a"]
    agents = Agents(store)
    agents.register(["local"])
    assert agents.host == "rack4-gpu-a"
    assert agents.name.startswith("rack4-gpu-a:")


def test_the_schema_head_known_without_alembic_is_alembics_head() -> None:
    from sglguard.store.db import SCHEMA_HEAD

    assert SCHEMA_HEAD == HEAD


def test_a_service_migrates_in_a_child_process_and_keeps_alembic_out(tmp_path: Path) -> None:
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'apart.db'}"
    probe = ("import sys; from sglguard.store import Store; "
             f"Store.open({url!r}, migrate_apart=True).close(); "
             "print(any(name.startswith('alembic') for name in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "False"
    engine = create_engine(url)
    with engine.connect() as connection:
        assert connection.scalar(text("select version_num from alembic_version")) == HEAD
    engine.dispose()


def test_postgresql_lease_goes_to_one_of_two_processes(postgres_url: str) -> None:
    from sglguard.rails import Leases

    first, second = Store.open(postgres_url), Store.open(postgres_url)
    now = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    try:
        won = [Leases(first, "a").claim("local", now, timedelta(minutes=5)),
               Leases(second, "b").claim("local", now, timedelta(minutes=5))]
        assert won == [True, False]
        assert Leases(second, "b").holder_of("local") == "a"
        assert Leases(second, "b").claim("local", now + timedelta(minutes=6),
                                         timedelta(minutes=5))
    finally:
        first.close()
        second.close()


def test_a_long_command_keeps_its_agent_alive_while_it_works(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import time
    from datetime import timedelta

    from sglguard import agents as agents_module
    from sglguard.agents import Agents
    from sglguard.clock import utcnow

    monkeypatch.setattr(agents_module, "HEARTBEAT", timedelta(seconds=0.05))
    now = {"at": utcnow()}
    worker = Agents(store, role="cli", clock=lambda: now["at"])
    worker.register(["local"])
    watcher = Agents(store, clock=lambda: now["at"])
    monkeypatch.setattr(agents_module, "_gone_here", lambda holder: False)  # as if elsewhere
    with worker.beating():
        now["at"] += timedelta(minutes=5)  # far past DEAD_AFTER since it registered
        deadline = time.monotonic() + 5
        while watcher.dead(worker.name) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not watcher.dead(worker.name)  # its beats say it works
    now["at"] += timedelta(minutes=5)
    assert watcher.dead(worker.name)  # silent once the command stopped beating
