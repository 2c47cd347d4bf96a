"""Commands that show what is recorded: serve (the status page), status, runs; and the hook
that gives `sglguard run` its listener when the catalog has an `http` section."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

import click

from sglguard.cli.app import config_option, fail, load, main, open_store

if TYPE_CHECKING:
    from sglguard.config.models import Catalog
    from sglguard.store import Store
    from sglguard.telemetry import Runtime
    from sglguard.web.server import WebServer

logger = logging.getLogger(__name__)


def start_web(catalog: Catalog, store: Store, *, listen: str | None = None,
              strict: bool = True, runtime: Runtime | None = None) -> WebServer | None:
    """The listener the catalog asks for (`http:`), started; None when it asks for none.
    `strict`: a listener that cannot start ends the command (exit status 2), else it is logged
    and the service goes on without it (a reload). `runtime`: the service it runs beside."""
    if catalog.http is None and listen is None:
        return None
    from sglguard.web.server import serve

    try:
        return serve(catalog, store, listen=listen, runtime=runtime)
    except (OSError, ValueError) as exc:
        address = listen or (catalog.http.listen if catalog.http else "")
        why = f"cannot listen on {address}: {getattr(exc, 'strerror', None) or exc}"
        if strict:
            fail(why)
        logger.error("%s; running without the status page", why)
        return None


def restart_web(web: WebServer | None, catalog: Catalog, store: Store, *,
                runtime: Runtime | None = None) -> WebServer | None:
    """After a reload: the listener of the new catalog (stopped if it has none)."""
    if web is not None:
        web.stop()
    return start_web(catalog, store, strict=False, runtime=runtime)


@main.command()
@config_option
@click.option("--listen", default=None, metavar="HOST:PORT",
              help="address to serve on (default: the catalog's http.listen, else "
                   "127.0.0.1:9466); beyond loopback needs http.token")
def serve(config_path: str | None, listen: str | None) -> None:
    """Serve the status page, the read-only API and /metrics from the store, until SIGTERM."""
    _, catalog = load(config_path)
    if listen is not None:
        from sglguard.config.models import split_listen

        try:
            split_listen(listen)
        except ValueError as exc:
            fail(f"--listen: {exc}")
    store = open_store(catalog)
    web = start_web(catalog, store, listen=listen or (
        catalog.http.listen if catalog.http else "127.0.0.1:9466"))
    assert web is not None
    click.echo(f"serving http://{web.address}/ (API under /api/v1/, /metrics, /healthz)")
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    done.wait()
    web.stop()
    store.close()


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON (/api/v1/checks)")
def status(config_path: str | None, as_json: bool) -> None:
    """One line per check, worst first, then every worker out of its gateway; the exit status
    is the worst status, as `check`."""
    from rich.console import Console

    from sglguard import output
    from sglguard.cli.drained import drained_lines, drained_now
    from sglguard.web.view import View

    _, catalog = load(config_path)
    store = open_store(catalog)
    checks = View(catalog, store).checks(runs=1)
    for item in checks:
        item.pop("runs", None)
    with store.session() as session:
        out_now = drained_now(session)
    if as_json:
        click.echo(output.json_text({"checks": checks, "drained": [
            {"target": target, **item} for target, item in out_now]}))
    else:
        output.status_table(Console(), checks)
        for target, item in out_now:
            click.echo(drained_lines(target, [item])[0])
    sys.exit(output.worst_label(item["status"] for item in checks))


@main.command()
@config_option
@click.option("--target", "target_name", default=None, help="only this target")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100000))
@click.option("--json", "as_json", is_flag=True, help="print a JSON array")
def runs(config_path: str | None, target_name: str | None, limit: int, as_json: bool) -> None:
    """Remediation runs, automatic and by hand, newest first, with their outcome."""
    from rich.console import Console
    from sqlalchemy import select

    from sglguard import output
    from sglguard.store.models import RemediationRunRow
    from sglguard.web.view import View, run_item

    _, catalog = load(config_path)
    view = View(catalog, open_store(catalog))
    query = select(RemediationRunRow).order_by(RemediationRunRow.id.desc()).limit(limit)
    if target_name is not None:
        query = query.where(RemediationRunRow.target == target_name)
    with view.store.session() as session:
        items: list[dict[str, Any]] = view.scrub([run_item(run) for run in
                                                   session.scalars(query)])
    if as_json:
        click.echo(output.json_text(items))
    else:
        output.runs_table(Console(), items)
