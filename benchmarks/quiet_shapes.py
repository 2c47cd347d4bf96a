"""The example catalog in real time on healthy servers of every common shape at once: plain,
DP 8, priority scheduling, PD prefill and decode workers, skip-warmup without traffic. This host
has no GPU, so every run is also the "no GPU" shape. Expected: no incident, no page.

Usage: .venv/bin/python benchmarks/quiet_shapes.py [--minutes 4] [--load 2]

One emulator per shape, started by the target's own control (detached, pidfile written), and one
`sglguard run` child process per shape with the example catalog as shipped (its store, control,
remediations and notifier; the notifier pointed at a loopback receiver, the maintenance window
left out). Every server gets light synthetic load (`--load` requests/s) except the skip-warmup
one, which gets none: its latency and token series do not exist until a first request."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from example_runs import Watched, free_port, healthy, show, wait_until

SHAPES: dict[str, tuple[str, ...]] = {
    "plain": (),
    "dp 8": ("--dp-size", "8"),
    "priority scheduling": ("--enable-priority-scheduling",),
    "PD prefill worker": ("--disaggregation-mode", "prefill"),
    "PD decode worker": ("--disaggregation-mode", "decode"),
    "skip-warmup, no traffic": ("--skip-server-warmup",),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--load", type=float, default=2.0, help="requests/s per server")
    parser.add_argument("--keep", type=Path, default=None,
                        help="write catalogs, stores and logs here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sglguard-shapes-") as scratch:
        folder = args.keep or scratch
        runs = []
        for index, (name, flags) in enumerate(SHAPES.items()):
            load = () if "--skip-server-warmup" in flags else ("--load", f"{args.load:g}")
            runs.append(Watched(name, Path(folder) / str(index), free_port(), (*flags, *load)))
        try:
            for run in runs:
                run.start_server()
            for run in runs:
                wait_until(lambda run=run: healthy(run.port), 120, f"{run.name} to start")
            for run in runs:
                run.start_service()
            for run in runs:
                wait_until(run.running, 300, f"sglguard run to start on {run.name}")
            began = time.monotonic()
            time.sleep(args.minutes * 60)
            elapsed = time.monotonic() - began
        finally:
            for run in runs:
                run.stop()
        print(f"{len(runs)} shapes at once, the example catalog for {elapsed / 60:.1f} minutes "
              f"of real time each ({args.load:g} requests/s of load; none on skip-warmup)")
        quiet = True
        for run in runs:
            summary = run.summary()
            pages = run.pages()
            quiet &= not summary["incidents"] and not pages and not summary["runs"]
            print(f"\n== {run.name} ({' '.join(run.flags) or 'no flags'})")
            print(f"incidents: {len(summary['incidents'])}, pages: {len(pages)}, "
                  f"remediation runs: {len(summary['runs'])}")
            for line in summary["incidents"] + pages + summary["runs"]:
                print(f"  {line}")
            print(f"results by status: {show(summary['results'])}")
            if summary["not ok"]:
                print(f"results not OK, by check: {show(summary['not ok'])}")
            if summary["failing results counted"]:
                print(f"failing results counted: {show(summary['failing results counted'])}")
        print("\nquiet on every shape" if quiet else "\nNOT QUIET: see above")


if __name__ == "__main__":
    main()
