"""A server that takes 45 s to start, restarted by hand beside the running service: the
example catalog as shipped must send no page but the planned ones.

Usage: .venv/bin/python benchmarks/slow_start.py [--startup 45] [--settle 60] [--after 240]

The emulator (`--load 5`, as the example's control starts it, plus `--startup-delay`) is started
by the target's own control; `sglguard run` watches it with the example catalog (its store,
remediations and notifier; the notifier pointed at a loopback receiver, the maintenance window
left out). After `--settle` seconds an operator runs `sglguard remediate restart`; the script
then watches `--after` more seconds and prints every page the receiver got, the incidents, the
remediation runs and the failing results that counted toward an incident."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from example_runs import Watched, free_port, healthy, sglguard, show, wait_until


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--startup", type=float, default=45.0, help="seconds the server takes")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="seconds the service watches before the restart")
    parser.add_argument("--after", type=float, default=240.0,
                        help="seconds watched after the restart command returns")
    parser.add_argument("--keep", type=Path, default=None,
                        help="write the catalog, store and logs here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sglguard-slow-start-") as scratch:
        folder = args.keep or Path(scratch)
        run = Watched("slow start", folder, free_port(),
                      ("--load", "5", "--startup-delay", f"{args.startup:g}"))
        try:
            began = time.monotonic()
            run.start_server()
            wait_until(lambda: healthy(run.port), args.startup + 120, "the first start")
            first_start = time.monotonic() - began
            run.start_service()
            wait_until(run.running, 300, "sglguard run to start")
            time.sleep(args.settle)
            print(f"{time.strftime('%H:%M:%S', time.gmtime())} sglguard remediate restart "
                  "(by hand, beside the running service)")
            began = time.monotonic()
            manual = sglguard(run.config, "remediate", "restart", "--target", "local")
            took = time.monotonic() - began
            print(f"  exit {manual.returncode} after {took:.1f} s: "
                  f"{(manual.stdout or manual.stderr).strip()}")
            began = time.monotonic()
            wait_until(lambda: healthy(run.port), args.startup + 120, "the restarted server")
            restarted = time.monotonic() - began
            print(f"  server healthy {restarted:.1f} s after the command returned")
            time.sleep(max(0.0, args.after - restarted))
        finally:
            run.stop()
        summary = run.summary()
        pages = run.pages()
        print(f"\nstart-up {args.startup:g} s (first start healthy after {first_start:.1f} s); "
              f"watched {args.settle:g} s before and {args.after:g} s after the restart")
        print(f"pages: {len(pages)}")
        for line in pages:
            print(f"  {line}")
        print(f"incidents: {len(summary['incidents'])}")
        for line in summary["incidents"]:
            print(f"  {line}")
        print(f"remediation runs: {len(summary['runs'])}")
        for line in summary["runs"]:
            print(f"  {line}")
        print(f"results by status: {show(summary['results'])}")
        print(f"results not OK, by check: {show(summary['not ok'])}")
        print(f"failing results counted: {show(summary['failing results counted'])}")
        unplanned = summary["incidents"] or pages or [
            line for line in summary["runs"] if "(manual)" not in line]
        print("\nno page but the planned ones" if not unplanned else "\nUNPLANNED: see above")


if __name__ == "__main__":
    main()
