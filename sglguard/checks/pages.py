"""One `GET /metrics` per target per tick: the metric and progress checks of a target that run
within `metrics_max_age` of each other share one fetched page and its parse."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit
from weakref import WeakKeyDictionary

from sglguard.checks.promql import Page, Scrape
from sglguard.client import SGLangClient, TargetError

if TYPE_CHECKING:
    from sglguard.config.models import TargetConfig


ERROR_MAX_AGE_S = 1.0


@dataclass(frozen=True)
class _Fetched:
    at: float
    page: Page | None
    error: TargetError | None


class _Slot:
    """The latest fetch of one target's page; one fetch at a time (the others wait for it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fetched: _Fetched | None = None
        self.fetches = 0


class SharedPages:
    """Short-lived pages by client (one client per target); a failed fetch is shared too, so a
    dead server is asked once per tick, not once per check."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._slots: WeakKeyDictionary[SGLangClient, _Slot] = WeakKeyDictionary()
        self._lock = threading.Lock()
        self._metrics_clients: dict[str, SGLangClient] = {}

    def page(self, client: SGLangClient, target: TargetConfig, timeout: float,
             max_age: float | None = None) -> Page:
        """The target's page, fetched unless one younger than its metrics_max_age (and than
        `max_age`, the caller's own bound) is there."""
        with self._lock:
            slot = self._slots.get(client)
            if slot is None:
                slot = self._slots[client] = _Slot()
        max_age = min(target.metrics_max_age.total_seconds(),
                      max_age if max_age is not None else float("inf"))
        with slot.lock:
            fetched = slot.fetched
            if fetched is not None and fetched.error is not None:
                # Shared by the checks that start together, no longer: a restarted server
                # must be read again at once.
                max_age = min(max_age, ERROR_MAX_AGE_S)
            if fetched is None or self.clock() - fetched.at > max_age:
                fetched = slot.fetched = self._fetch(client, target, timeout)
                slot.fetches += 1
        if fetched.error is not None:
            raise fetched.error
        assert fetched.page is not None
        return fetched.page

    def fetches(self, client: SGLangClient) -> int:
        """How many times the page of `client`'s target was fetched (for tests and benchmarks)."""
        slot = self._slots.get(client)
        return 0 if slot is None else slot.fetches

    def _fetch(self, client: SGLangClient, target: TargetConfig, timeout: float) -> _Fetched:
        try:
            if target.metrics_url is None:
                text = client.metrics_text(timeout=timeout)
            else:
                text = self._from_url(target.metrics_url, timeout)
        except TargetError as exc:
            return _Fetched(self.clock(), None, exc)
        return _Fetched(self.clock(), Page(text), None)

    def _from_url(self, url: str, timeout: float) -> str:
        """`metrics_url` (a proxy, a gateway's metrics port): no API key is sent there."""
        parts = urlsplit(url)
        base = f"{parts.scheme}://{parts.netloc}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        with self._lock:
            client = self._metrics_clients.get(base)
            if client is None:
                client = self._metrics_clients[base] = SGLangClient(base)
        response = client.probe("GET", path, timeout=timeout)
        if response.status != 200:
            raise TargetError(f"GET {url}: HTTP {response.status}")
        return response.text


PAGES = SharedPages()


def scrape(client: SGLangClient, target: TargetConfig, names: Iterable[str],
           timeout: float, interval: float) -> Scrape:
    """The families of `names` from the target's current page (fetched if none is fresh).
    A check never takes a page older than half its own interval: each of its runs sees a
    page of its own."""
    return PAGES.page(client, target, timeout, interval / 2).scrape(names)
