"""What the machine charges for the parts every scheduled check run is made of, each measured
alone and cold (spaced apart as a service's runs are): the floor under `footprint.py`'s figure.

Usage: .venv/bin/python benchmarks/floor.py [--samples 20] [--gap 1.0]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import requests
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from sglguard.emulator import Emulator, EmulatorOptions
from sglguard.store import Store
from sglguard.store.writer import ResultWriter


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


def scheduler_job(samples: int, gap: float) -> float:
    """Process CPU per run of an APScheduler interval job that does nothing (scheduler thread,
    pool thread, hand-over)."""
    runs = [0]

    def nothing() -> None:
        runs[0] += 1

    scheduler = BackgroundScheduler(timezone=UTC, executors={"default": ThreadPoolExecutor(4)})
    scheduler.add_job(nothing, IntervalTrigger(seconds=gap, timezone=UTC))
    scheduler.start()
    time.sleep(gap * 2)
    began, first = time.process_time(), runs[0]
    time.sleep(gap * samples)
    spent, done = time.process_time() - began, runs[0] - first
    scheduler.shutdown()
    return 1000 * spent / max(1, done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between two samples")
    args = parser.parse_args()
    alone = [  # before the emulator's threads exist: process CPU is the scheduler's own
        ("a thread's wake-up from a timed wait", wake_up(args.samples, args.gap)),
        ("an APScheduler job that does nothing", scheduler_job(args.samples, args.gap)),
    ]
    emulator = Emulator(EmulatorOptions(port=0, health_latency=0.0))
    emulator.start()
    session = requests.Session()
    session.trust_env = False
    probe = session.prepare_request(requests.Request("GET", f"{emulator.url}/health"))
    with tempfile.TemporaryDirectory() as folder:
        store = Store.open(f"sqlite:///{Path(folder) / 'floor.db'}")
        writer = ResultWriter(store)

        def one_row() -> None:
            writer.add({"check_name": "x", "target": "t", "status": "ok", "value": 0.01,
                        "unit": "s", "message": "GET /health answered 200", "duration_ms": 1.0,
                        "started_at": datetime.now(UTC), "evaluated": True})
            writer.flush()

        rows = [
            *alone,
            ("one requests GET /health on loopback",
             cold(lambda: session.send(probe, timeout=5).close(), args.samples, args.gap)),
            ("one SQLAlchemy transaction writing one row", cold(one_row, args.samples, args.gap)),
        ]
        store.close()
    emulator.stop()
    width = max(len(name) for name, _ in rows)
    print(f"CPU, median of {args.samples} samples {args.gap:g} s apart:")
    for name, figure in rows:
        print(f"  {name:<{width}}  {figure:.2f} ms")


if __name__ == "__main__":
    main()
