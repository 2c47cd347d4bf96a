"""Shared by the real-time runs of the example catalog (slow_start.py, quiet_shapes.py): one
emulated server started by the target's own control, one `sglguard run` child process watching
it, a loopback receiver for its pages, and what the run left in its store."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sglguard.receiver import AlertReceiver
from sglguard.store import Store
from sglguard.store.models import CheckResultRow, IncidentRow, RemediationRunRow

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def emulator_command(port: int, *flags: str) -> list[str]:
    return [PYTHON, "-m", "sglguard", "emulator", "--port", str(port), *flags]


def example_catalog(folder: Path, port: int, start: list[str], alerts_port: int) -> Path:
    """The example catalog as shipped, pointed at this server, its control starting `start`, its
    pages sent to the receiver and its store in `folder` (the maintenance window left out, so
    that a run on a Sunday morning reads the same)."""
    catalog: dict[str, Any] = yaml.safe_load(
        resources.files("sglguard.config").joinpath("catalog.example.yaml").read_text())
    target = catalog["targets"][0]
    target["url"] = f"http://127.0.0.1:{port}"
    target["control"].update(start=start, pidfile=str(folder / "server.pid"))
    catalog["store"]["url"] = f"sqlite:///{folder / 'sglguard.db'}"
    catalog["notifiers"][0]["urls"] = [f"json://127.0.0.1:{alerts_port}/alerts"]
    catalog.pop("maintenance", None)
    path = folder / "sglguard.yaml"
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    return path


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what} after {timeout:g} s")
        time.sleep(0.5)


def sglguard(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One `sglguard` command by hand (as an operator types it), its output captured."""
    return subprocess.run([PYTHON, "-m", "sglguard", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=900, check=False)


@dataclass
class Watched:
    """One server under the example catalog: its control starts it, `sglguard run` watches it."""

    name: str
    folder: Path
    port: int
    flags: tuple[str, ...]
    service: subprocess.Popen[bytes] | None = None
    config: Path = field(init=False)
    receiver: AlertReceiver = field(init=False)
    arrivals: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.receiver = AlertReceiver(
            on_alert=lambda alert: self.arrivals.append((time.time(), alert))).start()
        self.config = example_catalog(self.folder, self.port,
                                      emulator_command(self.port, *self.flags),
                                      self.receiver.port)

    def start_server(self) -> None:
        """As the control starts it (detached, pidfile written), so `sglguard run` finds the
        server it would have started itself."""
        from sglguard.config.loader import load_catalog
        from sglguard.controls.process import ProcessControl, ProcessControlConfig

        target = load_catalog(self.config).targets[0]
        assert isinstance(target.control, ProcessControlConfig)
        pid = ProcessControl(target.control, target).start()
        # Reaped when it exits (a restart stops it), as the service reaps what it started.
        threading.Thread(target=os.waitpid, args=(pid, 0), daemon=True).start()

    def start_service(self) -> None:
        log = (self.folder / "sglguard-run.log").open("ab")
        self.service = subprocess.Popen(
            [PYTHON, "-m", "sglguard", "run", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.folder)

    def running(self) -> bool:
        """`sglguard run` has loaded its catalog and scheduled its checks."""
        log = self.folder / "sglguard-run.log"
        return log.exists() and "sglguard running:" in log.read_text(errors="replace")

    def stop(self) -> None:
        if self.service is not None and self.service.poll() is None:
            self.service.send_signal(signal.SIGTERM)
            try:
                self.service.wait(60)
            except subprocess.TimeoutExpired:
                self.service.kill()
        pidfile = self.folder / "server.pid"
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.killpg(int(pidfile.read_text().split()[0]), signal.SIGTERM)
        self.receiver.stop()

    def pages(self) -> list[str]:
        """Every page the receiver got: its time (UTC), title and first line."""
        return [f"{time.strftime('%H:%M:%S', time.gmtime(at))} {alert.get('title', '')}: "
                f"{str(alert.get('body', alert)).splitlines()[0] if alert.get('body') else ''}"
                for at, alert in self.arrivals]

    def summary(self) -> dict[str, Any]:
        """Incidents, remediation runs, and the failing results that counted, from the store."""
        store = Store.open(f"sqlite:///{self.folder / 'sglguard.db'}")
        with store.session() as session:
            incidents = [f"{row.check_name} {row.severity}: {row.first_message}"
                         for row in session.query(IncidentRow).order_by(IncidentRow.id)]
            runs = [f"{row.remediation} ({row.trigger}): {row.outcome}"
                    for row in session.query(RemediationRunRow).order_by(RemediationRunRow.id)]
            results = session.query(CheckResultRow).all()
            counted = Counter(row.check_name for row in results
                              if row.status not in ("ok", "skipped") and row.evaluated)
            statuses = Counter(row.status for row in results)
            not_ok = Counter(f"{row.check_name} {row.status}"
                             f"{'' if row.evaluated else ' (not counted)'}"
                             for row in results if row.status != "ok")
        return {"incidents": incidents, "runs": runs, "failing results counted": dict(counted),
                "results": dict(statuses), "not ok": dict(sorted(not_ok.items()))}


def show(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)
