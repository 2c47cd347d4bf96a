"""Shared fixtures: real loopback servers, real SQLite files, a controllable clock."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from sglguard.checks.base import CheckResult, Status
from sglguard.config.loader import parse_catalog
from sglguard.config.models import Catalog
from sglguard.emulator import Emulator, EmulatorOptions
from sglguard.engine import Decision, IncidentEngine
from sglguard.store import Store

FIXTURES = Path(__file__).parent / "fixtures"
PYTHON = sys.executable
POSTGRES = os.environ.get("SGLGUARD_TEST_POSTGRES",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, every: float = 0.05) -> Any:
    """Poll until `predicate` returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(every)


class FakeClock:
    """The one faked boundary for time: a clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def feed(engine: IncidentEngine, clock: FakeClock, status: Status,
         check: str = "liveness") -> Decision:
    """Move the clock 2 s and hand the engine one result of `check` on target `local`."""
    clock.advance(2)
    return engine.record(CheckResult(check, "local", status, 1.0, "s", status.label, 1.0,
                                     clock()))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    server = Emulator(EmulatorOptions(port=0, health_latency=0.01))
    server.start()
    yield server
    server.stop()


StartEmulator = Callable[..., Emulator]


@pytest.fixture
def start_emulator() -> Iterator[StartEmulator]:
    """Start emulators on free loopback ports; stop them all after the test."""
    started: list[Emulator] = []

    def start(
        exit_fn: Callable[[int], object] | None = None,
        clock: Callable[[], float] | None = None,
        **options: Any,
    ) -> Emulator:
        # No warm-up request unless asked: a test counts exactly what it sent.
        settings: dict[str, Any] = {"port": 0, "health_latency": 0.02,
                                    "skip_server_warmup": True, **options}
        extra: dict[str, Any] = {"health_check_timeout": 0.2}
        if exit_fn is not None:
            extra["exit_fn"] = exit_fn
        if clock is not None:
            extra["clock"] = clock
        emulator = Emulator(EmulatorOptions(**settings), **extra)
        emulator.start()
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path / 'sglguard.db'}")
    yield opened
    opened.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema in the local PostgreSQL server, dropped afterwards."""
    admin = create_engine(POSTGRES)
    schema = f"sglguard_test_{uuid.uuid4().hex[:8]}"
    try:
        with admin.begin() as connection:
            connection.execute(text(f"create schema {schema}"))
    except OperationalError as exc:
        admin.dispose()
        if os.environ.get("SGLGUARD_REQUIRE_POSTGRES"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES}: {exc.orig}")
    yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(text(f"drop schema {schema} cascade"))
    admin.dispose()


@pytest.fixture
def make_catalog(tmp_path: Path) -> Callable[[str], Catalog]:
    """Write catalog text to a file in tmp_path and load it (dedented)."""

    def make(text: str) -> Catalog:
        path = tmp_path / "sglguard.yaml"
        path.write_text(textwrap.dedent(text))
        return parse_catalog(path.read_text(), path)

    return make


Reply = tuple[int, str, bytes]  # status, content type, body
Request = tuple[str, str, dict[str, str], bytes]  # method, path, headers, body


class Loopback:
    """A real HTTP/1.1 server on loopback for tests: `respond` answers each request, and every
    answer goes out in one write (no delayed-ACK stalls); `requests` records what came in."""

    def __init__(self, respond: Callable[[Request], Reply]) -> None:
        self.requests: list[Request] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = (self.command, self.path, dict(self.headers),
                           self.rfile.read(length) if length else b"")
                owner.requests.append(request)
                status, content_type, body = respond(request)
                head = (f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n").encode()
                self.wfile.write(head + body)

            do_GET = do_POST = do_DELETE = do_PUT = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FixtureServer(Loopback):
    """Serves a recorded file (its `body`, which a test may change) on every request."""

    def __init__(self, body: bytes, status: int = 200) -> None:
        self.body, self.status = body, status
        super().__init__(lambda _request: (self.status, "text/plain", self.body))


@pytest.fixture
def fixture_server() -> Iterator[Callable[[str], FixtureServer]]:
    servers: list[FixtureServer] = []

    def serve(name: str) -> FixtureServer:
        server = FixtureServer((FIXTURES / name).read_bytes())
        servers.append(server)
        return server

    yield serve
    for server in servers:
        server.close()


def emulator_command(port: int, *extra: str) -> list[str]:
    return [PYTHON, "-m", "sglguard", "emulator", "--port", str(port),
            "--health-latency", "0.02", *extra]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class ServiceProcess:
    """`sglguard run` as a child process; one a failed test left running is killed after it
    (see `no_service_left`)."""

    started: ClassVar[list[ServiceProcess]] = []

    def __init__(self, catalog: Path, log: str = "service.log",
                 database: str = "sglguard-e2e.db", url: str | None = None) -> None:
        self.catalog = catalog
        self.log = (catalog.parent / log).open("ab")
        self.process = subprocess.Popen(
            [PYTHON, "-m", "sglguard", "--log-level", "debug", "run", "--config", str(catalog)],
            stdout=self.log, stderr=subprocess.STDOUT)
        ServiceProcess.started.append(self)
        self.database = create_engine(url or f"sqlite:///{catalog.parent / database}")

    def query(self, sql: str) -> list[Any]:
        try:
            with self.database.connect() as connection:
                return list(connection.execute(text(sql)))
        except Exception:
            return []  # not migrated yet

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed."""
        self.process.kill()
        self.process.wait(timeout=10)
        self.log.close()
        self.database.dispose()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=10)
        self.log.close()
        self.database.dispose()
        return code


@pytest.fixture(autouse=True)
def no_service_left() -> Iterator[None]:
    """Kill any `sglguard run` child a test started and did not stop (a failed wait)."""
    yield
    while ServiceProcess.started:
        child = ServiceProcess.started.pop().process
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)

