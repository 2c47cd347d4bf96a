"""The `sglguard` command line."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console

from sglguard import __version__, output
from sglguard.config.loader import ConfigError, find_catalog, load_catalog
from sglguard.config.models import Catalog
from sglguard.config.types import format_duration
from sglguard.store import Store, StoreError, queries

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
USAGE_ERROR = 2


def fail(message: str) -> NoReturn:
    """A clear one-paragraph error on stderr, exit status 2, no traceback."""
    click.echo(f"sglguard: {message}", err=True)
    sys.exit(USAGE_ERROR)


def config_option(command: F) -> F:
    return click.option(
        "--config", "config_path", type=click.Path(dir_okay=False), default=None,
        help="catalog file (default ./sglguard.yaml, then /etc/sglguard/sglguard.yaml)",
    )(command)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()), stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    for noisy in ("apscheduler", "urllib3", "alembic", "apprise"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def load(config_path: str | None) -> tuple[Path, Catalog]:
    try:
        path = find_catalog(config_path)
        return path, load_catalog(path)
    except ConfigError as exc:
        fail(str(exc))


def open_store(catalog: Catalog) -> Store:
    try:
        return Store.open(catalog.store.url)
    except StoreError as exc:
        fail(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sglguard")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default=None, help="log level on stderr (default: info for run, warning else)")
@click.pass_context
def main(ctx: click.Context, log_level: str | None) -> None:
    """Keep SGLang inference servers healthy: checks, incidents, remediation, notifications."""
    default = "info" if ctx.invoked_subcommand == "run" else "warning"
    setup_logging(log_level or default)


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
    from sglguard.service import run_once

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
        click.echo(json.dumps(items, indent=2))
    else:
        output.results_table(Console(), items, "checks")
    sys.exit(int(output.worst(results)))


@main.command()
@config_option
@click.option("--dry-run", is_flag=True, help="plan remediations, record them, change nothing")
def run(config_path: str | None, dry_run: bool) -> None:
    """Run the service until SIGTERM or SIGINT; SIGHUP reloads the catalog."""
    from sglguard.service import Service

    path, catalog = load(config_path)
    service = Service(catalog, open_store(catalog), dry_run=dry_run)
    stop, reload, wake = threading.Event(), threading.Event(), threading.Event()

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()
        wake.set()

    def on_reload(_signum: int, _frame: FrameType | None) -> None:
        reload.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)
    service.start()
    while not stop.is_set():
        wake.wait(1.0)
        wake.clear()
        if reload.is_set() and not stop.is_set():
            reload.clear()
            service = reloaded(path, service)
    service.stop()


def reloaded(path: Path, service: Any) -> Any:
    """The service on the catalog as it now is; the running one if the new catalog is bad."""
    from sglguard.service import Service

    try:
        catalog = load_catalog(path)
        store = (service.store if catalog.store.url == service.catalog.store.url
                 else Store.open(catalog.store.url))
    except (ConfigError, StoreError) as exc:
        logger.error("reload refused, still running the previous catalog: %s", exc)
        return service
    service.stop()
    fresh = Service(catalog, store, dry_run=service.dry_run)
    fresh.runner.adopt(service.runner)
    fresh.start()
    logger.info("reloaded %s", path)
    return fresh


@main.command()
@config_option
@click.argument("name")
@click.option("--target", "target_name", default=None,
              help="target to act on (may be left out when the catalog has one target)")
@click.option("--dry-run", is_flag=True, help="print exactly what would be done; change nothing")
def remediate(config_path: str | None, name: str, target_name: str | None, dry_run: bool) -> None:
    """Run one remediation by hand (recorded in the store, marked dry-run or not)."""
    from sglguard.remediations.runner import RemediationRunner
    from sglguard.service import build_clients

    _, catalog = load(config_path)
    known = [item.name for item in catalog.remediations]
    if name not in known:
        fail(f"unknown remediation '{name}' (known: {', '.join(known) or 'none'})")
    targets = [target.name for target in catalog.targets]
    if target_name is None:
        if len(targets) != 1:
            fail(f"--target is required: the catalog has targets {', '.join(targets)}")
        target_name = targets[0]
    if target_name not in targets:
        fail(f"unknown target '{target_name}' (known: {', '.join(targets)})")
    runner = RemediationRunner(catalog, open_store(catalog), build_clients(catalog))
    console = Console()
    if not dry_run:
        output.plan_lines(console, name, target_name, runner.build(name, target_name).plan(),
                          dry_run=False)
    outcome = runner.run(name, target_name, trigger="manual", dry_run=dry_run)
    if dry_run:
        output.plan_lines(console, name, target_name, outcome.plan, dry_run=True)
        console.print(f"dry run recorded as run #{outcome.run_id}; nothing was changed",
                      highlight=False)
        return
    style = output.STYLES.get(outcome.outcome, "")
    console.print(f"[{style}]{outcome.outcome}[/]: {outcome.error or outcome.detail} "
                  f"(run #{outcome.run_id})", highlight=False)
    sys.exit(0 if outcome.outcome == "succeeded" else 1)


@main.command()
@config_option
@click.option("--check", "check_name", default=None, help="only this check")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100000))
@click.option("--json", "as_json", is_flag=True, help="print a JSON array")
def history(config_path: str | None, check_name: str | None, limit: int, as_json: bool) -> None:
    """Recent check results, newest first."""
    _, catalog = load(config_path)
    with open_store(catalog).session() as session:
        items = [output.row_dict(row) for row in queries.recent_results(session, check_name, limit)]
    if as_json:
        click.echo(json.dumps(items, indent=2))
    else:
        output.results_table(Console(), items, "history")


@main.command()
@config_option
@click.option("--open", "open_only", is_flag=True, help="only incidents still open")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000))
@click.option("--json", "as_json", is_flag=True, help="print a JSON array")
def incidents(config_path: str | None, open_only: bool, limit: int, as_json: bool) -> None:
    """Incidents with their remediations and notifications, newest first."""
    _, catalog = load(config_path)
    with open_store(catalog).session() as session:
        items = [
            output.incident_dict(incident, queries.runs_of(session, incident.id),
                                 queries.attempts_of(session, incident.id),
                                 queries.events_of(session, incident.id))
            for incident in queries.incidents(session, open_only=open_only, limit=limit)
        ]
    if as_json:
        click.echo(json.dumps(items, indent=2))
    else:
        output.incidents_table(Console(), items)


@main.command()
@click.option("--port", type=click.IntRange(0, 65535), required=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--model-path", default=None, help="model name the emulator reports")
@click.option("--max-running-requests", type=click.IntRange(1, 1_000_000), default=None)
@click.option("--api-key", default=None, help="require this Bearer key, as SGLang's --api-key")
@click.option("--startup-delay", type=click.FloatRange(0), default=0.0,
              help="seconds during which /health answers 503")
@click.option("--health-latency", type=click.FloatRange(0), default=None,
              help="seconds /health takes to answer (SGLang waits about 1 s)")
@click.option("--fault", default=None,
              help="hang | slow:SECONDS | crash[:SECONDS] | error:STATUS | queue:N | "
                   "slow_ttft:SECONDS | bad_output | stall | errors:FRACTION | "
                   "memory_growth:MIB_PER_MIN")
@click.option("--load", type=click.FloatRange(0, 1000), default=0.0, show_default=True,
              help="synthetic requests per second served internally, so metrics move")
@click.option("--metrics-version", type=click.Choice(["0.5.23", "legacy"]), default="0.5.23",
              show_default=True,
              help="SGLang release to pose as; legacy = the older release of SGLang's docs sample")
def emulator(port: int, host: str, model_path: str | None, max_running_requests: int | None,
             api_key: str | None, startup_delay: float, health_latency: float | None,
             fault: str | None, load: float, metrics_version: str) -> None:
    """A stand-in SGLang server for demos and tests."""
    from sglguard.emulator import EmulatorOptions, parse_fault, run_emulator

    if fault is not None:
        try:
            parse_fault(fault)
        except ValueError as exc:
            fail(f"--fault: {exc}")
    options: dict[str, Any] = {"host": host, "port": port, "startup_delay": startup_delay,
                               "fault": fault, "api_key": api_key, "load": load,
                               "metrics_version": metrics_version}
    if model_path is not None:
        options["model_path"] = model_path
    if max_running_requests is not None:
        options["max_running_requests"] = max_running_requests
    if health_latency is not None:
        options["health_latency"] = health_latency
    try:
        code = run_emulator(EmulatorOptions(**options))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    sys.exit(code)


@main.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False), default="sglguard-demo",
              show_default=True, help="where the demo writes its catalog, database and logs")
@click.option("--keep-running", is_flag=True, help="after the scripted part, keep running")
def demo(directory: str, keep_running: bool) -> None:
    """Show the loop working: the emulator is killed, detected, restarted, resolved, notified."""
    from sglguard.demo import run_demo

    sys.exit(run_demo(Path(directory), keep_running=keep_running))
