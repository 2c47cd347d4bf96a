"""Results the store refused while it was down: kept in order, in memory up to a bound and then
in a spill file beside the catalog (bounded too), and written through the engine when the store
answers again, so an outage loses nothing but what overflows both bounds (counted and said).
What was spilled survives a kill of sglguard and is written at its next start. Repairs made
during the outage (see sglguard.outage) take their place among the results, so they are
written after the results that led to them. The outage is sglguard's own trouble: logged once
when it begins and once when it ends, with counts, never as results of the server's checks."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from sqlalchemy.exc import DBAPIError, IntegrityError

from sglguard.domain import CheckResult, Status
from sglguard.spill import SpillFile

logger = logging.getLogger(__name__)
LIMIT = 50_000  # about an hour of a hundred checks at 10 s
SPILL_BATCH = 200  # spilled lines written before the file is cut to what is left


_said: set[str] = set()  # work that said it found the store down, in this outage
_said_lock = threading.Lock()


def store_down(exc: BaseException) -> bool:
    """The store could not be reached or written (not a bug, not a conflict)."""
    return isinstance(exc, DBAPIError) and not isinstance(exc, IntegrityError)


def failed(log: logging.Logger, what: str, exc: BaseException) -> None:
    """Log the failure of periodic work: where the store is down, one line per outage with no
    traceback (the outage is said once, by the backlog); anything else in full."""
    if not store_down(exc):
        log.error("%s", what, exc_info=exc)
        return
    with _said_lock:
        first = what not in _said
        _said.add(what)
    log.log(logging.WARNING if first else logging.DEBUG, "%s: the store is unavailable (%s)",
            what, str(getattr(exc, "orig", exc)).splitlines()[0][:200] if str(exc) else "")


class Held(Protocol):
    """Something other than a result kept in the backlog's order (a repair made meanwhile)."""

    @property
    def key(self) -> str: ...

    def ready(self) -> bool: ...

    def write(self) -> None: ...


def dump(result: CheckResult) -> str:
    return json.dumps({
        "check": result.check, "target": result.target, "status": result.status.label,
        "value": result.value, "unit": result.unit, "message": result.message,
        "duration_ms": result.duration_ms, "started_at": result.started_at.isoformat(),
        "skipped": result.skipped, "counts": result.counts})


def load(line: str) -> CheckResult | str:
    """A spilled result, or the key of a held item."""
    data = json.loads(line)
    if "held" in data:
        return str(data["held"])
    return CheckResult(
        check=data["check"], target=data["target"], status=Status.from_label(data["status"]),
        value=data["value"], unit=data["unit"], message=data["message"],
        duration_ms=data["duration_ms"], started_at=datetime.fromisoformat(data["started_at"]),
        skipped=data["skipped"], counts=data["counts"])


class Backlog:
    """Holds results while the store is down; `replay` writes them in order when it is back.

    With a `spill` file, at most `memory` items stay in memory: past that, everything held
    goes to the file (the oldest first), and new items follow them there until the file has
    been written out, so the order holds."""

    def __init__(self, record: Callable[[CheckResult], object], limit: int = LIMIT, *,
                 spill: SpillFile | None = None, memory: int = LIMIT) -> None:
        self._record = record
        self._items: deque[CheckResult | Held] = deque()
        self._limit = limit if spill is None else memory
        self._spill = spill
        self._actions: dict[str, Held] = {}  # held items that went to the file, by key
        self._lock = threading.Lock()
        self._replaying = threading.Lock()
        self.dropped = 0
        self.held = 0  # results held during the current outage
        self._since: float | None = None
        self.last_error = ""
        self._full = False  # the spill file refused items in this outage (said once)
        self._spilled = 0
        if spill is not None:
            try:
                self._spilled = len(spill.read())
            except OSError as exc:  # a link planted there, a folder, no permission
                logger.error("cannot read %s (%s): results held during an outage stay in "
                             "memory", spill.path, exc)
        if self._spilled:
            assert spill is not None
            self._since = time.monotonic()
            self.held = self._spilled
            logger.warning("%s results held while the store was down, before sglguard last "
                           "stopped, are in %s: writing them first", self._spilled, spill.path)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._items) + self._spilled

    @property
    def outage(self) -> bool:
        return self._since is not None

    @property
    def outage_s(self) -> float | None:
        """How long the store has been down (None: it answers)."""
        since = self._since
        return None if since is None else time.monotonic() - since

    def hold(self, result: CheckResult, error: BaseException | None = None) -> None:
        """Keep the result (after those held before it); `error`: why the store refused it."""
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
                self.held = self.dropped = 0
                said = str(getattr(error, "orig", error) or "no answer").splitlines()
                self.last_error = (said[0] if said else "no answer")[:200]
                logger.error("store unavailable (%s): holding results until it answers "
                             "again", self.last_error)
            self.held += 1
            self._add(result)

    def hold_action(self, item: Held) -> None:
        """Keep an item in order after the results held so far (written when it is ready)."""
        with self._lock:
            self._add(item)

    def adopt(self, previous: Backlog) -> None:
        """After a reload: what the previous backlog held in memory is held here, after what
        the spill file holds (which this one read when it was made), with the outage's
        counts."""
        with previous._lock:
            items, previous._items = list(previous._items), deque()
            actions = dict(previous._actions)
            since, held, dropped = previous._since, previous.held, previous.dropped
        with self._lock:
            self._actions.update(actions)
            for item in items:
                self._add(item)
            if since is not None and self._since is None:
                self._since = since
            self.held, self.dropped = max(self.held, held), self.dropped + dropped

    def _add(self, item: CheckResult | Held) -> None:
        """(Call holding the lock.)"""
        if self._spill is not None and (self._spilled or len(self._items) >= self._limit) \
                and self._to_file([*self._items, item]):
            self._items.clear()
            return
        if len(self._items) >= self._limit:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)

    def _to_file(self, items: list[CheckResult | Held]) -> bool:
        """Append the items to the file; False when it cannot take them (full, unwritable):
        they stay in memory then, bounded there, still after everything in the file."""
        assert self._spill is not None
        lines = []
        for item in items:
            if isinstance(item, CheckResult):
                lines.append(dump(item))
            else:
                self._actions[item.key] = item
                lines.append(json.dumps({"held": item.key}))
        why = f"full: {self._spill.limit_bytes} bytes"
        try:
            written = self._spill.append(lines)
        except OSError as exc:  # a link planted there, a full disk
            written, why = False, str(exc)
        if written:
            if self._spilled == 0:
                logger.warning("more than %s results held: the rest go to %s", self._limit,
                               self._spill.path)
            self._spilled += len(lines)
            return True
        if not self._full:
            logger.error("%s takes no more (%s): results are held in memory, the oldest "
                         "dropped past %s", self._spill.path, why, self._limit)
        self._full = True
        return False

    def replay(self) -> bool:
        """Write what is held, oldest first; True when nothing is held any more."""
        if not self._replaying.acquire(blocking=False):
            return False  # another thread writes them now; what comes meanwhile waits
        try:
            if not self._replay_file() or not self._replay_memory():
                return False
        finally:
            self._replaying.release()
        with self._lock:
            if self._since is not None:
                logger.warning("store available again after %.0f s: %s held results written, "
                               "%s dropped (over the bound of %s)",
                               time.monotonic() - self._since, self.held - self.dropped,
                               self.dropped, self._limit)
                self._since = None
                self._full = False
                with _said_lock:
                    _said.clear()
        return True

    def _write(self, item: CheckResult | Held | str) -> bool | None:
        """Write one item: True done, False the store is down (or the item is not ready yet),
        None dropped."""
        if isinstance(item, str):
            found = self._actions.pop(item, None)
            if found is None:
                logger.warning("a repair made during the store outage by an sglguard that was "
                               "killed since is not recorded (%s)", item)
                return None
            item = found
        try:
            if isinstance(item, CheckResult):
                self._record(item)
            elif not item.ready():
                self._actions[item.key] = item  # (from the file) read again next time
                return False
            else:
                item.write()
        except Exception as exc:
            if store_down(exc):
                if not isinstance(item, CheckResult):
                    self._actions[item.key] = item
                return False
            logger.exception("a held item (%s) could not be written; dropped",
                             getattr(item, "check", None) or getattr(item, "key", "?"))
            with self._lock:
                self.dropped += 1
            return None
        return True

    def _replay_file(self) -> bool:
        if self._spill is None or not self._spilled:
            return True
        lines = self._spill.read()
        done = 0
        for line in lines:
            try:
                item: CheckResult | str = load(line)
            except (ValueError, KeyError, TypeError):
                logger.error("an unreadable line of %s skipped", self._spill.path)
                item = ""
            if item != "" and self._write(item) is False:
                self._cut(done)
                return False
            done += 1
            if done == SPILL_BATCH:
                self._cut(done)
                done = 0
        self._cut(done)
        return True

    def _cut(self, done: int) -> None:
        """Remove the first `done` lines of the file (with what was appended meanwhile kept)."""
        if not done:
            return
        assert self._spill is not None
        with self._lock:
            left = self._spill.read()[done:]
            self._spill.keep(left)
            self._spilled = len(left)

    def _replay_memory(self) -> bool:
        while True:
            with self._lock:
                if self._spilled:
                    return False  # items went to the file meanwhile: next time, in order
                if not self._items:
                    return True
                item = self._items[0]
            if self._write(item) is False:
                return False
            with self._lock:
                if self._items and self._items[0] is item:
                    self._items.popleft()
