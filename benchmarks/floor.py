"""What the machine charges for the parts every scheduled check run is made of, each measured
alone and cold (spaced apart as a service's runs are): the floor under `footprint.py`'s figure,
and the two choices behind it (where a job runs, how a probe is sent).

Usage: .venv/bin/python benchmarks/floor.py [--samples 20] [--gap 1.0]
The emulator runs as a separate process, so its CPU never counts.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from apscheduler.executors.base import BaseExecutor
from apscheduler.executors.debug import DebugExecutor
from apscheduler.executors.pool import ThreadPoolExecutor
from footprint import free_port, wait_healthy
from sqlalchemy import Table, bindparam, update

from sglguard.client import SGLangClient
from sglguard.service import every, scheduler
from sglguard.store import Store
from sglguard.store.models import CheckStateRow
from sglguard.store.writer import ResultWriter

_STATES: Table = CheckStateRow.__table__  # type: ignore[assignment]


def cold(action: Callable[[], object], samples: int, gap: float) -> float:
    """Median thread CPU of `action`, in ms, each call `gap` seconds after the last."""
    action()
    spent = []
    for _ in range(samples):
        time.sleep(gap)
        began = time.thread_time()
        action()
        spent.append(time.thread_time() - began)
    return 1000 * statistics.median(spent)


def wake_up(samples: int, gap: float) -> float:
    """CPU of a Python thread waking from a timed wait and going back to it."""
    woken, done = threading.Event(), threading.Event()
    spent: list[float] = []

    def sleeper() -> None:
        while len(spent) < samples:
            began = time.thread_time()
            woken.wait(gap)  # times out: a wake-up, as a scheduler's
            spent.append(time.thread_time() - began)
        done.set()

    threading.Thread(target=sleeper, daemon=True).start()
    done.wait()
    return 1000 * statistics.median(spent)


def scheduled(executor: BaseExecutor, work: Callable[[], object], samples: int,
              gap: float) -> float:
    """Process CPU per run of an APScheduler interval job doing `work`, in ms."""
    runs = [0]

    def job() -> None:
        work()
        runs[0] += 1

    one = scheduler(executor)
    one.add_job(job, every(gap))
    one.start()
    time.sleep(gap * 2.5)
    began, first = time.process_time(), runs[0]
    time.sleep(gap * samples)
    spent, done = time.process_time() - began, runs[0] - first
    one.shutdown()
    return 1000 * spent / max(1, done)


def nothing() -> None:
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between two samples")
    args = parser.parse_args()
    n, gap = args.samples, args.gap
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="sglguard-floor-")) / "emulator.log"
    with log.open("wb") as output:  # as footprint.py runs it: the defaults
        emulator = subprocess.Popen([sys.executable, "-m", "sglguard", "emulator", "--port",
                                     str(port)], stdout=output, stderr=subprocess.STDOUT)
    wait_healthy(url, emulator, log)
    session = requests.Session()
    session.trust_env = False
    prepared = session.prepare_request(requests.Request("GET", f"{url}/health"))
    client = SGLangClient(url, timeout=5)

    def send() -> None:
        session.send(prepared, timeout=5).close()

    def probe() -> None:
        client.probe("GET", "/health")

    rows: list[tuple[str, float]] = []
    try:
        rows += [
            ("a thread's wake-up from a timed wait", wake_up(n, gap)),
            ("APScheduler job doing nothing, in a pool thread",
             scheduled(ThreadPoolExecutor(4), nothing, n, gap)),
            ("APScheduler job doing nothing, in the scheduler's thread",
             scheduled(DebugExecutor(), nothing, n, gap)),
            # Every 2 s, as the reference catalog's liveness: /health takes ~1 s to answer.
            ("APScheduler job doing one probe, in a pool thread",
             scheduled(ThreadPoolExecutor(4), probe, n, max(gap, 2.0))),
            ("APScheduler job doing one probe, in the scheduler's thread",
             scheduled(DebugExecutor(), probe, n, max(gap, 2.0))),
            ("GET /health with requests' Session.send (prepared)", cold(send, n, gap)),
            ("GET /health with SGLangClient.probe (urllib3 pool)", cold(probe, n, gap)),
        ]
        rows += store_rows(n, gap)
    finally:
        client.close()
        emulator.terminate()
        emulator.wait(timeout=10)
    width = max(len(name) for name, _ in rows)
    print(f"CPU, median of {n} samples {gap:g} s apart (scheduled jobs: process CPU per run):")
    for name, figure in rows:
        print(f"  {name:<{width}}  {figure:.2f} ms")


def store_rows(samples: int, gap: float) -> list[tuple[str, float]]:
    with tempfile.TemporaryDirectory() as folder:
        store = Store.open(f"sqlite:///{Path(folder) / 'floor.db'}")
        writer = ResultWriter(store)
        with store.engine.begin() as connection:
            connection.execute(_STATES.insert(), {"check_name": "x", "target": "t",
                                                  "status": "ok"})
        built = update(_STATES).where(_STATES.c.check_name == bindparam("_check")).values(
            consecutive_successes=bindparam("successes"))
        count = [0]

        def one_row() -> None:
            writer.add({"check_name": "x", "target": "t", "status": "ok", "value": 0.01,
                        "unit": "s", "message": "GET /health answered 200", "duration_ms": 1.0,
                        "started_at": datetime.now(UTC), "evaluated": True})
            writer.flush()

        def update_built_each_time() -> None:
            count[0] += 1
            with store.engine.begin() as connection:
                connection.execute(update(_STATES).where(_STATES.c.check_name == "x")
                                   .values(consecutive_successes=count[0]))

        def update_built_once() -> None:
            count[0] += 1
            values: dict[str, Any] = {"_check": "x", "successes": count[0]}
            with store.engine.begin() as connection:
                connection.execute(built, values)

        rows = [
            ("one SQLAlchemy transaction writing one result row", cold(one_row, samples, gap)),
            ("a state UPDATE, statement built each time", cold(update_built_each_time,
                                                                 samples, gap)),
            ("a state UPDATE, statement built once", cold(update_built_once, samples, gap)),
        ]
        store.close()
    return rows


if __name__ == "__main__":
    sys.exit(main())
