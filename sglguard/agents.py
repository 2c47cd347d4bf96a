"""The sglguard processes that share a store, each with a heartbeat.

A claim (an outbox row, a target's lease) names its holder as `host:pid:random`. When that
holder is a process of this host that no longer runs, or an agent whose heartbeat stopped,
the claim is taken over at once instead of waiting for it to run out."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta

import psutil
from sqlalchemy import select

from sglguard.clock import utcnow
from sglguard.store import Store
from sglguard.store.models import AgentRow, local_agent

logger = logging.getLogger(__name__)
HEARTBEAT = timedelta(seconds=10)
DEAD_AFTER = timedelta(seconds=45)  # a few missed heartbeats


def holder_name() -> str:
    """This process, as a claim names it: host, pid and a random part."""
    return f"{local_agent()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _gone_here(holder: str) -> bool:
    """The holder ran on this host and its process is gone (or is another process now)."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != local_agent() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


class Agents:
    """This process's agent row, and what the store says of the others."""

    def __init__(self, store: Store, *, role: str = "service", name: str | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self.role = role
        self.name = name or holder_name()
        self.clock = clock

    @property
    def host(self) -> str:
        """The host this agent runs on: what the rows it writes name as their agent."""
        return self.name.partition(":")[0]

    def register(self, targets: Iterable[str] = ()) -> None:
        now = self.clock()
        host, _, rest = self.name.partition(":")
        pid = int(rest.partition(":")[0]) if rest.partition(":")[0].isdigit() else os.getpid()
        for retry in self.store.retrying():
            with retry, self.store.session() as session:
                row = session.get(AgentRow, self.name)
                if row is None:
                    row = AgentRow(name=self.name, host=host, pid=pid, role=self.role,
                                   started_at=now)
                    session.add(row)
                row.targets = json.dumps(sorted(targets))
                row.heartbeat_at, row.stopped_at = now, None

    def beat(self) -> None:
        """Say this process is alive (every HEARTBEAT)."""
        try:
            with self.store.session() as session:
                row = session.get(AgentRow, self.name)
                if row is not None:
                    row.heartbeat_at = self.clock()
        except Exception as exc:  # a store outage is reported elsewhere: no trace per beat
            logger.warning("heartbeat not written: %s", exc)

    @contextlib.contextmanager
    def beating(self) -> Iterator[None]:
        """Beat every HEARTBEAT while the block runs (a command that runs long, such as a
        restart by hand, is not taken for dead by the service)."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(HEARTBEAT.total_seconds()):
                self.beat()

        beater = threading.Thread(target=beat, name="heartbeat", daemon=True)
        beater.start()
        try:
            yield
        finally:
            done.set()
            beater.join(5)

    def leave(self) -> None:
        try:
            with self.store.session() as session:
                row = session.get(AgentRow, self.name)
                if row is not None:
                    row.stopped_at = self.clock()
        except Exception as exc:
            logger.warning("could not mark this agent stopped: %s", exc)

    def dead(self, holder: str | None) -> bool:
        """True when `holder` surely holds nothing any more: its process is gone from this
        host, it stopped, or its heartbeat is older than DEAD_AFTER. Unknown holders are not
        judged (their claim runs out by itself)."""
        if holder is None or holder == self.name:
            return False
        if _gone_here(holder):
            return True
        with self.store.session() as session:
            row = session.get(AgentRow, holder)
        if row is None:
            return False
        return row.stopped_at is not None or row.heartbeat_at < self.clock() - DEAD_AFTER

    def services_for(self, target: str) -> list[AgentRow]:
        """Live `sglguard run` processes that watch `target`."""
        since = self.clock() - DEAD_AFTER
        with self.store.session() as session:
            rows = session.scalars(select(AgentRow).where(
                AgentRow.role == "service", AgentRow.stopped_at.is_(None),
                AgentRow.heartbeat_at >= since)).all()
        return [row for row in rows if row.name != self.name and not _gone_here(row.name)
                and target in json.loads(row.targets or "[]")]


def may_take(agents: Agents, status: str, claimed_by: str | None,
             claim_until: datetime | None, now: datetime) -> tuple[bool, str | None]:
    """Whether a claimable row (an outbox row) may be taken now, and from which dead holder:
    pending, or claimed by a claim that ran out or a holder that is gone."""
    if status == "pending":
        return True, None
    if claimed_by == agents.name:
        return False, None  # this process is on it
    if claim_until is not None and claim_until < now:
        return True, None
    if agents.dead(claimed_by):
        return True, claimed_by
    return False, None
