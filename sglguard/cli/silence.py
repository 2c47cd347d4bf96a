"""`sglguard silence add|list|expire`: quiet a target or check for a while, by hand."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from sglguard.cli.app import fail, load, main, open_store
from sglguard.clock import utcnow

if TYPE_CHECKING:
    from sglguard.config.models import Catalog
    from sglguard.store import Store


def _store_and_catalog(config_path: str | None) -> tuple[Store, Catalog]:
    _, catalog = load(config_path)
    return open_store(catalog), catalog


@main.group()
def silence() -> None:
    """Silences: results and incidents are still recorded, nothing is sent or done."""


@silence.command("add")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
@click.option("--target", required=True, help="the target to silence")
@click.option("--check", "check_name", default=None, help="only this check (default: all)")
@click.option("--for", "length", required=True, help="how long, e.g. 30m, 2h")
@click.option("--reason", required=True, help="why, for whoever looks later")
@click.option("--by", "by", default="", help="who")
def silence_add(config_path: str | None, target: str, check_name: str | None, length: str,
                reason: str, by: str) -> None:
    """Silence a target (or one of its checks) from now on, for a while."""
    from sglguard.config.types import format_duration, parse_duration
    from sglguard.silences import add_silence


    store, catalog = _store_and_catalog(config_path)
    targets = [item.name for item in catalog.targets]
    if target not in targets:
        fail(f"unknown target '{target}' (known: {', '.join(targets)})")
    checks = [item.name for item in catalog.checks if item.target == target]
    if check_name is not None and check_name not in checks:
        fail(f"unknown check '{check_name}' on {target} (known: {', '.join(checks) or 'none'})")
    try:
        duration = parse_duration(length)
    except ValueError as exc:
        fail(f"--for: {exc}")
    now = utcnow()
    silence_id = add_silence(store, target=target, check=check_name, starts=now,
                             length=duration, reason=reason, by=by)
    click.echo(f"silence #{silence_id}: {target}{'/' + check_name if check_name else ''} "
               f"until {(now + duration):%Y-%m-%d %H:%M:%S} UTC ({format_duration(duration)})")


@silence.command("list")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
@click.option("--all", "include_ended", is_flag=True, help="also silences that have ended")
@click.option("--json", "as_json", is_flag=True)
def silence_list(config_path: str | None, include_ended: bool, as_json: bool) -> None:
    """Silences in force (or all of them)."""
    from sglguard.silences import list_silences

    store, _ = _store_and_catalog(config_path)
    now = utcnow()
    items: list[dict[str, Any]] = [{"id": row.id, "target": row.target, "check": row.check_name,
              "starts_at": row.starts_at.isoformat(), "ends_at": row.ends_at.isoformat(),
              "active": row.starts_at <= now < row.ends_at, "reason": row.reason,
              "by": row.created_by}
             for row in list_silences(store, now, include_ended=include_ended)]
    if as_json:
        from sglguard.output import json_text

        click.echo(json_text(items))
        return
    for item in items:
        scope = item["target"] + (f"/{item['check']}" if item["check"] else "")
        state = "active" if item["active"] else "ended"
        click.echo(f"#{item['id']} {scope} until {item['ends_at'][:19]} ({state}) "
                   f"by {item['by'] or '-'}: {item['reason']}")
    if not items:
        click.echo("no silences")


@silence.command("expire")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
@click.argument("silence_id", type=int)
def silence_expire(config_path: str | None, silence_id: int) -> None:
    """End a silence now."""
    from sglguard.silences import expire_silence

    store, _ = _store_and_catalog(config_path)
    if not expire_silence(store, silence_id, utcnow()):
        fail(f"no silence #{silence_id}")
    click.echo(f"silence #{silence_id} ended")
