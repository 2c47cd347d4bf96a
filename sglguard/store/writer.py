"""Batched writes of the results that change nothing: one transaction per flush, not per run.

A healthy server produces a stream of OK results whose only effect is a new row and a few
counters of its check's state. Writing each in its own transaction was most of a check run's
CPU. The engine hands such results here; everything that changes state (a failure, a recovery,
an incident) still goes to the store at once, after a flush, so the order of rows holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import Insert, Table, Update, bindparam, insert, update

from sglguard.store.db import Store
from sglguard.store.models import CheckResultRow, CheckStateRow

logger = logging.getLogger(__name__)

# Held while the store cannot be written; beyond it the oldest results are dropped, counted
# and logged (about 300 bytes each).
DEFAULT_LIMIT = 20_000
# A batch this large is written without waiting for the interval: at hundreds of results a
# second, waiting would reach the limit above while the store is perfectly writable.
DEFAULT_BATCH = 2_000
# A check's first result (its state row is made by the batch) waits this long at most, not the
# interval: the first round after start is one transaction, yet shows at once.
FIRST_RESULTS_WAIT = 1.0
# Core statements on the tables: the rows need no ORM bookkeeping.
_RESULTS = cast(Table, CheckResultRow.__table__)
_STATES = cast(Table, CheckStateRow.__table__)
# Built once: building a statement and its cache key costs as much as running it.
_INSERT = insert(_RESULTS)
_QUIET = (_STATES.c.check_name == bindparam("_check"), _STATES.c.status == "ok",
          _STATES.c.incident_id.is_(None), _STATES.c.grace_until.is_(None),
          _STATES.c.flapping.is_(False))
# A new check's state row, as `queries.check_state` makes it; its first counters follow.
_FRESH = {"status": "ok", "consecutive_failures": 0, "consecutive_successes": 0, "recent": "",
          "flapping": False}


class ResultWriter:
    """Holds quiet results and the state counters they move, and writes them together.

    A state update applies only while the stored state is still quiet (OK, no incident, no
    grace, not flapping); where another writer changed it meanwhile, `on_stale(check)` is
    called so the engine reads the stored state again instead of trusting its copy."""

    def __init__(self, store: Store, *, interval: float = 30.0, limit: int = DEFAULT_LIMIT,
                 batch: int = DEFAULT_BATCH,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.interval = interval
        self.limit = limit
        self.batch = min(batch, limit)
        self.monotonic = monotonic
        self._since: float | None = None  # monotonic time of the oldest queued row
        self.on_stale: Callable[[str], None] = lambda _check: None
        # Told of each batch written or refused: ("batch", seconds, written).
        self.on_write: Callable[[str, float, bool], None] = lambda _what, _took, _ok: None
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._rows: list[dict[str, Any]] = []
        self._states: dict[str, dict[str, Any]] = {}
        self._new: dict[str, str] = {}  # checks whose state row is made here: their targets
        self._claimed = False  # a caller was told to flush and has not yet taken the rows
        self._refused = False  # the last write failed
        self.dropped = 0
        self._updates: dict[tuple[str, ...], Update] = {}
        self._creating: Insert | None = None

    @property
    def creates_states(self) -> bool:
        """Whether `add(..., create=target)` is possible: the store's dialect can insert a
        state row unless another process made it first."""
        return self.store.engine.dialect.name in ("sqlite", "postgresql")

    def add(self, row: dict[str, Any], state: tuple[str, dict[str, Any]] | None = None, *,
            create: str | None = None) -> bool:
        """Queue one result row and, optionally, the new counters of its check's state
        (`create`: the state has no row yet; make one, of that target, before the update); True
        when the oldest queued row has waited `interval`, or a batch is full: time for the
        caller to flush. One caller is told, not each one until the flush has begun: the
        others go on instead of queueing behind it."""
        now = self.monotonic()
        with self._lock:
            self._rows.append(row)
            if state is not None:
                self._states[state[0]] = state[1]
                if create is not None:
                    self._new[state[0]] = create
            self._trim()
            if self._since is None:
                self._since = now
            if self._claimed or not self._due(now):
                return False
            self._claimed = True
            return True

    def flush_if_due(self) -> bool:
        """Flush when the oldest queued row has waited `interval` (a timer's backstop; a
        flush already in progress is left alone, the next look takes what it leaves)."""
        if self._flushing.locked():
            return True
        with self._lock:
            due = self._due(self.monotonic())
        return self.flush() if due else True

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._rows)

    def _due(self, now: float) -> bool:
        """Whether the oldest queued row has waited `interval`, or a batch is full (call
        holding the lock)."""
        if self._since is None:
            return False
        waited = now - self._since
        return (waited >= self.interval or len(self._rows) >= self.batch
                or (bool(self._new) and waited >= FIRST_RESULTS_WAIT))

    def flush(self) -> bool:
        """Write what is queued in one transaction (retried); False if the store refused, in
        which case everything stays queued for the next flush."""
        with self._flushing:
            with self._lock:
                rows, states, since, new = self._rows, self._states, self._since, self._new
                self._rows, self._states, self._since, self._new = [], {}, None, {}
                self._claimed = False
            if not rows and not states:
                return True
            began = time.perf_counter()
            try:
                stale = self._write(rows, states, new)
            except Exception as exc:
                self.on_write("batch", time.perf_counter() - began, False)
                with self._lock:
                    self._refused = True
                    self._rows[:0] = rows
                    self._states = {**states, **self._states}
                    self._new = {**new, **self._new}
                    self._since = since
                    self._trim()
                    held = len(self._rows)
                logger.error("could not write %s check results, %s held for the next attempt: "
                             "%s", len(rows), held, exc)
                return False
            self._refused = False
            self.on_write("batch", time.perf_counter() - began, True)
        for check in stale:
            self.on_stale(check)
        return True

    def _write(self, rows: list[dict[str, Any]], states: dict[str, dict[str, Any]],
               new: dict[str, str] | None = None) -> list[str]:
        for retry in self.store.retrying():
            with retry, self.store.engine.begin() as connection:  # Core: no ORM session
                if new:
                    connection.execute(self._create(), [
                        {"check_name": check, "target": target, **_FRESH}
                        for check, target in new.items()])
                if rows:
                    connection.execute(_INSERT, rows)
                stale = []
                for columns, changes in self._by_columns(states).items():
                    statement = self._update(columns)
                    # One statement for all checks with the same counters; where some found
                    # their state changed by another writer, each is applied again alone to
                    # learn which (the same values: applying them twice changes nothing).
                    if connection.execute(statement, changes).rowcount == len(changes):
                        continue
                    for values in changes:
                        if connection.execute(statement, values).rowcount == 0:
                            stale.append(str(values["_check"]))
                return stale
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _by_columns(states: dict[str, dict[str, Any]]) -> dict[tuple[str, ...],
                                                                list[dict[str, Any]]]:
        grouped: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for check, values in states.items():
            grouped.setdefault(tuple(values), []).append({"_check": check, **values})
        return grouped

    def _create(self) -> Insert:
        """A state row for each new check, skipped where one exists (made by another process
        meanwhile: the update that follows then finds whether it is still quiet)."""
        if self._creating is None:
            if self.store.engine.dialect.name == "postgresql":
                from sqlalchemy.dialects import postgresql

                self._creating = postgresql.insert(_STATES).on_conflict_do_nothing(
                    index_elements=[_STATES.c.check_name])
            else:
                from sqlalchemy.dialects import sqlite

                self._creating = sqlite.insert(_STATES).on_conflict_do_nothing(
                    index_elements=[_STATES.c.check_name])
        return self._creating

    def _update(self, columns: tuple[str, ...]) -> Update:
        """The state update for these counters, applied only where the state is still quiet."""
        statement = self._updates.get(columns)
        if statement is None:
            statement = self._updates[columns] = update(_STATES).where(*_QUIET).values(
                {column: bindparam(column) for column in columns})
        return statement

    def _trim(self) -> None:
        extra = len(self._rows) - self.limit
        if extra > 0:
            del self._rows[:extra]
            before, self.dropped = self.dropped, self.dropped + extra
            if before == 0 or before // 1000 != self.dropped // 1000:  # now and then, not always
                why = ("the store refused the last write" if self._refused else
                       "results came faster than the store took them")
                logger.error("%s oldest check results dropped (%s in all): more than %s were "
                             "waiting to be written and %s; %s held", extra, self.dropped,
                             self.limit, why, len(self._rows))
