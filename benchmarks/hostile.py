"""Peak memory and run times of `sglguard run` against hostile servers, and how fast it stops.

Each scenario starts one hostile loopback server (from `sglguard.emulator.hostile`), runs the
service on a catalog of two checks against it (an `http` check and a `metric` check, timeout
3 s, interval 5 s) for `--seconds`, samples the service's RSS, then sends SIGTERM and times
the exit. Printed per scenario: peak RSS, results stored, the longest run's duration and its
message, the SIGTERM-to-exit time.

Usage: .venv/bin/python benchmarks/hostile.py [--seconds 20] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from sglguard.emulator.hostile import (
    Behaviour,
    HostileServer,
    answer,
    endless,
    gzip_bomb,
    huge,
    slow_body,
    slow_headers,
)

MIB = 1024 * 1024
DP8_PAGE = Path("/work/shared/fixtures/sglang-0.5.23-dp8-page.txt")

SCENARIOS: dict[str, Callable[[], Behaviour]] = {
    "8-DP page (control)": lambda: answer(200, DP8_PAGE.read_bytes() if DP8_PAGE.exists()
                                          else b"sglang:num_queue_reqs 0\n"),
    "slow-loris headers (1 B/s)": lambda: slow_headers(1.0),
    "slow-loris body (1 B/s)": lambda: slow_body(1.0),
    "endless stream": endless,
    "300 MB page": lambda: huge(300 * 1000 * 1000),
    "gzip bomb (2 MB -> 2 GiB)": lambda: gzip_bomb(2 << 30),
}

CATALOG = """\
version: 1
store: {{url: "sqlite:///{db}", flush_interval: 1s}}
targets:
  - {{name: local, url: "{url}"}}
checks:
  - {{name: health, kind: http, target: local, interval: 5s, timeout: 3s}}
  - {{name: queue, kind: metric, target: local, metric: sglang:num_queue_reqs,
      interval: 5s, timeout: 3s}}
"""


def scenario(name: str, behaviour: Behaviour, seconds: float) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as folder, HostileServer(behaviour) as server:
        db = Path(folder) / "sglguard.db"
        catalog = Path(folder) / "sglguard.yaml"
        catalog.write_text(CATALOG.format(db=db, url=server.url))
        service = subprocess.Popen([sys.executable, "-m", "sglguard", "run", "--config",
                                    str(catalog)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        process = psutil.Process(service.pid)
        peak = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end and service.poll() is None:
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.05)
        began = time.monotonic()
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=60)
            stopped = f"{time.monotonic() - began:.2f} s"
        except subprocess.TimeoutExpired:
            service.kill()
            stopped = "did not stop in 60 s"
        with sqlite3.connect(db) as connection:
            count, longest = connection.execute(
                "select count(*), max(duration_ms) from check_results").fetchone()
            message = connection.execute(
                "select status, message from check_results order by duration_ms desc limit 1"
            ).fetchone()
    return {"scenario": name, "peak RSS": f"{peak / MIB:.1f} MiB", "results": str(count),
            "longest run": f"{(longest or 0) / 1000:.2f} s",
            "its result": f"{message[0]}: {message[1][:90]}" if message else "-",
            "SIGTERM to exit": stopped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    rows = [scenario(name, make(), args.seconds) for name, make in SCENARIOS.items()
            if not args.only or any(part in name for part in args.only)]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(row[key].replace("|", "/") for key in keys) + " |")


if __name__ == "__main__":
    main()
