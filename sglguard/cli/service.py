"""Commands that run things: run, remediate, emulator, demo."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import click

from sglguard.cli import config_option, fail, load, main, open_store
from sglguard.redact import for_terminal

logger = logging.getLogger(__name__)


@main.command()
@config_option
@click.option("--dry-run", is_flag=True, help="plan remediations, record them, change nothing")
def run(config_path: str | None, dry_run: bool) -> None:
    """Run the service until SIGTERM or SIGINT; SIGHUP reloads the catalog."""
    from sglguard.service import Service

    path, catalog = load(config_path)
    service = Service(catalog, open_store(catalog, migrate_apart=True), dry_run=dry_run)
    asked: set[str] = set()

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s: stopping", signal.Signals(signum).name)
        asked.add("stop")

    def on_reload(_signum: int, _frame: FrameType | None) -> None:
        asked.add("reload")

    # The main thread sleeps in a read of this pipe, into which every signal writes a byte:
    # no polling while nothing happens, and no signal lost between a check and the wait.
    wake, woken = os.pipe()
    os.set_blocking(woken, False)
    signal.set_wakeup_fd(woken)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)
    service.start()
    while "stop" not in asked:
        os.read(wake, 64)
        if "reload" in asked and "stop" not in asked:
            asked.discard("reload")
            service = reloaded(path, service)
    service.stop()


def reloaded(path: Path, service: Any) -> Any:
    """The service on the catalog as it now is; the running one if the new catalog is bad."""
    from sglguard.config.loader import ConfigError, load_catalog
    from sglguard.service import Service
    from sglguard.store import Store, StoreError

    try:
        catalog = load_catalog(path)
        store = (service.store if catalog.store.url == service.catalog.store.url
                 else Store.open(catalog.store.url, migrate_apart=True))
    except (ConfigError, StoreError) as exc:
        logger.error("reload refused, still running the previous catalog: %s", exc)
        return service
    service.stop()
    fresh = Service(catalog, store, dry_run=service.dry_run)
    fresh.runner.adopt(service.runner)
    fresh.start(reloaded=True)
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
    from rich.console import Console

    from sglguard import output
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
    store = open_store(catalog)
    runner = RemediationRunner(catalog, store, build_clients(catalog))
    console = Console()
    if dry_run:
        outcome = runner.run(name, target_name, trigger="manual", dry_run=True)
    else:
        output.plan_lines(console, name, target_name, runner.build(name, target_name).plan(),
                          dry_run=False)
        outcome = run_by_hand(runner, store, name, target_name)
    if dry_run:
        output.plan_lines(console, name, target_name, outcome.plan, dry_run=True)
        console.print(f"dry run recorded as run #{outcome.run_id}; nothing was changed",
                      highlight=False)
        return
    style = output.STYLES.get(outcome.outcome, "")
    said = for_terminal(outcome.error or outcome.detail)
    console.print(f"[{style}]{outcome.outcome}[/]: {said} (run #{outcome.run_id})",
                  highlight=False)
    sys.exit(0 if outcome.outcome == "succeeded" else 1)


def run_by_hand(runner: Any, store: Any, name: str, target: str) -> Any:
    """A manual run holds the target's lease like the service does, and lets escalated
    incidents of the target act again."""
    from datetime import timedelta

    from sglguard.clock import utcnow
    from sglguard.rails import Leases, clear_escalations

    leases = Leases(store)
    if not leases.claim(target, utcnow(), timedelta(minutes=30)):
        click.echo(f"sglguard: {target} is being remediated by {leases.holder_of(target)}; "
                   "try again when it is done", err=True)
        sys.exit(1)
    try:
        outcome = runner.run(name, target, trigger="manual")
    finally:
        leases.release(target)
    clear_escalations(store, target, utcnow(), f"sglguard remediate {name}")
    return outcome


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
