"""Commands about the catalog and what is recorded: init, schema, validate, check, history,
incidents."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sglguard.cli.app import (
    PLUGIN_ERROR,
    PluginCommand,
    config_option,
    fail,
    load,
    main,
    open_store,
)

if TYPE_CHECKING:
    from sglguard.config.models import Catalog


@main.command()
@click.option("--path", "target_path", type=click.Path(dir_okay=False), default=None,
              help="where to write the catalog  [default: sglguard.yaml]")
@click.option("--force", is_flag=True, help="overwrite existing files")
@click.option("--system", is_flag=True,
              help="install as a system service: /etc/sglguard/sglguard.yaml with its state in "
                   "/var/lib/sglguard, /etc/sglguard/env (0600), the systemd unit and the "
                   "polkit rule for the systemd control")
@click.option("--root", type=click.Path(file_okay=False), default="/", show_default=True,
              help="with --system: write under this folder instead of / (to inspect or package)")
@click.option("--server-unit", "server_units", multiple=True, default=["sglang.service"],
              show_default=True, help="with --system: the SGLang server's unit, which the polkit "
                                      "rule lets sglguard restart (repeatable)")
@click.option("--gateway", is_flag=True,
              help="the example for an SGLang gateway (smg) and its workers instead")
def init(target_path: str | None, force: bool, system: bool, root: str,
         server_units: tuple[str, ...], gateway: bool) -> None:
    """Write the example catalog (every family of checks) for a new installation, and its
    JSON Schema beside it for editors."""
    from importlib import resources

    from sglguard.config.schema import MODELINE, SCHEMA_FILE, catalog_schema

    if system:
        if target_path is not None:
            fail("--path and --system exclude each other: --system writes "
                 "/etc/sglguard/sglguard.yaml (use --root to write elsewhere)")
        init_system(Path(root), force, list(server_units))
        return
    path = Path(target_path or "sglguard.yaml")
    if path.exists() and not force:
        fail(f"{path} exists; pass --force to overwrite it")
    example = "gateway.example.yaml" if gateway else "catalog.example.yaml"
    text = resources.files("sglguard.config").joinpath(example).read_text()
    schema_path = path.parent / SCHEMA_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{MODELINE}\n{text}")
        schema_path.write_text(json.dumps(catalog_schema(), indent=2) + "\n")
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")
    click.echo(f"wrote {path} (and {schema_path} for editors): edit the target and its start "
               f"command, then `sglguard validate --config {path}` and "
               f"`sglguard check --config {path}`")


@main.command()
@click.option("--output", "output_path", type=click.Path(dir_okay=False), default=None,
              help="write it to this file (default: print it)")
def schema(output_path: str | None) -> None:
    """Print the catalog's JSON Schema (every check, control and remediation kind)."""
    from sglguard.config.schema import catalog_schema

    text = json.dumps(catalog_schema(), indent=2)
    if output_path is None:
        click.echo(text)
        return
    try:
        Path(output_path).write_text(text + "\n")
    except OSError as exc:
        fail(f"cannot write {output_path}: {exc.strerror or exc}")


def init_system(root: Path, force: bool, units: list[str]) -> None:
    from sglguard.deploy import install_system, next_steps, this_program

    program = this_program()
    try:
        written = install_system(root, program=program, units=units, force=force)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        fail(f"cannot write{where}: {exc.strerror or exc} (run as root, or pass --root DIR)")
    for item in written:
        state = "kept (exists; --force replaces it)" if item.kept else "wrote"
        click.echo(f"{state} {item.path} (mode {item.mode:04o})")
    click.echo("next:")
    for number, step in enumerate(next_steps(root, program), start=1):
        click.echo(f"  {number}. {step}")


@main.command("deploy-unit")
@click.option("--polkit", is_flag=True,
              help="print the polkit rule for the systemd control instead of the unit")
@click.option("--server-unit", "server_units", multiple=True, default=["sglang.service"],
              show_default=True, help="with --polkit: the SGLang server's unit (repeatable)")
@click.option("--program", default=None,
              help="the sglguard program the unit runs (default: this one)")
def deploy_unit(polkit: bool, server_units: tuple[str, ...], program: str | None) -> None:
    """Print the packaged systemd unit (for installs without the wheel's files at hand, e.g.
    pipx), with ExecStart pointing at this sglguard: sglguard deploy-unit > sglguard.service"""
    from sglguard.deploy import polkit_rule, this_program, unit_text

    if polkit:
        click.echo(polkit_rule(list(server_units)), nl=False)
        return
    click.echo(unit_text(program or this_program()), nl=False)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="print the summary as a JSON object")
def validate(config_path: str | None, as_json: bool) -> None:
    """Validate the catalog (every problem with its path and line; exit 2), then say what
    cannot work on this host (warnings: exit 0)."""
    from sglguard.config.host_warnings import host_warnings
    from sglguard.config.types import format_duration

    path, catalog = load(config_path)
    warnings = host_warnings(catalog)
    if as_json:
        from sglguard.output import json_text

        click.echo(json_text(validate_dict(path, catalog, warnings)))
        return
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
    lines += [f"warning: {warning}" for warning in warnings]
    click.echo("\n".join(lines))


def validate_dict(path: Path, catalog: Catalog, warnings: list[str]) -> dict[str, Any]:
    from sglguard.config.types import format_duration

    return {
        "valid": True, "path": str(path), "mode": catalog.mode,
        "store": catalog.store.url.split("://", 1)[0],
        "targets": [{"name": target.name, "url": target.url,
                     "control": target.control.kind if target.control else None}
                    for target in catalog.targets],
        "checks": [{"name": item.name, "kind": item.kind, "target": item.target,
                    "interval": format_duration(item.interval),
                    "depends_on": list(item.depends_on), "remediate": list(item.remediate)}
                   for item in catalog.checks],
        "remediations": [{"name": item.name, "kind": item.kind} for item in catalog.remediations],
        "notifiers": [{"name": item.name,
                       "schemes": [url.get_secret_value().split("://", 1)[0]
                                   for url in item.urls]} for item in catalog.notifiers],
        "warnings": warnings,
    }


@main.command(cls=PluginCommand)
@config_option
@click.option("--only", "only", multiple=True, metavar="NAME", help="run only this check")
@click.option("--json", "as_json", is_flag=True, help="print a JSON array")
def check(config_path: str | None, only: tuple[str, ...], as_json: bool) -> None:
    """Run each check once now, store the results; exit status as a Nagios plugin: 2 if any
    check is critical, else 1 for a warning, else 3 for an unknown, else 0; its own errors
    (catalog, arguments, store) exit 3."""

    from sglguard import output
    from sglguard.service import run_once
    from sglguard.store import queries

    _, catalog = load(config_path, PLUGIN_ERROR)
    names = [item.name for item in catalog.checks]
    unknown = [name for name in only if name not in names]
    if unknown:
        fail(f"unknown check {', '.join(unknown)} (known: {', '.join(names) or 'none'})",
             PLUGIN_ERROR)
    selected = [name for name in names if not only or name in only]
    store = open_store(catalog, status=PLUGIN_ERROR)
    results = run_once(catalog, store, selected)
    for retry in store.retrying():
        with retry, store.session() as session:
            for result in results:
                queries.add_result(session, result)
    items = [output.result_dict(result) for result in results]
    if as_json:
        click.echo(output.json_text(items))
    else:
        output.results_table(output.console(), items, "checks")
    sys.exit(int(output.worst(results)))


@main.command()
@config_option
@click.option("--check", "check_name", default=None, help="only this check")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100000))
@click.option("--json", "as_json", is_flag=True, help="print a JSON array")
def history(config_path: str | None, check_name: str | None, limit: int, as_json: bool) -> None:
    """Recent check results, newest first."""
    from sglguard import output
    from sglguard.store import queries

    _, catalog = load(config_path)
    with open_store(catalog).session() as session:
        items = [output.row_dict(row) for row in queries.recent_results(session, check_name, limit)]
    if as_json:
        click.echo(output.json_text(items))
    else:
        output.results_table(output.console(), items, "history")


@main.command()
@config_option
@click.option("--open", "open_only", is_flag=True, help="only incidents still open")
@click.option("--show", "show_id", type=int, default=None, help="one incident, with its timeline")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000))
@click.option("--json", "as_json", is_flag=True, help="print a JSON array")
def incidents(config_path: str | None, open_only: bool, show_id: int | None, limit: int,
              as_json: bool) -> None:
    """Incidents with their remediations and notifications, newest first."""
    from sglguard import output
    from sglguard.cli.diag import bundle_items, print_bundles
    from sglguard.cli.drained import drained_lines, drained_now, drained_of
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
        if show_id is not None:
            items[0]["drained"] = drained_of(session, items[0]["target"], show_id)
            items[0]["diagnostics"] = bundle_items(session, show_id)
        out_now = [] if show_id is not None or as_json else drained_now(session)
    if show_id is not None and not as_json:
        output.incident_timeline(output.console(highlight=False), items[0])
        for line in drained_lines(items[0]["target"], items[0]["drained"]):
            click.echo(line)
        print_bundles(items[0]["diagnostics"], show_id)
    elif as_json:
        click.echo(output.json_text(items))
    else:
        output.incidents_table(output.console(), items)
        for target, item in out_now:
            click.echo(drained_lines(target, [item])[0])
