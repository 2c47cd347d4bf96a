"""`sglguard demo`: the whole loop on the example catalog, narrated for a person watching."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from sglguard import output
from sglguard.config.loader import ConfigError, load_catalog
from sglguard.controls.process import ProcessControlConfig, read_pidfile
from sglguard.receiver import AlertReceiver
from sglguard.service import Service
from sglguard.store import Store, StoreError, queries

logger = logging.getLogger(__name__)
DEADLINE = 90.0


SERVER_PORT = 30000
RECEIVER_PORT = 8088


def demo_catalog(port: int = SERVER_PORT, receiver_port: int = RECEIVER_PORT) -> str:
    """The reference catalog, with the emulator on `port` and the alert receiver on
    `receiver_port`."""
    text = resources.files("sglguard.config").joinpath("demo.yaml").read_text()
    changes = [(f"http://127.0.0.1:{SERVER_PORT}", f"http://127.0.0.1:{port}"),
               (f'--port, "{SERVER_PORT}"', f'--port, "{port}"'),
               (f"json://127.0.0.1:{RECEIVER_PORT}/", f"json://127.0.0.1:{receiver_port}/")]
    for old, new in changes:
        if old not in text:
            raise RuntimeError(f"the demo catalog no longer holds {old!r}")
        text = text.replace(old, new)
    return text


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait(predicate: Callable[[], bool], deadline: float) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _resolved(store: Store) -> int:
    with store.session() as session:
        return sum(1 for item in queries.incidents(session, open_only=False, limit=100)
                   if item.status == "resolved")


def run_demo(directory: Path, *, keep_running: bool = False, port: int = SERVER_PORT,
             receiver_port: int = RECEIVER_PORT) -> int:
    console = output.console(highlight=False)
    directory.mkdir(parents=True, exist_ok=True)
    catalog_path = directory / "sglguard.yaml"
    catalog_path.write_text(demo_catalog(port, receiver_port))
    # A demo starts from nothing: an earlier demo's restarts would count against the budget.
    for leftover in directory.glob("sglguard-demo.db*"):
        leftover.unlink()
    busy = [number for number in (port, receiver_port) if not _port_free(number)]
    if busy:
        console.print(f"[red]port {', '.join(map(str, busy))} on 127.0.0.1 is in use[/]: the "
                      f"demo's emulator listens on {port} and its alert receiver on "
                      f"{receiver_port}; choose others with --port and --receiver-port.")
        return 2
    try:
        catalog = load_catalog(catalog_path)
        store = Store.open(catalog.store.url)
    except (ConfigError, StoreError) as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    control = catalog.targets[0].control
    assert isinstance(control, ProcessControlConfig)

    def show(alert: dict[str, Any]) -> None:
        console.print(f"  [cyan]alert received on :{receiver_port}[/] "
                      f"{alert.get('title', '')}")

    receiver = AlertReceiver(port=receiver_port, on_alert=show).start()
    service = Service(catalog, store)
    console.print(f"[bold]sglguard demo[/] in {directory}/ (catalog sglguard.yaml, store "
                  f"sglguard-demo.db, emulator log {control.log_path.name})")
    console.print("1. No SGLang server is running yet. sglguard should see /health refused, "
                  "open an incident, start the server, and resolve the incident.")
    service.start()
    ok = False
    try:
        ok = _wait(lambda: _resolved(store) >= 1, DEADLINE)
        pid = read_pidfile(control.pidfile)
        if ok and pid is not None:
            console.print(f"2. The server runs as pid {pid}. Killing it with SIGKILL, as a "
                          "crash would...")
            os.kill(pid, signal.SIGKILL)
            ok = _wait(lambda: _resolved(store) >= 2, DEADLINE)
        service.notifications.flush(10.0)
        if keep_running and ok:
            console.print("3. Running on; Ctrl-C to stop.")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)
    finally:
        service.stop()
        receiver.stop()
        server = service.runner.control(catalog.targets[0])
        if server is not None:
            server.stop()
    with store.session() as session:
        items = [output.incident_dict(item, queries.runs_of(session, item.id),
                                      queries.attempts_of(session, item.id),
                                      queries.events_of(session, item.id))
                 for item in queries.incidents(session, open_only=False, limit=10)]
    output.incidents_table(console, items)
    if not ok:
        console.print(f"[red]the loop did not complete within {DEADLINE:g} s[/]; see "
                      f"{control.log_path}")
        return 1
    console.print("[green]done[/]: crash detected, server restarted, incidents resolved, "
                  "operator notified. Try `sglguard incidents --config "
                  f"{catalog_path}` or `sglguard history --config {catalog_path}`.")
    return 0
