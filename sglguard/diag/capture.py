"""Capturing a bundle for an incident: when it opens (in the background) and just before a
destructive remediation (bounded: the remediation waits at most `diagnostics.timeout`).

A capture never raises: whatever goes wrong is logged and the incident goes on without it."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sglguard.backlog import failed
from sglguard.client import SGLangClient
from sglguard.clock import utcnow
from sglguard.config.models import Catalog
from sglguard.controls.base import Control
from sglguard.diag.bundle import build
from sglguard.diag.collect import Job, metric_families, read_all
from sglguard.diag.dumps import RequestDumps
from sglguard.store import Store
from sglguard.store.evidence import DiagnosticRow, bundles_of
from sglguard.store.models import IncidentRow

logger = logging.getLogger(__name__)
HANG_WORDS = ("timed out", "timeout", "no token", "hung", "stalled")
ATTACHED = frozenset({"incident_opened", "incident_escalated", "budget_spent",
                      "remediation_succeeded", "remediation_failed"})

_lock = threading.Lock()
_in_flight: dict[int, threading.Event] = {}  # incident id -> set when its capture is stored


def _begin(incident_id: int) -> threading.Event:
    with _lock:
        event = _in_flight[incident_id] = threading.Event()
        return event


def _end(incident_id: int, event: threading.Event) -> None:
    event.set()
    with _lock:
        if _in_flight.get(incident_id) is event:
            del _in_flight[incident_id]


def wait_for_capture(incident_id: int, timeout: float) -> None:
    """Wait (at most `timeout`) for a capture of the incident this process has in progress."""
    with _lock:
        event = _in_flight.get(incident_id)
    if event is not None:
        event.wait(timeout)


class Diagnostics:
    """Captures and stores the bundles of the catalog's incidents."""

    def __init__(self, catalog: Catalog, store: Store, clients: Mapping[str, SGLangClient],
                 controls: Callable[[str], Control[Any] | None], *,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.catalog, self.store, self.clients = catalog, store, clients
        self.controls, self.clock = controls, clock
        self.settings = catalog.diagnostics
        self.dumps = RequestDumps(catalog, store, clients, clock=clock)

    @property
    def bound(self) -> float:
        return self.settings.timeout.total_seconds()

    def opened(self, incident_id: int, check: str) -> None:
        """Capture in a background thread; a notification of the incident waits for it. Request
        dumps, when the catalog asks for them, are switched on in another."""
        target = self.catalog.check(check).target
        if self.settings.enabled and self.dumps.covers(target):
            threading.Thread(target=self.dumps.opened, args=(incident_id, target),
                             name=f"dumps-{incident_id}", daemon=True).start()
        if not self.settings.enabled:
            return
        event = _begin(incident_id)

        def work() -> None:
            try:
                self.capture(incident_id, check, "incident opened")
            finally:
                _end(incident_id, event)

        threading.Thread(target=work, name=f"diag-{incident_id}", daemon=True).start()

    def resolved(self, incident_id: int) -> None:
        """An incident resolved: request dumps switched on for it go back (in the background)."""
        if self.dumps.config is None:
            return
        threading.Thread(target=self.dumps.resolved, args=(incident_id,),
                         name=f"dumps-{incident_id}", daemon=True).start()

    def release(self) -> None:
        """sglguard stops: request dumps it switched on go back (each bounded)."""
        self.dumps.release()

    def before(self, incident_id: int, check: str, remediation: str) -> None:
        """Capture before `remediation` destroys the evidence; returns within the bound."""
        if not self.settings.enabled:
            return
        event = _begin(incident_id)

        def work() -> None:
            try:
                self.capture(incident_id, check, f"before {remediation}")
            finally:
                _end(incident_id, event)

        thread = threading.Thread(target=work, name=f"diag-{incident_id}", daemon=True)
        thread.start()
        thread.join(self.bound + 0.5)  # reading is bounded; this bounds storing it too
        if thread.is_alive():
            logger.warning("incident #%s: diagnostics before %s not stored within %s s; "
                           "going on", incident_id, remediation, self.bound)

    def capture(self, incident_id: int | None, check: str, stage: str) -> int | None:
        """Read, bound, compress and store one bundle; its row id, or None when it failed."""
        try:
            return self._capture(incident_id, check, stage)
        except Exception as exc:  # a store outage: said once, no traceback
            failed(logger, f"incident #{incident_id}: diagnostics ({stage}) failed", exc)
            return None

    def _capture(self, incident_id: int | None, check: str, stage: str) -> int:
        config = self.catalog.check(check)
        target = self.catalog.target(config.target)
        began, at = time.monotonic(), self.clock()
        job = Job(target=target, client=self.clients[target.name],
                  control=self.controls(target.name), settings=self.settings,
                  metrics=metric_families(item for item in self.catalog.checks
                                          if item.target == target.name),
                  hang=self._looks_hung(incident_id, config.kind))
        sections = read_all(job, self.bound)
        took = (time.monotonic() - began) * 1000
        head = {"stage": stage, "target": target.name, "check": check,
                "incident_id": incident_id, "captured_at": at.isoformat(), "took_ms": took,
                "hang": job.hang}
        bundle = build(head, sections, self.settings.max_bytes)
        for retry in self.store.retrying():
            with retry, self.store.session() as session:
                row = DiagnosticRow(incident_id=incident_id, target=target.name, stage=stage,
                                    captured_at=at, took_ms=took, size=bundle.size,
                                    summary=bundle.summary, data=bundle.data)
                session.add(row)
                session.flush()
                row_id = row.id
        logger.info("incident #%s: diagnostics (%s) stored: %s bytes in %.1f s", incident_id,
                    stage, bundle.size, took / 1000)
        return row_id

    def _looks_hung(self, incident_id: int | None, kind: str) -> bool:
        if kind == "progress":
            return True
        if incident_id is None:
            return False
        with self.store.session() as session:
            incident = session.get(IncidentRow, incident_id)
            text = f"{incident.first_message} {incident.last_message}".lower() if incident else ""
        return any(word in text for word in HANG_WORDS)


@dataclass(frozen=True)
class Attachment:
    """The newest bundle of a message's incident, as a summary and a file to attach."""

    summary: str
    path: Path

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()


def attachment(store: Store, event: str, incident_ids: Sequence[int],
               wait: float) -> Attachment | None:
    """For a message about an incident, its newest bundle (waiting up to `wait` for one this
    process is capturing), written to a temporary file; None when there is none."""
    if event not in ATTACHED or not incident_ids:
        return None
    for incident_id in incident_ids:
        wait_for_capture(incident_id, wait)
        with store.session() as session:
            rows = bundles_of(session, incident_id)
            if not rows:
                continue
            newest = rows[-1]
            folder = Path(tempfile.mkdtemp(prefix="sglguard-diag-"))
            path = folder / f"sglguard-incident-{incident_id}-diagnostics.json.gz"
            path.write_bytes(newest.data)
            return Attachment(newest.summary, path)
    return None
