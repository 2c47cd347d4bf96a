"""Workers that drain took out of a gateway, kept in the store until they are back in.

A drain saves the worker's registration before its DELETE; the worker goes back, registered as
it was, only when it is well again:

- after the remediation chain's verification passed (the responder calls `return_workers`);
- when the target has no open incident any more (the service's timer calls `return_when_well`,
  which also finds workers left out by an sglguard that was killed mid-drain);
- by hand: `sglguard undrain TARGET`.

Only workers this store records are re-added: a worker someone else removed stays out.

A re-add holds the target's remediation lease (sglguard.rails), under a holder name of its own,
so it never runs beside a drain or restart of the same target, whether in this process or in
another one using the store: while one holds the lease, the re-add is refused (the workers stay
recorded, and the next attempt takes them), and a remediation asking meanwhile is deferred."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sglguard.client import SGLangClient
from sglguard.clock import utcnow
from sglguard.remediations.base import RemediationError
from sglguard.remediations.gateway import (
    GatewayDown,
    asking,
    describe,
    find,
    permanent,
    registration,
    same_worker,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from sglguard.agents import Agents
    from sglguard.config.models import Catalog
    from sglguard.store import Store
    from sglguard.store.models import DrainedWorkerRow

# In the holder name of a lease taken to put a worker back (a moment's work, see responder).
UNDRAIN = ":undrain:"
logger = logging.getLogger(__name__)
DEFAULT_WAIT = timedelta(seconds=30)
# How long a re-add holds the lease, on top of each worker's own wait: a process that dies
# holding it on another host blocks the target's remediations no longer than this.
LEASE_MARGIN = timedelta(minutes=1)


@dataclass(frozen=True)
class GatewayAccess:
    """How to reach a gateway: its URL, API style, key, and how long a worker may take."""

    url: str
    legacy: bool = False
    api_key: str | None = None
    timeout: timedelta = DEFAULT_WAIT

    def client(self) -> SGLangClient:
        return SGLangClient(self.url, api_key=self.api_key,
                            timeout=min(10.0, max(1.0, self.timeout.total_seconds())))


def out(session: Session, target: str | None = None) -> Sequence[DrainedWorkerRow]:
    """Workers not yet back in their gateway (of one target, or all), oldest first."""
    from sqlalchemy import select

    from sglguard.store.models import DrainedWorkerRow

    query = select(DrainedWorkerRow).where(DrainedWorkerRow.returned_at.is_(None))
    if target is not None:
        query = query.where(DrainedWorkerRow.target == target)
    return session.scalars(query.order_by(DrainedWorkerRow.id)).all()


def owed(store: Store, target: str, gateway: str, worker_url: str) -> DrainedWorkerRow | None:
    """The record of this worker being out of this gateway, if sglguard took it out."""
    with store.session() as session:
        for row in out(session, target):
            if row.gateway.rstrip("/") == gateway.rstrip("/") and same_worker(row.worker_url,
                                                                              worker_url):
                session.expunge(row)
                return row
    return None


def record(store: Store, *, target: str, remediation: str, gateway: str,
           body: dict[str, Any], incident_id: int | None, at: datetime) -> int:
    """Save the registration before the DELETE goes out."""
    from sglguard.store.models import DrainedWorkerRow

    with store.session() as session:
        row = DrainedWorkerRow(target=target, remediation=remediation, gateway=gateway,
                               worker_url=str(body["url"]), registration=json.dumps(body),
                               incident_id=incident_id, state="draining", drained_at=at)
        session.add(row)
        session.flush()
        return row.id


def update(store: Store, row_id: int, **values: Any) -> None:
    from sglguard.store.models import DrainedWorkerRow

    with store.session() as session:
        row = session.get(DrainedWorkerRow, row_id)
        if row is not None:
            for key, value in values.items():
                setattr(row, key, value)


def forget(store: Store, row_id: int) -> None:
    """The DELETE did not happen: nothing is owed."""
    from sglguard.store.models import DrainedWorkerRow

    with store.session() as session:
        row = session.get(DrainedWorkerRow, row_id)
        if row is not None:
            session.delete(row)


def access_for(catalog: Catalog | None, row: DrainedWorkerRow) -> GatewayAccess:
    """The drain config that removed the worker (for its key), else the gateway URL alone."""
    from sglguard.remediations.drain import DrainConfig

    if catalog is not None:
        for config in catalog.remediations:
            if (isinstance(config, DrainConfig)
                    and config.gateway.rstrip("/") == row.gateway.rstrip("/")):
                key = config.api_key.get_secret_value() if config.api_key else None
                return GatewayAccess(row.gateway, config.api == "legacy", key, config.timeout)
    return GatewayAccess(row.gateway)


def return_workers(store: Store, catalog: Catalog | None, target: str, *, by: str,
                   agents: Agents | None = None, clock: Callable[[], datetime] = utcnow,
                   stop: threading.Event | None = None) -> list[str]:
    """Re-add every worker of the target that sglguard took out, each as it was registered,
    under the target's lease; one line per worker saying what became of it. Never raises for
    a gateway's errors: a worker that could not go back (or whose target is leased by a
    remediation now) stays recorded, with the reason, for the next attempt. `agents` (this
    process's) lets a lease left by a dead process be taken over."""
    with store.session() as session:
        rows = list(out(session, target))
        session.expunge_all()
    if not rows:
        return []
    from sglguard.agents import holder_name
    from sglguard.rails import Leases

    accesses = [access_for(catalog, row) for row in rows]
    base = agents.name if agents is not None else holder_name()
    leases = Leases(store, f"{base}{UNDRAIN}{uuid.uuid4().hex[:6]}", agents=agents)
    ttl = LEASE_MARGIN + sum((access.timeout for access in accesses), timedelta())
    if not leases.claim(target, clock(), ttl):
        why = f"{target} is being remediated by {leases.holder_of(target)}"
        for row in rows:
            update(store, row.id, last_error=f"not re-added: {why}")
        logger.info("re-adding the workers of %s waits: %s", target, why)
        return [f"{row.worker_url} stays out of {row.gateway} for now: {why} (it is re-added "
                "once that is done)" for row in rows]
    said: list[str] = []
    try:
        for row, access in zip(rows, accesses, strict=True):
            try:
                said.append(_return_one(store, access, row, by, clock,
                                        stop or threading.Event()))
            except (RemediationError, GatewayDown) as exc:
                update(store, row.id, last_error=str(exc))
                said.append(f"could not re-add {row.worker_url} to {row.gateway}: {exc}")
                logger.warning("re-adding %s to %s failed: %s", row.worker_url, row.gateway,
                               exc)
    finally:
        leases.release(target)
    return said


def return_when_well(store: Store, catalog: Catalog, *,
                     hold: Callable[[str], bool] = lambda _target: True,
                     let_go: Callable[[str], None] = lambda _target: None,
                     agents: Agents | None = None, clock: Callable[[], datetime] = utcnow,
                     stop: threading.Event | None = None) -> list[str]:
    """Re-add the workers of targets that have no open incident. `hold` marks a target busy
    in this process (False: it is being remediated here now, so it waits), `let_go` frees it;
    the target's lease keeps other processes out."""
    from sglguard.store import queries

    with store.session() as session:
        targets = sorted({row.target for row in out(session)})
        well = [target for target in targets if not queries.target_trouble(session, target)[0]]
    said: list[str] = []
    for target in well:
        if not hold(target):
            continue
        try:
            said += return_workers(store, catalog, target,
                                   by="the target is well: no open incident", agents=agents,
                                   clock=clock, stop=stop)
        finally:
            let_go(target)
    return said


def _return_one(store: Store, access: GatewayAccess, row: DrainedWorkerRow, by: str,
                clock: Callable[[], datetime], stop: threading.Event) -> str:
    body = registration(json.loads(row.registration))  # older rows kept discovered labels
    with closing(access.client()) as client:
        if access.legacy:
            with asking(access.url, "POST /add_worker"):
                _expect(client.add_worker(body, legacy=True), access.url, "POST /add_worker")
            return _returned(store, row, by, clock, f"added {row.worker_url} back to "
                                                    f"{access.url} (legacy API)")
        with asking(access.url, "GET /workers"):
            entry = find(client.workers(), row.worker_url)
        if entry is not None and entry.get("status") != "draining":
            return _returned(store, row, by, clock,
                             f"{row.worker_url} is already in {access.url}")
        deadline = time.monotonic() + access.timeout.total_seconds()
        while True:
            with asking(access.url, "POST /workers"):
                answer = client.add_worker(body)
            if answer.ok:
                break
            # 409: the gateway still holds the worker as draining (removed ~5 s after DELETE).
            if answer.status != 409 or time.monotonic() > deadline or stop.wait(0.2):
                _expect(answer, access.url, "POST /workers")
        while True:  # POST is accepted (202) and carried out in the background
            with asking(access.url, "GET /workers"):
                entry = find(client.workers(), row.worker_url)
            if entry is not None and entry.get("status", "ready") == "ready":
                break
            if time.monotonic() > deadline or stop.wait(0.2):
                raise RemediationError(f"POST /workers accepted, but {row.worker_url} is not "
                                       f"ready in {access.url} after "
                                       f"{access.timeout.total_seconds():g} s")
    return _returned(store, row, by, clock, f"added {row.worker_url} back to {access.url} as "
                                            f"it was: {describe(body)}")


def _returned(store: Store, row: DrainedWorkerRow, by: str, clock: Callable[[], datetime],
              said: str) -> str:
    update(store, row.id, state="returned", returned_at=clock(), returned_by=by,
           last_error=None)
    logger.info("%s (%s)", said, by)
    return said


def _expect(answer: Any, gateway: str, call: str) -> None:
    if answer.ok:
        return
    error = permanent(answer.status, gateway, call, answer.message)
    raise error or RemediationError(f"gateway {gateway}: {call} answered {answer.status}: "
                                    f"{answer.message}")
