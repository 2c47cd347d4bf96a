"""Reminders of incidents still open (`repeat_interval`), and acknowledgement, which ends them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime

from sglguard.config.models import Catalog, NotificationsConfig, NotifierConfig
from sglguard.notify import messages
from sglguard.notify.notice import Message
from sglguard.store import Store, queries
from sglguard.store import outbox as owed
from sglguard.store.models import IncidentRow
from sglguard.store.queries import REMINDER_EVENTS

logger = logging.getLogger(__name__)
Skip = Callable[[IncidentRow], bool]


class UnknownIncident(LookupError):
    """No incident has this id."""


class NotOpen(ValueError):
    """The incident is resolved: there is nothing to acknowledge."""


def acknowledge(store: Store, incident_id: int, by: str, comment: str,
                now: datetime) -> IncidentRow:
    """Someone is on it: record who and why in the timeline; reminders of it stop."""
    for retry in store.retrying():
        with retry, store.session() as session:
            incident = session.get(IncidentRow, incident_id, with_for_update=True)
            if incident is None:
                raise UnknownIncident(f"no incident #{incident_id}")
            if incident.status != "open":
                raise NotOpen(f"incident #{incident_id} is {incident.status}: "
                              "nothing to acknowledge")
            incident.acknowledged_at, incident.acknowledged_by = now, by
            said = f": {comment}" if comment else ""
            queries.add_event(session, incident_id, now, "acknowledged", f"by {by}{said}")
            logger.info("incident #%s acknowledged by %s", incident_id, by)
            return incident
    raise AssertionError("unreachable")  # pragma: no cover


def due(store: Store, notifiers: Iterable[NotifierConfig], settings: NotificationsConfig,
        now: datetime) -> dict[int, tuple[IncidentRow, list[NotifierConfig]]]:
    """Per incident, the notifiers whose `repeat_interval` has passed since they were last
    told about it (or since it opened, if they never were); none while its opening, or a
    reminder to that notifier, is still on its way."""
    plan: dict[int, tuple[IncidentRow, list[NotifierConfig]]] = {}
    with store.session() as session:
        # What is on its way is read before what was tried. A delivery records its attempt
        # before its outbox row is done, so a message that finishes between the two reads is
        # seen by one of them (each read sees the newest commit, on SQLite as on PostgreSQL);
        # read the other way round, it would be in neither and be sent again.
        waiting = owed.on_the_way(session, REMINDER_EVENTS)
        opening = {incident for incident, _, event in waiting if event == "incident_opened"}
        for notifier in notifiers:
            interval = notifier.repeat_interval or settings.repeat_interval
            for incident in queries.due_repeats(session, notifier.name, now - interval):
                if incident.id in opening or any(
                        (incident.id, notifier.name, event) in waiting
                        for event in REMINDER_EVENTS):
                    continue
                plan.setdefault(incident.id, (incident, []))[1].append(notifier)
    return plan


def reminder(store: Store, catalog: Catalog, incident: IncidentRow, now: datetime) -> Message:
    """The "still open" message; it still reads well if the catalog lost the check."""
    check = next((item for item in catalog.checks if item.name == incident.check_name), None)
    target = next((item for item in catalog.targets if item.name == incident.target), None)
    with store.session() as session:
        unit = queries.latest_unit(session, incident.check_name)
    return messages.incident_repeated(incident, check, target, now, unit=unit)


def acknowledgement(catalog: Catalog, incident: IncidentRow, by: str, comment: str) -> Message:
    check = next((item for item in catalog.checks if item.name == incident.check_name), None)
    target = next((item for item in catalog.targets if item.name == incident.target), None)
    return messages.acknowledged(incident, check, target, by, comment)
