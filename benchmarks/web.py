"""What the status page, the API and /metrics cost to serve, on a store with many results.

Usage: .venv/bin/python benchmarks/web.py [--checks 10] [--results 20000] [--requests 20]

Fills a fresh SQLite store with `--results` results per check (spread over the last day, every
tenth one critical), serves it on loopback, and times each path over `--requests` requests.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
from sqlalchemy import insert

from sglguard.config.loader import parse_catalog
from sglguard.store import Store
from sglguard.store.models import CheckResultRow
from sglguard.web.server import serve

PATHS = ("/", "/checks/check-0", "/api/v1/checks", "/api/v1/targets", "/metrics", "/healthz")


def catalog_text(checks: int) -> str:
    lines = ["version: 1", "store: {url: sqlite:///web.db}",
             "targets: [{name: local, url: 'http://127.0.0.1:1'}]", "checks:"]
    lines += [f"  - {{name: check-{index}, kind: http, target: local, interval: 5s, "
              f"warning: '> 0.5'}}" for index in range(checks)]
    return "\n".join(lines) + "\n"


def fill(store: Store, checks: int, results: int) -> None:
    now = datetime.now(UTC)
    step = timedelta(days=1) / results
    with store.engine.begin() as connection:
        for index in range(checks):
            rows = [{"check_name": f"check-{index}", "target": "local",
                     "status": "critical" if number % 10 == 0 else "ok",
                     "value": 0.1 + (number % 7) / 10, "unit": "s", "message": "GET /health",
                     "duration_ms": 3.0, "started_at": now - step * (results - number),
                     "evaluated": True} for number in range(results)]
            connection.execute(insert(CheckResultRow), rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=10)
    parser.add_argument("--results", type=int, default=20000, help="per check")
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sglguard-web-") as folder:
        path = Path(folder) / "sglguard.yaml"
        path.write_text(catalog_text(args.checks))
        catalog = parse_catalog(path.read_text(), path)
        store = Store.open(catalog.store.url)
        began = time.perf_counter()
        fill(store, args.checks, args.results)
        print(f"store: {args.checks} checks x {args.results} results "
              f"(filled in {time.perf_counter() - began:.1f} s)")
        web = serve(catalog, store, listen="127.0.0.1:0")
        session = requests.Session()
        try:
            for route in PATHS:
                url = f"http://127.0.0.1:{web.port}{route}"
                session.get(url, timeout=60)  # warm: templates compiled, pages cached
                times, size = [], 0
                for _ in range(args.requests):
                    start = time.perf_counter()
                    response = session.get(url, timeout=60)
                    times.append((time.perf_counter() - start) * 1000)
                    size = len(response.content)
                print(f"{route:<22} median {statistics.median(times):7.1f} ms   "
                      f"max {max(times):7.1f} ms   {size / 1024:7.1f} KiB")
        finally:
            web.stop()
            store.close()


if __name__ == "__main__":
    main()
