"""Housekeeping jobs' missed, failed and skipped runs are counted (for sglguard's /metrics) and
logged once per burst, on the service's real APScheduler."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from sglguard.config.models import Catalog
from sglguard.emulator import Emulator
from sglguard.housekeeping import HOUSEKEEPING, JobEvents
from sglguard.service import Service, every, scheduler
from sglguard.store import Store
from sglguard.web.metrics import exposition, metrics_registry
from sglguard.web.view import View

from conftest import wait_for


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def service(make_catalog: Callable[[str], Catalog], store: Store,
            emulator: Emulator) -> Iterator[Service]:
    catalog = make_catalog(f"""\
        version: 1
        targets: [{{name: local, url: "{emulator.url}"}}]
        checks:
          - {{name: liveness, kind: http, target: local, interval: 30s}}
        """)
    running = Service(catalog, store)
    yield running
    running.stop()


@pytest.fixture
def background() -> Iterator[BackgroundScheduler]:
    started = scheduler(ThreadPoolExecutor(2))  # as the service builds its own
    yield started
    if started.running:
        started.shutdown(wait=False)


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if text in record.getMessage()]


def test_a_housekeeping_job_that_raises_is_counted_logged_and_shown_in_metrics(
        service: Service, caplog: pytest.LogCaptureFixture) -> None:
    # One job's body is replaced by one that raises (a bug in it); the scheduler, its executor
    # and the service's listener are real.
    def broken() -> None:
        raise RuntimeError("lag report broke")

    caplog.set_level(logging.INFO)
    before = HOUSEKEEPING.counts().get(("lag", "error"), 0)
    service.start()

    def errors() -> int:
        return HOUSEKEEPING.counts().get(("lag", "error"), 0) - before

    service.scheduler.modify_job("_lag", func=broken, next_run_time=datetime.now(UTC))
    wait_for(lambda: errors() == 1)
    service.scheduler.modify_job("_lag", next_run_time=datetime.now(UTC))
    wait_for(lambda: errors() == 2)
    said = lines(caplog, "housekeeping job lag")
    assert said == ["housekeeping job lag: a run raised: RuntimeError: lag report broke"]
    assert not lines(caplog, "raised an exception")  # APScheduler's own line, at every run
    page = exposition(metrics_registry(View(service.catalog, service.store))).decode()
    assert (f'sglguard_housekeeping_events_total{{event="error",job="lag"}} '
            f"{float(before + 2)}") in page


def test_a_missed_run_is_counted(background: BackgroundScheduler,
                                 caplog: pytest.LogCaptureFixture) -> None:
    events = JobEvents()
    events.attach(background)
    background.start()
    # Due two minutes ago: past the one-minute grace, as after a host suspended or a scheduler
    # thread stalled.
    background.add_job(lambda: None, every(3600), id="_prune",
                       next_run_time=datetime.now(UTC) - timedelta(minutes=2))
    wait_for(lambda: events.counts().get(("prune", "missed")) == 1)
    assert lines(caplog, "housekeeping job prune: a run was missed")
    assert not lines(caplog, "was missed by")  # APScheduler's own line


def test_a_run_skipped_while_the_previous_one_runs_is_counted(
        background: BackgroundScheduler) -> None:
    events = JobEvents()
    events.attach(background)
    release, running = threading.Event(), threading.Event()

    def slow() -> None:
        running.set()
        release.wait(10)

    background.start()
    background.add_job(slow, every(3600), id="_stale", next_run_time=datetime.now(UTC))
    try:
        wait_for(running.is_set)
        background.modify_job("_stale", next_run_time=datetime.now(UTC))
        wait_for(lambda: events.counts().get(("stale", "max_instances")) == 1)
    finally:
        release.set()


def test_a_burst_of_failures_is_logged_once_then_summed_up(
        caplog: pytest.LogCaptureFixture) -> None:
    ticks = Ticks()
    events = JobEvents(clock=ticks, repeat_s=300)
    failure = JobExecutionEvent(EVENT_JOB_ERROR, "_backlog", "default", datetime.now(UTC),
                                exception=ValueError("store gone"))
    for _ in range(5):
        events.record(failure)
        ticks.now += 5  # every five seconds, as the backlog job runs
    assert len(lines(caplog, "housekeeping job backlog")) == 1
    ticks.now += 300
    events.record(failure)
    said = lines(caplog, "housekeeping job backlog")
    assert said[1] == ("housekeeping job backlog: a run raised: ValueError: store gone "
                       "(4 more since the last line about it)")
    assert events.counts() == {("backlog", "error"): 6}
