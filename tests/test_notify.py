"""Notifications through Apprise to real loopback receivers; every attempt recorded."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from sglguard.clock import utcnow
from sglguard.config.models import NotifierConfig
from sglguard.notify import Message, Notifications
from sglguard.receiver import AlertReceiver
from sglguard.store import Store
from sglguard.store.models import NotificationAttemptRow

from conftest import free_port, wait_for


def notifier(name: str, *urls: str, events: tuple[str, ...] | None = None) -> NotifierConfig:
    data: dict[str, Any] = {"name": name, "urls": list(urls)}
    if events is not None:
        data["events"] = list(events)
    return NotifierConfig.model_validate(data)


def attempts(store: Store) -> list[NotificationAttemptRow]:
    with store.session() as session:
        return list(session.query(NotificationAttemptRow).order_by(NotificationAttemptRow.id))


@pytest.fixture
def receiver() -> Iterator[AlertReceiver]:
    server = AlertReceiver().start()
    yield server
    server.stop()


MESSAGE = Message("incident_opened", "[CRITICAL] local/liveness: incident opened",
                  "target: local\nvalue: none", "critical")


def test_json_notification_reaches_a_loopback_receiver(store: Store,
                                                       receiver: AlertReceiver) -> None:
    notifications = Notifications(
        [notifier("ops", f"json://127.0.0.1:{receiver.port}/alerts")], store)
    notifications.start()
    notifications.submit(MESSAGE)
    assert notifications.flush(10)
    notifications.stop()
    [alert] = receiver.received()
    assert alert["title"] == MESSAGE.title and "value: none" in alert["message"]
    assert [(row.outcome, row.event, row.attempt) for row in attempts(store)] == [
        ("sent", "incident_opened", 1)]


def test_failed_delivery_is_retried_and_every_attempt_recorded(store: Store) -> None:
    refused = free_port()
    notifications = Notifications(
        [notifier("ops", f"json://user:hunter2@127.0.0.1:{refused}/alerts")], store,
        secrets=["hunter2"], attempts=3, retry_wait=0.01)
    assert notifications.deliver(notifications.notifiers["ops"], MESSAGE) is False
    rows = attempts(store)
    assert [(row.outcome, row.attempt) for row in rows] == [
        ("failed", 1), ("failed", 2), ("failed", 3)]
    assert all(row.error and "hunter2" not in row.error for row in rows)


def test_receiver_error_status_counts_as_a_failure(store: Store) -> None:
    broken = AlertReceiver(status=500).start()
    try:
        notifications = Notifications(
            [notifier("ops", f"json://127.0.0.1:{broken.port}/alerts")], store,
            attempts=2, retry_wait=0.01)
        assert notifications.deliver(notifications.notifiers["ops"], MESSAGE) is False
    finally:
        broken.stop()
    assert [row.outcome for row in attempts(store)] == ["failed", "failed"]


def test_submit_never_blocks_and_a_full_queue_is_recorded(store: Store) -> None:
    gate = threading.Event()
    slow = AlertReceiver(on_alert=lambda _alert: gate.wait(10)).start()
    try:
        notifications = Notifications(
            [notifier("ops", f"json://127.0.0.1:{slow.port}/alerts")], store, queue_size=2)
        notifications.start()
        began = time.monotonic()
        for _ in range(6):
            notifications.submit(MESSAGE)
        assert time.monotonic() - began < 0.5
        wait_for(lambda: any(row.outcome == "dropped" for row in attempts(store)))
        gate.set()
        notifications.stop(timeout=10)
    finally:
        gate.set()
        slow.stop()
    outcomes = [row.outcome for row in attempts(store)]
    assert "dropped" in outcomes and "sent" in outcomes
    assert len(outcomes) == 6


def test_notifier_gets_only_the_events_it_chose(store: Store, receiver: AlertReceiver) -> None:
    notifications = Notifications(
        [notifier("pager", f"json://127.0.0.1:{receiver.port}/a", events=("budget_spent",))],
        store)
    notifications.start()
    notifications.submit(MESSAGE)
    notifications.submit(Message("budget_spent", "[ESCALATION] x", "y", "critical"))
    assert notifications.flush(10)
    notifications.stop()
    assert [alert["title"] for alert in receiver.received()] == ["[ESCALATION] x"]


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 OK"


def test_mailto_notification_reaches_a_loopback_smtp_server(store: Store) -> None:
    inbox = _Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        url = (f"mailto://127.0.0.1:{port}?from=sglguard@example.org"
               "&to=oncall@example.org&mode=insecure")
        notifications = Notifications([notifier("mail", url)], store)
        assert notifications.deliver(notifications.notifiers["mail"], MESSAGE), attempts(store)
    finally:
        controller.stop()
    [mail] = inbox.messages
    assert b"local/liveness: incident opened" in mail
    assert [row.outcome for row in attempts(store)] == ["sent"]


def test_resolved_is_sent_only_where_opened_was_delivered(store: Store,
                                                          receiver: AlertReceiver) -> None:
    from sglguard.store.models import IncidentRow

    with store.session() as session:
        incident = IncidentRow(check_name="c", target="t", status="resolved", severity="critical",
                               opened_at=utcnow(),
                               first_message="", last_message="")
        session.add(incident)
        session.flush()
        incident_id = incident.id
    notifications = Notifications(
        [notifier("ops", f"json://127.0.0.1:{receiver.port}/alerts")], store)
    resolved = Message("incident_resolved", "[RESOLVED] t/c", "ok", "ok", incident_id)
    assert notifications.deliver(notifications.notifiers["ops"], resolved) is False
    opened = Message("incident_opened", "[CRITICAL] t/c", "bad", "critical", incident_id)
    assert notifications.deliver(notifications.notifiers["ops"], opened)
    assert notifications.deliver(notifications.notifiers["ops"], resolved)
    assert [alert["title"] for alert in receiver.received()] == ["[CRITICAL] t/c",
                                                                "[RESOLVED] t/c"]


