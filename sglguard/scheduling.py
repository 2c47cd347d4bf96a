"""Check runs on a fixed number of threads: one timer thread and a small pool of workers.

A thread per check made threads grow with the catalog; at a few hundred checks they spent
their time queueing on shared locks. Here one timer thread keeps every check's next run in a
heap and hands due runs to workers. The workers are few: as many as the cores while runs only
use CPU, more (up to a fixed cap) only while a run has waited because every worker is held by
a slow or blocked check. Runs of one target in flight together are bounded, so one hung
server holds a few workers, never all of them; the bound is also the size of that target's
connection pool.

Runs keep the configured interval: jitter moves each run within its interval, it never adds
to it. A run that is still in progress, or still queued, when its next one falls due makes
that next one a missed run; so do the runs a lagging timer skips. Lateness (start minus due)
and missed runs are counted for the service to report; the timer's last tick (at least every
TICK_S) tells whether it still runs.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import ClassVar

logger = logging.getLogger(__name__)

# Runs of one target in flight together, at most (and that target's pooled connections).
TARGET_LIMIT = 8
# While runs are queued the timer looks this often whether a worker is held.
STUCK_S = 0.02
# A run in progress this long holds its worker (waiting on the network, not using the CPU):
# another worker may take its place.
HELD_S = 0.1
# Lateness figures kept between two reports, at most.
LATE_KEPT = 200_000
# A worker beyond the cores that found nothing to do for this long ends.
IDLE_S = 30.0
# The timer wakes at least this often, even with no run due, so its last tick says it lives.
TICK_S = 5.0
# Runs (and missed runs) remembered for `recent()`, at most.
RECENT_KEPT = 50_000


def worker_cap(cores: int | None = None) -> int:
    """The most workers a scheduler runs, whatever the number of checks."""
    return 4 * (cores or os.cpu_count() or 1) + 16


def target_limits(targets: Mapping[str, int]) -> dict[str, int]:
    """Runs of each target that may be in flight together, from its number of checks."""
    return {name: max(1, min(count, TARGET_LIMIT)) for name, count in targets.items()}


@dataclass(frozen=True)
class Every:
    """A check's trigger: its interval, and the jitter that moves each run within it."""

    interval: timedelta
    jitter: float


@dataclass(eq=False)
class Job:
    """One check's schedule: never two runs of it at once; late runs coalesce into one."""

    max_instances: ClassVar[int] = 1
    coalesce: ClassVar[bool] = True

    id: str
    func: Callable[[str], object] = field(repr=False)
    trigger: Every
    group: str
    grid: float  # monotonic time of the next run before jitter
    due: float  # the same, jittered
    busy: bool = False  # queued or running

    @property
    def name(self) -> str:
        return self.id


@dataclass(frozen=True)
class Lag:
    """How the schedule was kept over a span: runs started, runs missed, lateness."""

    span_s: float
    runs: int
    missed: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def behind(self) -> bool:
        return self.missed > 0


def advance(grid: float, interval: float, now: float) -> tuple[float, int]:
    """The next run's time before jitter, one interval after `grid` (never after `now` plus
    an interval), and how many runs a lagging timer skipped to get there. Jitter never moves
    the grid, so runs keep the configured interval on average."""
    grid += interval
    if grid > now:
        return grid, 0
    skipped = math.floor((now - grid) / interval) + 1
    return grid + skipped * interval, skipped


def _lag(span_s: float, late: list[float], missed: int) -> Lag:
    """A Lag from sorted lateness figures (seconds)."""
    return Lag(span_s, len(late), missed, 1000 * _quantile(late, 0.5),
               1000 * _quantile(late, 0.99), 1000 * (late[-1] if late else 0.0))


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


class CheckScheduler:
    """Runs each job every interval on a bounded pool; see the module's docstring."""

    def __init__(self, *, limits: Mapping[str, int], cap: int | None = None,
                 cores: int | None = None, monotonic: Callable[[], float] = time.monotonic,
                 jitter: Callable[[], float] = random.random,
                 observe: Callable[[float], None] | None = None) -> None:
        self.limits = dict(limits)
        self.observe = observe  # told each run's lateness in seconds (holding the lock)
        self.cores = max(1, cores or os.cpu_count() or 1)
        self.cap = max(self.cores, min(cap or worker_cap(self.cores),
                                       sum(self.limits.values()) or 1))
        self.monotonic = monotonic
        self.jitter = jitter
        self._lock = threading.Lock()
        self._timer = threading.Condition(self._lock)  # the timer thread waits here
        self._work = threading.Condition(self._lock)  # idle workers wait here
        self._heap: list[tuple[float, int, Job]] = []
        self._order = itertools.count()
        self._jobs: dict[str, Job] = {}
        self._ready: deque[tuple[Job, float]] = deque()  # (job, due)
        self._waiting: dict[str, deque[tuple[Job, float]]] = {
            name: deque() for name in self.limits}  # (job, due) over its target's limit
        self._flight = dict.fromkeys(self.limits, 0)
        self._workers: set[threading.Thread] = set()
        self._began: dict[threading.Thread, float] = {}  # start of each worker's current run
        self._idle = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        # Lateness of the runs started since the last `lag()`, and what was missed.
        self._late: list[float] = []
        self._missed = 0
        self._since = monotonic()
        self.runs_total = 0
        self.missed_total = 0
        # (when, lateness) of recent runs, and (when, count) of recent missed runs.
        self._recent: deque[tuple[float, float]] = deque(maxlen=RECENT_KEPT)
        self._recent_missed: deque[tuple[float, int]] = deque(maxlen=RECENT_KEPT)
        self.ticked_at: float | None = None  # monotonic time of the timer's last tick

    def add(self, name: str, func: Callable[[str], object], *, interval: float, jitter: float,
            group: str, first_in: float = 0.0) -> Job:
        """Schedule `func(name)` every `interval` s, the first run `first_in` s from now."""
        if group not in self.limits:
            raise ValueError(f"job {name}: unknown group {group!r}")
        start = self.monotonic() + first_in
        job = Job(name, func, Every(timedelta(seconds=interval), jitter), group, start, start)
        with self._lock:
            if name in self._jobs:
                raise ValueError(f"job {name} is already scheduled")
            self._jobs[name] = job
            self._push(job)
            self._timer.notify()
        return job

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stopping

    @property
    def threads(self) -> int:
        """Threads of this scheduler now: the timer and its workers."""
        with self._lock:
            return len(self._workers) + (1 if self._thread is not None else 0)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_timer, name="sglguard-timer",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """No new run; the runs in flight finish (waited for up to `timeout` s each)."""
        with self._lock:
            self._stopping = True
            self._ready.clear()
            for waiting in self._waiting.values():
                waiting.clear()
            self._timer.notify_all()
            self._work.notify_all()
            threads = [*self._workers, *([self._thread] if self._thread else [])]
        for thread in threads:
            thread.join(timeout)

    def lag(self) -> Lag:
        """How the schedule was kept since the previous call."""
        with self._lock:
            late, missed, since = self._late, self._missed, self._since
            self._late, self._missed, self._since = [], 0, self.monotonic()
        late.sort()
        return _lag(self.monotonic() - since, late, missed)

    def recent(self, span_s: float) -> Lag:
        """How the schedule was kept over the last `span_s` (up to RECENT_KEPT runs), without
        resetting anything and without the lock."""
        # Copies without the lock (a deque's copy is one step under the interpreter lock): a
        # timer stuck holding the lock does not stall whoever asks.
        recent, recent_missed = self._recent.copy(), self._recent_missed.copy()
        since = self.monotonic() - span_s
        late = sorted(value for at, value in recent if at >= since)
        missed = sum(count for at, count in recent_missed if at >= since)
        return _lag(span_s, late, missed)

    def tick_age(self) -> float | None:
        """Seconds since the timer last ticked; None before its first tick. Read without the
        lock, so a timer stuck holding it is still seen."""
        ticked = self.ticked_at
        return None if ticked is None else max(0.0, self.monotonic() - ticked)

    # The timer thread.

    def _run_timer(self) -> None:
        with self._lock:
            while not self._stopping:
                now = self.ticked_at = self.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    self._fire(heapq.heappop(self._heap)[2], now)
                if self._ready:
                    self._staff(now)
                wait = self._heap[0][0] - now if self._heap else None
                if self._ready and not self._idle:  # all workers busy: look again soon
                    wait = STUCK_S if wait is None else min(wait, STUCK_S)
                self._timer.wait(TICK_S if wait is None else min(wait, TICK_S))

    def _fire(self, job: Job, now: float) -> None:
        """A job's run fell due: queue it (or count it missed), and schedule the next."""
        if job.busy:  # the previous run is still queued or running
            self._missed += 1
            self.missed_total += 1
            self._recent_missed.append((now, 1))
        else:
            job.busy = True
            if self._flight[job.group] < self.limits[job.group]:
                self._flight[job.group] += 1
                self._ready.append((job, job.due))
                if self._idle:
                    self._work.notify()
            else:
                self._waiting[job.group].append((job, job.due))
        job.grid, skipped = advance(job.grid, job.trigger.interval.total_seconds(), now)
        self._missed += skipped
        self.missed_total += skipped
        if skipped:
            self._recent_missed.append((now, skipped))
        self._push(job)

    def _push(self, job: Job) -> None:
        job.due = job.grid + job.trigger.jitter * self.jitter()
        heapq.heappush(self._heap, (job.due, next(self._order), job))

    def _staff(self, now: float) -> None:
        """Add a worker while runs wait and none is idle: up to the cores, and one more for
        each worker held by a run that waits on the network. Workers that only compete for
        the CPU would just take turns at the interpreter lock."""
        if self._idle or len(self._workers) >= self.cap:
            return
        held = sum(1 for began in self._began.values() if now - began >= HELD_S)
        if len(self._workers) < self.cores + held:
            worker = threading.Thread(target=self._run_worker, daemon=True,
                                      name=f"sglguard-worker-{len(self._workers) + 1}")
            self._workers.add(worker)
            worker.start()

    # The workers.

    def _run_worker(self) -> None:
        me = threading.current_thread()
        self._lock.acquire()
        try:
            while True:
                while not self._ready and not self._stopping:
                    self._idle += 1
                    woken = self._work.wait(IDLE_S)
                    self._idle -= 1
                    if not woken and not self._ready and len(self._workers) > self.cores:
                        return
                if self._stopping:
                    return
                job, due = self._ready.popleft()
                if self._ready and not self._idle:
                    self._timer.notify()  # runs still wait: the timer sees to the staffing
                began = self._began[me] = self.monotonic()
                self._lock.release()
                try:
                    self._call(job)
                finally:
                    self._lock.acquire()
                    del self._began[me]
                self._done(job, began - due)
        finally:
            self._workers.discard(me)
            self._lock.release()

    def _call(self, job: Job) -> None:
        try:
            job.func(job.id)
        except Exception:  # a job should not raise; if one does, the others go on
            logger.exception("scheduled run of %s failed", job.id)

    def _done(self, job: Job, late: float) -> None:
        """After a run (holding the lock): count it, let the next run of its target go."""
        job.busy = False
        late = max(0.0, late)
        if len(self._late) < LATE_KEPT:
            self._late.append(late)
        self._recent.append((self.monotonic(), late))
        if self.observe is not None:
            self.observe(late)
        self.runs_total += 1
        waiting = self._waiting[job.group]
        if waiting and not self._stopping:
            queued, due = waiting.popleft()
            self._ready.append((queued, due))
        else:
            self._flight[job.group] -= 1
