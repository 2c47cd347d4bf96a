"""Notifications through Apprise to real loopback receivers; every attempt recorded."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner, Result

from sglguard.cli import main
from sglguard.clock import utcnow
from sglguard.config.models import Catalog, NotificationsConfig, NotifierConfig
from sglguard.notify import Message, Notifications, messages, reminders
from sglguard.receiver import AlertReceiver
from sglguard.store import Store, queries
from sglguard.store.models import IncidentRow, NotificationAttemptRow, OutboxRow

from conftest import FakeClock, free_port, wait_for


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


def test_a_stalled_notifier_blocks_neither_submit_nor_the_other_notifiers(
        store: Store, receiver: AlertReceiver) -> None:
    gate = threading.Event()
    slow = AlertReceiver(on_alert=lambda _alert: gate.wait(10)).start()
    try:
        notifications = Notifications(
            [notifier("slow", f"json://127.0.0.1:{slow.port}/alerts"),
             notifier("quick", f"json://127.0.0.1:{receiver.port}/alerts")], store)
        notifications.start()
        began = time.monotonic()
        for number in range(6):
            notifications.submit(Message("incident_opened", f"m{number}", "b", "critical"))
        assert time.monotonic() - began < 1.0
        # The quick notifier gets all six while the slow one is still stuck in its first.
        wait_for(lambda: len(receiver.received()) == 6, timeout=5)
        assert not gate.is_set() and len(slow.received()) <= 1
        gate.set()
        notifications.stop(timeout=10)
    finally:
        gate.set()
        slow.stop()
    by_notifier = [(row.notifier, row.outcome) for row in attempts(store)]
    assert by_notifier.count(("quick", "sent")) == 6
    assert by_notifier.count(("slow", "sent")) == 6


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
    withheld = [row for row in attempts(store) if row.outcome == "withheld"]
    assert [(row.event, row.notifier) for row in withheld] == [("incident_resolved", "ops")]


CATALOG = """\
version: 1
targets:
  - {{name: a, url: "http://127.0.0.1:1",
     control: {{kind: process, start: ["true"], pidfile: a.pid}}}}
checks:
  - {{name: live, kind: http, target: a, remediate: [restart],
     runbook: "https://runbooks.example/live"}}
remediations:
  - {{name: restart, kind: restart}}
notifications: {{group_wait: 0s, repeat_interval: 1h}}
notifiers:
{notifiers}
"""


def catalog_with(make_catalog: Any, notifiers: str) -> Catalog:
    catalog: Catalog = make_catalog(CATALOG.format(notifiers=notifiers))
    return catalog


def open_incident(store: Store, at: Any, status: str = "open") -> IncidentRow:
    with store.session() as session:
        incident = IncidentRow(check_name="live", target="a", status=status,
                               severity="critical", opened_at=at, first_value=0.0,
                               last_value=0.0, first_message="connection refused",
                               last_message="connection refused")
        session.add(incident)
        session.flush()
        return incident


def opened_message(catalog: Catalog, incident: IncidentRow) -> Message:
    return messages.incident_opened(incident, catalog.check("live"), catalog.target("a"),
                                    unit="ms")


def test_the_default_message_tells_a_paged_person_what_they_need(
        make_catalog: Any, store: Store) -> None:
    catalog = catalog_with(make_catalog, "  - {name: ops, urls: ['json://127.0.0.1:9/']}")
    message = opened_message(catalog, open_incident(store, utcnow()))
    assert message.title == "[CRITICAL] a/live: incident opened"
    for line in ("a/live is CRITICAL: connection refused",
                 "value: 0 ms (first 0 ms); threshold: 3 consecutive failed runs",
                 "target: a (http://127.0.0.1:1) watched from host ", "check: live (http)",
                 "done: sglguard will try: restart", "runbook: https://runbooks.example/live",
                 f"acknowledge: sglguard ack {message.incident_id} --by NAME"):
        assert line in message.body


def test_a_resolution_says_the_check_passes_again_not_that_it_is_critical(
        make_catalog: Any, store: Store) -> None:
    catalog = catalog_with(make_catalog, "  - {name: ops, urls: ['json://127.0.0.1:9/']}")
    incident = open_incident(store, utcnow())
    incident.status, incident.resolved_at = "resolved", incident.opened_at
    message = messages.incident_resolved(incident, catalog.check("live"), catalog.target("a"))
    assert message.title == "[RESOLVED] a/live: incident resolved"
    assert "is CRITICAL" not in message.body
    assert "a/live passes again; it was CRITICAL: connection refused" in message.body


def test_an_open_unacknowledged_incident_is_repeated_after_the_interval(
        make_catalog: Any, store: Store, receiver: AlertReceiver, clock: FakeClock) -> None:
    catalog = catalog_with(make_catalog, f"""\
  - {{name: ops, urls: ["json://127.0.0.1:{receiver.port}/a"]}}
  - {{name: quiet, urls: ["json://127.0.0.1:{receiver.port}/b"], events: [incident_opened]}}""")
    incident = open_incident(store, clock())
    sender = Notifications.from_catalog(catalog, store, clock=clock)
    sender.start()
    sender.submit(opened_message(catalog, incident))
    assert sender.flush(10)
    clock.advance(30 * 60)
    assert sender.repeat_open_incidents() == 0
    clock.advance(31 * 60)
    assert sender.repeat_open_incidents() == 1  # ops only: quiet does not take repeats
    assert sender.flush(10)
    assert sender.repeat_open_incidents() == 0  # just reminded
    sender.stop()
    titles = [alert["title"] for alert in receiver.received()]
    assert titles[-1] == "[CRITICAL] a/live: still open after 1h 1m"
    with store.session() as session:
        row = session.get_one(IncidentRow, incident.id)
        assert row.last_notified_at == clock()
        events = [(item.notifier, item.event) for item in queries.attempts_of(session, row.id)]
    assert events[-1] == ("ops", "incident_repeated")


def test_an_acknowledged_or_resolved_incident_is_not_repeated(
        make_catalog: Any, store: Store, receiver: AlertReceiver, clock: FakeClock) -> None:
    catalog = catalog_with(make_catalog,
                           f"  - {{name: ops, urls: ['json://127.0.0.1:{receiver.port}/a']}}")
    acked = open_incident(store, clock())
    open_incident(store, clock(), status="resolved")
    acked_at = clock()
    reminders.acknowledge(store, acked.id, "alice", "restarting by hand", acked_at)
    clock.advance(5 * 3600)
    sender = Notifications.from_catalog(catalog, store, clock=clock)
    assert sender.repeat_open_incidents() == 0
    with store.session() as session:
        row = session.get_one(IncidentRow, acked.id)
        assert (row.acknowledged_by, row.acknowledged_at) == ("alice", acked_at)
        [event] = queries.events_of(session, acked.id)
    assert (event.kind, event.detail) == ("acknowledged", "by alice: restarting by hand")


def test_each_notifier_repeats_at_its_own_interval(
        make_catalog: Any, store: Store, receiver: AlertReceiver, clock: FakeClock) -> None:
    catalog = catalog_with(make_catalog, f"""\
  - {{name: ops, urls: ["json://127.0.0.1:{receiver.port}/a"]}}
  - {{name: pager, urls: ["json://127.0.0.1:{receiver.port}/b"], repeat_interval: 10m}}""")
    open_incident(store, clock())
    clock.advance(11 * 60)
    sender = Notifications.from_catalog(catalog, store, clock=clock)
    sender.start()
    assert sender.repeat_open_incidents() == 1
    assert sender.repeat_open_incidents() == 0  # already queued: not twice
    sender.stop()
    with store.session() as session:
        assert [row.notifier for row in session.query(NotificationAttemptRow)] == ["pager"]


class _PlanReadEarly(Notifications):
    """Its first plan reads the outbox, then stays under way until the second poke (the one
    `flush` gives); the second plan starts only once the test has looked, or after a second.
    The moments a busy machine can stretch, held open on purpose."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first_read = threading.Event()
        self.let_go = threading.Event()
        self.looked = threading.Event()
        self.pokes = self.plans = 0

    def dispatch(self) -> float:
        self.plans += 1
        if self.plans == 2:
            self.looked.wait(1.0)
        if self.plans > 1:
            return super().dispatch()
        wake = super().dispatch()
        self.first_read.set()
        self.let_go.wait(10)
        return wake

    def poke(self) -> None:
        self.pokes += 1
        super().poke()
        if self.pokes == 2:
            self.let_go.set()


def test_flush_waits_for_a_plan_begun_after_it_not_one_already_under_way(
        store: Store, receiver: AlertReceiver) -> None:
    notifications = _PlanReadEarly(
        [notifier("ops", f"json://127.0.0.1:{receiver.port}/alerts")], store)
    notifications.start()
    assert notifications.first_read.wait(10)  # a plan has read the (empty) outbox
    notifications.submit(MESSAGE)  # the first poke
    flushed = notifications.flush(10)  # the second: the plan under way ends, nothing planned
    received = [alert["title"] for alert in receiver.received()]
    notifications.looked.set()
    notifications.stop()
    assert flushed and received == [MESSAGE.title]


def test_a_reminder_delivered_while_reminders_are_planned_is_not_staged_again(
        make_catalog: Any, store: Store, receiver: AlertReceiver, clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The first reminder's delivery ends between the planner's reads (forced here by waiting
    for it inside the read of past attempts): it is in one of them, so nothing is staged."""
    catalog = catalog_with(make_catalog,
                           f"  - {{name: ops, urls: ['json://127.0.0.1:{receiver.port}/a']}}")
    open_incident(store, clock())
    clock.advance(61 * 60)
    sender = Notifications.from_catalog(catalog, store, clock=clock)
    assert sender.repeat_open_incidents() == 1  # staged; the dispatcher is not running yet
    read_attempts = queries.due_repeats

    def then_delivered(*args: Any) -> list[IncidentRow]:
        found = read_attempts(*args)
        wait_for(lambda: receiver.received())
        wait_for(lambda: attempts(store) and not outbox_active(store))
        return found

    monkeypatch.setattr(queries, "due_repeats", then_delivered)
    sender.start()
    assert sender.repeat_open_incidents() == 0
    monkeypatch.undo()
    sender.stop()
    assert [alert["title"] for alert in receiver.received()] == [
        "[CRITICAL] a/live: still open after 1h 1m"]


def outbox_active(store: Store) -> list[OutboxRow]:
    with store.session() as session:
        return list(session.query(OutboxRow).filter(OutboxRow.status.in_(("pending",
                                                                           "claimed"))))


def test_acknowledging_an_unknown_or_resolved_incident_is_refused(store: Store) -> None:
    resolved = open_incident(store, utcnow(), status="resolved")
    with pytest.raises(reminders.UnknownIncident):
        reminders.acknowledge(store, 999, "alice", "", utcnow())
    with pytest.raises(reminders.NotOpen, match="is resolved"):
        reminders.acknowledge(store, resolved.id, "alice", "", utcnow())


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_notify_test_sends_now_and_says_how_it_went(
        make_catalog: Any, tmp_path: Any, store: Store, receiver: AlertReceiver) -> None:
    catalog_with(make_catalog, f"""\
  - {{name: ops, urls: ["json://127.0.0.1:{receiver.port}/a"]}}
  - {{name: down, urls: ["json://user:hunter2@127.0.0.1:{free_port()}/a"]}}""")
    config = str(tmp_path / "sglguard.yaml")
    good = invoke("notify", "test", "ops", "--config", config)
    assert (good.exit_code, good.output) == (0, "sent: test message delivered to notifier ops\n")
    assert receiver.received()[0]["title"].startswith("[TEST] sglguard on ")
    bad = invoke("notify", "test", "down", "--config", config)
    assert bad.exit_code == 1
    assert bad.output.startswith("failed: notifier down: A Connection error occurred")
    assert "hunter2" not in bad.output
    unknown = invoke("notify", "test", "nope", "--config", config)
    assert unknown.exit_code == 2
    assert "unknown notifier 'nope' (known: ops, down)" in unknown.output
    assert [(row.notifier, row.event, row.outcome) for row in attempts(store)] == [
        ("ops", "test", "sent"), ("down", "test", "failed")]


def test_ack_command_acknowledges_and_tells_who_saw_the_opening(
        make_catalog: Any, tmp_path: Any, store: Store, receiver: AlertReceiver) -> None:
    catalog = catalog_with(make_catalog,
                           f"  - {{name: ops, urls: ['json://127.0.0.1:{receiver.port}/a']}}")
    incident = open_incident(store, utcnow())
    sender = Notifications.from_catalog(catalog, store)
    assert sender.deliver(catalog.notifier("ops"), opened_message(catalog, incident))
    config = str(tmp_path / "sglguard.yaml")
    result = invoke("ack", str(incident.id), "--by", "alice", "--comment", "on it",
                    "--config", config)
    assert (result.exit_code, result.output) == (
        0, f"incident #{incident.id} acknowledged by alice; told ops\n")
    assert receiver.received()[-1]["title"] == "[ACK] a/live: acknowledged by alice"
    unknown = invoke("ack", "999", "--by", "alice", "--config", config)
    assert unknown.exit_code == 2
    assert "unknown incident 999" in unknown.output


def test_a_slow_receiver_is_cut_off_at_the_notifier_timeout(store: Store) -> None:
    gate = threading.Event()
    slow = AlertReceiver(on_alert=lambda _alert: gate.wait(10)).start()
    try:
        config = NotifierConfig.model_validate({
            "name": "slow", "urls": [f"json://127.0.0.1:{slow.port}/a"], "timeout": "300ms"})
        notifications = Notifications([config], store, attempts=1)
        began = time.monotonic()
        assert notifications.deliver(config, MESSAGE) is False
        assert time.monotonic() - began < 3
    finally:
        gate.set()
        slow.stop()
    [row] = attempts(store)
    assert row.outcome == "failed" and row.error and "did not finish" in row.error


def test_mail_that_cannot_go_out_falls_back_to_a_json_receiver_and_back(
        make_catalog: Any, store: Store, receiver: AlertReceiver) -> None:
    inbox = _Inbox()
    port = free_port()
    catalog = catalog_with(make_catalog, f"""\
  - {{name: mail, fallback: desk,
     urls: ["mailto://127.0.0.1:{port}?from=sg@example.org&to=oncall@example.org&mode=insecure"]}}
  - {{name: desk, urls: ["json://127.0.0.1:{receiver.port}/a"], events: [test]}}""")
    incident = open_incident(store, utcnow())
    sender = Notifications.from_catalog(catalog, store, attempts=1)
    assert sender.deliver(catalog.notifier("mail"), opened_message(catalog, incident))
    assert "(sent to fallback: notifier 'mail' failed" in receiver.received()[0]["message"]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()  # mail works again
    try:
        assert sender.deliver(catalog.notifier("mail"), opened_message(catalog, incident))
    finally:
        controller.stop()
    assert len(inbox.messages) == 1 and len(receiver.received()) == 1
    assert [(row.notifier, row.outcome) for row in attempts(store)] == [
        ("mail", "failed"), ("desk", "sent"), ("mail", "sent")]


def test_flapping_and_escalation_messages_reach_their_notifiers(
        make_catalog: Any, store: Store, receiver: AlertReceiver) -> None:
    catalog = catalog_with(make_catalog,
                           f"  - {{name: ops, urls: ['json://127.0.0.1:{receiver.port}/a']}}")
    check, target = catalog.check("live"), catalog.target("a")
    incident = open_incident(store, utcnow())
    sender = Notifications.from_catalog(catalog, store)
    sender.start()
    sender.submit(messages.flapping(check, target, True, 42.0))
    sender.submit(messages.budget_spent(incident, check, target, "3 restarts within 30m"))
    sender.submit(messages.flapping(check, target, False, 12.0))
    assert sender.flush(10)
    sender.stop()
    assert [alert["title"] for alert in receiver.received()] == [
        "[FLAPPING] a/live: flapping (42% change)",
        "[ESCALATION] a/live: automatic remediation stopped",
        "[STABLE] a/live: no longer flapping (12% change)",
    ]
    assert [row.event for row in attempts(store)] == [
        "flapping_started", "incident_escalated", "flapping_stopped"]


def test_an_escalation_pages_whatever_the_incident_severity(
        make_catalog: Any, store: Store) -> None:
    catalog = catalog_with(make_catalog, """\
  - {name: pager, urls: ["json://127.0.0.1:9/"], min_severity: critical}""")
    incident = open_incident(store, utcnow())
    incident.severity = "warning"
    check, target = catalog.check("live"), catalog.target("a")
    sender = Notifications.from_catalog(catalog, store)
    assert sender.router.recipients(messages.incident_opened(incident, check, target)) == []
    escalation = messages.incident_escalated(incident, check, target, "verification failed")
    assert [item.name for item in sender.router.recipients(escalation)] == ["pager"]


def test_a_notifier_and_its_fallback_down_for_a_minute_lose_nothing(
        store: Store, clock: FakeClock) -> None:
    primary, spare = AlertReceiver(status=500).start(), AlertReceiver(status=500).start()
    try:
        config = [NotifierConfig.model_validate({
            "name": "ops", "urls": [f"json://127.0.0.1:{primary.port}/a"], "fallback": "spare"}),
            notifier("spare", f"json://127.0.0.1:{spare.port}/a")]
        notifications = Notifications(config, store, clock=clock, retry_wait=0.01)
        notifications.start()
        for number in range(3):
            notifications.submit(Message("remediation_failed", f"m{number}", "b", "critical",
                                         target="local"))
        assert notifications.flush(10)  # tried once: both down, kept for later
        for _ in range(12):  # a minute of outage, the clock moved by hand
            clock.advance(5)
            assert notifications.flush(10)
        assert primary.received() == [] and spare.received() == []
        primary.status = spare.status = 200
        clock.advance(60)
        assert notifications.flush(10)
        notifications.stop()
    finally:
        primary.stop()
        spare.stop()
    assert [alert["title"] for alert in primary.received()] == ["m0", "m1", "m2"]
    outcomes = [row.outcome for row in attempts(store) if row.notifier == "ops"]
    assert outcomes.count("sent") == 3 and outcomes.count("failed") >= 6
    with store.session() as session:
        assert {row.status for row in session.query(OutboxRow)} == {"done"}


def test_a_message_is_given_up_when_it_expires_and_recorded_as_expired(
        store: Store, clock: FakeClock) -> None:
    down = AlertReceiver(status=500).start()
    try:
        notifications = Notifications(
            [notifier("ops", f"json://127.0.0.1:{down.port}/a")], store, clock=clock,
            retry_wait=0.01, settings=NotificationsConfig(expire="2m"))
        notifications.start()
        notifications.submit(MESSAGE)
        for _ in range(30):
            clock.advance(10)
            notifications.flush(10)
        notifications.stop()
    finally:
        down.stop()
    assert [row.outcome for row in attempts(store)][-1] == "expired"
    with store.session() as session:
        assert [row.status for row in session.query(OutboxRow)] == ["expired"]
