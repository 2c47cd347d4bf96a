"""`sglguard run` with many checks: runs per second, missed runs, lateness, CPU, RSS, threads.

Catalogs of N checks at a 1 s interval, half `http` (GET /get_model_info) and half instant
`metric` (sglang:num_queue_reqs), spread over emulators that run as processes of their own.

Usage: .venv/bin/python benchmarks/scale.py [--checks 20,100,300,1000] [--stores sqlite,postgresql]
       [--seconds 70] [--repeat 1] [--emulators 10] [--flush 30s]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import yaml
from sqlalchemy import create_engine, text

from sglguard.store import Store

MIB = 1024 * 1024
POSTGRES = os.environ.get("SGLGUARD_TEST_POSTGRES",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TROUBLE = ("database is locked", "could not write", "results dropped", "pool is full")
# The service's report of how it kept its schedule, every 30 s and at stop.
SCHEDULE = re.compile(r"schedule(?: at stop)?: (\d+) runs in (\d+) s, (\d+) missed, "
                      r"lateness p50 (\d+) ms, p99 (\d+) ms, max (\d+) ms")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_emulators(count: int, directory: Path) -> list[tuple[subprocess.Popen[bytes], str]]:
    started = []
    for index in range(count):
        port = free_port()
        with (directory / f"emulator-{index}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "sglguard", "emulator", "--port", str(port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started.append((process, f"http://127.0.0.1:{port}"))
    for process, url in started:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                sys.exit(f"emulator at {url} exited with status {process.returncode}")
            with (contextlib.suppress(OSError, urllib.error.URLError),
                  urllib.request.urlopen(f"{url}/get_model_info", timeout=5) as answer):
                if answer.status == 200:
                    break
            if time.monotonic() > deadline:
                sys.exit(f"emulator at {url} did not answer within 30 s")
            time.sleep(0.2)
    return started


def catalog(checks: int, urls: list[str], store_url: str, flush: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    for index in range(checks):
        target = f"t{index % len(urls)}"
        if index % 2 == 0:
            entries.append({"name": f"http-{index}", "kind": "http", "target": target,
                            "path": "/get_model_info", "interval": "1s", "timeout": "2s"})
        else:
            entries.append({"name": f"queue-{index}", "kind": "metric", "target": target,
                            "metric": "sglang:num_queue_reqs", "aggregate": "sum",
                            "critical": "> 1000", "interval": "1s", "timeout": "2s"})
    return {"version": 1, "store": {"url": store_url, "flush_interval": flush},
            "targets": [{"name": f"t{n}", "url": url} for n, url in enumerate(urls)],
            "checks": entries}


@dataclass
class Figures:
    checks: int
    store: str
    startup_s: float
    runs_per_s: float
    missed_pct: float
    p50_ms: float
    p99_ms: float
    cpu_pct: float
    rss_mib: float
    threads: int
    machine_load: float
    troubles: int  # log lines: database locked, writes failed or dropped, connections discarded
    first_missed_pct: float  # the first report: the first 30 s, start-up included
    first_p99_ms: float

    def row(self) -> str:
        return (f"| {self.checks} | {self.store} | {self.runs_per_s:.0f} | "
                f"{self.missed_pct:.1f} % | {self.p50_ms:.0f} ms | {self.p99_ms:.0f} ms | "
                f"{self.first_missed_pct:.1f} % | {self.first_p99_ms:.0f} ms | "
                f"{self.cpu_pct:.0f} % | {self.rss_mib:.0f} MiB | {self.threads} | "
                f"{self.startup_s:.1f} s | {self.machine_load:.1f} | {self.troubles} |")


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def count_runs(store_url: str, start: datetime, end: datetime) -> int:
    engine = create_engine(store_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(
                text("SELECT count(*) FROM check_results WHERE started_at >= :a "
                     "AND started_at < :b"),
                {"a": start.replace(tzinfo=None), "b": end.replace(tzinfo=None)}).scalar_one())
    finally:
        engine.dispose()


def measure(checks: int, store: str, urls: list[str], seconds: float, flush: str,
            directory: Path) -> Figures:
    schema = None
    if store == "sqlite":
        store_url = f"sqlite:///{directory / f'scale-{checks}-{uuid.uuid4().hex[:6]}.db'}"
    else:
        schema = f"sglguard_scale_{uuid.uuid4().hex[:8]}"
        admin = create_engine(POSTGRES)
        with admin.begin() as connection:
            connection.execute(text(f"create schema {schema}"))
        admin.dispose()
        store_url = f"{POSTGRES}?options=-csearch_path%3D{schema}"
    # The schema is made here, before the clock starts: start-up is that of a service whose
    # store exists (a first start also migrates it in a child process, about 1.5 s more).
    Store.open(store_url).close()
    config = directory / f"scale-{checks}.yaml"
    config.write_text(yaml.safe_dump(catalog(checks, urls, store_url, flush), sort_keys=False))
    log = directory / f"scale-{checks}-{store}.log"
    try:
        with log.open("wb") as output:
            began = time.monotonic()
            child = subprocess.Popen(
                [sys.executable, "-m", "sglguard", "run", "--config", str(config)],
                stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        process = psutil.Process(child.pid)
        while "sglguard running" not in log.read_text(errors="replace"):
            if child.poll() is not None or time.monotonic() - began > 120:
                sys.exit(f"sglguard did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        startup = time.monotonic() - began
        rss, threads = 0.0, 0
        mark_at = began + startup + 10
        mark_cpu = mark_wall = None
        end_at = began + startup + seconds
        while time.monotonic() < end_at:
            rss = max(rss, process.memory_info().rss / MIB)
            threads = max(threads, process.num_threads())
            if mark_cpu is None and time.monotonic() >= mark_at:
                mark_cpu, mark_wall, mark_mono = cpu_s(process), datetime.now(UTC), time.monotonic()
            time.sleep(0.5)
        end_cpu, end_wall, end_mono = cpu_s(process), datetime.now(UTC), time.monotonic()
        load = os.getloadavg()[0]
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=120)
        assert mark_cpu is not None and mark_wall is not None
        span = end_mono - mark_mono
        runs = count_runs(store_url, mark_wall, end_wall)
        said = log.read_text(errors="replace")
        reports = [tuple(map(int, match.groups())) for match in SCHEDULE.finditer(said)]
        troubles = sum(1 for line in said.splitlines() if any(what in line for what in TROUBLE))
        # The reports after the first (start-up) one: every 30 s, then the one at stop.
        steady = reports[1:] or reports
        done = sum(report[0] for report in steady)
        missed = sum(report[2] for report in steady)
        p50 = max((report[3] for report in steady), default=0)
        p99 = max((report[4] for report in steady), default=0)
        first = reports[0] if reports else (0, 0, 0, 0, 0, 0)
        return Figures(checks, store, startup, runs / span,
                       100 * missed / max(1, done + missed), p50, p99,
                       100 * (end_cpu - mark_cpu) / span, rss, threads, load, troubles,
                       100 * first[2] / max(1, first[0] + first[2]), first[4])
    finally:
        if schema is not None:
            admin = create_engine(POSTGRES)
            with admin.begin() as connection:
                connection.execute(text(f"drop schema {schema} cascade"))
            admin.dispose()


def profile(checks: int, urls: list[str], seconds: float, flush: str, directory: Path,
            top: int = 30) -> None:
    """Run the service in this process under yappi (installed apart: `pip install yappi`)
    for `seconds` after a 10 s warm-up, and print where its threads spent the CPU."""
    import yappi  # type: ignore[import-not-found]

    from sglguard.config.loader import load_catalog
    from sglguard.service import Service

    store_url = f"sqlite:///{directory / f'profile-{checks}.db'}"
    config = directory / f"profile-{checks}.yaml"
    config.write_text(yaml.safe_dump(catalog(checks, urls, store_url, flush), sort_keys=False))
    service = Service(load_catalog(config), Store.open(store_url))
    service.start()
    try:
        time.sleep(10)
        yappi.set_clock_type("cpu")
        yappi.start()
        time.sleep(seconds)
        yappi.stop()
    finally:
        service.stop()
    stats = yappi.get_func_stats()
    stats.sort("tsub", "desc")
    total = sum(stat.tsub for stat in stats)
    print(f"CPU of the service's threads over {seconds:g} s: {total:.2f} s; "
          f"own time of the top functions:")
    for stat in list(stats)[:top]:
        print(f"{100 * stat.tsub / total:5.1f} %  {stat.tsub:7.3f} s  {stat.ncall:8d}  "
              f"{Path(stat.module).name}:{stat.lineno} {stat.name}")
    stats.sort("ttot", "desc")
    print("\ninclusive time (own and callees):")
    for stat in list(stats)[:top]:
        print(f"{100 * stat.ttot / total:5.1f} %  {stat.ttot:7.3f} s  {stat.ncall:8d}  "
              f"{Path(stat.module).name}:{stat.lineno} {stat.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", default="20,100,300,1000")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--seconds", type=float, default=70.0,
                        help="how long each service runs after start-up (reports every 30 s)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--emulators", type=int, default=10)
    parser.add_argument("--flush", default="30s", help="the store's flush_interval")
    parser.add_argument("--profile", action="store_true",
                        help="instead: run the service in this process under yappi for "
                             "--seconds, on the first --checks and SQLite, and print where "
                             "the CPU goes")
    args = parser.parse_args()
    counts = [int(item) for item in args.checks.split(",")]
    stores = args.stores.split(",")
    print(f"{os.cpu_count()} cores; load average at start {os.getloadavg()[0]:.1f}; "
          f"{args.seconds:g} s per run; flush_interval {args.flush}; "
          f"{args.emulators} emulators; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", flush=True)
    print("| N | store | runs/s | missed | lateness p50 | p99 | first 30 s: missed | p99 | CPU "
          "| peak RSS | threads | start-up | load | troubles |", flush=True)
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory(prefix="sglguard-scale-") as name:
        directory = Path(name)
        emulators = start_emulators(args.emulators, directory)
        try:
            if args.profile:
                profile(counts[0], [url for _, url in emulators], args.seconds, args.flush,
                        directory)
                return
            for _ in range(args.repeat):
                for store in stores:
                    for count in counts:
                        figures = measure(count, store, [url for _, url in emulators],
                                          args.seconds, args.flush, directory)
                        print(figures.row(), flush=True)
        finally:
            for process, _ in emulators:
                process.send_signal(signal.SIGTERM)
            for process, _ in emulators:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=30)


if __name__ == "__main__":
    main()
