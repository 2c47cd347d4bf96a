"""Host names looked up within a deadline.

`getaddrinfo` cannot be interrupted: a resolver that does not answer holds the calling thread
for as long as its own timeouts and retries allow (tens of seconds). Each lookup therefore runs
in a thread of its own while the fetch waits no longer than its time left. A lookup in flight is
shared by every fetch that needs the same name, so a hung resolver holds one thread per name,
however many checks ask.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

AddrInfo = tuple[Any, ...]  # as socket.getaddrinfo returns them
_Key = tuple[str, int | None, int, int]


class ResolveTimeout(Exception):
    """A host name was not resolved within the time left."""

    def __init__(self, host: str, waited: float) -> None:
        super().__init__(f"resolving the host name {host!r} did not finish within {waited:g} s")
        self.host = host


class Resolver:
    """Looks names up in threads of their own; one lookup in flight per name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[_Key, Future[list[AddrInfo]]] = {}

    def lookup(self, host: str, port: int | None, family: int, kind: int, timeout: float | None,
               wake: Callable[[threading.Event], None] | None = None) -> list[AddrInfo]:
        """What getaddrinfo answers for `host`, or ResolveTimeout after `timeout` seconds (or
        once `wake` sets the event it was handed: the fetch was abandoned). socket.gaierror as
        getaddrinfo raises it."""
        if _numeric(host):  # nothing to ask a resolver: no thread
            return socket.getaddrinfo(host, port, family, kind)
        future = self._start((host, port, family, kind))
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if wake is not None:
            wake(done)
        done.wait(timeout)
        if not future.done():
            raise ResolveTimeout(host, timeout or 0.0)
        return future.result()

    def in_flight(self) -> int:
        """Lookups still waiting for the system's resolver."""
        with self._lock:
            return len(self._pending)

    def _start(self, key: _Key) -> Future[list[AddrInfo]]:
        with self._lock:
            future = self._pending.get(key)
            if future is None:
                future = self._pending[key] = Future()
                threading.Thread(target=self._resolve, args=(key, future), daemon=True,
                                 name=f"sglguard-resolve-{key[0][:40]}").start()
            return future

    def _resolve(self, key: _Key, future: Future[list[AddrInfo]]) -> None:
        host, port, family, kind = key
        try:
            future.set_result(socket.getaddrinfo(host, port, family, kind))
        except BaseException as exc:  # handed to every waiter
            future.set_exception(exc)
        finally:
            with self._lock:
                if self._pending.get(key) is future:
                    del self._pending[key]


def _numeric(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


RESOLVER = Resolver()
