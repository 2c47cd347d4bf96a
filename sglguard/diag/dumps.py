"""Request dumps while an incident is open (`diagnostics.request_dumps`, off unless given).

When the first incident of a target opens, SGLang is asked through `/configure_logging` to keep
the requests it answers (`dump_requests_folder`, `dump_requests_threshold`, and `log_requests`
when asked for); when the last open incident of the target resolves, or sglguard stops, the
settings go back to what the server's launch arguments say (dumps off). Each switch is
bounded by `diagnostics.timeout`, recorded in the incident's timeline, and never fails
the incident: an answer other than 200, or none, is recorded and the incident goes on.

SGLang writes a dump file each time it holds `threshold` requests: the requests still held when
dumps are switched off are not written. A restart of the server ends the dumps too (it starts
with its launch arguments)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sglguard.client import SGLangClient, TargetError
from sglguard.clock import utcnow
from sglguard.config.models import Catalog, RequestDumpsConfig
from sglguard.store import Store, queries
from sglguard.store.models import IncidentRow

logger = logging.getLogger(__name__)
EVENT = "request_dumps"
PATH = "/configure_logging"


class RequestDumps:
    """Which targets have dumps switched on, for which open incidents, and how to undo it."""

    def __init__(self, catalog: Catalog, store: Store, clients: Mapping[str, SGLangClient], *,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.config: RequestDumpsConfig | None = catalog.diagnostics.request_dumps
        self.bound = catalog.diagnostics.timeout.total_seconds()
        self.store, self.clients, self.clock = store, clients, clock
        self._lock = threading.Lock()
        self._holders: dict[str, set[int]] = {}  # target -> open incidents it is on for
        self._restore: dict[str, dict[str, Any]] = {}  # target -> the body that undoes it
        self._closed = False  # released: sglguard stops, nothing more is switched on
        self._switches: dict[str, threading.Lock] = {}  # target -> held while switching

    def covers(self, target: str) -> bool:
        return self.config is not None and self.config.covers(target) and target in self.clients

    def opened(self, incident_id: int, target: str) -> None:
        """Switch dumps on for the target's first open incident; later ones join it."""
        config = self.config
        if config is None or not self.covers(target):
            return
        held = self._holders.get(target, set()).copy()
        gone = {number for number in held if not self._open(number)}  # resolved unseen
        with self._lock:
            if self._closed:
                return
            holders = self._holders.setdefault(target, set())
            holders -= gone
            already = sorted(holders)
            holders.add(incident_id)
            switch = self._switches.setdefault(target, threading.Lock())
        if already:
            self._event(incident_id, f"request dumps already on for {target} (incident "
                                     f"#{already[0]}); kept on until every one resolves")
            return
        with switch:  # one switch of a target at a time: an off never overtakes its on
            with self._lock:
                if incident_id not in self._holders.get(target, ()):
                    return  # resolved (or released) before the switch began
            body = {"dump_requests_folder": config.folder,
                    "dump_requests_threshold": config.threshold}
            if config.log_requests:
                body["log_requests"] = True
            deadline = time.monotonic() + self.bound  # the whole switch within the bound
            restore = self._launch_settings(target, config, deadline)
            problem = self._send(target, body, deadline)
            with self._lock:
                if problem is None:
                    self._restore[target] = restore
                else:
                    self._holders.get(target, set()).discard(incident_id)
        if problem is not None:
            self._event(incident_id, f"request dumps not switched on: {problem}")
            return
        self._event(incident_id, f"request dumps on: POST {PATH} dump_requests_folder "
                                 f"{config.folder}, a file every {config.threshold} requests"
                                 + (", log_requests on" if config.log_requests else ""))
        if not self._open(incident_id):  # it resolved while the switch was under way
            self.resolved(incident_id)

    def resolved(self, incident_id: int) -> None:
        """Switch dumps back once the last incident they were on for has resolved."""
        with self._lock:
            target = next((name for name, ids in self._holders.items() if incident_id in ids),
                          None)
            if target is None:
                return
            switch = self._switches[target]
        with switch:
            with self._lock:
                holders = self._holders.get(target, set())
                holders.discard(incident_id)
                if holders:
                    return
                self._holders.pop(target, None)
                restore = self._restore.pop(target, None)
            if restore is not None:
                self._off(target, restore, incident_id, "the incident resolved")

    def _open(self, incident_id: int) -> bool:
        try:
            with self.store.session() as session:
                incident = session.get(IncidentRow, incident_id)
                return incident is not None and incident.status == "open"
        except Exception:
            return True  # unknown: the resolution, when it comes, switches them off

    def release(self) -> None:
        """sglguard stops: every target's dumps go back (each bounded)."""
        with self._lock:
            self._closed = True
            held = {target: sorted(ids) for target, ids in self._holders.items()}
            self._holders.clear()
            restores, self._restore = self._restore, {}
        for target, restore in restores.items():
            ids = held.get(target)
            self._off(target, restore, ids[0] if ids else None, "sglguard stopped")

    def _off(self, target: str, restore: dict[str, Any], incident_id: int | None,
             why: str) -> None:
        problem = self._send(target, restore, time.monotonic() + self.bound)
        text = (f"request dumps off ({why}): POST {PATH} "
                f"dump_requests_folder {restore['dump_requests_folder'] or '(none)'}")
        if problem is not None:
            text = f"request dumps not switched off ({why}): {problem}"
        if incident_id is not None:
            self._event(incident_id, text)
        else:
            logger.info("%s: %s", target, text)

    def _launch_settings(self, target: str, config: RequestDumpsConfig,
                         deadline: float) -> dict[str, Any]:
        """The body that puts back what the server was launched with: dumps off (SGLang has
        no launch flag for them), and log_requests as /server_info says, when it is changed."""
        restore: dict[str, Any] = {"dump_requests_folder": ""}
        if not config.log_requests:
            return restore
        try:
            info = self.clients[target].server_info(timeout=max(0.1, deadline - time.monotonic()))
        except (TargetError, ValueError) as exc:
            logger.info("%s: /server_info unread before request dumps (%s): log_requests goes "
                        "off after", target, exc)
            info = {}
        launched = info.get("log_requests")
        restore["log_requests"] = launched if isinstance(launched, bool) else False
        return restore

    def _send(self, target: str, body: dict[str, Any], deadline: float) -> str | None:
        """POST /configure_logging by the deadline: None when the server took it, else why."""
        try:
            answer = self.clients[target].request(
                "POST", PATH, json=body, timeout=max(0.1, deadline - time.monotonic()),
                admin=True)
        except TargetError as exc:
            return str(exc)
        except Exception as exc:  # never fail the incident
            logger.warning("%s: POST %s failed", target, PATH, exc_info=True)
            return f"{type(exc).__name__}: {exc}"
        if answer.status_code != 200:
            return f"POST {PATH} answered HTTP {answer.status_code}: {answer.text[:200]}"
        return None

    def _event(self, incident_id: int, detail: str) -> None:
        logger.info("incident #%s: %s", incident_id, detail)
        try:
            for retry in self.store.retrying():
                with retry, self.store.session() as session:
                    queries.add_event(session, incident_id, self.clock(), EVENT, detail)
        except Exception:
            logger.warning("incident #%s: timeline entry not stored: %s", incident_id, detail,
                           exc_info=True)
