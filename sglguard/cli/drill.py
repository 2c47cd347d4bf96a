"""`sglguard drill`: prove the catalog against injected faults."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sglguard.cli.app import config_option, fail, load, main

if TYPE_CHECKING:
    from sglguard.config.models import Catalog, TargetConfig
    from sglguard.drill.faults import Fault
    from sglguard.store import Store


def drill_store_url(catalog: Catalog, given: str | None) -> str:
    """Drills keep their incidents apart: a database of their own, beside the catalog's."""
    if given:
        return given
    url = catalog.store.url
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = Path(url.removeprefix("sqlite:///"))
        return f"sqlite:///{path.with_name(path.stem + '-drills' + (path.suffix or '.db'))}"
    fail("drills keep their incidents in a database of their own: give --store URL (e.g. "
         "sqlite:///sglguard-drills.db, or a PostgreSQL database other than the service's)")


def open_drill_store(url: str) -> Store:
    from sglguard.store import Store, StoreError

    try:
        return Store.open(url)
    except StoreError as exc:
        fail(f"--store: {exc}")


@main.command()
@config_option
@click.option("--target", "target_name", default=None,
              help="the target to drill (default: the catalog's only target)")
@click.option("--fault", "chosen", multiple=True,
              help="a fault to inject (repeatable; default: every fault the target allows)")
@click.option("--yes", is_flag=True, help="really drill a real SGLang server (safe, reversible "
                                          "actions only)")
@click.option("--dry-run", is_flag=True, help="list what each drill would do, do nothing")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--store", "store_url", default=None,
              help="database of drill incidents and reports (default: beside the catalog's, "
                   "with -drills in its name)")
@click.option("--wait", "wait", default=None,
              help="how long to wait for detection (default: twice the largest bound)")
@click.option("--stop-for", default="30s", show_default=True,
              help="sigstop: the longest the server stays stopped")
@click.option("--burst", type=click.IntRange(1, 1000), default=64, show_default=True,
              help="burst: how many concurrent requests")
@click.option("--time-scale", type=click.FloatRange(0, 1, min_open=True), default=1.0,
              show_default=True,
              help="multiply the catalog's schedule (check intervals, timeouts, windows, for:, "
                   "remediation backoff and budgets, group_wait) by this factor, e.g. 0.05 to "
                   "rehearse a catalog in minutes; thresholds and the server's own timings stay; "
                   "the report states it")
@click.option("--request-dumps", is_flag=True,
              help="a real server: let the catalog's diagnostics.request_dumps switch its "
                   "request dumps on during drill incidents (left alone otherwise)")
@click.option("--list-faults", is_flag=True, help="list the faults and exit")
@click.option("--show", "show_id", type=int, default=None, help="print a stored report")
@click.option("--reports", "list_reports", is_flag=True, help="list stored reports")
def drill(config_path: str | None, target_name: str | None, chosen: tuple[str, ...], yes: bool,
          dry_run: bool, as_json: bool, store_url: str | None, wait: str | None,
          stop_for: str, burst: int, time_scale: float, request_dumps: bool, list_faults: bool,
          show_id: int | None, list_reports: bool) -> None:
    """Inject faults into a target and report, per fault, whether the catalog caught it within
    its bound, what repaired it, how long until healthy, and who was told.

    The catalog's checks, remediations and notifiers run in this process against a database of
    drill incidents of their own (stop or silence `sglguard run` for the target meanwhile, so
    that it does not act on the same faults). Against the emulator every emulator fault can be
    injected; against a real server only sigkill, sigstop, burst and regex, and only with
    --yes. Messages are marked [DRILL]. Exit status 0 when every drill passed, 1 otherwise.
    --time-scale runs the catalog's schedule faster (bounds computed on the scaled catalog)."""
    from sglguard.config.types import parse_duration
    from sglguard.drill.faults import FAULTS, Scene, Settings, is_emulator
    from sglguard.drill.run import drill_catalog
    from sglguard.drill.scale import scale_catalog
    from sglguard.service import build_clients

    if list_faults:
        _list_faults()
        return
    _, catalog = load(config_path)
    url = drill_store_url(catalog, store_url)
    if show_id is not None or list_reports:
        _stored(url, show_id, as_json)
        return
    target = _target(catalog, target_name)
    try:
        settings = Settings(stop_for=parse_duration(stop_for).total_seconds(), burst=burst,
                            time_scale=time_scale)
        waiting = parse_duration(wait).total_seconds() if wait else None
    except ValueError as exc:
        fail(f"--stop-for/--wait: {exc}")
    emulator = is_emulator(target)
    names = _fault_names(chosen, emulator, target)
    drilled = drill_catalog(scale_catalog(catalog, time_scale), url,
                            request_dumps=emulator or request_dumps)
    scene = Scene(target, build_clients(drilled)[target.name], _pid_reader(target), settings)
    faults = [FAULTS[name](scene) for name in names]
    if dry_run or (not emulator and not yes):
        _print_plan(target, faults, emulator)
        if not dry_run:
            fail(f"{target.name} is a real server: nothing done; add --yes to run these drills "
                 "(or --dry-run to only list them)")
        return
    _run(drilled, target.name, faults, emulator, waiting, as_json, time_scale)


def _list_faults() -> None:
    from sglguard.drill.faults import EMULATOR_FAULTS, REAL_FAULTS

    for cls in (*EMULATOR_FAULTS, *REAL_FAULTS):
        where = "emulator" if cls.emulator else "emulator or server"
        click.echo(f"{cls.name:14} {where}: {' '.join((cls.__doc__ or '').split())}")


def _fault_names(chosen: tuple[str, ...], emulator: bool, target: TargetConfig) -> list[str]:
    """The faults to run, in order (default: every one the target allows), or exit 2."""
    from sglguard.drill.faults import FAULTS

    unknown = [name for name in chosen if name not in FAULTS]
    if unknown:
        fail(f"unknown fault {', '.join(unknown)}; the faults are {', '.join(FAULTS)}")
    names = list(chosen) or [cls.name for cls in FAULTS.values() if emulator or not cls.emulator]
    refused = [name for name in names if FAULTS[name].emulator and not emulator]
    if refused:
        fail(f"{', '.join(refused)}: only the emulator can act these out, and {target.name} "
             f"({target.url}) is not the emulator; on a real server: sigkill, sigstop, burst, "
             "regex")
    return names


def _print_plan(target: TargetConfig, faults: list[Fault], emulator: bool) -> None:
    from sglguard.drill.faults import DrillError

    kind = "the emulator" if emulator else "a real server"
    click.echo(f"drills of {target.name} ({target.url}, {kind}), in order:")
    for fault in faults:
        try:
            click.echo(f"  {fault.name:14} {fault.plan()}")
        except DrillError as exc:
            click.echo(f"  {fault.name:14} cannot run: {exc}")


def _target(catalog: Catalog, name: str | None) -> TargetConfig:
    names = [target.name for target in catalog.targets]
    if name is None:
        if len(names) != 1:
            fail(f"the catalog has {len(names)} targets: choose one with --target "
                 f"({', '.join(names)})")
        name = names[0]
    if name not in names:
        fail(f"--target {name}: no such target (the catalog has {', '.join(names)})")
    return catalog.target(name)


def _pid_reader(target: TargetConfig) -> Callable[[], int | None]:
    """The server's pid as its control knows it (from its pidfile), read when needed."""
    from sglguard.controls.registry import CONTROLS

    if target.control is None:
        return lambda: None
    control = CONTROLS[target.control.kind](target.control, target)
    return control.server_pid


def _run(catalog: Catalog, target: str, faults: list[Fault], emulator: bool,
         wait: float | None, as_json: bool, time_scale: float) -> None:
    import sys

    from sglguard import output
    from sglguard.drill.report import print_report
    from sglguard.drill.run import Drill

    store = open_drill_store(catalog.store.url)
    try:
        drill = Drill(catalog, store, target, wait=wait, time_scale=time_scale,
                      say=lambda text: click.echo(text, err=True))
        report = drill.run(faults, emulator)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        print_report(output.console(highlight=False), report)
        click.echo(f"stored as drill report #{report.id} in {catalog.store.url}; "
                   f"sglguard drill --show {report.id}")
    sys.exit(0 if report.passed else 1)


def _stored(url: str, show_id: int | None, as_json: bool) -> None:
    from sglguard import output
    from sglguard.drill.report import print_report
    from sglguard.drill.run import Report
    from sglguard.store.evidence import DrillReportRow, drill_reports

    store = open_drill_store(url)
    try:
        with store.session() as session:
            if show_id is not None:
                row = session.get(DrillReportRow, show_id)
                if row is None:
                    fail(f"no drill report #{show_id} in {url}")
                rows = [row]
            else:
                rows = drill_reports(session)
            reports = [Report.from_dict({**json.loads(row.report), "id": row.id})
                       for row in rows]
    finally:
        store.close()
    if as_json:
        items = [report.as_dict() for report in reports]
        click.echo(json.dumps(items[0] if show_id is not None else items, indent=2))
        return
    if show_id is not None:
        print_report(output.console(highlight=False), reports[0])
        return
    for report in reports:
        verdicts = ", ".join(f"{item.fault} {item.verdict}" for item in report.outcomes)
        click.echo(f"#{report.id} {report.started_at[:19]} {report.target}: "
                   f"{'passed' if report.passed else 'FAILED'} ({verdicts})")
