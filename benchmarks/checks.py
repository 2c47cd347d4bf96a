"""CPU time per run of each check kind against the emulator, and the cost of parsing and
evaluating the /metrics page of a large server (8 data-parallel ranks, every 0.5.23 metric).

Usage: .venv/bin/python benchmarks/checks.py [--runs 40]
Figures are this process's CPU time (user + system), so time spent waiting on the server
(e.g. /health's own latency) does not count; the emulator runs as a separate process.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import requests

from sglguard.checks.promql import (
    Page,
    Scrape,
    histogram_quantile,
    increases,
    merge_buckets,
)
from sglguard.clock import utcnow
from sglguard.config.loader import parse_catalog
from sglguard.service import build_checks, build_clients
from sglguard.store import Store


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_emulator(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "sglguard", "emulator", "--port", str(port), "--load", "10",
         "--health-latency", "0.05"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                return process
        except requests.RequestException:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the emulator did not come up")


def example_catalog(directory: Path, port: int) -> Path:
    text = resources.files("sglguard.config").joinpath("catalog.example.yaml").read_text()
    text = text.replace("127.0.0.1:30000", f"127.0.0.1:{port}")
    # Each run fetches its own page, as each check alone costs (no shared scrape).
    text = text.replace(f"url: http://127.0.0.1:{port}\n",
                        f"url: http://127.0.0.1:{port}\n    metrics_max_age: 0s\n", 1)
    path = directory / "sglguard.yaml"
    path.write_text(text)
    return path


def per_kind(runs: int) -> list[tuple[str, str, float, float]]:
    """(check, kind, CPU ms per run, wall ms per run) for every check of the example catalog."""
    port = free_port()
    emulator = start_emulator(port)
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = example_catalog(Path(folder), port)
            catalog = parse_catalog(path.read_text(), path)
            store = Store.open(catalog.store.url)
            checks = build_checks(catalog, build_clients(catalog), store, utcnow)
            rows = []
            for name, check in checks.items():
                check.execute()  # warm: first samples, connections, caches
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(runs):
                    check.execute()
                rows.append((name, check.kind, (time.process_time() - cpu) / runs * 1000,
                             (time.perf_counter() - wall) / runs * 1000))
            store.close()
            return rows
    finally:
        emulator.terminate()
        emulator.wait(10)


def large_page(port_page: str, ranks: int = 8) -> str:
    """The emulator's page with every series repeated for `ranks` data-parallel ranks."""
    lines: list[str] = []
    for line in port_page.splitlines():
        if line.startswith("#") or "{" not in line:
            lines.append(line)
            continue
        name, rest = line.split("{", 1)
        lines += [f'{name}{{dp_rank="{rank}",{rest}' for rank in range(ranks)]
    return "\n".join(lines) + "\n"


def evaluate_p95(page: str, before: dict[str, float] | None) -> float | None:
    """What a `quantile: 0.95` metric check does with a page, less the store."""
    scrape = Scrape.parse(page, only=["sglang:time_to_first_token_seconds"])
    buckets = scrape.select("sglang:time_to_first_token_seconds_bucket", {}, ignore=("le",))
    grown = increases(before or {}, buckets)
    return histogram_quantile(0.95, merge_buckets(grown))


def page_cost(repeats: int) -> tuple[int, int, float, float, float]:
    port = free_port()
    emulator = start_emulator(port)
    try:
        time.sleep(2)  # let the synthetic load fill every histogram
        page = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        emulator.terminate()
        emulator.wait(10)
    big = large_page(page)
    series = sum(1 for line in big.splitlines() if line and not line.startswith("#"))
    began = time.process_time()
    for _ in range(repeats):
        Scrape.parse(big)
    parse_ms = (time.process_time() - began) / repeats * 1000
    began = time.process_time()
    for _ in range(repeats):
        evaluate_p95(big, None)
    evaluate_ms = (time.process_time() - began) / repeats * 1000
    began = time.process_time()
    for _ in range(repeats):
        Page(big)
    split_ms = (time.process_time() - began) / repeats * 1000
    return len(big.encode()), series, parse_ms, evaluate_ms, split_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.machine()}; {args.runs} runs per check")
    print(f"{'check':<20} {'kind':<18} {'CPU ms/run':>10} {'wall ms/run':>11}")
    for name, kind, cpu, wall in per_kind(args.runs):
        print(f"{name:<20} {kind:<18} {cpu:>10.2f} {wall:>11.1f}")
    size, series, parse_ms, evaluate_ms, split_ms = page_cost(20)
    print(f"\n/metrics of 8 DP ranks: {size / 1024:.0f} KiB, {series} series")
    print(f"  parse the whole page (prometheus_client): {parse_ms:.1f} ms CPU")
    print(f"  p95 TTFT as a metric check evaluates it (only its family parsed): "
          f"{evaluate_ms:.1f} ms CPU")
    print(f"  split it by family once per fetch (the shared page, promql.Page): "
          f"{split_ms:.1f} ms CPU")


if __name__ == "__main__":
    main()
