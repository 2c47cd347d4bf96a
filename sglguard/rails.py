"""Safety rails kept in the store, so they hold across restarts and across sglguard processes:
one remediation per target at a time (a lease), backoff and cooldown between runs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from sglguard.agents import holder_name
from sglguard.remediations.base import RemediationConfig
from sglguard.store import Store
from sglguard.store.models import IncidentRow, RemediationRunRow, TargetLeaseRow

if TYPE_CHECKING:
    from sglguard.agents import Agents

logger = logging.getLogger(__name__)


class Leases:
    """Claims a target with a conditional UPDATE; the row count says who won. A lease whose
    holder is seen dead (see sglguard.agents) is taken over at once."""

    def __init__(self, store: Store, holder: str | None = None, *,
                 agents: Agents | None = None) -> None:
        self.store = store
        self.holder = holder or (agents.name if agents is not None else holder_name())
        self.agents = agents

    def claim(self, target: str, now: datetime, ttl: timedelta) -> bool:
        self._ensure_row(target)
        if self._take(target, now, ttl, None):
            return True
        holder = self.holder_of(target)
        if self.agents is not None and holder is not None and self.agents.dead(holder):
            logger.warning("lease of %s: its holder %s is gone; taking it over", target, holder)
            return self._take(target, now, ttl, holder)
        return False

    def _take(self, target: str, now: datetime, ttl: timedelta, dead: str | None) -> bool:
        free = or_(TargetLeaseRow.holder.is_(None), TargetLeaseRow.holder == self.holder,
                   TargetLeaseRow.expires_at < now)
        if dead is not None:
            free = or_(free, TargetLeaseRow.holder == dead)
        with self.store.session() as session:
            claimed = session.execute(
                update(TargetLeaseRow)
                .where(TargetLeaseRow.target == target, free)
                .values(holder=self.holder, claimed_at=now, expires_at=now + ttl)
                .execution_options(synchronize_session=False)
            )
            return bool(claimed.rowcount == 1)  # type: ignore[attr-defined]

    def renew(self, target: str, now: datetime, ttl: timedelta) -> bool:
        """Move the lease's end to `now + ttl`, if this holder still has it."""
        with self.store.session() as session:
            renewed = session.execute(
                update(TargetLeaseRow)
                .where(TargetLeaseRow.target == target, TargetLeaseRow.holder == self.holder)
                .values(expires_at=now + ttl)
                .execution_options(synchronize_session=False)
            )
            return bool(renewed.rowcount == 1)  # type: ignore[attr-defined]

    @contextmanager
    def kept(self, target: str, ttl: timedelta, clock: Callable[[], datetime],
             every: float | None = None) -> Iterator[None]:
        """Renew a claimed lease every third of `ttl` while the block runs: a holder at work
        outlasts its first `ttl`; one that dies stops renewing (and is seen dead at once)."""
        done = threading.Event()
        period = every if every is not None else max(1.0, ttl.total_seconds() / 3)

        def keep() -> None:
            while not done.wait(period):
                try:
                    if not self.renew(target, clock(), ttl):
                        logger.warning("lease of %s: no longer held by %s", target, self.holder)
                        return
                except Exception as exc:  # the store is away: try again at the next period
                    logger.warning("lease of %s not renewed: %s", target, exc)

        keeper = threading.Thread(target=keep, name=f"lease-{target}", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            done.set()
            keeper.join(5)

    def release(self, target: str) -> None:
        with self.store.session() as session:
            session.execute(
                update(TargetLeaseRow)
                .where(TargetLeaseRow.target == target, TargetLeaseRow.holder == self.holder)
                .values(holder=None, expires_at=None)
                .execution_options(synchronize_session=False)
            )

    def holder_of(self, target: str) -> str | None:
        with self.store.session() as session:
            row = session.get(TargetLeaseRow, target)
            return row.holder if row is not None else None

    def _ensure_row(self, target: str) -> None:
        try:
            with self.store.session() as session:
                if session.get(TargetLeaseRow, target) is None:
                    session.add(TargetLeaseRow(target=target))
        except IntegrityError:
            pass  # another process inserted it first: the claim decides


@dataclass(frozen=True)
class Wait:
    """Why a remediation may not run yet, and until when."""

    until: datetime
    reason: str


def next_run_allowed(store: Store, config: RemediationConfig, target: str,
                     now: datetime) -> Wait | None:
    """Backoff (doubling while runs keep coming) and cooldown, from the runs in the store."""
    with store.session() as session:
        runs = session.scalars(
            select(RemediationRunRow).where(
                RemediationRunRow.remediation == config.name,
                RemediationRunRow.target == target,
                RemediationRunRow.dry_run.is_(False),
                RemediationRunRow.outcome.not_in(("skipped", "planned")),
            ).order_by(RemediationRunRow.started_at.desc()).limit(32)
        ).all()
    if not runs:
        return None
    ends = [run.finished_at or run.started_at for run in runs]
    starts = [run.started_at for run in runs]
    streak = 1  # runs in a row, each within reset_after of the one before
    while streak < len(runs) and starts[streak - 1] - ends[streak] < config.backoff.reset_after:
        streak += 1
    if now - ends[0] >= config.backoff.reset_after:
        streak = 0  # a clean period: start over
    waits: list[Wait] = []
    if streak:
        delay = min(config.backoff.max, config.backoff.initial * 2 ** (streak - 1))
        waits.append(Wait(ends[0] + delay, f"backoff {delay.total_seconds():g} s after run "
                                           f"{streak} in a row"))
    if config.cooldown is not None:
        waits.append(Wait(ends[0] + config.cooldown,
                          f"cooldown {config.cooldown.total_seconds():g} s"))
    pending = [wait for wait in waits if wait.until > now]
    return max(pending, key=lambda wait: wait.until) if pending else None


def clear_escalations(store: Store, target: str, now: datetime, by: str) -> list[int]:
    """A person ran a remediation by hand: open incidents of the target may act again."""
    from sglguard.store import queries

    cleared: list[int] = []
    with store.session() as session:
        for incident in session.scalars(select(IncidentRow).where(
                IncidentRow.target == target, IncidentRow.status == "open",
                IncidentRow.escalated_at.is_not(None))):
            incident.escalated_at = None
            queries.add_event(session, incident.id, now, "escalation_cleared",
                              f"remediation run by hand ({by}): automatic action resumes")
            cleared.append(incident.id)
    return cleared
