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

from sglguard.cli.app import config_option, fail, load, main, open_store
from sglguard.redact import for_terminal

logger = logging.getLogger(__name__)


# From this many checks on, the service's threads share a few malloc arenas (below it, the
# arenas keep little, and loading ctypes costs about 0.3 MiB).
MANY_CHECKS = 100


def few_malloc_arenas(arenas: int = 2) -> None:
    """Let the service's threads share a few malloc arenas. glibc gives each thread that
    allocates an arena of its own (up to eight per core), and memory freed in one stays
    resident for that thread alone: about 3 MiB at a thousand checks. MALLOC_ARENA_MAX, when
    set, is left to rule."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # a libc without it: no change
        ctypes.CDLL(None).mallopt(-8, arenas)  # M_ARENA_MAX


@main.command()
@config_option
@click.option("--dry-run", is_flag=True, help="plan remediations, record them, change nothing")
def run(config_path: str | None, dry_run: bool) -> None:
    """Run the service until SIGTERM or SIGINT; SIGHUP reloads the catalog."""
    from sglguard.cli.web import restart_web, start_web
    from sglguard.service import Service

    path, catalog = load(config_path, service=True)
    if len(catalog.checks) >= MANY_CHECKS:
        few_malloc_arenas()
    service = Service(catalog, open_store(catalog, migrate_apart=True, service=path),
                      dry_run=dry_run)
    web = start_web(catalog, service.store, runtime=service)  # the catalog's `http:`, if any
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
            previous, service = service, reloaded(path, service)
            if service is not previous:
                web = restart_web(web, service.catalog, service.store, runtime=service)
    service.stop()
    if web is not None:
        web.stop()


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
    service.stop(handing_over=True)
    fresh = Service(catalog, store, dry_run=service.dry_run,
                    agents=service.agents if store is service.store else None,
                    telemetry=service.telemetry)
    fresh.take_over(service)
    fresh.start(reloaded=True)
    logger.info("reloaded %s", path)
    return fresh


@main.command()
@config_option
@click.argument("name")
@click.option("--target", "target_name", default=None,
              help="target to act on (may be left out when the catalog has one target)")
@click.option("--dry-run", is_flag=True, help="print exactly what would be done; change nothing")
@click.option("--json", "as_json", is_flag=True, help="print the run as a JSON object")
def remediate(config_path: str | None, name: str, target_name: str | None, dry_run: bool,
              as_json: bool) -> None:
    """Run one remediation by hand (recorded in the store, marked dry-run or not)."""
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
    console = output.console()
    run_id: int | None
    if dry_run:
        outcome = runner.run(name, target_name, trigger="manual", dry_run=True)
        said, run_id, error, detail, plan = (outcome.outcome, outcome.run_id, outcome.error,
                                             outcome.detail, outcome.plan)
    else:
        plan = runner.build(name, target_name).plan()
        if not as_json:
            output.plan_lines(console, name, target_name, plan, dry_run=False)
        handed = hand_over(catalog, store, name, target_name, quiet=as_json)
        if handed is not None:
            said, run_id, error, detail = handed
        else:
            outcome = run_by_hand(runner, store, name, target_name)
            said, run_id, error, detail = (outcome.outcome, outcome.run_id, outcome.error,
                                           outcome.detail)
    if as_json:
        import json

        click.echo(json.dumps({
            "run_id": run_id, "remediation": name, "target": target_name,
            "dry_run": dry_run, "outcome": said, "plan": plan,
            "detail": detail, "error": error}, indent=2))
        sys.exit(0 if dry_run or said == "succeeded" else 1)
    if dry_run:
        output.plan_lines(console, name, target_name, plan, dry_run=True)
        console.print(f"dry run recorded as run #{run_id}; nothing was changed",
                      highlight=False)
        return
    style = output.STYLES.get(said)  # an outcome without a style (refused) is printed plain
    shown = f"[{style}]{for_terminal(said)}[/]" if style else for_terminal(said)
    console.print(f"{shown}: {for_terminal(error or detail)}"
                  + (f" (run #{run_id})" if run_id is not None else ""), highlight=False)
    sys.exit(0 if said == "succeeded" else 1)


def hand_over(catalog: Any, store: Any, name: str, target: str, *,
              quiet: bool = False) -> tuple[str, int | None, str | None, str] | None:
    """With `sglguard run` watching the target on this store, the service performs the run
    (its lease, control and start-up grace) and this command follows it to the end; None when
    no service is running, and the command runs it itself."""
    import getpass
    import json
    import time

    from sglguard.agents import Agents
    from sglguard.clock import utcnow
    from sglguard.store import outbox as owed

    agents = Agents(store, role="cli")
    services = agents.services_for(target)
    if not services:
        return None
    with store.session() as session:
        row = owed.add(session, kind=owed.REMEDIATION, event="manual", target=target,
                       payload={"remediation": name, "by": f"{getpass.getuser()} (sglguard "
                                                           "remediate)"}, now=utcnow())
        session.flush()
        row_id = row.id
    if not quiet:
        click.echo(f"sglguard: handed over to the running service ({services[0].name}); "
                   "following it", err=True)
    control = catalog.target(target).control
    patience = (control.startup_timeout + control.stop_timeout).total_seconds() \
        if control is not None else 0.0
    deadline = time.monotonic() + patience + 120.0
    while time.monotonic() < deadline:
        with store.session() as session:
            found = owed.get(session, row_id)
            status, detail = (found.status, found.detail) if found else ("gone", None)
        if status in ("done", "failed", "cancelled"):
            said = json.loads(detail or "{}")
            return (said.get("outcome", status), said.get("run_id"), said.get("error"),
                    said.get("detail") or "")
        if status == "pending" and not agents.services_for(target):
            with store.session() as session:
                gone = owed.cancel(session, row_id, "the service stopped before taking it",
                                   utcnow())
            if gone:
                return None  # the service went away before taking it: run it here
        time.sleep(0.2)
    return ("unknown", None, "the service has not finished it yet; see `sglguard incidents` "
            "and the remediation runs", "")


def run_by_hand(runner: Any, store: Any, name: str, target: str) -> Any:
    """A manual run holds the target's lease like the service does, and lets escalated
    incidents of the target act again."""
    from datetime import timedelta

    from sglguard.agents import Agents
    from sglguard.clock import utcnow
    from sglguard.rails import Leases, clear_escalations
    from sglguard.store import queries

    agents = Agents(store, role="cli")
    agents.register([target])
    leases = Leases(store, agents=agents)
    if not leases.claim(target, utcnow(), timedelta(minutes=30)):
        click.echo(f"sglguard: {target} is being remediated by {leases.holder_of(target)}; "
                   "try again when it is done", err=True)
        agents.leave()
        sys.exit(1)
    control = runner.catalog.target(target).control
    if control is not None:  # the service, when it starts, gives the server time to start
        with store.session() as session:
            for state in queries.target_states(session, target):
                state.grace_until = utcnow() + control.startup_timeout
    try:
        with agents.beating(), leases.kept(target, timedelta(minutes=30), utcnow):
            outcome = runner.run(name, target, trigger="manual")
    finally:
        leases.release(target)
        agents.leave()
    if control is not None and outcome.outcome != "succeeded":
        with store.session() as session:  # nothing restarted: failures count again
            for state in queries.target_states(session, target):
                state.grace_until = None
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
@click.option("--dp-size", type=click.IntRange(1, 64), default=1, show_default=True,
              help="data-parallel ranks: one series per rank on scheduler families")
@click.option("--enable-priority-scheduling", is_flag=True,
              help="queue/running gauges also per priority, totals under priority=\"\"")
@click.option("--default-priority-value", type=int, default=None,
              help="priority of requests sent without one (else the scheduler gives them the "
                   "lowest, -2**63)")
@click.option("--disaggregation-mode", type=click.Choice(["null", "prefill", "decode"]),
              default="null", show_default=True,
              help="a PD role; a prefill worker observes no TTFT/ITL/TPOT")
@click.option("--skip-server-warmup", is_flag=True,
              help="no warm-up request: latency and token series appear with the first request")
@click.option("--decode-speed", type=click.FloatRange(0), default=0.0, show_default=True,
              help="tokens/s per request, held running (long requests last minutes); 0: at once")
def emulator(port: int, host: str, model_path: str | None, max_running_requests: int | None,
             api_key: str | None, startup_delay: float, health_latency: float | None,
             fault: str | None, load: float, metrics_version: str, dp_size: int,
             enable_priority_scheduling: bool, default_priority_value: int | None,
             disaggregation_mode: str, skip_server_warmup: bool,
             decode_speed: float) -> None:
    """A stand-in SGLang server for demos and tests."""
    from sglguard.emulator import EmulatorOptions, parse_fault, run_emulator

    if fault is not None:
        try:
            parse_fault(fault)
        except ValueError as exc:
            fail(f"--fault: {exc}")
    options: dict[str, Any] = {"host": host, "port": port, "startup_delay": startup_delay,
                               "fault": fault, "api_key": api_key, "load": load,
                               "metrics_version": metrics_version, "dp_size": dp_size,
                               "enable_priority_scheduling": enable_priority_scheduling,
                               "default_priority_value": default_priority_value,
                               "disaggregation_mode": disaggregation_mode,
                               "skip_server_warmup": skip_server_warmup,
                               "decode_speed": decode_speed}
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
@click.option("--port", type=click.IntRange(1, 65535), default=30000, show_default=True,
              help="the port of the demo's SGLang emulator")
@click.option("--receiver-port", type=click.IntRange(1, 65535), default=8088, show_default=True,
              help="the port of the demo's alert receiver")
def demo(directory: str, keep_running: bool, port: int, receiver_port: int) -> None:
    """Show the loop working: the emulator is killed, detected, restarted, resolved, notified."""
    from sglguard.demo import run_demo

    if port == receiver_port:
        fail(f"--port and --receiver-port are both {port}: give them different ports")
    sys.exit(run_demo(Path(directory), keep_running=keep_running, port=port,
                      receiver_port=receiver_port))
