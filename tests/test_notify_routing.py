"""Routing, grouping, fallback and templates of notifications, against real loopback receivers.

Incidents are created in the store directly; the messages about them come from the real
builders in sglguard.notify.messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from sglguard.config.loader import ConfigError
from sglguard.config.models import Catalog, NotifierConfig
from sglguard.notify import Message, Notifications, messages
from sglguard.notify.routing import Router
from sglguard.receiver import AlertReceiver
from sglguard.store import Store
from sglguard.store.models import IncidentRow, NotificationAttemptRow, OutboxRow

from conftest import free_port, wait_for

CHECKS = """\
version: 1
targets:
  - {name: a, url: "http://127.0.0.1:1"}
  - {name: b, url: "http://127.0.0.1:2"}
checks:
  - {name: a-live, kind: http, target: a, runbook: "https://runbooks.example/a-live"}
  - {name: a-queue, kind: metric, target: a, metric: "sglang:num_queue_reqs",
     warning: "> 50", critical: "> 200"}
  - {name: a-models, kind: http, target: a, path: /v1/models}
  - {name: b-live, kind: http, target: b}
"""
OPENED_AT = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def receivers() -> Iterator[Callable[[], AlertReceiver]]:
    started: list[AlertReceiver] = []

    def start() -> AlertReceiver:
        started.append(AlertReceiver().start())
        return started[-1]

    yield start
    for receiver in started:
        receiver.stop()


def json_url(receiver: AlertReceiver) -> str:
    return f"json://127.0.0.1:{receiver.port}/alerts"


def open_incident(store: Store, check: str, target: str, severity: str = "critical",
                  value: float | None = None, status: str = "open") -> IncidentRow:
    with store.session() as session:
        incident = IncidentRow(check_name=check, target=target, status=status,
                               severity=severity, opened_at=OPENED_AT, first_value=value,
                               last_value=value, first_message=f"{check} failing",
                               last_message=f"{check} failing")
        session.add(incident)
        session.flush()
        return incident


def opened(catalog: Catalog, incident: IncidentRow, unit: str = "") -> Message:
    check = catalog.check(incident.check_name)
    return messages.incident_opened(incident, check, catalog.target(check.target), unit=unit)


def attempts(store: Store) -> list[tuple[int | None, str, str, str]]:
    with store.session() as session:
        rows = session.query(NotificationAttemptRow).order_by(NotificationAttemptRow.id)
        return [(row.incident_id, row.notifier, row.event, row.outcome) for row in rows]


def to_inbox(make_catalog: Callable[[str], Catalog], inbox: AlertReceiver,
             group_wait: str) -> Catalog:
    """CHECKS with one notifier, `ops`, delivering to `inbox`; openings held `group_wait`."""
    return make_catalog(CHECKS + f"""\
notifications: {{group_wait: {group_wait}}}
notifiers: [{{name: ops, urls: ["{json_url(inbox)}"]}}]
""")


def notifications(catalog: Catalog, store: Store, **options: Any) -> Notifications:
    options.setdefault("retry_wait", 0.01)
    sender = Notifications.from_catalog(catalog, store, **options)
    sender.start()
    return sender


def test_three_incidents_of_one_target_within_group_wait_are_one_message(
        make_catalog: Callable[[str], Catalog], store: Store,
        receivers: Callable[[], AlertReceiver]) -> None:
    inbox = receivers()
    catalog = to_inbox(make_catalog, inbox, "60s")
    incidents = [open_incident(store, "a-live", "a"),
                 open_incident(store, "a-queue", "a", "warning", 80.0),
                 open_incident(store, "a-models", "a")]
    sender = notifications(catalog, store)
    for incident in incidents:
        sender.submit(opened(catalog, incident, unit="reqs" if incident.last_value else ""))
    assert sender.flush(10)
    sender.stop()
    [alert] = inbox.received()
    assert alert["title"] == "[CRITICAL] a: 3 incidents opened (a-live, a-queue, a-models)"
    assert "- a-queue (metric): WARNING, value 80 reqs, threshold warning > 50, critical > 200" \
        in alert["message"]
    assert "- a-live (http): CRITICAL, value none" in alert["message"]
    assert "runbook: a-live: https://runbooks.example/a-live" in alert["message"]
    ids = [incident.id for incident in incidents]
    assert f"sglguard ack {' '.join(map(str, ids))} --by NAME" in alert["message"]
    # Each incident has its delivery recorded, so "resolved" can follow per incident.
    assert attempts(store) == [(number, "ops", "incident_opened", "sent") for number in ids]


def test_incidents_of_two_targets_are_two_messages(
        make_catalog: Callable[[str], Catalog], store: Store,
        receivers: Callable[[], AlertReceiver]) -> None:
    inbox = receivers()
    catalog = to_inbox(make_catalog, inbox, "60s")
    sender = notifications(catalog, store)
    for check, target in (("a-live", "a"), ("b-live", "b"), ("a-queue", "a")):
        sender.submit(opened(catalog, open_incident(store, check, target)))
    assert sender.flush(10)
    sender.stop()
    assert sorted(alert["title"] for alert in inbox.received()) == [
        "[CRITICAL] a: 2 incidents opened (a-live, a-queue)",
        "[CRITICAL] b/b-live: incident opened",
    ]


def test_a_group_goes_out_when_its_window_closes(
        make_catalog: Callable[[str], Catalog], store: Store,
        receivers: Callable[[], AlertReceiver]) -> None:
    inbox = receivers()
    catalog = to_inbox(make_catalog, inbox, "200ms")
    sender = notifications(catalog, store)
    sender.submit(opened(catalog, open_incident(store, "a-live", "a")))
    sender.submit(opened(catalog, open_incident(store, "a-queue", "a")))
    assert inbox.received() == []
    [alert] = wait_for(inbox.received, timeout=5)  # released by the timer, no flush
    sender.stop()
    assert "2 incidents opened" in alert["title"]


def test_messages_about_a_held_target_wait_behind_its_opening(
        make_catalog: Callable[[str], Catalog], store: Store,
        receivers: Callable[[], AlertReceiver]) -> None:
    inbox = receivers()
    catalog = to_inbox(make_catalog, inbox, "60s")
    incident = open_incident(store, "a-live", "a")
    check, target = catalog.check("a-live"), catalog.target("a")
    sender = notifications(catalog, store)
    sender.submit(opened(catalog, incident))
    sender.submit(messages.remediation_result(incident, check, target, "restart", True, "pid 7"))
    sender.submit(messages.incident_resolved(incident, check, target))
    assert sender.flush(10)
    sender.stop()
    assert [alert["title"] for alert in inbox.received()] == [
        "[CRITICAL] a/a-live: incident opened",
        "[SUCCEEDED] a/a-live: restart succeeded",
        "[RESOLVED] a/a-live: incident resolved",
    ]


def _notifier(**fields: Any) -> NotifierConfig:
    return NotifierConfig.model_validate({"name": "n", "urls": ["json://127.0.0.1:9/"], **fields})


def _message(event: str, level: str = "critical", target: str = "a",
             check: str = "a-live") -> Message:
    severity = "ok" if event == "incident_resolved" else level
    return Message(event, "t", "b", severity, 1, target=target, check=check, level=level)


@pytest.mark.parametrize(("fields", "message", "takes"), [
    ({}, _message("incident_opened", "warning"), True),
    ({"events": ["incident_resolved"]}, _message("incident_opened"), False),
    ({"events": ["incident_resolved"]}, _message("incident_resolved"), True),
    ({"min_severity": "critical"}, _message("incident_opened", "warning"), False),
    ({"min_severity": "critical"}, _message("incident_opened", "critical"), True),
    ({"min_severity": "warning"}, _message("incident_opened", "unknown"), True),
    # A resolution carries the incident's severity for the filter, not "ok".
    ({"min_severity": "critical"}, _message("incident_resolved", "critical"), True),
    ({"min_severity": "critical"}, _message("incident_resolved", "warning"), False),
    ({"targets": ["b"]}, _message("incident_opened"), False),
    ({"targets": ["a", "b"]}, _message("incident_opened"), True),
    ({"checks": ["a-queue"]}, _message("incident_opened"), False),
    ({"checks": ["a-live"]}, _message("remediation_failed"), True),
    ({"events": ["budget_spent"]}, _message("incident_escalated"), True),
    ({"min_severity": "critical"}, Message("test", "t", "b"), True),
])
def test_a_notifier_takes_only_what_its_filters_let_through(
        fields: dict[str, Any], message: Message, takes: bool) -> None:
    notifier = _notifier(**fields)
    assert Router([notifier]).accepts(notifier, message) is takes


def test_escalations_go_only_to_escalation_notifiers_when_any_is_marked() -> None:
    ops, pager = _notifier(), _notifier(name="pager", escalation=True,
                                        events=["incident_opened"])
    escalation = _message("incident_escalated")
    assert [item.name for item in Router([ops, pager]).recipients(escalation)] == ["pager"]
    assert [item.name for item in Router([ops]).recipients(escalation)] == ["n"]
    assert [item.name for item in Router([ops, pager]).recipients(
        _message("incident_opened"))] == ["n", "pager"]


def test_routing_filters_hold_end_to_end(
        make_catalog: Callable[[str], Catalog], store: Store,
        receivers: Callable[[], AlertReceiver]) -> None:
    everything, paging, only_b = receivers(), receivers(), receivers()
    catalog = make_catalog(CHECKS + f"""\
notifications: {{group_wait: 0s}}
notifiers:
  - {{name: all, urls: ["{json_url(everything)}"]}}
  - {{name: pager, urls: ["{json_url(paging)}"], min_severity: critical,
     events: [incident_opened, incident_resolved]}}
  - {{name: team-b, urls: ["{json_url(only_b)}"], targets: [b], checks: [b-live]}}
""")
    sender = notifications(catalog, store)
    warning = open_incident(store, "a-queue", "a", "warning", 80.0)
    critical = open_incident(store, "b-live", "b")
    sender.submit(opened(catalog, warning))
    sender.submit(opened(catalog, critical))
    check, target = catalog.check("b-live"), catalog.target("b")
    sender.submit(messages.remediation_started(critical, check, target, "restart"))
    sender.submit(messages.incident_resolved(critical, check, target))
    assert sender.flush(10)
    sender.stop()
    assert len(everything.received()) == 4
    assert [alert["title"] for alert in paging.received()] == [
        "[CRITICAL] b/b-live: incident opened", "[RESOLVED] b/b-live: incident resolved"]
    assert [alert["title"] for alert in only_b.received()] == [
        "[CRITICAL] b/b-live: incident opened", "[ACTING] b/b-live: restart started",
        "[RESOLVED] b/b-live: incident resolved"]


def test_a_failing_notifier_falls_back_and_both_are_recorded(
        make_catalog: Callable[[str], Catalog], store: Store,
        receivers: Callable[[], AlertReceiver]) -> None:
    spare = receivers()
    catalog = make_catalog(CHECKS + f"""\
notifications: {{group_wait: 0s}}
notifiers:
  - {{name: mail, urls: ["json://127.0.0.1:{free_port()}/down"], fallback: desk}}
  - {{name: desk, urls: ["{json_url(spare)}"], events: []}}
""")
    incident = open_incident(store, "a-live", "a")
    sender = notifications(catalog, store, attempts=2)
    sender.submit(opened(catalog, incident))
    assert sender.flush(10)
    sender.stop()
    [alert] = spare.received()
    assert alert["title"] == "[CRITICAL] a/a-live: incident opened"
    assert "(sent to fallback: notifier 'mail' failed: A Connection error" in alert["message"]
    assert attempts(store) == [
        (incident.id, "mail", "incident_opened", "failed"),
        (incident.id, "mail", "incident_opened", "failed"),
        (incident.id, "desk", "incident_opened", "sent"),
    ]
    # The resolution follows the opening to where it landed: the fallback.
    check, target = catalog.check("a-live"), catalog.target("a")
    resolved = messages.incident_resolved(incident, check, target)
    assert sender.deliver(catalog.notifier("mail"), resolved, direct=frozenset({"mail"}))
    assert [alert["title"] for alert in spare.received()][-1] == (
        "[RESOLVED] a/a-live: incident resolved")


def test_no_fallback_to_a_notifier_that_gets_the_message_anyway(
        make_catalog: Callable[[str], Catalog], store: Store,
        receivers: Callable[[], AlertReceiver]) -> None:
    spare = receivers()
    catalog = make_catalog(CHECKS + f"""\
notifications: {{group_wait: 0s}}
notifiers:
  - {{name: mail, urls: ["json://127.0.0.1:{free_port()}/down"], fallback: desk}}
  - {{name: desk, urls: ["{json_url(spare)}"]}}
""")
    sender = notifications(catalog, store, attempts=1)
    sender.submit(opened(catalog, open_incident(store, "a-live", "a")))
    assert sender.flush(10)
    sender.stop()
    assert len(spare.received()) == 1


@pytest.mark.parametrize(("notifiers", "problem"), [
    ("[{name: x, urls: ['json://h/'], fallback: y}]",
     "notifiers[0].fallback (line 11): unknown notifier 'y' (known: x)"),
    ("[{name: x, urls: ['json://h/'], fallback: x}]",
     "notifiers[0].fallback (line 11): notifier 'x' cannot be its own fallback"),
    ("[{name: x, urls: ['json://h/'], fallback: y}, {name: y, urls: ['json://h/'], fallback: z},"
     " {name: z, urls: ['json://h/']}]",
     "notifiers[0].fallback (line 11): 'y' has a fallback of its own ('z'): a fallback is one "
     "hop, so a fallback notifier may not name another"),
    ("[{name: x, urls: ['json://h/'], targets: [a, c]}]",
     "notifiers[0].targets[1] (line 11): unknown target 'c' (known: a, b)"),
    ("[{name: x, urls: ['json://h/'], checks: [nope]}]",
     "notifiers[0].checks[0] (line 11): unknown check 'nope' (known: a-live, a-queue, "
     "a-models, b-live)"),
])
def test_notifier_references_are_checked_at_load_time(
        make_catalog: Callable[[str], Catalog], notifiers: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        make_catalog(CHECKS + f"notifiers: {notifiers}\n")
    assert problem in raised.value.problems


def test_a_fallback_cycle_is_refused_with_the_other_errors(
        make_catalog: Callable[[str], Catalog]) -> None:
    with pytest.raises(ConfigError) as raised:
        make_catalog(CHECKS.replace("kind: http, target: b", "kind: http, target: b, bad: 1")
                     + "notifiers: [{name: x, urls: ['json://h/'], fallback: y},"
                       " {name: y, urls: ['json://h/'], fallback: x}]\n")
    found = "\n".join(raised.value.problems)
    assert "checks[3].bad" in found
    assert "notifiers[0].fallback (line 11): 'y' has a fallback of its own ('x')" in found
    assert "notifiers[1].fallback (line 11): 'x' has a fallback of its own ('y')" in found


def test_catalog_templates_shape_title_and_body(
        make_catalog: Callable[[str], Catalog], store: Store,
        receivers: Callable[[], AlertReceiver]) -> None:
    inbox, terse = receivers(), receivers()
    catalog = make_catalog(CHECKS + f"""\
notifications:
  group_wait: 0s
  title: "$status $target/$check on $host"
  body: "$what: $value ($threshold) $incident; runbook $runbook; $$$$5 spent\\n$body"
notifiers:
  - {{name: ops, urls: ["{json_url(inbox)}"]}}
  - {{name: sms, urls: ["{json_url(terse)}"], title: "$status $check", body: "$message"}}
""")
    incident = open_incident(store, "a-live", "a", value=0.0)
    sender = notifications(catalog, store)
    sender.submit(opened(catalog, incident, unit="ms"))
    assert sender.flush(10)
    sender.stop()
    [alert] = inbox.received()
    assert alert["title"].startswith("CRITICAL a/a-live on ")
    assert alert["message"].startswith(
        f"incident opened: 0 ms (3 consecutive failed runs) #{incident.id}; runbook "
        "https://runbooks.example/a-live; $5 spent\na/a-live is CRITICAL")
    assert [(alert["title"], alert["message"]) for alert in terse.received()] == [
        ("CRITICAL a-live", "a-live failing")]


@pytest.mark.parametrize("where", ["notifications", "notifiers"])
def test_an_unknown_placeholder_is_a_load_error_naming_the_valid_ones(
        make_catalog: Callable[[str], Catalog], where: str) -> None:
    section = ("notifications: {title: '$target $chekc'}\n" if where == "notifications" else
               "notifiers: [{name: x, urls: ['json://h/'], body: '$target $chekc'}]\n")
    with pytest.raises(ConfigError) as raised:
        make_catalog(CHECKS + section)
    [problem] = raised.value.problems
    assert "unknown placeholder $chekc in template; valid placeholders: $ack, $body, $check" \
        in problem
    assert problem.startswith("notifications.title (line 11)" if where == "notifications"
                              else "notifiers[0].body (line 11)")


def test_group_wait_zero_turns_grouping_off(make_catalog: Callable[[str], Catalog],
                                            store: Store) -> None:
    catalog = make_catalog(CHECKS + "notifications: {group_wait: 0s, repeat_interval: 1h}\n"
                                    "notifiers: [{name: ops, urls: ['json://127.0.0.1:9/']}]\n")
    assert catalog.notifications.repeat_interval.total_seconds() == 3600
    sender = Notifications.from_catalog(catalog, store)
    sender.submit(opened(catalog, open_incident(store, "a-live", "a")))
    with store.session() as session:
        [row] = session.query(OutboxRow).all()
        assert row.due_at == row.created_at


def test_an_escalation_closes_the_window_and_follows_the_opening(
        make_catalog: Callable[[str], Catalog], store: Store,
        receivers: Callable[[], AlertReceiver]) -> None:
    inbox = receivers()
    catalog = to_inbox(make_catalog, inbox, "60s")
    incident = open_incident(store, "a-live", "a")
    check, target = catalog.check("a-live"), catalog.target("a")
    sender = notifications(catalog, store)
    sender.submit(opened(catalog, incident))
    sender.submit(messages.remediation_result(incident, check, target, "restart", False, "exit 1"))
    sender.submit(messages.incident_escalated(incident, check, target, "budget spent"))
    wait_for(lambda: len(inbox.received()) == 3, timeout=5)  # no flush: nothing waits 60 s
    sender.stop()
    assert [alert["title"] for alert in inbox.received()] == [
        "[CRITICAL] a/a-live: incident opened",
        "[FAILED] a/a-live: restart failed",
        "[ESCALATION] a/a-live: automatic remediation stopped",
    ]


def test_stop_sends_held_groups_instead_of_dropping_them(
        make_catalog: Callable[[str], Catalog], store: Store,
        receivers: Callable[[], AlertReceiver]) -> None:
    inbox = receivers()
    catalog = to_inbox(make_catalog, inbox, "1h")
    sender = notifications(catalog, store)
    sender.submit(opened(catalog, open_incident(store, "a-live", "a")))
    sender.stop(timeout=5)
    assert [alert["title"] for alert in inbox.received()] == [
        "[CRITICAL] a/a-live: incident opened"]
    assert [outcome for *_, outcome in attempts(store)] == ["sent"]


def test_a_resolution_inside_the_window_releases_the_group_first(
        make_catalog: Callable[[str], Catalog], store: Store,
        receivers: Callable[[], AlertReceiver]) -> None:
    inbox = receivers()
    catalog = to_inbox(make_catalog, inbox, "60s")
    incident = open_incident(store, "a-live", "a")
    check, target = catalog.check("a-live"), catalog.target("a")
    sender = notifications(catalog, store)
    sender.submit(opened(catalog, incident))
    sender.submit(messages.remediation_started(incident, check, target, "restart"))
    assert inbox.received() == []
    sender.submit(messages.incident_resolved(incident, check, target))
    wait_for(lambda: len(inbox.received()) == 3, timeout=5)  # no flush: nothing waits 60 s
    sender.stop()
    assert [alert["title"].split(":")[0] for alert in inbox.received()] == [
        "[CRITICAL] a/a-live", "[ACTING] a/a-live", "[RESOLVED] a/a-live"]


def test_messages_link_to_the_status_page_when_the_catalog_gives_its_address(
        make_catalog: Callable[[str], Catalog], store: Store,
        receivers: Callable[[], AlertReceiver]) -> None:
    inbox = receivers()
    catalog = make_catalog(CHECKS + f"""\
notifications: {{group_wait: 0s, title: "$title", body: "$body ($link)"}}
notifiers: [{{name: ops, urls: ["{json_url(inbox)}"]}}]
http: {{external_url: "https://gpu-07.example.com/sglguard/"}}
""")
    incident = open_incident(store, "a-live", "a")
    sender = notifications(catalog, store)
    sender.submit(opened(catalog, incident))
    assert sender.flush(10)
    sender.stop()
    [alert] = inbox.received()
    link = f"https://gpu-07.example.com/sglguard/incidents/{incident.id}"
    assert f"page: {link}" in alert["message"] and alert["message"].endswith(f"({link})")
