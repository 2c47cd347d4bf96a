"""Loopback HTTP servers that misbehave on purpose: slow, endless, huge, compressed bombs.

sglguard's tests and `benchmarks/hostile.py` point checks at these to see that every run stays
within its deadline and size cap. Each speaks just enough raw HTTP/1.1 for its misbehaviour.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import zlib
from collections.abc import Callable
from functools import cache

Behaviour = Callable[[socket.socket, threading.Event], None]


class HostileServer:
    """A loopback server answering every request with one misbehaviour."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.stopping = threading.Event()
        self.requests = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._accept, name="hostile", daemon=True)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        self._thread.join(timeout=2)
        self._listener.close()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(5)
            _read_request(conn)
            self.requests += 1
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.behaviour(conn, self.stopping)


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def drip(text: bytes, pace: float = 1.0) -> Behaviour:
    """Send `text` one byte every `pace` seconds (a slow-loris answer), then keep dripping."""

    def behave(conn: socket.socket, stopping: threading.Event) -> None:
        index = 0
        while not stopping.is_set():
            conn.sendall(text[index:index + 1] if index < len(text) else b"#")
            index += 1
            stopping.wait(pace)

    return behave


def slow_headers(pace: float = 1.0) -> Behaviour:
    """Headers that never finish: one byte a second."""
    return drip(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Filler: " + b"a" * 10000,
                pace)


def slow_body(pace: float = 1.0) -> Behaviour:
    """Headers at once, then a body of one byte a second."""

    def behave(conn: socket.socket, stopping: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 1000000\r\n\r\n")
        drip(b"ok", pace)(conn, stopping)

    return behave


def endless(line: bytes = b"# endless filler line of a metrics page\n") -> Behaviour:
    """Headers at once, then a body that never ends, as fast as the reader takes it."""
    block = line * max(1, 65536 // len(line))

    def behave(conn: socket.socket, stopping: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                     b"Connection: close\r\n\r\n")
        while not stopping.is_set():
            conn.sendall(block)

    return behave


def huge(size: int, status: int = 200) -> Behaviour:
    """An answer of `size` bytes with a Content-Length, sent fast."""
    block = b"x" * 65536

    def behave(conn: socket.socket, stopping: threading.Event) -> None:
        conn.sendall(f"HTTP/1.1 {status} OK\r\nContent-Type: text/plain\r\n"
                     f"Content-Length: {size}\r\n\r\n".encode())
        left = size
        while left > 0 and not stopping.is_set():
            conn.sendall(block[:min(left, len(block))])
            left -= len(block)

    return behave


@cache
def gzip_of_zeros(size: int) -> bytes:
    """`size` zero bytes gzipped (about a thousandth of `size`)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    parts = [packer.compress(block) for _ in range(size // len(block))]
    parts.append(packer.compress(bytes(size % len(block))))
    parts.append(packer.flush())
    return b"".join(parts)


def gzip_bomb(size: int) -> Behaviour:
    """A small gzip answer that unpacks to `size` bytes."""
    return answer(200, gzip_of_zeros(size), headers={"Content-Encoding": "gzip"})


def answer(status: int, body: bytes, content_type: str = "text/plain",
           headers: dict[str, str] | None = None) -> Behaviour:
    """One plain answer, sent at once (for pages with odd content: markup, NUL, NaN...)."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n").encode()

    def behave(conn: socket.socket, _stopping: threading.Event) -> None:
        conn.sendall(head + body)

    return behave


def redirect(location: str, status: int = 302) -> Behaviour:
    """A redirect to `location`."""
    return answer(status, b"", headers={"Location": location})


def wait_started(server: HostileServer, timeout: float = 5.0) -> bool:
    """Whether the server has taken a request within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.requests:
            return True
        time.sleep(0.02)
    return False
