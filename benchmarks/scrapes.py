"""GET /metrics per minute that the example catalog costs a server: each check fetching its own
page (`metrics_max_age: 0s`) against the shared scrape (the default), side by side.

Usage: .venv/bin/python benchmarks/scrapes.py [--seconds 60]

Two emulators, one `Service` each (in this process), both running the example catalog without
its control, notifiers or maintenance; the emulator counts the requests per route, as SGLang's
`sglang:http_requests_total` does."""

from __future__ import annotations

import argparse
import re
import tempfile
import time
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sglguard.config.loader import parse_catalog
from sglguard.emulator import Emulator, EmulatorOptions
from sglguard.service import Service
from sglguard.store import Store


def catalog_text(url: str, max_age: str | None) -> str:
    catalog: dict[str, Any] = yaml.safe_load(
        resources.files("sglguard.config").joinpath("catalog.example.yaml").read_text())
    target = catalog["targets"][0]
    target["url"] = url
    target.pop("control", None)
    if max_age is not None:
        target["metrics_max_age"] = max_age
    for key in ("notifiers", "maintenance", "remediations"):
        catalog.pop(key, None)
    for check in catalog["checks"]:
        check.pop("remediate", None)
    catalog["store"] = {"url": "sqlite:///sglguard.db"}
    return yaml.safe_dump(catalog, sort_keys=False)


def metrics_requests(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(r'http_requests_total\{endpoint="/metrics",method="GET"\} (\S+)', text)
    return float(found.group(1)) - 1 if found else 0.0  # this request excluded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    runs = {"each check its own scrape (metrics_max_age: 0s)": "0s",
            "one scrape per target per tick (default)": None}
    setups = []
    with tempfile.TemporaryDirectory() as folder:
        for index, (label, max_age) in enumerate(runs.items()):
            emulator = Emulator(EmulatorOptions(port=0, load=5, health_latency=0.05))
            emulator.start()
            directory = Path(folder) / str(index)
            directory.mkdir()
            path = directory / "sglguard.yaml"
            path.write_text(catalog_text(emulator.url, max_age))
            catalog = parse_catalog(path.read_text(), path)
            store = Store.open(catalog.store.url)
            service = Service(catalog, store)
            setups.append((label, emulator, store, service, metrics_requests(emulator.url)))
        for *_, service, _ in setups:
            service.start()
        time.sleep(args.seconds)
        for label, emulator, store, service, before in setups:
            service.stop()
            scrapes = metrics_requests(emulator.url) - before - 1
            print(f"{label}: {scrapes:.0f} GET /metrics in {args.seconds:g} s = "
                  f"{scrapes * 60 / args.seconds:.1f} per minute")
            store.close()
            emulator.stop()


if __name__ == "__main__":
    main()
