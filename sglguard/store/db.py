"""Opening the store: engine, schema migrations on first use, transactions with retries."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.orm import Session, sessionmaker
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from sglguard.redact import scrub_statement

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


class StoreError(Exception):
    """The store cannot be opened or written; `transient` when trying again later may work
    (a database server not answering yet), not when the configuration is wrong."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


SCHEMA_HEAD = "0008"  # the newest migration; a test keeps it equal to Alembic's head


def _alembic_config() -> Any:
    from alembic.config import Config  # only when a migration runs: it costs ~11 MiB

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _current_revision(connection: Any) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.scalar(text("select version_num from alembic_version"))  # type: ignore[no-any-return]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets `sglguard history` read while the service writes; busy_timeout waits out locks.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: durable but for a power cut
    cursor.execute("PRAGMA foreign_keys=ON")
    # 1 MiB of page cache per connection, not SQLite's 2 MiB (each of a pool's connections
    # keeps its own): pages beyond it are read again from the kernel's file cache.
    cursor.execute("PRAGMA cache_size=-1024")
    cursor.close()


def _private_sqlite_file(url: str) -> None:
    """Create the database file 0600 before SQLite does (it would follow the umask, usually
    0644: results and incidents readable by every user); its -wal and -shm files take the
    file's mode."""
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    with contextlib.suppress(FileExistsError, FileNotFoundError, NotADirectoryError,
                             PermissionError, IsADirectoryError):  # SQLite says what is wrong
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))


def create_store_engine(url: str) -> Engine:
    try:
        if url.startswith("sqlite"):
            _private_sqlite_file(url)
            engine = create_engine(url, connect_args={"timeout": 10, "check_same_thread": False})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True, connect_args=_connect_args(url))
        # Every string written goes through the redaction boundary (secrets, NUL, escapes).
        event.listen(engine, "before_cursor_execute", scrub_statement, retval=True)
        return engine
    except (ArgumentError, NoSuchModuleError) as exc:
        raise StoreError(f"invalid store url: {exc}") from None
    except ModuleNotFoundError as exc:
        raise StoreError(
            f"store url needs the driver {exc.name!r}: pip install 'sglguard[postgres]'"
        ) from None


def _connect_args(url: str) -> dict[str, Any]:
    return {"connect_timeout": 10} if url.startswith("postgresql") else {}


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (creates it on first use).

    Several sglguard processes may start at once on one database: PostgreSQL serialises them
    with an advisory lock; on SQLite the loser of the race finds the schema made and goes on."""
    head = SCHEMA_HEAD
    for attempt in range(5):
        try:
            with engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    connection.execute(text("select pg_advisory_xact_lock(7147830)"))
                current = _current_revision(connection)
                if current == head:
                    return
                from alembic import command

                config = _alembic_config()
                config.attributes["connection"] = connection
                logger.info("store: migrating schema from %s to %s", current or "nothing", head)
                command.upgrade(config, "head")
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))  # another process is migrating: look again


def _migrate_in_child(url: str) -> None:
    # The URL may hold a password: it travels in the environment, never on a command line.
    done = subprocess.run(
        [sys.executable, "-m", "sglguard.store.db"], env={**os.environ, _URL_VARIABLE: url},
        capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise StoreError(f"schema migration failed: {done.stderr.strip()[-500:]}")


_URL_VARIABLE = "SGLGUARD_MIGRATE_URL"


class Store:
    """The database sglguard records into."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, *, migrate_apart: bool = False) -> Store:
        """Open the store, migrating its schema first if it is behind. `migrate_apart` runs
        the migration in a child process, so a long-running service never loads Alembic."""
        engine = create_store_engine(url)
        try:
            if migrate_apart:
                with engine.connect() as connection:
                    behind = _current_revision(connection) != SCHEMA_HEAD
                if behind:
                    _migrate_in_child(url)
            else:
                migrate(engine)
        except OperationalError as exc:
            engine.dispose()
            raise StoreError(f"cannot open store {_safe_url(engine)}: {exc.orig}",
                             transient=engine.dialect.name != "sqlite") from None
        return cls(engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on error."""
        with self._sessions() as session, session.begin():
            yield session

    def retrying(self) -> Retrying:
        """Retry policy for writes that hit a locked or briefly unreachable database."""
        return Retrying(
            stop=stop_after_attempt(4),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_exception_type(OperationalError),
            before_sleep=lambda state: logger.warning(
                "store write failed (attempt %s), retrying: %s",
                state.attempt_number, state.outcome.exception() if state.outcome else "",
            ),
            reraise=True,
        )

    def close(self) -> None:
        self.engine.dispose()


def _safe_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


if __name__ == "__main__":  # the child of Store.open(migrate_apart=True)
    try:
        migrate(create_store_engine(os.environ[_URL_VARIABLE]))
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
