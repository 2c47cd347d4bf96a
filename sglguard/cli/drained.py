"""`sglguard undrain TARGET`: put the workers drain took out of a gateway back in, by hand."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from sglguard.cli.app import config_option, fail, load, main, open_store

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from sglguard.store.models import DrainedWorkerRow


@main.command()
@config_option
@click.argument("target")
def undrain(config_path: str | None, target: str) -> None:
    """Re-add the target's workers that a drain took out of their gateway, as registered.
    Refused (exit 1) while a remediation of the target holds its lease."""
    from sglguard.remediations.drained import out, return_workers

    _, catalog = load(config_path)
    known = [item.name for item in catalog.targets]
    store = open_store(catalog)
    with store.session() as session:
        rows = out(session, target)
    if not rows and target not in known:
        fail(f"unknown target '{target}' (known: {', '.join(known)})")
    if not rows:
        click.echo(f"{target}: no worker of it is out of a gateway")
        return
    from sglguard.agents import Agents

    agents = Agents(store, role="cli")  # a lease left by a dead process is taken over
    agents.register([target])
    try:
        said = return_workers(store, catalog, target, by="by hand: sglguard undrain",
                              agents=agents)
    finally:
        agents.leave()
    for line in said:
        click.echo(line)
    with store.session() as session:
        left = len(out(session, target))
    if left:
        click.echo(f"sglguard: {left} worker(s) of {target} still out of their gateway",
                   err=True)
        raise SystemExit(1)


def drained_of(session: Session, target: str, incident_id: int) -> list[dict[str, Any]]:
    """The target's workers out of a gateway now, and those this incident's drains took out."""
    from sqlalchemy import or_, select

    from sglguard.store.models import DrainedWorkerRow

    rows = session.scalars(select(DrainedWorkerRow).where(
        DrainedWorkerRow.target == target,
        or_(DrainedWorkerRow.returned_at.is_(None),
            DrainedWorkerRow.incident_id == incident_id)).order_by(DrainedWorkerRow.id)).all()
    return [_item(row) for row in rows]


def _item(row: DrainedWorkerRow) -> dict[str, Any]:
    from sglguard.remediations.gateway import registration

    return {"worker": row.worker_url, "gateway": row.gateway, "state": row.state,
            "registration": registration(json.loads(row.registration)),
            "in_flight": row.in_flight,
            "drained_at": row.drained_at.isoformat(),
            "returned_at": row.returned_at.isoformat() if row.returned_at else None,
            "returned_by": row.returned_by, "last_error": row.last_error}


def drained_now(session: Session) -> list[tuple[str, dict[str, Any]]]:
    """Every worker out of its gateway now, with its target."""
    from sqlalchemy import select

    from sglguard.store.models import DrainedWorkerRow

    rows = session.scalars(select(DrainedWorkerRow).where(
        DrainedWorkerRow.returned_at.is_(None)).order_by(DrainedWorkerRow.id)).all()
    return [(row.target, _item(row)) for row in rows]


def drained_lines(target: str, items: list[dict[str, Any]]) -> list[str]:
    from sglguard.remediations.gateway import describe

    lines = []
    for item in items:
        when = item["drained_at"][:19].replace("T", " ")
        if item["returned_at"] is None:
            line = (f"out of gateway: {item['worker']} ({describe(item['registration'])}) "
                    f"out of {item['gateway']} since {when} UTC; put back with "
                    f"`sglguard undrain {target}`")
            if item["last_error"]:
                line += f" (last attempt: {item['last_error']})"
        else:
            back = item["returned_at"][:19].replace("T", " ")
            line = (f"drained: {item['worker']} out of {item['gateway']} {when} UTC, "
                    f"back {back} UTC ({item['returned_by']})")
        lines.append(line)
    return lines
