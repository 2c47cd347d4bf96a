"""Notifications through Apprise: routing, grouping, a bounded queue and a worker, retries,
fallback, reminders; every attempt recorded.

Nothing here blocks the caller for long: `submit()` routes and queues (or holds an opening for
its target's group) and returns; one worker thread sends, each delivery bounded by the
notifier's `timeout` and retried with tenacity.
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tenacity import RetryError, Retrying, stop_after_attempt, wait_exponential

from sglguard import messages, reminders
from sglguard.clock import utcnow
from sglguard.config.models import Catalog, NotificationsConfig, NotifierConfig
from sglguard.grouping import Grouper, Held
from sglguard.notice import FOLLOW_UPS, REMINDS, Message, host_name
from sglguard.redact import clean, remember
from sglguard.routing import Router
from sglguard.store import Store, queries
from sglguard.store.models import IncidentRow
from sglguard.templates import render

__all__ = ["DeliveryFailed", "Message", "Notifications", "host_name"]
logger = logging.getLogger(__name__)

# Apprise costs ~10 MiB of imports: it is loaded at the first delivery, not at start-up.
_TYPES = {"critical": "failure", "warning": "warning", "unknown": "warning", "ok": "success",
          "info": "info"}


class DeliveryFailed(Exception):
    """Apprise reported that a delivery did not go through."""


@dataclass(frozen=True)
class Job:
    """One message for one notifier; `direct` names every notifier the message was routed to."""

    notifier: NotifierConfig
    message: Message
    direct: frozenset[str] = frozenset()


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


class Notifications:
    """Sends messages to the catalog's notifiers without ever blocking the caller for long."""

    def __init__(self, notifiers: Sequence[NotifierConfig], store: Store, *,
                 settings: NotificationsConfig | None = None, catalog: Catalog | None = None,
                 secrets: Sequence[str] = (), clock: Callable[[], datetime] = utcnow,
                 queue_size: int = 256, attempts: int = 3, retry_wait: float = 0.5) -> None:
        self.notifiers = {notifier.name: notifier for notifier in notifiers}
        self.store = store
        self.catalog = catalog
        self.settings = settings or (catalog.notifications if catalog else NotificationsConfig())
        self.secrets = tuple(sorted({item for item in (*secrets, *url_secrets(notifiers))
                                     if item}, key=len, reverse=True))
        self.clock = clock
        self.attempts = attempts
        self.retry_wait = retry_wait
        self.router = Router(notifiers)
        self.grouper = Grouper(self.settings.group_wait.total_seconds(), self._release)
        self._queue: queue.Queue[Job | None] = queue.Queue(queue_size)
        self._worker: threading.Thread | None = None
        self._pending: set[tuple[str, int]] = set()  # queued reminders, not yet attempted
        self._pending_lock = threading.Lock()

    @classmethod
    def from_catalog(cls, catalog: Catalog, store: Store, *,
                     clock: Callable[[], datetime] = utcnow, **options: Any) -> Notifications:
        """What the service builds: notifiers, defaults, templates and secrets of the catalog."""
        return cls(catalog.notifiers, store, catalog=catalog, settings=catalog.notifications,
                   secrets=catalog.secrets(), clock=clock, **options)

    def start(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="notify", daemon=True)
            self._worker.start()
        self.grouper.start()

    def submit(self, message: Message) -> None:
        """Route the message and queue it for each notifier that takes it; never blocks.

        An `incident_opened` waits up to `group_wait` for other openings of its target, and
        other messages about that target wait behind it (see sglguard.grouping)."""
        if not self.grouper.hold(message):
            self._dispatch(message)

    def flush(self, timeout: float) -> bool:
        """Release held groups now and wait until everything queued has been attempted;
        False if time ran out."""
        self.grouper.release_all()
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Release held groups, deliver what is queued within `timeout`; record the rest as
        dropped."""
        self.grouper.stop()
        if self._worker is not None:
            self.flush(timeout)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._record(job.notifier.name, job.message, 0, "dropped",
                             "sglguard stopped before delivery")
            self._queue.task_done()
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=max(timeout, 1.0))
            self._worker = None

    def repeat_open_incidents(self, now: datetime | None = None, *,
                              skip: reminders.Skip | None = None) -> int:
        """Queue "still open" for each open, unacknowledged incident whose notifier has not
        been told about it for its `repeat_interval`; returns how many were queued.

        Call it on a timer (every minute is plenty). `skip(incident)` -> True leaves an
        incident out (silenced, flapping)."""
        if self.catalog is None:
            raise RuntimeError("repeat_open_incidents needs Notifications.from_catalog(...)")
        now = now or self.clock()
        held = self.grouper.held_incidents()
        queued = 0
        plan = reminders.due(self.store, self.notifiers.values(), self.settings, now)
        for incident, notifiers in plan.values():
            if incident.id in held or (skip is not None and skip(incident)):
                continue
            queued += self._remind(incident, notifiers, now)
        return queued

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
        every attempt is recorded. True when someone got it.

        Follow-ups (resolved, acknowledged) go only where the incident's "opened" went: this
        notifier, or its fallback if the opening reached only the fallback."""
        to = self._follow_up_route(notifier, message, direct)
        if to is None:
            return False
        if to is not notifier:
            return self._attempt_all(to, message)[0]
        sent, error = self._attempt_all(notifier, message)
        if sent or not fallback:
            return sent
        spare = self._fallback_of(notifier, direct)
        if spare is None:
            return False
        logger.warning("notifier %s failed; sending %s to its fallback %s", notifier.name,
                       message.event, spare.name)
        note = f"(sent to fallback: notifier '{notifier.name}' failed: {error})"
        return self._attempt_all(spare, message, note=note)[0]

    def _dispatch(self, message: Message) -> None:
        chosen = self.router.recipients(message)
        direct = frozenset(notifier.name for notifier in chosen)
        for notifier in chosen:
            self._enqueue(Job(notifier, message, direct))

    def _release(self, held: Held) -> None:
        """A group's window closed: one message per notifier for the openings it takes."""
        per_notifier = {notifier.name: [item for item in held.opened
                                        if self.router.accepts(notifier, item)]
                        for notifier in self.notifiers.values()}
        direct = frozenset(name for name, items in per_notifier.items() if items)
        for name, items in per_notifier.items():
            if items:
                self._enqueue(Job(self.notifiers[name], messages.grouped(items), direct))
        for message in held.after:
            self._dispatch(message)

    def _remind(self, incident: IncidentRow, notifiers: list[NotifierConfig],
                now: datetime) -> int:
        assert self.catalog is not None
        message = reminders.reminder(self.store, self.catalog, incident, now)
        with self._pending_lock:
            chosen = [notifier for notifier in notifiers
                      if (notifier.name, incident.id) not in self._pending
                      and self.router.accepts(notifier, message)]
            self._pending.update((notifier.name, incident.id) for notifier in chosen)
        direct = frozenset(notifier.name for notifier in chosen)
        for notifier in chosen:
            self._enqueue(Job(notifier, message, direct))
        return len(chosen)

    def _enqueue(self, job: Job) -> None:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            logger.error("notification queue full: dropping %s for %s", job.message.event,
                         job.notifier.name)
            self._record(job.notifier.name, job.message, 0, "dropped",
                         "notification queue full")
            self._done(job)

    def _done(self, job: Job) -> None:
        with self._pending_lock:
            for number in job.message.incident_ids:
                self._pending.discard((job.notifier.name, number))

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self.deliver(job.notifier, job.message, direct=job.direct)
            except Exception:
                logger.exception("notification worker error")
            finally:
                if job is not None:
                    self._done(job)
                self._queue.task_done()

    def _follow_up_route(self, notifier: NotifierConfig, message: Message,
                         direct: frozenset[str]) -> NotifierConfig | None:
        if message.event not in FOLLOW_UPS or not message.incident_ids:
            return notifier
        incident_id = message.incident_ids[0]
        with self.store.session() as session:
            if queries.was_delivered(session, incident_id, "incident_opened", notifier.name):
                return notifier
            spare = notifier.fallback
            if spare is not None and spare not in direct and queries.was_delivered(
                    session, incident_id, "incident_opened", spare):
                return self.notifiers[spare]
        logger.info("not sending %s of #%s to %s: 'opened' never reached it", message.event,
                    incident_id, notifier.name)
        self._record(notifier.name, message, 0, "withheld",
                     "not sent: the incident's 'opened' never reached this notifier")
        return None

    def _fallback_of(self, notifier: NotifierConfig,
                     direct: frozenset[str]) -> NotifierConfig | None:
        if notifier.fallback is None:
            return None
        if notifier.fallback in direct:
            logger.info("fallback %s of %s gets this message anyway", notifier.fallback,
                        notifier.name)
            return None
        return self.notifiers.get(notifier.fallback)

    def _attempt_all(self, notifier: NotifierConfig, message: Message,
                     note: str = "") -> tuple[bool, str | None]:
        """Send with retries; every attempt recorded. (sent, last error)."""
        values = {"title": message.title, "body": message.body, "event": message.event,
                  **message.fields}
        title = render(notifier.title or self.settings.title, values, message.title)
        body = render(notifier.body or self.settings.body, values, message.body)
        body = f"{body}\n\n{note}" if note else body
        counter: list[int] = [0]
        errors: list[str | None] = [None]

        def attempt() -> None:
            counter[0] += 1
            error = errors[0] = self._send(notifier, message.severity, title, body)
            self._record(notifier.name, message, counter[0], "failed" if error else "sent",
                         error, title, body)
            if error:
                raise DeliveryFailed(error)

        try:
            Retrying(stop=stop_after_attempt(self.attempts),
                     wait=wait_exponential(multiplier=self.retry_wait, max=8.0))(attempt)
        except RetryError:
            logger.error("notifier %s: %s not delivered after %s attempts: %s", notifier.name,
                         message.event, counter[0], errors[0])
            return False, errors[0]
        return True, None

    def _send(self, notifier: NotifierConfig, severity: str, title: str,
              body: str) -> str | None:
        import apprise

        sender = apprise.Apprise()
        for url in notifier.urls:
            if not sender.add(url.get_secret_value()):
                return "Apprise could not load one of the notifier's URLs"
        # Plain text: server text must not become mentions, links or markup in a chat.
        options: dict[str, Any] = {"body": clean(body), "title": clean(title, one_line=True),
                                   "body_format": apprise.NotifyFormat.TEXT,
                                   "notify_type": apprise.NotifyType(_TYPES.get(severity, "info"))}
        if "timeout" in inspect.signature(sender.notify).parameters:  # Apprise 2
            options["timeout"] = (notifier.timeout or self.settings.timeout).total_seconds()
        capture = apprise.LogCapture(  # type: ignore[no-untyped-call]
            level=logging.WARNING, fmt="%(message)s")
        with capture as captured:
            result = sender.notify(**options)
            logs = str(captured.getvalue()).strip()
        if result:
            return None
        if hasattr(result, "logs"):
            logs = "\n".join(entry.message for entry in result.logs()) or logs
        return self._redact(logs.replace("\n", "; ") or "Apprise reported a failed delivery")

    def _record(self, notifier: str, message: Message, attempt: int, outcome: str,
                error: str | None, title: str | None = None, body: str | None = None) -> None:
        ids: Sequence[int | None] = message.incident_ids or (None,)
        now = self.clock()
        try:
            for retry in self.store.retrying():
                with retry, self.store.session() as session:
                    for incident_id in ids:
                        queries.add_attempt(
                            session, incident_id=incident_id, event=message.event,
                            notifier=notifier, attempt=attempt, outcome=outcome, error=error,
                            title=title or message.title, body=body or message.body, at=now)
                    if outcome == "sent" and message.event in REMINDS and message.incident_ids:
                        queries.mark_notified(session, message.incident_ids, now)
        except Exception:
            logger.exception("could not record a notification attempt for %s", notifier)

    def _redact(self, text: str) -> str:
        remember(self.secrets)
        return clean(text)
