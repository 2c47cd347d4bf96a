"""Notifications through Apprise, kept in the store until delivered.

A message is first a row of the outbox, one per notifier it is routed to, written in the same
transaction as the decision that owes it (`stage`). A dispatcher thread plans what is due and
claims it; each notifier has a worker thread of its own, so a stalled notifier delays nobody
else. A delivery that fails (after its quick retries and the notifier's fallback) goes back to
the outbox with a growing delay until it is delivered or `expire` has passed; a process killed
at any point leaves its claimed rows to be taken over when it is seen dead.

Grouping is a query over the outbox: an `incident_opened` is due `group_wait` after it was
written, openings of its target that arrive meanwhile go out with it as one message, and every
later message about that target waits behind them. An escalation or a resolution makes the
target's openings due at once.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from sglguard.agents import Agents, may_take
from sglguard.backlog import failed
from sglguard.clock import utcnow
from sglguard.config.models import Catalog, NotificationsConfig, NotifierConfig
from sglguard.diag.capture import Attachment, attachment
from sglguard.notify import messages, reminders
from sglguard.notify.channel import send as apprise_send
from sglguard.notify.notice import ESCALATIONS, FOLLOW_UPS, REMINDS, TELLS, Message, host_name
from sglguard.notify.routing import Router
from sglguard.notify.templates import render
from sglguard.redact import clean, remember
from sglguard.store import Store, queries
from sglguard.store import outbox as owed
from sglguard.store.models import IncidentRow, NotificationAttemptRow, OutboxRow

__all__ = ["DeliveryFailed", "Message", "Notifications", "host_name"]
logger = logging.getLogger(__name__)
POLL = 15.0  # seconds between looks for rows written by other processes
MAX_BACKOFF = timedelta(minutes=5)


class DeliveryFailed(Exception):
    """Apprise reported that a delivery did not go through."""


@dataclass(frozen=True)
class Owed:
    """One claimed outbox row, as the worker needs it after the claim's transaction."""

    id: int
    event: str
    target: str | None
    check: str | None
    message: Message
    direct: frozenset[str]
    attempts: int
    interrupted: bool  # an earlier claim of it ended with its holder: maybe delivered already
    expires_at: datetime | None


@dataclass(frozen=True)
class Batch:
    """What one notifier sends as one message: a row, or openings of one target together."""

    key: str
    rows: tuple[Owed, ...]

    def message(self) -> Message:
        if len(self.rows) == 1:
            return self.rows[0].message
        return messages.grouped([row.message for row in self.rows])


def url_secrets(notifiers: Sequence[NotifierConfig]) -> list[str]:
    """Whole URLs, their passwords and token-like parts, to scrub from recorded errors."""
    found: list[str] = []
    for notifier in notifiers:
        for secret in notifier.urls:
            url = secret.get_secret_value()
            parts = urlsplit(url)
            found += [url, parts.password or ""]
            found += [piece for piece in parts.path.split("/") if len(piece) >= 16]
            found += [value for _, value in parse_qsl(parts.query) if len(value) >= 16]
    return [item for item in found if item]


def backoff(attempts: int) -> timedelta:
    """5 s, 10 s, 20 s ... up to 5 minutes between tries of one undelivered message."""
    return min(MAX_BACKOFF, timedelta(seconds=5 * 2 ** min(max(0, attempts - 1), 8)))


class _Sender:
    """One notifier's worker thread: its batches in order, one at a time."""

    def __init__(self, owner: Notifications, notifier: NotifierConfig) -> None:
        self.owner = owner
        self.notifier = notifier
        # Bounded: `busy` lets the dispatcher hand over one plan at a time (the rest stays
        # owed in the store), and stopping adds one None.
        self.queue: queue.Queue[list[Batch] | None] = queue.Queue(maxsize=2)
        self.busy = threading.Event()
        self.thread = threading.Thread(target=self._work, name=f"notify-{notifier.name}",
                                       daemon=True)

    def give(self, batches: list[Batch]) -> None:
        self.busy.set()
        self.queue.put(batches)

    def _work(self) -> None:
        while True:
            batches = self.queue.get()
            if batches is None:
                return
            try:
                self.owner.send_batches(self.notifier, batches)
            except Exception:
                logger.exception("notifier %s: delivery worker error", self.notifier.name)
            finally:
                self.busy.clear()
                self.owner.poke()


class Notifications:
    """Stages messages in the outbox and delivers them; never blocks the caller for long."""

    def __init__(self, notifiers: Sequence[NotifierConfig], store: Store, *,
                 settings: NotificationsConfig | None = None, catalog: Catalog | None = None,
                 secrets: Sequence[str] = (), clock: Callable[[], datetime] = utcnow,
                 attempts: int = 2, retry_wait: float = 0.5, agents: Agents | None = None,
                 poll: float = POLL) -> None:
        self.notifiers = {notifier.name: notifier for notifier in notifiers}
        self.store = store
        self.catalog = catalog
        self.settings = settings or (catalog.notifications if catalog else NotificationsConfig())
        self.secrets = tuple(sorted({item for item in (*secrets, *url_secrets(notifiers))
                                     if item}, key=len, reverse=True))
        self.clock = clock
        self.attempts = attempts
        self.retry_wait = retry_wait
        self.agents = agents or Agents(store, role="cli", clock=clock)
        self.holder = self.agents.name
        self.poll = poll
        self.router = Router(notifiers)
        self._senders = {name: _Sender(self, notifier) for name, notifier in self.notifiers.items()}
        self._wake = threading.Event()
        self._release_all = threading.Event()
        self._stopping = threading.Event()
        # Plans are numbered: flush counts only one begun after it was called (an earlier one
        # may have read the outbox before the rows the caller just staged).
        self._plans = threading.Condition()
        self._plans_begun = self._plans_done = 0
        self._thread: threading.Thread | None = None
        self._planned = -1  # batches handed out by the newest plan
        self.successor: Notifications | None = None  # after a reload, the one to wake

    @classmethod
    def from_catalog(cls, catalog: Catalog, store: Store, *,
                     clock: Callable[[], datetime] = utcnow, **options: Any) -> Notifications:
        """What the service builds: notifiers, defaults, templates and secrets of the catalog."""
        return cls(catalog.notifiers, store, catalog=catalog, settings=catalog.notifications,
                   secrets=catalog.secrets(), clock=clock, **options)

    # -- writing what is owed ---------------------------------------------------------------

    def stage(self, session: Session, message: Message, now: datetime) -> int:
        """Write the message's outbox rows (one per notifier it goes to) in `session`'s
        transaction; how many rows. A resolution also goes to whoever was told of its
        incident, even where the routing would not send it."""
        message = self._linked(message)
        chosen = self.router.recipients(message)
        names = [notifier.name for notifier in chosen]
        if message.event in FOLLOW_UPS and message.incident_ids:
            # Exactly those told of the incident (or about to be): routing or not.
            told = self._told(session, message.incident_ids[0])
            names = [name for name in told if name in self.notifiers]
            names += [spare for name in told for spare in [self.notifiers[name].fallback]
                      if name in self.notifiers and spare and spare not in names]
        direct = sorted(notifier.name for notifier in chosen)
        wait = self.settings.group_wait
        due = now + wait if (message.event == "incident_opened" and message.target
                             and wait > timedelta(0)) else now
        if message.target and (message.event in ESCALATIONS or message.event in FOLLOW_UPS):
            owed.hasten(session, message.target, now)  # the group goes out first, then this
        for name in names:
            owed.add(session, kind=owed.MESSAGE, event=message.event, notifier=name,
                     target=message.target, check=message.check,
                     incident_id=message.incident_ids[0] if message.incident_ids else None,
                     payload={"message": message.payload(), "direct": direct}, now=now, due=due,
                     expires=now + self.settings.expire)
        return len(names)

    def _linked(self, message: Message) -> Message:
        """The message with its page on the status page (`$link`, a last line of the body),
        when the catalog gives `http.external_url`."""
        if self.catalog is None or message.event == "test":
            return message
        from sglguard.web.links import check_url, incident_url

        link = (incident_url(self.catalog, message.incident_ids[0]) if message.incident_ids
                else check_url(self.catalog, message.check) if message.check else None)
        if link is None:
            return message
        body = f"{message.body}\npage: {link}"
        return replace(message, body=body, fields={**message.fields, "link": link, "body": body})

    def _told(self, session: Session, incident_id: int) -> list[str]:
        """Notifiers told of the incident, or with a telling message still on its way."""
        sent = session.scalars(select(NotificationAttemptRow.notifier).where(
            NotificationAttemptRow.incident_id == incident_id,
            NotificationAttemptRow.event.in_(TELLS),
            NotificationAttemptRow.outcome == "sent").distinct()).all()
        waiting = session.scalars(select(OutboxRow.notifier).where(
            OutboxRow.incident_id == incident_id, OutboxRow.event.in_(TELLS),
            OutboxRow.status.in_(owed.ACTIVE)).distinct()).all()
        return sorted({name for name in (*sent, *waiting) if name})

    def submit(self, message: Message) -> None:
        """Stage the message in a transaction of its own and wake the dispatcher."""
        for retry in self.store.retrying():
            with retry, self.store.session() as session:
                self.stage(session, message, self.clock())
        self.poke()

    def poke(self) -> None:
        self._wake.set()
        if self.successor is not None:
            self.successor.poke()

    # -- running -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        for sender in self._senders.values():
            if not sender.thread.is_alive():
                sender.thread.start()
        self._thread = threading.Thread(target=self._dispatch_loop, name="notify", daemon=True)
        self._thread.start()

    def flush(self, timeout: float) -> bool:
        """Send what is owed now, group windows closed; wait until each owed message has been
        tried at least once. False if time ran out. Messages waiting to be retried stay owed."""
        started = self._thread is not None
        if not started:
            self.start()
        self._release_all.set()
        with self._plans:  # the first plan that can see what the caller staged, released
            wanted = self._plans_begun + 1
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                self.poke()
                with self._plans:
                    done = self._plans.wait_for(lambda: self._plans_done >= wanted,
                                                min(0.2, max(0.01, deadline - time.monotonic())))
                if done and self._settled():
                    return True
                if done and self._planned < 0:
                    return False  # the plan could not read the outbox (the store is down):
                    # what is owed stays owed, for the next start or the store's return
            return False
        finally:
            self._release_all.clear()

    def _settled(self) -> bool:
        """Nothing in flight, and the newest plan (begun after the caller's rows were
        written) found nothing due."""
        return self._planned == 0 and not any(
            sender.busy.is_set() for sender in self._senders.values())

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is due within `timeout`; whatever is left stays owed in the store and goes
        out at the next start."""
        if self._thread is not None:
            self.flush(timeout)
        self._stopping.set()
        self.poke()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=max(timeout, 1.0))
        for sender in self._senders.values():
            if sender.thread.is_alive():
                sender.queue.put(None)
                sender.thread.join(timeout=max(timeout, 1.0))
        self._senders = {name: _Sender(self, notifier) for name, notifier in self.notifiers.items()}

    def _dispatch_loop(self) -> None:
        sleep = 0.0
        while not self._stopping.is_set():
            self._wake.wait(timeout=sleep)
            self._wake.clear()
            if self._stopping.is_set():
                return
            with self._plans:
                self._plans_begun += 1
                number = self._plans_begun
            try:
                sleep = self.dispatch()
            except Exception as exc:
                failed(logger, "notification dispatcher error", exc)
                sleep = 5.0
                self._planned = -1  # this plan did not look: nothing is known to be settled
            with self._plans:
                self._plans_done = number
                self._plans.notify_all()

    def dispatch(self) -> float:
        """Plan and hand out what is due, per notifier; seconds until something falls due."""
        now = self.clock()
        release = self._release_all.is_set()
        with self.store.session() as session:
            rows = [row for row in owed.active(session, owed.MESSAGE)
                    if row.notifier in self.notifiers]
        wake = self.poll
        planned = 0
        for name, sender in self._senders.items():
            if sender.busy.is_set():
                planned += 1
                continue
            batches, due_in = self._plan([row for row in rows if row.notifier == name], now,
                                         release)
            wake = min(wake, due_in)
            if batches:
                sender.give(batches)
                planned += len(batches)
        self._planned = planned
        return max(0.05, wake)

    def _plan(self, rows: list[OutboxRow], now: datetime,
              release: bool) -> tuple[list[Batch], float]:
        """Batches due for one notifier, oldest first; a message waits behind anything owed
        before it about the same target."""
        batches: list[Batch] = []
        blocked: set[str] = set()
        used: set[int] = set()
        wake = self.poll
        for index, row in enumerate(rows):
            key = row.target or f"#{row.id}"
            if key in blocked or row.id in used:
                continue
            may, dead = may_take(self.agents, row.status, row.claimed_by, row.claim_until,
                                 now)
            if not may:
                blocked.add(key)
                continue
            held = row.event == "incident_opened" and row.attempts == 0  # its group window
            if row.due_at > now and not (release and held):
                blocked.add(key)
                wake = min(wake, (row.due_at - now).total_seconds())
                continue
            group = [row]
            if row.event == "incident_opened" and row.target:
                for later in rows[index + 1:]:
                    if later.target != row.target:
                        continue
                    if later.event != "incident_opened" or later.status != "pending":
                        break
                    group.append(later)
            taken = self._claim(group, now, dead)
            if taken is None:
                blocked.add(key)
                continue
            used.update(item.id for item in group)
            batches.append(Batch(key, taken))
        return batches, wake

    def _claim_time(self, notifier: str) -> timedelta:
        timeout = self.notifiers[notifier].timeout or self.settings.timeout
        return timeout * (self.attempts * 2 + 1) + timedelta(seconds=30)

    def _claim(self, group: list[OutboxRow], now: datetime,
               dead: str | None) -> tuple[Owed, ...] | None:
        until = now + self._claim_time(group[0].notifier or "")
        with self.store.session() as session:
            for row in group:
                if not owed.claim(session, row.id, self.holder, until, now, dead):
                    session.rollback()
                    return None
        taken = []
        for row in group:
            data = json.loads(row.payload)
            taken.append(Owed(
                id=row.id, event=row.event, target=row.target, check=row.check_name,
                message=Message.from_payload(data["message"]),
                direct=frozenset(data.get("direct", ())), attempts=row.attempts + 1,
                interrupted=row.status == "claimed", expires_at=row.expires_at))
        return tuple(taken)

    # -- delivering ------------------------------------------------------------------------

    def send_batches(self, notifier: NotifierConfig, batches: list[Batch]) -> None:
        """Deliver the batches in order; after a failure, later ones of its target wait."""
        failed: set[str] = set()
        for batch in batches:
            if batch.key in failed:
                with self.store.session() as session:
                    for row in batch.rows:
                        owed.release(session, row.id, self.holder, self.clock(), attempted=False)
                continue
            self._send_batch(notifier, batch, failed)

    def _send_batch(self, notifier: NotifierConfig, batch: Batch, failed: set[str]) -> None:
        message = batch.message()
        direct = frozenset().union(*(row.direct for row in batch.rows))
        note = ("redelivered: an earlier attempt was cut off mid-delivery"
                if any(row.interrupted for row in batch.rows) else "")
        ids = tuple(row.id for row in batch.rows)
        outcome = self._deliver(notifier, message, direct=direct, outbox_ids=ids, note=note)
        now = self.clock()
        with self.store.session() as session:
            for row in batch.rows:
                if outcome in ("sent", "withheld"):
                    owed.finish(session, row.id, self.holder, "done" if outcome == "sent"
                                else "withheld", note or None, now)
                elif row.expires_at is not None and now >= row.expires_at:
                    owed.finish(session, row.id, self.holder, "expired",
                                f"not delivered after {row.attempts} tries", now)
                else:
                    owed.release(session, row.id, self.holder, now + backoff(row.attempts))
        if outcome == "failed":
            failed.add(batch.key)
            expired = [row for row in batch.rows
                       if row.expires_at is not None and now >= row.expires_at]
            if expired:
                logger.error("notifier %s: %s given up after %s tries (expired)",
                             notifier.name, message.event, expired[0].attempts)
                self._record(notifier.name, message, expired[0].attempts, "expired",
                             "not delivered before it expired", outbox_id=expired[0].id)

    def send_test(self, name: str) -> tuple[bool, str | None]:
        """Send a test message to one notifier now (no fallback); (sent, last error)."""
        return self._attempt_all(self.notifiers[name], messages.notifier_test(name))

    def send_now(self, message: Message) -> dict[str, bool]:
        """Route and deliver in the caller's thread (a CLI command, not the service); per
        notifier routed to, whether someone got it."""
        chosen = self.router.recipients(message)
        direct = frozenset(notifier.name for notifier in chosen)
        return {notifier.name: self.deliver(notifier, message, direct=direct)
                for notifier in chosen}

    def deliver(self, notifier: NotifierConfig, message: Message, *,
                direct: frozenset[str] = frozenset(), fallback: bool = True) -> bool:
        """Send now, retrying with backoff, then to the notifier's fallback if it still failed;
        every attempt is recorded. True when someone got it."""
        return self._deliver(notifier, message, direct=direct, fallback=fallback) == "sent"

    def _deliver(self, notifier: NotifierConfig, message: Message, *,
                 direct: frozenset[str] = frozenset(), fallback: bool = True,
                 outbox_ids: tuple[int, ...] = (), note: str = "") -> str:
        """sent | withheld | failed. Follow-ups go only where the incident's telling went:
        this notifier, or its fallback if only the fallback was told."""
        to = self._follow_up_route(notifier, message, direct, outbox_ids)
        if to is None:
            return "withheld"
        first = outbox_ids[0] if outbox_ids else None
        if to is not notifier:
            return "sent" if self._attempt_all(to, message, outbox_id=first,
                                               status_note=note)[0] else "failed"
        sent, error = self._attempt_all(notifier, message, outbox_id=first, status_note=note)
        if sent or not fallback:
            return "sent" if sent else "failed"
        spare = self._fallback_of(notifier, direct)
        if spare is None:
            return "failed"
        logger.warning("notifier %s failed; sending %s to its fallback %s", notifier.name,
                       message.event, spare.name)
        text = f"(sent to fallback: notifier '{notifier.name}' failed: {error})"
        return "sent" if self._attempt_all(spare, message, note=text, outbox_id=first,
                                           status_note=note)[0] else "failed"

    def _follow_up_route(self, notifier: NotifierConfig, message: Message,
                         direct: frozenset[str],
                         outbox_ids: tuple[int, ...] = ()) -> NotifierConfig | None:
        first = outbox_ids[0] if outbox_ids else None
        if message.event == "flapping_stopped" and message.check:
            with self.store.session() as session:
                if self._told_flapping(session, message.check, notifier.name):
                    return notifier
            self._record(notifier.name, message, 0, "withheld",
                         "not sent: 'flapping started' never reached this notifier",
                         outbox_id=first)
            return None
        if message.event not in FOLLOW_UPS or not message.incident_ids:
            return notifier
        incident_id = message.incident_ids[0]
        with self.store.session() as session:
            if queries.was_told(session, incident_id, TELLS, notifier.name):
                return notifier
            spare = notifier.fallback
            if spare is not None and spare not in direct and queries.was_told(
                    session, incident_id, TELLS, spare):
                return self.notifiers[spare]
        logger.info("not sending %s of #%s to %s: it was never told of the incident",
                    message.event, incident_id, notifier.name)
        self._record(notifier.name, message, 0, "withheld",
                     "not sent: this notifier was never told of the incident", outbox_id=first)
        return None

    @staticmethod
    def _told_flapping(session: Session, check: str, notifier: str) -> bool:
        """The newest flapping notice this notifier got for the check says it started."""
        last = session.scalar(select(NotificationAttemptRow.event).where(
            NotificationAttemptRow.check_name == check,
            NotificationAttemptRow.notifier == notifier,
            NotificationAttemptRow.outcome == "sent",
            NotificationAttemptRow.event.in_(("flapping_started", "flapping_stopped")),
        ).order_by(NotificationAttemptRow.id.desc()).limit(1))
        return last == "flapping_started"

    def _fallback_of(self, notifier: NotifierConfig,
                     direct: frozenset[str]) -> NotifierConfig | None:
        if notifier.fallback is None:
            return None
        if notifier.fallback in direct:
            logger.info("fallback %s of %s gets this message anyway", notifier.fallback,
                        notifier.name)
            return None
        return self.notifiers.get(notifier.fallback)

    def _attempt_all(self, notifier: NotifierConfig, message: Message, note: str = "", *,
                     outbox_id: int | None = None,
                     status_note: str = "") -> tuple[bool, str | None]:
        """Send with quick retries; every attempt recorded. (sent, last error)."""
        from tenacity import RetryError, Retrying, stop_after_attempt, wait_exponential

        values = {"title": message.title, "body": message.body, "event": message.event,
                  **message.fields}
        title = render(notifier.title or self.settings.title, values, message.title)
        body = render(notifier.body or self.settings.body, values, message.body)
        body = f"{body}\n\n{note}" if note else body
        evidence = self._evidence(message)
        body = f"{body}\n\n{evidence.summary}" if evidence is not None else body
        counter: list[int] = [0]
        errors: list[str | None] = [None]

        def attempt() -> None:
            counter[0] += 1
            error = errors[0] = self._send(notifier, message.severity, title, body,
                                           str(evidence.path) if evidence else None)
            self._record(notifier.name, message, counter[0], "failed" if error else "sent",
                         error or (status_note or None), title, body, outbox_id=outbox_id)
            if error:
                raise DeliveryFailed(error)

        try:
            Retrying(stop=stop_after_attempt(self.attempts),
                     wait=wait_exponential(multiplier=self.retry_wait, max=8.0))(attempt)
        except RetryError:
            logger.error("notifier %s: %s not delivered after %s attempts: %s", notifier.name,
                         message.event, counter[0], errors[0])
            return False, errors[0]
        finally:
            if evidence is not None:
                evidence.remove()
        return True, None

    def _evidence(self, message: Message) -> Attachment | None:
        """The incident's newest diagnostics bundle, summarised and attached; a capture this
        process has in progress is waited for up to its bound."""
        settings = self.catalog.diagnostics if self.catalog is not None else None
        if settings is None or not settings.enabled:
            return None
        ids = message.incident_ids or ((message.incident_id,) if message.incident_id else ())
        try:
            return attachment(self.store, message.event, ids,
                              settings.timeout.total_seconds() + 1.0)
        except Exception:
            logger.exception("diagnostics of %s could not be attached", message.event)
            return None

    def _send(self, notifier: NotifierConfig, severity: str, title: str,
              body: str, attach: str | None = None) -> str | None:
        # Plain text: server text must not become mentions, links or markup in a chat.
        error = apprise_send([url.get_secret_value() for url in notifier.urls], severity,
                             clean(title, one_line=True), clean(body),
                             (notifier.timeout or self.settings.timeout).total_seconds(),
                             attach)
        return None if error is None else self._redact(error)

    def _record(self, notifier: str, message: Message, attempt: int, outcome: str,
                error: str | None, title: str | None = None, body: str | None = None, *,
                outbox_id: int | None = None) -> None:
        ids: Sequence[int | None] = message.incident_ids or (None,)
        now = self.clock()
        try:
            for retry in self.store.retrying():
                with retry, self.store.session() as session:
                    for incident_id in ids:
                        queries.add_attempt(
                            session, incident_id=incident_id, event=message.event,
                            notifier=notifier, attempt=attempt, outcome=outcome, error=error,
                            title=title or message.title, body=body or message.body, at=now,
                            check=message.check, target=message.target, outbox_id=outbox_id)
                    if outcome == "sent" and message.event in REMINDS and message.incident_ids:
                        queries.mark_notified(session, message.incident_ids, now)
        except Exception:
            logger.exception("could not record a notification attempt for %s", notifier)

    def _redact(self, text: str) -> str:
        remember(self.secrets)
        return clean(text)

    # -- reminders -------------------------------------------------------------------------

    def repeat_open_incidents(self, now: datetime | None = None, *,
                              skip: reminders.Skip | None = None) -> int:
        """Stage "still open" for each open, unacknowledged incident whose notifier has not
        been told about it for its `repeat_interval`; returns how many were staged.

        Call it on a timer (every minute is plenty). `skip(incident)` -> True leaves an
        incident out (silenced, flapping)."""
        if self.catalog is None:
            raise RuntimeError("repeat_open_incidents needs Notifications.from_catalog(...)")
        now = now or self.clock()
        staged = 0
        plan = reminders.due(self.store, self.notifiers.values(), self.settings, now)
        for incident, notifiers in plan.values():
            if skip is not None and skip(incident):
                continue
            staged += self._remind(incident, notifiers, now)
        if staged:
            self.poke()
        return staged

    def _remind(self, incident: IncidentRow, notifiers: list[NotifierConfig],
                now: datetime) -> int:
        assert self.catalog is not None
        message = reminders.reminder(self.store, self.catalog, incident, now)
        staged = 0
        with self.store.session() as session:
            if owed.has_any_active(session, incident.id, ("incident_opened",)):
                return 0  # its opening is still on its way
            direct = sorted(notifier.name for notifier in notifiers)
            for notifier in notifiers:
                if owed.has_active_message(session, incident.id, notifier.name, tuple(REMINDS)):
                    continue
                if not self.router.accepts(notifier, message):
                    continue
                owed.add(session, kind=owed.MESSAGE, event=message.event,
                         notifier=notifier.name, target=message.target, check=message.check,
                         incident_id=incident.id,
                         payload={"message": message.payload(), "direct": direct}, now=now,
                         expires=now + self.settings.expire)
                staged += 1
        return staged
