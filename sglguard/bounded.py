"""Deadlines and size caps for answers from servers sglguard does not control.

A socket timeout bounds each read, not the answer: a server sending one byte a second never
trips it. Each fetch therefore holds a `Guard` with a wall-clock deadline; one watchdog thread
shuts the guard's sockets down when the deadline passes, which ends any blocked read at once
(connect, headers or body). Host names are looked up within the same deadline
(`sglguard/resolver.py`). Bodies are read in chunks and decompressed here, with the cap
counted after decompression, so neither an endless stream nor a compression bomb grows memory
past the cap.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import logging
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family, create_connection

from sglguard.resolver import RESOLVER, ResolveTimeout

logger = logging.getLogger(__name__)

# An 8-DP SGLang /metrics page is about 0.4 MiB; 16 MiB leaves room for far larger
# deployments while keeping a hostile answer from taking the host's memory.
DEFAULT_MAX_ANSWER = 16 * 1024 * 1024
CHUNK = 64 * 1024
MAX_REDIRECTS = 5


class Overrun(Exception):
    """An answer went past its guard's deadline or size cap (`reason`: timeout or too_large)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Budget:
    """What a whole check run may spend on answers: a wall-clock deadline and a size cap."""

    deadline: float  # time.monotonic()
    max_bytes: int
    seconds: float  # the whole allowance, for messages


_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("budget", default=None)
_GUARD: contextvars.ContextVar[Guard | None] = contextvars.ContextVar("guard", default=None)


@contextlib.contextmanager
def budget(seconds: float, max_bytes: int = DEFAULT_MAX_ANSWER) -> Iterator[Budget]:
    """Every fetch inside shares this deadline and cap (a check run: its `timeout` and
    `max_answer`), however many requests it makes."""
    outer = _BUDGET.get()
    deadline = time.monotonic() + seconds
    if outer is not None:
        deadline = min(deadline, outer.deadline)
    current = Budget(deadline, max_bytes, seconds if outer is None or deadline < outer.deadline
                     else outer.seconds)
    token = _BUDGET.set(current)
    try:
        yield current
    finally:
        _BUDGET.reset(token)


class Guard:
    """One fetch: its deadline, its cap, and the connections it uses (shut at the deadline)."""

    def __init__(self, seconds: float, max_bytes: int | None = None) -> None:
        outer = _BUDGET.get()
        now = time.monotonic()
        self.allowed = max(seconds, 0.0)  # seconds, for messages: this fetch's or the run's
        self.deadline = now + self.allowed
        self.max_bytes = max_bytes if max_bytes is not None else (
            outer.max_bytes if outer is not None else DEFAULT_MAX_ANSWER)
        if outer is not None and outer.deadline < self.deadline:
            self.deadline, self.allowed = outer.deadline, outer.seconds
        self.expired: str | None = None  # why the guard ended early: "timeout" or "aborted"
        self.owner: object = None  # the client whose fetch this is
        self._socks: list[socket.socket] = []
        self._events: list[threading.Event] = []  # waits to end at expiry (a name lookup)
        self._lock = threading.Lock()

    def remaining(self) -> float:
        """Seconds left, at least a millisecond (a socket timeout of 0 means non-blocking)."""
        return max(self.deadline - time.monotonic(), 0.001)

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            expired = self.expired
        if expired:
            _shut(sock)

    def wake(self, event: threading.Event) -> None:
        """Set `event` when the guard expires (at once if it has)."""
        with self._lock:
            self._events.append(event)
            expired = self.expired
        if expired:
            event.set()

    def expire(self, why: str) -> None:
        with self._lock:
            if self.expired is not None:
                return
            self.expired = why
            socks, events = list(self._socks), list(self._events)
        for sock in socks:
            _shut(sock)
        for event in events:
            event.set()

    def check(self) -> None:
        """Raise Overrun if the deadline has passed (between reads of a stream)."""
        if self.expired is None and time.monotonic() >= self.deadline:
            self.expire("timeout")
        if self.expired is not None:
            raise Overrun("timeout", self.expired)


def _shut(sock: socket.socket) -> None:
    # A shut socket ends the read blocked on it in any thread; the reader then sees the
    # guard expired. (A connection may already have handed its socket to the response.)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class Watchdog:
    """One daemon thread that expires guards at their deadlines."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Guard]] = []
        self._live: dict[int, Guard] = {}
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, guard: Guard) -> int:
        with self._cond:
            key = next(self._order)
            heapq.heappush(self._heap, (guard.deadline, key, guard))
            self._live[key] = guard
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sglguard-deadlines",
                                                daemon=True)
                self._thread.start()
            elif self._heap[0][1] == key:
                self._cond.notify()
            return key

    def forget(self, key: int) -> None:
        with self._cond:
            self._live.pop(key, None)

    def in_flight(self) -> list[Guard]:
        with self._cond:
            return list(self._live.values())

    def _run(self) -> None:
        while True:
            due: list[Guard] = []
            with self._cond:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now
                                      or self._heap[0][1] not in self._live):
                    _, key, guard = heapq.heappop(self._heap)
                    if self._live.pop(key, None) is not None:
                        due.append(guard)
                if not due:
                    wait = self._heap[0][0] - now if self._heap else None
                    self._cond.wait(wait)
            for guard in due:
                guard.expire("timeout")


WATCHDOG = Watchdog()


@contextlib.contextmanager
def guarded(guard: Guard) -> Iterator[Guard]:
    """Watch `guard` while the block runs; connections opened inside attach to it."""
    key = WATCHDOG.watch(guard)
    token = _GUARD.set(guard)
    try:
        yield guard
    finally:
        _GUARD.reset(token)
        WATCHDOG.forget(key)


def _attach_current(sock: socket.socket | None) -> None:
    guard = _GUARD.get()
    if guard is not None and sock is not None:
        guard.attach(sock)


def _open(conn: HTTPConnection) -> socket.socket:
    """A connection's socket, with the name lookup and the connect inside the current guard's
    time (urllib3 would call getaddrinfo itself, which no deadline interrupts)."""
    guard = _GUARD.get()
    limit = guard.remaining() if guard is not None else (
        conn.timeout if isinstance(conn.timeout, int | float) else None)
    host = conn._dns_host  # the name to look up: the server's, or its proxy's
    try:
        found = RESOLVER.lookup(host.strip("[]"), conn.port, allowed_gai_family(),
                                socket.SOCK_STREAM, limit, guard.wake if guard else None)
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    except ResolveTimeout as exc:
        waited = f"{guard.allowed:g} s" if guard is not None else f"{limit or 0:g} s"
        raise ResolveTimeoutError(conn, f"resolving the host name {exc.host!r} did not finish "
                                        f"within {waited} (the lookup counts within the "
                                        "timeout)") from exc
    error: OSError = OSError(f"no address for {host!r}")
    for *_, address in found:
        left = guard.remaining() if guard is not None else conn.timeout
        try:
            # urllib3's own connect (socket options, source address), to a numeric address:
            # it looks nothing up again.
            sock = create_connection((str(address[0]), int(address[1])), left,
                                     source_address=conn.source_address,
                                     socket_options=conn.socket_options)
        except TimeoutError as exc:
            raise ConnectTimeoutError(conn, f"Connection to {conn.host} timed out. "
                                            f"(connect timeout={left})") from exc
        except OSError as exc:
            error = exc
            continue
        _attach_current(sock)  # before any TLS handshake, which a slow server may also drip
        return sock
    raise NewConnectionError(conn, f"Failed to establish a new connection: {error}")


class ResolveTimeoutError(ConnectTimeoutError):
    """urllib3's face of a ResolveTimeout: its message says the name lookup was late."""


class GuardedHTTPConnection(HTTPConnection):
    """Tells the fetch in progress which socket carries its request (new or reused)."""

    def _new_conn(self) -> socket.socket:
        return _open(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach_current(self.sock)
        super().request(*args, **kwargs)


class GuardedHTTPSConnection(HTTPSConnection):
    """As GuardedHTTPConnection, over TLS."""

    def _new_conn(self) -> socket.socket:
        return _open(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach_current(self.sock)
        super().request(*args, **kwargs)


class GuardedHTTPConnectionPool(HTTPConnectionPool):
    """A pool whose connections attach to the current guard."""

    ConnectionCls = GuardedHTTPConnection


class GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    """As GuardedHTTPConnectionPool, over TLS."""

    ConnectionCls = GuardedHTTPSConnection


POOL_CLASSES: dict[str, type[HTTPConnectionPool]] = {
    "http": GuardedHTTPConnectionPool, "https": GuardedHTTPSConnectionPool}


class _Raw(Protocol):
    headers: Any

    def read(self, amt: int | None = None, decode_content: bool | None = None) -> bytes: ...


class Decoder:
    """Undoes a Content-Encoding chunk by chunk, never producing more than the cap allows."""

    def __init__(self, encoding: str) -> None:
        names = [name.strip().lower() for name in encoding.split(",") if name.strip()]
        names = [name for name in names if name != "identity"]
        if len(names) > 1 or (names and names[0] not in ("gzip", "x-gzip", "deflate")):
            raise Overrun("encoding", f"unsupported content encoding {encoding[:40]!r}")
        self.name = names[0] if names else ""
        self._zlib: Any = None
        if self.name in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self.name == "deflate":
            self._zlib = zlib.decompressobj()
        self._first = True

    def decode(self, data: bytes, room: int) -> bytes:
        """At most `room` + 1 bytes of plain text from `data` (one more says: over the cap)."""
        if self._zlib is None:
            return data
        if self.name == "deflate" and self._first and data:
            self._first = False
            # Some servers send raw deflate without the zlib header.
            if data[0] & 0x0F != 8:
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            return bytes(self._zlib.decompress(data, room + 1))
        except zlib.error as exc:
            raise Overrun("encoding", f"answer is not valid {self.name}: {exc}") from None


def iter_capped(raw: _Raw, guard: Guard) -> Iterator[bytes]:
    """The body of `raw` decoded, chunk by chunk; Overrun past the guard's deadline or cap."""
    decoder = Decoder(raw.headers.get("Content-Encoding", "") or "")
    size = 0
    while True:
        guard.check()
        chunk = raw.read(CHUNK, decode_content=False)
        if not chunk:
            break
        plain = decoder.decode(chunk, guard.max_bytes - size)
        size += len(plain)
        if size > guard.max_bytes:
            raise Overrun("too_large", f"answer larger than {format_size(guard.max_bytes)}")
        if plain:
            yield plain
    guard.check()


def read_capped(raw: _Raw, guard: Guard) -> bytes:
    """The whole body of `raw`, decoded, or Overrun past the guard's deadline or cap."""
    return b"".join(iter_capped(raw, guard))


def format_size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} B"


# requests on top of the guards.


class GuardedAdapter(HTTPAdapter):
    """requests' adapter whose connections attach to the fetch's guard (see bounded.py)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = POOL_CLASSES

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        if hasattr(manager, "pool_classes_by_scheme"):
            manager.pool_classes_by_scheme = POOL_CLASSES
        return manager


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80,
                                                                    "https": 443}.get(scheme)


def send(session: requests.Session, prepared: requests.PreparedRequest,
         guard: Guard) -> requests.Response:
    """Send with the guard's time left; follow redirects only within the same scheme, host
    and port (a redirect elsewhere would carry the request, and its keys, to another server)."""
    for _ in range(MAX_REDIRECTS + 1):
        left = guard.remaining()
        response = session.send(prepared, timeout=(left, left), stream=True,
                                allow_redirects=False)
        if not response.is_redirect:
            return response
        response.close()
        target = urljoin(prepared.url or "", response.headers.get("location", ""))
        if origin(target) != origin(prepared.url or ""):
            scheme, host, port = origin(target)
            raise Overrun("redirect", f"redirected to another server ({scheme}://{host}:{port}), "
                                      "not followed")
        prepared = redirected(prepared, target, response.status_code)
    raise Overrun("redirect", f"more than {MAX_REDIRECTS} redirects")


def redirected(prepared: requests.PreparedRequest, url: str,
                status: int) -> requests.PreparedRequest:
    again = prepared.copy()
    again.prepare_url(url, None)
    if status == 303 or (status in (301, 302) and again.method == "POST"):
        again.method = "GET" if again.method != "HEAD" else "HEAD"
        again.body = None
        for name in ("Content-Length", "Content-Type", "Transfer-Encoding"):
            again.headers.pop(name, None)
    return again


def load(response: requests.Response, guard: Guard) -> requests.Response:
    """Read the body of a streamed response within the guard: what `.content` would do,
    bounded."""
    try:
        content = read_capped(response.raw, guard)
    except BaseException:
        response.close()
        raise
    response._content = content  # requests keeps the body here
    response._content_consumed = True  # type: ignore[attr-defined]
    response.raw.release_conn()
    return response


def lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """Lines of a server-sent event stream (its chunks are already capped in total)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8", errors="replace")
    if pending:
        yield pending.rstrip(b"\r").decode("utf-8", errors="replace")
