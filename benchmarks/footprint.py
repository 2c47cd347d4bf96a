"""Footprint of `sglguard run` on the reference catalog: memory, CPU per check run, shutdown.

Usage: .venv/bin/python benchmarks/footprint.py [--seconds 60] [--steady-from 10] [--catalog PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import psutil
import yaml

from sglguard.receiver import AlertReceiver

MIB = 1024 * 1024
RSS_TARGET_MIB = 80.0
CPU_TARGET_MS = 2.0
SAMPLE_S = 0.5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_catalog(source: str, directory: Path, emulator_port: int, alert_port: int) -> Path:
    """The catalog, moved onto free loopback ports, its emulator started without PATH."""
    catalog: dict[str, Any] = yaml.safe_load(source)
    target = catalog["targets"][0]
    target["url"] = f"http://127.0.0.1:{emulator_port}"
    start = [str(item) for item in target["control"]["start"]]  # [sglguard, emulator, ...]
    start[start.index("--port") + 1] = str(emulator_port)
    target["control"]["start"] = [sys.executable, "-m", "sglguard", *start[1:]]
    catalog["notifiers"][0]["urls"] = [f"json://127.0.0.1:{alert_port}/alerts"]
    path = directory / "sglguard.yaml"
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    return path


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path,
                 deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if process.poll() is not None:
            sys.exit(f"the emulator exited with status {process.returncode}:\n{tail(log)}")
        with (contextlib.suppress(OSError, urllib.error.URLError),
              urllib.request.urlopen(f"{url}/health", timeout=5) as response):
            if response.status == 200:
                return
        time.sleep(0.2)
    sys.exit(f"the emulator did not answer 200 on {url}/health within {deadline_s:g} s")


def stored(database: Path) -> dict[str, int]:
    """Rows of `check_results` by status (one row per check run)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT status, count(*) FROM check_results GROUP BY status")
            return {str(status): int(count) for status, count in rows}
    except sqlite3.OperationalError:  # no database or no schema yet
        return {}


def runs_between(database: Path, start: datetime, end: datetime) -> int:
    """Check runs that started in [start, end), counted after exit: quiet results are written
    in batches, so a count taken while the service runs lags behind."""
    shown = [moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ") for moment in (start, end)]
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT count(*) FROM check_results WHERE started_at >= ? "
                         "AND started_at < ?", shown).fetchone()
        return int(row[0])


def cpu_seconds(process: psutil.Process) -> tuple[float, float]:
    """On-CPU time of the process's live threads in nanoseconds' resolution (schedstat; 0 where
    the kernel lacks it), and user+sys in clock ticks (threads that ended included)."""
    times = process.cpu_times()
    try:
        tasks = Path(f"/proc/{process.pid}/task")
        precise = sum(int((task / "schedstat").read_text().split()[0])
                      for task in tasks.iterdir()) / 1e9
    except (OSError, ValueError):
        precise = 0.0
    return precise, float(times.user + times.system)


@dataclass
class Measured:
    """What one run of the service showed; times in seconds from its start."""

    rss_mib: list[float] = field(default_factory=list)
    mark: tuple[float, tuple[float, float], float] = (0.0, (0.0, 0.0), 0.0)  # at, cpu, rss
    end: tuple[float, tuple[float, float]] = (0.0, (0.0, 0.0))  # at, cpu: before SIGTERM
    runs: tuple[int, int] = (0, 0)  # check runs in all, and from the mark to the end
    stop_s: float = 0.0
    exit_code: int | None = None
    statuses: dict[str, int] = field(default_factory=dict)


def measure(command: list[str], database: Path, seconds: float, steady_from: float,
            log: Path) -> Measured:
    result = Measured()
    with log.open("wb") as output:
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
    process, began, marked = psutil.Process(child.pid), time.monotonic(), None
    while (elapsed := time.monotonic() - began) < seconds:
        if child.poll() is not None:
            sys.exit(f"sglguard exited early with status {child.returncode}:\n{tail(log)}")
        result.rss_mib.append(process.memory_info().rss / MIB)
        if marked is None and elapsed >= steady_from:
            result.mark, marked = (elapsed, cpu_seconds(process), result.rss_mib[-1]), now()
        time.sleep(SAMPLE_S)
    result.rss_mib.append(process.memory_info().rss / MIB)
    result.end, ended = (time.monotonic() - began, cpu_seconds(process)), now()
    stopping = time.monotonic()
    child.send_signal(signal.SIGTERM)
    result.exit_code = child.wait(timeout=60)
    result.stop_s = time.monotonic() - stopping
    result.statuses = stored(database)
    started = datetime.fromtimestamp(0, UTC)
    result.runs = (runs_between(database, started, ended),
                   runs_between(database, marked or ended, ended))
    return result


def now() -> datetime:
    return datetime.now(UTC)


def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((line.split(":", 1)[1].strip() for line in lines
                      if line.startswith("model name")), model)
    memory = psutil.virtual_memory().total / 1024**3
    return (f"{os.cpu_count()} logical cores ({psutil.cpu_count(logical=False)} physical), "
            f"{model}, {memory:.0f} GiB RAM; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}")


def report(result: Measured, seconds: float, checks: int, alerts: int) -> None:
    (mark_at, (mark_cpu, mark_ticks), mark_rss), (end_at, (cpu, ticks)) = result.mark, result.end
    runs, span_runs = result.runs
    peak, final = max(result.rss_mib), result.rss_mib[-1]
    if not cpu:  # no schedstat: clock ticks (10 ms each) are all there is
        cpu, mark_cpu = ticks, mark_ticks
    per_run = 1000 * ticks / max(1, runs)
    steady = 1000 * (cpu - mark_cpu) / span_runs if span_runs else None
    tick_steady = 1000 * (ticks - mark_ticks) / span_runs if span_runs else None
    shown = ", ".join(f"{status} {count}" for status, count in result.statuses.items())
    rows = [
        ("machine", machine()),
        ("run", f"{seconds:g} s of `sglguard run`, {checks} checks; RSS sampled every "
                f"{SAMPLE_S:g} s"),
        ("peak RSS", f"{peak:.1f} MiB"),
        ("final RSS", f"{final:.1f} MiB ({mark_rss:.1f} MiB at t={mark_at:.0f} s)"),
        ("CPU, total", f"{ticks:.2f} s (user+sys, just before SIGTERM)"),
        ("check runs", f"{runs} ({sum(result.statuses.values())} stored after exit: {shown})"),
        ("CPU per run, incl. start-up", f"{per_run:.2f} ms"),
        (f"CPU per run, t={mark_at:.0f}-{end_at:.0f} s",
         f"{steady:.2f} ms ({cpu - mark_cpu:.3f} s / {span_runs} runs; on-CPU time)"
         if steady is not None
         else "no check run in this span: run longer"),
        ("  same, in clock ticks", f"{tick_steady:.2f} ms (user+sys, 10 ms resolution)"
         if tick_steady is not None else "-"),
        ("SIGTERM to exit", f"{result.stop_s:.2f} s (exit status {result.exit_code})"),
        ("alerts received", f"{alerts} (notifications sglguard sent during the run)"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n" + "\n".join(f"{name:<{width}}  {value}" for name, value in rows) + "\n")
    verdict = {True: "met", False: "NOT met"}
    print(f"target RSS < {RSS_TARGET_MIB:g} MiB (peak): {verdict[peak < RSS_TARGET_MIB]}")
    steady_verdict = "not measured" if steady is None else verdict[steady < CPU_TARGET_MS]
    print(f"target CPU < {CPU_TARGET_MS:g} ms per check run: steady state {steady_verdict}, "
          f"including start-up {verdict[per_run < CPU_TARGET_MS]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long sglguard runs")
    parser.add_argument("--steady-from", type=float, default=10.0,
                        help="second from which the steady-state CPU figure is taken")
    parser.add_argument("--catalog", type=Path, default=None,
                        help="catalog to measure (default: the reference catalog, demo.yaml)")
    args = parser.parse_args()
    if not 0 <= args.steady_from < args.seconds:
        parser.error("--steady-from must be at least 0 and less than --seconds")
    source = (args.catalog.read_text() if args.catalog else resources.files("sglguard.config")
              .joinpath("demo.yaml").read_text())
    with tempfile.TemporaryDirectory(prefix="sglguard-footprint-") as name:
        directory = Path(name)
        emulator_port, receiver = free_port(), AlertReceiver(port=0).start()
        config = write_catalog(source, directory, emulator_port, receiver.port)
        catalog = yaml.safe_load(config.read_text())
        url, control = catalog["targets"][0]["url"], catalog["targets"][0]["control"]
        pidfile = directory / control["pidfile"]
        log = directory / control.get("log", pidfile.with_suffix(".log").name)
        with log.open("ab") as output:  # where the control would send the server's output
            emulator = subprocess.Popen(control["start"], cwd=directory, stdout=output,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        pidfile.write_text(f"{emulator.pid}\n")  # sglguard's managed server from now on
        try:
            wait_healthy(url, emulator, log)
            database = directory / catalog["store"]["url"].removeprefix("sqlite:///")
            print(f"emulator pid {emulator.pid} healthy on {url}; running sglguard for "
                  f"{args.seconds:g} s in {directory}", flush=True)
            command = [sys.executable, "-m", "sglguard", "run", "--config", str(config)]
            result = measure(command, database, args.seconds, args.steady_from,
                             directory / "sglguard.log")
        finally:
            # The emulator, and the one sglguard started instead if it restarted it.
            for pid in {emulator.pid, *map(int, pidfile.read_text().split()[:1])}:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)
            emulator.wait(timeout=30)
            receiver.stop()
        report(result, args.seconds, len(catalog["checks"]), len(receiver.received()))


if __name__ == "__main__":
    main()
