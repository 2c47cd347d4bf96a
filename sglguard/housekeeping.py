"""What befalls the service's housekeeping jobs (heartbeat, stale sweep, backlog, reminders,
retention...): runs missed, runs that raised, runs skipped because the previous one still ran.

APScheduler only logs these, once per occurrence: a job failing every five seconds would fill the
log, and nothing would count them. A listener here counts each by job and event (read by
sglguard's own /metrics in the same process) and logs the first of a burst, then at most one
line per job and event every REPEAT_S saying how many more came.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
)

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

logger = logging.getLogger(__name__)

EVENTS = {EVENT_JOB_MISSED: "missed", EVENT_JOB_ERROR: "error",
          EVENT_JOB_MAX_INSTANCES: "max_instances"}
WHAT = {"missed": "a run was missed (the scheduler fell behind by more than the grace time)",
        "error": "a run raised",
        "max_instances": "a run was skipped: the previous one is still running"}
# Within this long of the last line about a job's event, more of it are counted, not logged.
REPEAT_S = 300.0
# APScheduler's own line for each occurrence: said (once per burst) by the listener instead.
_THEIRS = ('Run time of job "%s" was missed', 'Job "%s" raised an exception',
           'Execution of job "%s" skipped: maximum number of running instances')


class JobEvents:
    """Counts of each housekeeping job's missed, errored and skipped runs; logs each burst
    once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 repeat_s: float = REPEAT_S) -> None:
        self.clock = clock
        self.repeat_s = repeat_s
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._logged: dict[tuple[str, str], float] = {}  # when each was last logged
        self._unsaid: Counter[tuple[str, str]] = Counter()  # counted since then, not logged

    def attach(self, scheduler: BaseScheduler) -> None:
        scheduler.add_listener(self.record, EVENT_JOB_MISSED | EVENT_JOB_ERROR
                               | EVENT_JOB_MAX_INSTANCES)
        quiet_apscheduler()

    def record(self, event: JobEvent) -> None:
        kind = EVENTS.get(event.code)
        if kind is None:
            return
        job = str(event.job_id).lstrip("_")
        key = (job, kind)
        now = self.clock()
        with self._lock:
            self._counts[key] += 1
            last = self._logged.get(key)
            if last is not None and now - last < self.repeat_s:
                self._unsaid[key] += 1
                return
            self._logged[key] = now
            more = self._unsaid.pop(key, 0)
        also = f" ({more} more since the last line about it)" if more else ""
        exception = getattr(event, "exception", None)
        if isinstance(exception, BaseException):
            logger.error("housekeeping job %s: %s: %s: %s%s", job, WHAT[kind],
                         type(exception).__name__, exception, also,
                         exc_info=(type(exception), exception, exception.__traceback__))
        else:
            logger.warning("housekeeping job %s: %s%s", job, WHAT[kind], also)

    def counts(self) -> dict[tuple[str, str], int]:
        """Events so far, by (job, event)."""
        with self._lock:
            return dict(self._counts)


class _Theirs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(_THEIRS))


_QUIET = _Theirs()


def quiet_apscheduler() -> None:
    """Drop APScheduler's per-occurrence lines for what the listener reports."""
    for name in ("apscheduler.scheduler", "apscheduler.executors.default"):
        found = logging.getLogger(name)
        if _QUIET not in found.filters:
            found.addFilter(_QUIET)


# One per process, across reloads (a reload builds a new service and scheduler): a counter.
HOUSEKEEPING = JobEvents()
