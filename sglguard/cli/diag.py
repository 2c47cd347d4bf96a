"""`sglguard diag`: an incident's diagnostics bundles, listed, printed or exported."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

import click

from sglguard.cli.app import config_option, fail, load, main, open_store


def bundle_items(session: Any, incident_id: int) -> list[dict[str, Any]]:
    """The incident's bundles as the CLI shows them (no content)."""
    from sglguard.store.evidence import bundles_of

    return [{"id": row.id, "stage": row.stage, "captured_at": row.captured_at.isoformat(),
             "took_ms": round(row.took_ms, 1), "size": row.size, "summary": row.summary}
            for row in bundles_of(session, incident_id)]


def print_bundles(items: list[dict[str, Any]], incident_id: int) -> None:
    if not items:
        click.echo("\nno diagnostics captured for this incident")
        return
    for item in items:
        click.echo(f"\ndiagnostics #{item['id']} ({item['stage']}, "
                   f"{item['captured_at'][:19]} UTC, {item['size']} bytes)")
        click.echo(item["summary"])
    click.echo(f"\nexport: sglguard diag {incident_id} --out FILE  (FILE.json or FILE.json.gz)")


@main.command()
@config_option
@click.argument("incident_id", type=int)
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="write the bundle here (.gz: compressed as stored); default: print the JSON")
@click.option("--bundle", "bundle_id", type=int, default=None,
              help="which bundle of the incident (default: the newest)")
@click.option("--list", "listing", is_flag=True, help="list the incident's bundles")
@click.option("--drills", is_flag=True,
              help="an incident of `sglguard drill` (read from the drills database)")
def diag(config_path: str | None, incident_id: int, out: str | None, bundle_id: int | None,
         listing: bool, drills: bool) -> None:
    """An incident's diagnostics: captured when it opened and before destructive remediations."""
    from sglguard.store.evidence import bundles_of
    from sglguard.store.models import IncidentRow

    _, catalog = load(config_path)
    if drills:
        from sglguard.cli.drill import drill_store_url, open_drill_store

        store = open_drill_store(drill_store_url(catalog, None))
    else:
        store = open_store(catalog)
    with store.session() as session:
        if session.get(IncidentRow, incident_id) is None:
            fail(f"no incident #{incident_id}")
        rows = bundles_of(session, incident_id)
        if listing:
            print_bundles(bundle_items(session, incident_id), incident_id)
            return
        if not rows:
            fail(f"incident #{incident_id} has no diagnostics bundle", 1)
        chosen = rows[-1] if bundle_id is None else next(
            (row for row in rows if row.id == bundle_id), None)
        if chosen is None:
            fail(f"incident #{incident_id} has no bundle #{bundle_id} (it has "
                 f"{', '.join(f'#{row.id}' for row in rows)})")
        data = chosen.data
    if out is None:
        sys.stdout.write(gzip.decompress(data).decode() + "\n")
        return
    path = Path(out)
    try:
        path.write_bytes(data if path.suffix == ".gz" else gzip.decompress(data))
    except OSError as exc:
        fail(f"--out {out}: {exc.strerror or exc}")
    document = json.loads(gzip.decompress(data))
    click.echo(f"wrote {path} ({document.get('stage')}, {len(data)} bytes compressed)")
