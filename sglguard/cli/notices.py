"""Commands about notifications: notify test, ack."""

from __future__ import annotations

import sys

import click

from sglguard.cli.app import config_option, fail, load, main, open_store
from sglguard.redact import clean


@main.group()
def notify() -> None:
    """Notifiers: send a test message."""


@notify.command("test")
@config_option
@click.argument("name")
def notify_test(config_path: str | None, name: str) -> None:
    """Send a test message to notifier NAME now; exit 0 if it was delivered, 1 if not."""
    from sglguard.notify import Notifications

    _, catalog = load(config_path)
    known = [item.name for item in catalog.notifiers]
    if name not in known:
        fail(f"unknown notifier '{name}' (known: {', '.join(known) or 'none'})")
    sender = Notifications.from_catalog(catalog, open_store(catalog), attempts=1)
    sent, error = sender.send_test(name)
    if sent:
        click.echo(f"sent: test message delivered to notifier {name}")
        return
    click.echo(f"failed: notifier {name}: {clean(error or '', one_line=True)}")
    sys.exit(1)


@main.command()
@config_option
@click.argument("incident_ids", metavar="ID...", nargs=-1, required=True, type=int)
@click.option("--by", "by", required=True, help="who is on it")
@click.option("--comment", default="", help="what they are doing about it")
@click.option("--quiet", is_flag=True, help="do not tell the notifiers")
def ack(config_path: str | None, incident_ids: tuple[int, ...], by: str, comment: str,
        quiet: bool) -> None:
    """Acknowledge incidents: someone is on it, so "still open" reminders stop."""
    from sglguard.clock import utcnow
    from sglguard.notify import Notifications, reminders
    from sglguard.store.models import IncidentRow

    _, catalog = load(config_path)
    store = open_store(catalog)
    with store.session() as session:
        missing = [str(number) for number in incident_ids
                   if session.get(IncidentRow, number) is None]
    if missing:
        fail(f"unknown incident {', '.join(missing)} (see `sglguard incidents --open`)")
    sender = Notifications.from_catalog(catalog, store, attempts=1)
    for number in incident_ids:
        try:
            incident = reminders.acknowledge(store, number, by, comment, utcnow())
        except reminders.NotOpen as exc:
            fail(str(exc))
        told = {} if quiet else sender.send_now(
            reminders.acknowledgement(catalog, incident, by, comment))
        sent = ", ".join(name for name, ok in told.items() if ok)
        click.echo(f"incident #{number} acknowledged by {by}" + (f"; told {sent}" if sent else ""))
