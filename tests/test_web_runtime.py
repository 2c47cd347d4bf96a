"""The listener beside a running service (as `sglguard run` serves it): its own /metrics move
with the runs and the store's writes, /healthz is judged by the scheduler's last tick, and the
page shows the schedule's recent lateness and missed runs. A real service on a real SQLite
file, checking the emulator over loopback."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from sglguard.config.models import Catalog
from sglguard.emulator import Emulator
from sglguard.service import Service
from sglguard.store import Store
from sglguard.web.server import WebServer, serve

from conftest import free_port, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A port that accepts connections and never answers: each run there takes its timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture
def beside(make_catalog: Callable[[str], Catalog], store: Store, emulator: Emulator,
           silent_server: str) -> Iterator[tuple[Service, WebServer]]:
    catalog = make_catalog(f"""\
        version: 1
        store: {{flush_interval: 5m}}
        targets:
          - {{name: local, url: "{emulator.url}"}}
          - {{name: gone, url: "http://127.0.0.1:1"}}
          - {{name: mute, url: "{silent_server}"}}
        checks:
          - {{name: liveness, kind: http, target: local, interval: 0.2s, timeout: 1s}}
          - {{name: refused, kind: http, target: gone, interval: 1h, timeout: 1s}}
          - {{name: hangs, kind: http, target: mute, interval: 0.2s, timeout: 0.5s}}
        """)
    service = Service(catalog, store)
    web = serve(catalog, store, listen=f"127.0.0.1:{free_port()}", runtime=service)
    try:
        yield service, web
    finally:
        web.stop()
        service.stop()


def get(web: WebServer, path: str) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{web.port}{path}", timeout=5)


def scrape(web: WebServer) -> Samples:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(get(web, "/metrics").text)
            for sample in family.samples}


RUNS = ("sglguard_check_run_duration_seconds_count", (("check", "liveness"), ("target", "local")))
LATE = ("sglguard_schedule_lateness_seconds_count", ())
MISSED = ("sglguard_schedule_missed_runs_total", ())
BATCH = ("sglguard_queue_depth", (("queue", "results_batch"),))
HELD = ("sglguard_queue_depth", (("queue", "store_backlog"),))


def writes(kind: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return "sglguard_store_write_duration_seconds_count", (("write", kind),)


def errors(kind: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return "sglguard_store_write_errors_total", (("write", kind),)


def test_own_metrics_move_with_the_runs_and_the_stores_writes(
        beside: tuple[Service, WebServer], store: Store) -> None:
    service, web = beside
    before = scrape(web)
    assert before[RUNS] == 0 and before[writes("batch")] == 0
    assert before[("sglguard_outbox_unclaimed", (("kind", "message"),))] == 0
    service.start()
    moved = wait_for(lambda: (lambda now: now if now[RUNS] >= 4 and now[MISSED] >= 1
                              else None)(scrape(web)))
    assert moved[LATE] >= moved[RUNS]  # every run's lateness, of every check
    assert moved[("sglguard_check_run_duration_seconds_bucket",
                  (("check", "hangs"), ("le", "0.25"), ("target", "mute")))] == 0  # 0.5 s each
    assert moved[("sglguard_check_run_duration_seconds_count",
                  (("check", "hangs"), ("target", "mute")))] >= 1
    assert moved[BATCH] >= 1  # quiet results wait for the next batch
    assert moved[writes("result")] >= 1  # first results, and the refused server's, at once
    assert 0 <= moved[("sglguard_scheduler_last_tick_age_seconds", ())] < 30
    assert service.writer is not None
    assert service.writer.flush()
    flushed = scrape(web)
    assert flushed[writes("batch")] > moved[writes("batch")]
    assert flushed[errors("batch")] == flushed[errors("result")] == 0

    wait_for(lambda: service.writer is not None and service.writer.pending)  # a quiet result
    with store.engine.begin() as connection:  # the store breaks under the service
        connection.execute(text("alter table check_results rename to check_results_gone"))
    service.run_check("refused")  # a failure: the queued batch first, then it, both refused
    broken = scrape(web)
    assert broken[errors("result")] >= 1 and broken[errors("batch")] >= 1
    assert broken[HELD] >= 1  # the failure is held until the store answers
    assert broken[writes("result")] > flushed[writes("result")]  # failed writes are timed too
    assert flushed[("sglguard_store_outage_seconds", ())] == 0
    assert broken[("sglguard_store_outage_seconds", ())] > 0
    # the outage is sglguard's own trouble, said as such: alive, the page says what it holds
    health = get(web, "/healthz")
    assert health.status_code == 200 and health.json()["store"].startswith("unreachable for")
    page = get(web, "/")
    assert page.status_code == 503 and "Store unreachable" in page.text
    assert "results are held" in page.text
    api = get(web, "/api/v1/checks")
    assert api.status_code == 503 and "unreachable" in api.json()["error"]
    with store.engine.begin() as connection:
        connection.execute(text("alter table check_results_gone rename to check_results"))
    service._replay_backlog()
    wait_for(lambda: scrape(web)[HELD] == 0)


def test_healthz_fails_when_the_scheduler_has_not_ticked_whatever_the_results(
        beside: tuple[Service, WebServer]) -> None:
    service, web = beside
    unstarted = get(web, "/healthz")
    assert unstarted.status_code == 503
    assert unstarted.json()["reason"] == "the scheduler has not started"
    service.start()
    healthy = wait_for(lambda: (lambda answer: answer if answer.status_code == 200 else None)(
        get(web, "/healthz")))
    assert healthy.json()["status"] == "ok"  # though `refused` and `hangs` fail their checks
    scheduler = service.check_scheduler
    real = scheduler.monotonic
    with scheduler._lock:  # the timer blocks: it cannot tick while the lock is held...
        scheduler.monotonic = lambda: real() + 45.0  # ...for 45 s, as far as it can tell
        try:
            blocked = get(web, "/healthz")  # answered at once: no lock is needed to ask
        finally:
            scheduler.monotonic = real
    assert blocked.status_code == 503
    assert blocked.json()["reason"].startswith("the scheduler has not ticked for 4")
    scheduler.stop()
    stopped = get(web, "/healthz")
    assert stopped.status_code == 503 and stopped.json()["reason"] == "the scheduler is stopped"


def test_the_page_shows_the_schedules_recent_lateness_and_missed_runs(
        beside: tuple[Service, WebServer]) -> None:
    service, web = beside
    service.start()
    wait_for(lambda: service.check_scheduler.missed_total >= 2)
    page = get(web, "/").text
    line = page[page.index('<p id="schedule"'):]
    line = line[:line.index("</p>")]
    assert 'class="behind"' in line and "Schedule, last 5 min:" in line
    assert "lateness p50 " in line and " ms, p99 " in line
    missed = int(line.split("<b>")[1].split(" missed")[0])
    assert missed >= 2  # `hangs` takes 0.5 s at a 0.2 s interval
    assert "scheduler ticked" in line


def test_the_page_served_apart_from_the_service_shows_no_schedule(
        make_catalog: Callable[[str], Catalog], store: Store) -> None:
    catalog = make_catalog("""\
        version: 1
        targets: [{name: local, url: "http://127.0.0.1:1"}]
        checks: [{name: liveness, kind: http, target: local}]
        """)
    web = serve(catalog, store, listen=f"127.0.0.1:{free_port()}")
    try:
        assert 'id="schedule"' not in get(web, "/").text
        assert "sglguard_schedule_lateness_seconds" not in get(web, "/metrics").text
    finally:
        web.stop()
