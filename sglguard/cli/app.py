"""The `sglguard` click group and what every command shares (loading the catalog, opening the
store, errors with their exit status). The commands live in the other modules of this package
and register themselves on `main`; `sglguard.cli` imports them all."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from sglguard import __version__
from sglguard.redact import install_log_filter

if TYPE_CHECKING:
    from sglguard.config.models import Catalog
    from sglguard.store import Store

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
USAGE_ERROR = 2
PLUGIN_ERROR = 3  # `check` is a Nagios plugin: 2 means critical there, its own errors are 3


TRY_AGAIN = 1  # the service may work if started again later: systemd restarts it


def fail(message: str, status: int = USAGE_ERROR) -> NoReturn:
    """A clear one-paragraph error on stderr, exit status 2 (or `status`), no traceback."""
    click.echo(f"sglguard: {message}", err=True)
    sys.exit(status)


def service_hint(path: Path | str) -> str:
    """What to do when the service cannot start on its configuration (exit status 2)."""
    hint = (f"\nsglguard cannot start with this configuration: fix it, then check it with "
            f"`sglguard validate --config {path}`")
    if os.environ.get("INVOCATION_ID"):  # started by systemd
        hint += (" and `systemctl restart sglguard` (systemd does not restart sglguard after "
                 "a configuration error, exit status 2)")
    return hint


class PluginCommand(click.Command):
    """A command run as a Nagios plugin: a usage error exits 3 (UNKNOWN), not click's 2."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            exc.exit_code = PLUGIN_ERROR  # type: ignore[misc]  # click reads it per instance
            raise

def config_option(command: F) -> F:
    return click.option(
        "--config", "config_path", type=click.Path(dir_okay=False), default=None,
        help="catalog file (default ./sglguard.yaml, then /etc/sglguard/sglguard.yaml)",
    )(command)

def setup_logging(level: str, kind: str = "text") -> None:
    from sglguard.logs import formatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(kind))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    install_log_filter()  # every line: one line, secrets replaced, escapes neutralised
    for noisy in ("apscheduler", "urllib3", "alembic", "apprise", "tzlocal"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def load(config_path: str | None, status: int = USAGE_ERROR, *,
         service: bool = False) -> tuple[Path, Catalog]:
    """The catalog, or exit `status` naming every problem (`service`: and how to get going
    again)."""
    from sglguard.config.loader import ConfigError, find_catalog, load_catalog

    try:
        path = find_catalog(config_path)
        return path, load_catalog(path)
    except ConfigError as exc:
        fail(str(exc) + (service_hint(exc.source) if service else ""), status)


def open_store(catalog: Catalog, *, migrate_apart: bool = False,
               service: Path | None = None, status: int = USAGE_ERROR) -> Store:
    """The store, or exit: `status` (2) when its configuration is wrong, 1 (for the service,
    whose catalog is `service`) when it may answer later, as PostgreSQL starting after
    sglguard."""
    from sglguard.store import Store, StoreError

    try:
        return Store.open(catalog.store.url, migrate_apart=migrate_apart)
    except StoreError as exc:
        if service is not None and exc.transient:
            fail(f"{exc} (not reachable yet? exiting with status 1 so that a supervisor such "
                 "as systemd starts sglguard again)", TRY_AGAIN)
        fail(str(exc) + (service_hint(service) if service is not None else ""), status)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sglguard")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default=None, help="log level on stderr (default: info for run and serve, "
                                 "warning else)")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one object per line, with check/target/incident")
@click.option("--env-file", type=click.Path(dir_okay=False), default=None,
              help="read KEY=value lines into the environment first, as the unit's "
                   "EnvironmentFile= does (e.g. /etc/sglguard/env); variables already set win")
@click.pass_context
def main(ctx: click.Context, log_level: str | None, log_format: str,
         env_file: str | None) -> None:
    """Keep SGLang inference servers healthy: checks, incidents, remediation, notifications."""
    default = "info" if ctx.invoked_subcommand in ("run", "serve") else "warning"
    setup_logging(log_level or default, log_format)
    if env_file is not None:
        from sglguard.envfile import EnvFileError, read_env_file

        try:
            for key, value in read_env_file(Path(env_file)).items():
                os.environ.setdefault(key, value)
        except EnvFileError as exc:
            fail(str(exc))
