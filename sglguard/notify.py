"""Notifications through Apprise: a bounded queue, a worker, retries, every attempt recorded."""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import apprise
from tenacity import RetryError, Retrying, stop_after_attempt, wait_exponential

from sglguard.client import REDACTED
from sglguard.clock import utcnow
from sglguard.config.models import NotifierConfig
from sglguard.store import Store, queries

logger = logging.getLogger(__name__)

_TYPES = {
    "critical": apprise.NotifyType.FAILURE,
    "warning": apprise.NotifyType.WARNING,
    "unknown": apprise.NotifyType.WARNING,
    "ok": apprise.NotifyType.SUCCESS,
    "info": apprise.NotifyType.INFO,
}


@dataclass(frozen=True)
class Message:
    """One notification: an event about an incident (or a test), its title and body."""

    event: str
    title: str
    body: str
    severity: str = "info"
    incident_id: int | None = None


class DeliveryFailed(Exception):
    """Apprise reported that a delivery did not go through."""


def host_name() -> str:
    return socket.gethostname()


class Notifications:
    """Sends messages to the catalog's notifiers without ever blocking the caller for long."""

    def __init__(
        self,
        notifiers: Sequence[NotifierConfig],
        store: Store,
        *,
        secrets: Sequence[str] = (),
        clock: Callable[[], datetime] = utcnow,
        queue_size: int = 256,
        attempts: int = 3,
        retry_wait: float = 0.5,
    ) -> None:
        self.notifiers = {notifier.name: notifier for notifier in notifiers}
        self.store = store
        self.secrets = tuple(secret for secret in secrets if secret)
        self.clock = clock
        self.attempts = attempts
        self.retry_wait = retry_wait
        self._queue: queue.Queue[tuple[NotifierConfig, Message] | None] = queue.Queue(queue_size)
        self._worker: threading.Thread | None = None

    def start(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="notify", daemon=True)
            self._worker.start()

    def submit(self, message: Message) -> None:
        """Queue the message for every notifier that wants its event; never blocks."""
        for notifier in self.notifiers.values():
            if message.event not in notifier.events:
                continue
            try:
                self._queue.put_nowait((notifier, message))
            except queue.Full:
                logger.error("notification queue full: dropping %s for %s",
                             message.event, notifier.name)
                self._record(notifier, message, 0, "dropped", "notification queue full")

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued has been attempted; False if time ran out."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued within `timeout`; record the rest as dropped."""
        if self._worker is None:
            return
        self.flush(timeout)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._record(item[0], item[1], 0, "dropped", "sglguard stopped before delivery")
            self._queue.task_done()
        self._queue.put(None)
        self._worker.join(timeout=max(timeout, 1.0))
        self._worker = None

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self.deliver(*item)
            except Exception:
                logger.exception("notification worker error")
            finally:
                self._queue.task_done()

    def deliver(self, notifier: NotifierConfig, message: Message) -> bool:
        """Send now, retrying with backoff; every attempt is recorded. True when sent."""
        if message.event == "incident_resolved" and message.incident_id is not None:
            with self.store.session() as session:
                opened = queries.was_delivered(
                    session, message.incident_id, "incident_opened", notifier.name)
            if not opened:
                logger.info("not sending 'resolved' to %s: 'opened' never reached it",
                            notifier.name)
                return False
        counter = [0]

        def attempt() -> None:
            counter[0] += 1
            error = self._send(notifier, message)
            self._record(notifier, message, counter[0], "failed" if error else "sent", error)
            if error:
                raise DeliveryFailed(error)

        try:
            Retrying(
                stop=stop_after_attempt(self.attempts),
                wait=wait_exponential(multiplier=self.retry_wait, max=8.0),
            )(attempt)
        except RetryError:
            logger.error("notifier %s: %s not delivered after %s attempts",
                         notifier.name, message.event, counter[0])
            return False
        return True

    def _send(self, notifier: NotifierConfig, message: Message) -> str | None:
        sender = apprise.Apprise()
        for url in notifier.urls:
            if not sender.add(url.get_secret_value()):
                return "Apprise could not load one of the notifier's URLs"
        notify_type = _TYPES.get(message.severity, apprise.NotifyType.INFO)
        capture = apprise.LogCapture(  # type: ignore[no-untyped-call]
            level=logging.WARNING, fmt="%(message)s")
        with capture as captured:
            ok = sender.notify(body=message.body, title=message.title, notify_type=notify_type)
            logs = str(captured.getvalue()).strip()
        if ok:
            return None
        return self._redact(logs.replace("\n", "; ") or "Apprise reported a failed delivery")

    def _record(self, notifier: NotifierConfig, message: Message, attempt: int, outcome: str,
                error: str | None) -> None:
        try:
            for retry in self.store.retrying():
                with retry, self.store.session() as session:
                    queries.add_attempt(
                        session, incident_id=message.incident_id, event=message.event,
                        notifier=notifier.name, attempt=attempt, outcome=outcome, error=error,
                        title=message.title, body=message.body, at=self.clock(),
                    )
        except Exception:
            logger.exception("could not record a notification attempt for %s", notifier.name)

    def _redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text
