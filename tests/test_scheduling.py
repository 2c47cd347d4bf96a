"""The check scheduler: bounded threads, a blocked run holds up no other, intervals kept."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from itertools import pairwise

import pytest

from sglguard.config.models import Catalog
from sglguard.scheduling import CheckScheduler, advance, worker_cap
from sglguard.service import Service
from sglguard.store import Store, queries

from conftest import Loopback, StartEmulator, wait_for


@pytest.fixture
def scheduler() -> Iterator[Callable[..., CheckScheduler]]:
    made: list[CheckScheduler] = []

    def make(**options: object) -> CheckScheduler:
        made.append(CheckScheduler(**options))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for one in made:
        one.stop(timeout=5)


def workers() -> int:
    return sum(1 for thread in threading.enumerate()
               if thread.name.startswith("sglguard-worker"))


def test_a_blocked_run_holds_up_no_other_check(
        scheduler: Callable[..., CheckScheduler]) -> None:
    release, blocked = threading.Event(), threading.Event()
    runs: list[str] = []

    def run(name: str) -> None:
        runs.append(name)
        if name == "hung":
            blocked.set()
            release.wait(10)

    one = scheduler(limits={"down": 1, "up": 2}, cores=1)
    one.add("hung", run, interval=0.05, jitter=0.0, group="down")
    one.add("fast", run, interval=0.05, jitter=0.0, group="up")
    one.add("other", run, interval=0.05, jitter=0.0, group="up")
    one.start()
    blocked.wait(5)
    start = len(runs)
    # One core's worth of workers, one of them held: the others still run on time.
    wait_for(lambda: runs[start:].count("fast") >= 5 and runs[start:].count("other") >= 5)
    assert runs.count("hung") == 1  # never a second run of it while the first hangs
    release.set()
    wait_for(lambda: runs.count("hung") >= 2)
    assert one.lag().missed > 0  # the hung check's runs that fell due meanwhile


def test_runs_of_one_target_in_flight_stay_within_its_limit(
        scheduler: Callable[..., CheckScheduler]) -> None:
    lock, flight, most = threading.Lock(), [0], [0]
    gate = threading.Event()

    def run(_name: str) -> None:
        with lock:
            flight[0] += 1
            most[0] = max(most[0], flight[0])
        gate.wait(0.2)  # long enough to hold a worker: others are added
        with lock:
            flight[0] -= 1

    one = scheduler(limits={"local": 3}, cores=2)
    for index in range(12):
        one.add(f"check-{index}", run, interval=0.02, jitter=0.0, group="local")
    one.start()
    wait_for(lambda: one.runs_total >= 15)
    assert most[0] == 3


def test_the_thread_count_stays_bounded_as_checks_grow(
        scheduler: Callable[..., CheckScheduler]) -> None:
    def run(_name: str) -> None:
        threading.Event().wait(0.002)  # a short wait on the network, as a probe has

    before = workers()
    for count in (10, 400):
        one = scheduler(limits={f"target-{n}": 8 for n in range(10)}, cores=2)
        for index in range(count):
            one.add(f"check-{index}", run, interval=0.5, jitter=0.05,
                    group=f"target-{index % 10}", first_in=0.5 * index / count)
        one.start()
        wait_for(lambda one=one, count=count: one.runs_total >= count)  # type: ignore[misc]
        assert workers() - before <= worker_cap(2)
        assert one.threads <= worker_cap(2) + 1
        one.stop(timeout=5)
    assert workers() == before  # stopped schedulers leave no thread behind


def test_jitter_moves_runs_within_the_interval_without_stretching_it() -> None:
    grid, times = 100.0, []
    for _ in range(1000):
        grid, skipped = advance(grid, 1.0, now=grid + 0.01)
        assert skipped == 0
        times.append(grid)
    gaps = [later - earlier for earlier, later in pairwise(times)]
    assert sum(gaps) / len(gaps) == pytest.approx(1.0)
    # A timer 3.5 intervals behind skips the runs it cannot make, and says how many.
    assert advance(100.0, 1.0, now=104.5) == (105.0, 4)


def test_jittered_runs_keep_the_mean_interval(scheduler: Callable[..., CheckScheduler]) -> None:
    starts: list[float] = []
    one = scheduler(limits={"local": 1}, cores=1)
    one.add("check", lambda _name: starts.append(one.monotonic()), interval=0.02,
            jitter=0.01, group="local")
    one.start()
    wait_for(lambda: len(starts) >= 51)
    mean = (starts[50] - starts[0]) / 50
    # Jitter added to each run's delay would make this 0.025 s; it stays near 0.02 s.
    assert mean < 0.0225


@pytest.mark.parametrize("checks", [40])
def test_many_checks_on_one_target_never_exhaust_its_connection_pool(
        checks: int, make_catalog: Callable[[str], Catalog], store: Store,
        start_emulator: StartEmulator, caplog: pytest.LogCaptureFixture) -> None:
    server = start_emulator(health_latency=0.2)  # each probe holds its connection 0.2 s
    lines = "\n".join(
        f"          - {{name: c{n}, kind: http, target: local, interval: 1s, timeout: 2s}}"
        for n in range(checks))
    catalog = make_catalog(f"""\
        version: 1
        store: {{flush_interval: 1s}}
        targets: [{{name: local, url: "{server.url}"}}]
        checks:
{lines}
        """)
    service = Service(catalog, store)
    caplog.set_level(logging.WARNING, logger="urllib3")
    service.start()
    try:
        def stored() -> int:
            with store.session() as session:
                return sum(len(queries.recent_results(session, f"c{n}", 5))
                           for n in range(checks))
        wait_for(lambda: stored() >= 2 * checks, timeout=15)
        assert workers() <= worker_cap()
    finally:
        service.stop()
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]


def test_a_hung_target_holds_up_no_other_target(
        make_catalog: Callable[[str], Catalog], store: Store,
        start_emulator: StartEmulator) -> None:
    hang = threading.Event()

    def never(_request: object) -> tuple[int, str, bytes]:
        hang.wait(5)
        return 200, "text/plain", b"late"

    hung, healthy = Loopback(never), start_emulator()
    hung_checks = "\n".join(
        f"          - {{name: h{n}, kind: http, target: hung, interval: 0.5s, timeout: 3s}}"
        for n in range(20))
    catalog = make_catalog(f"""\
        version: 1
        store: {{flush_interval: 0s}}
        targets:
          - {{name: hung, url: "{hung.url}"}}
          - {{name: up, url: "{healthy.url}"}}
        checks:
{hung_checks}
          - {{name: ok, kind: http, target: up, path: /get_model_info, interval: 0.1s,
              timeout: 1s}}
        """)
    service = Service(catalog, store)
    service.start()
    try:
        wait_for(lambda: len(hung.requests) >= 8)  # the hung target's runs all hang now

        def runs() -> int:
            with store.session() as session:
                return len(queries.recent_results(session, "ok", 100))
        before = runs()
        wait_for(lambda: runs() >= before + 10, timeout=2.5)  # within the hung runs' timeout
    finally:
        hang.set()
        service.stop()
        hung.close()


def test_recent_lag_covers_only_its_span_and_the_last_tick_ages_once_stopped(
        scheduler: Callable[..., CheckScheduler]) -> None:
    ahead = [0.0]  # the clock the scheduler reads, moved ahead by the test once it stopped
    release = threading.Event()
    one = scheduler(limits={"down": 1, "up": 1}, cores=1,
                    monotonic=lambda: time.monotonic() + ahead[0])
    one.add("hung", lambda _name: release.wait(10), interval=0.05, jitter=0.0, group="down")
    one.add("fast", lambda _name: None, interval=0.05, jitter=0.0, group="up")
    assert one.tick_age() is None  # not started: no tick yet
    one.start()
    wait_for(lambda: one.recent(60).missed >= 2 and one.recent(60).runs >= 3)
    assert one.tick_age() is not None and one.tick_age() < 5.5  # ticks at least every 5 s
    assert one.lag().missed >= 2  # the reset of the periodic report leaves `recent` alone
    assert one.recent(60).missed >= 2
    release.set()
    one.stop(timeout=5)
    assert not one.running
    ahead[0] = 120.0
    assert one.recent(60).runs == 0 and one.recent(60).missed == 0  # all older than the span
    assert one.recent(300).runs >= 3
    assert one.tick_age() >= 120  # type: ignore[operator]
