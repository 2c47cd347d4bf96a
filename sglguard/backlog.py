"""Results the store refused while it was down: kept in order, in memory and bounded, and
written through the engine when the store answers again, so an outage loses nothing but what
overflows the bound (counted and said). The outage is sglguard's own trouble: logged once when
it begins and once when it ends, with counts, never as results of the server's checks."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError, IntegrityError

from sglguard.domain import CheckResult

logger = logging.getLogger(__name__)
LIMIT = 50_000  # about an hour of a hundred checks at 10 s


def store_down(exc: BaseException) -> bool:
    """The store could not be reached or written (not a bug, not a conflict)."""
    return isinstance(exc, DBAPIError) and not isinstance(exc, IntegrityError)


class Backlog:
    """Holds results while the store is down; `replay` writes them in order when it is back."""

    def __init__(self, record: Callable[[CheckResult], object], limit: int = LIMIT) -> None:
        self._record = record
        self._items: deque[CheckResult] = deque()
        self._limit = limit
        self._lock = threading.Lock()
        self.dropped = 0
        self.held = 0  # results held during the current outage
        self._since: float | None = None
        self.last_error = ""

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def outage(self) -> bool:
        return self._since is not None

    def hold(self, result: CheckResult, error: BaseException | None = None) -> None:
        """Keep the result (after those held before it); `error`: why the store refused it."""
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
                self.held = self.dropped = 0
                said = str(getattr(error, "orig", error) or "no answer").splitlines()
                self.last_error = (said[0] if said else "no answer")[:200]
                logger.error("store unavailable (%s): holding results in memory until it "
                             "answers again", self.last_error)
            if len(self._items) >= self._limit:
                self._items.popleft()
                self.dropped += 1
            self._items.append(result)
            self.held += 1

    def replay(self) -> bool:
        """Write what is held, oldest first; True when nothing is held any more."""
        while True:
            with self._lock:
                if not self._items:
                    break
                result = self._items[0]
            try:
                self._record(result)
            except Exception as exc:
                if not store_down(exc):
                    logger.exception("a held result of %s could not be written; dropped",
                                     result.check)
                    with self._lock:
                        self._items.popleft()
                        self.dropped += 1
                    continue
                return False
            with self._lock:
                if self._items and self._items[0] is result:
                    self._items.popleft()
        with self._lock:
            if self._since is not None:
                logger.warning("store available again after %.0f s: %s held results written, "
                               "%s dropped (over the bound of %s)",
                               time.monotonic() - self._since, self.held - self.dropped,
                               self.dropped, self._limit)
                self._since = None
        return True
