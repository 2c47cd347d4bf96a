"""Commands about the catalog and what is recorded: init, validate, check, history,
incidents."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sglguard.cli import config_option, fail, load, main, open_store


@main.command()
@click.option("--path", "target_path", type=click.Path(dir_okay=False), default="sglguard.yaml",
              show_default=True, help="where to write the catalog")
@click.option("--force", is_flag=True, help="overwrite an existing file")
def init(target_path: str, force: bool) -> None:
    """Write the example catalog (every family of checks) for a new installation."""
    from importlib import resources

    path = Path(target_path)
    if path.exists() and not force:
        fail(f"{path} exists; pass --force to overwrite it")
    text = resources.files("sglguard.config").joinpath("catalog.example.yaml").read_text()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")
    click.echo(f"wrote {path}: edit the target and its start command, then "
               f"`sglguard validate --config {path}` and `sglguard check --config {path}`")


@main.command()
@config_option
def validate(config_path: str | None) -> None:
    """Load and validate the catalog; list every problem with its path and line."""
    from sglguard.config.types import format_duration

    path, catalog = load(config_path)
    lines = [f"valid: {path}", f"  store: {catalog.store.url.split('://', 1)[0]} "
                               f"(mode {catalog.mode})"]
    for target in catalog.targets:
        control = target.control.kind if target.control else "none"
        lines.append(f"  target {target.name}: {target.url} (control: {control})")
    for item in catalog.checks:
        remedies = f", remediate: {', '.join(item.remediate)}" if item.remediate else ""
        opens = (f"the breach holds {format_duration(item.hold)}" if item.hold is not None
                 else f"{item.failure_threshold} failed runs")
        after = f", after {', '.join(item.depends_on)}" if item.depends_on else ""
        lines.append(f"  check {item.name}: {item.kind} on {item.target} every "
                     f"{format_duration(item.interval)}, incident when {opens}"
                     f"{after}{remedies}")
    for remedy in catalog.remediations:
        lines.append(f"  remediation {remedy.name}: {remedy.kind}, budget {remedy.budget.max} "
                     f"within {format_duration(remedy.budget.within)}")
    for notifier in catalog.notifiers:
        schemes = ", ".join(url.get_secret_value().split("://", 1)[0] + "://"
                            for url in notifier.urls)
        lines.append(f"  notifier {notifier.name}: {schemes} ({len(notifier.events)} events)")
    click.echo("\n".join(lines))


@main.command()
@config_option
@click.option("--only", "only", multiple=True, metavar="NAME", help="run only this check")
@click.option("--json", "as_json", is_flag=True, help="print a JSON array")
def check(config_path: str | None, only: tuple[str, ...], as_json: bool) -> None:
    """Run each check once now, store the results; exit status is the worst status."""
    from rich.console import Console

    from sglguard import output
    from sglguard.service import run_once
    from sglguard.store import queries

    _, catalog = load(config_path)
    names = [item.name for item in catalog.checks]
    unknown = [name for name in only if name not in names]
    if unknown:
        fail(f"unknown check {', '.join(unknown)} (known: {', '.join(names) or 'none'})")
    selected = [name for name in names if not only or name in only]
    store = open_store(catalog)
    results = run_once(catalog, store, selected)
    for retry in store.retrying():
        with retry, store.session() as session:
            for result in results:
                queries.add_result(session, result)
    items = [output.result_dict(result) for result in results]
    if as_json:
        click.echo(output.json_text(items))
    else:
        output.results_table(Console(), items, "checks")
    sys.exit(int(output.worst(results)))


@main.command()
@config_option
@click.option("--check", "check_name", default=None, help="only this check")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100000))
@click.option("--json", "as_json", is_flag=True, help="print a JSON array")
def history(config_path: str | None, check_name: str | None, limit: int, as_json: bool) -> None:
    """Recent check results, newest first."""
    from rich.console import Console

    from sglguard import output
    from sglguard.store import queries

    _, catalog = load(config_path)
    with open_store(catalog).session() as session:
        items = [output.row_dict(row) for row in queries.recent_results(session, check_name, limit)]
    if as_json:
        click.echo(output.json_text(items))
    else:
        output.results_table(Console(), items, "history")


@main.command()
@config_option
@click.option("--open", "open_only", is_flag=True, help="only incidents still open")
@click.option("--show", "show_id", type=int, default=None, help="one incident, with its timeline")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000))
@click.option("--json", "as_json", is_flag=True, help="print a JSON array")
def incidents(config_path: str | None, open_only: bool, show_id: int | None, limit: int,
              as_json: bool) -> None:
    """Incidents with their remediations and notifications, newest first."""
    from rich.console import Console

    from sglguard import output
    from sglguard.store import queries
    from sglguard.store.models import IncidentRow

    _, catalog = load(config_path)
    with open_store(catalog).session() as session:
        chosen = ([session.get(IncidentRow, show_id)] if show_id is not None
                  else queries.incidents(session, open_only=open_only, limit=limit))
        if show_id is not None and chosen[0] is None:
            fail(f"no incident #{show_id}")
        items = [
            output.incident_dict(incident, queries.runs_of(session, incident.id),
                                 queries.attempts_of(session, incident.id),
                                 queries.events_of(session, incident.id))
            for incident in chosen if incident is not None
        ]
    if show_id is not None and not as_json:
        output.incident_timeline(Console(highlight=False), items[0])
    elif as_json:
        click.echo(output.json_text(items))
    else:
        output.incidents_table(Console(), items)
