"""The `sglguard` command line: a click group; each command lives in a module of this
package and imports what it needs when it runs, so `sglguard emulator` and `--help` start fast."""

from __future__ import annotations

import logging
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
    install_log_filter()  # every line: one line, secrets replaced, escapes neutralised
    for noisy in ("apscheduler", "urllib3", "alembic", "apprise", "tzlocal"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def load(config_path: str | None) -> tuple[Path, Catalog]:
    from sglguard.config.loader import ConfigError, find_catalog, load_catalog

    try:
        path = find_catalog(config_path)
        return path, load_catalog(path)
    except ConfigError as exc:
        fail(str(exc))


def open_store(catalog: Catalog, *, migrate_apart: bool = False) -> Store:
    from sglguard.store import Store, StoreError

    try:
        return Store.open(catalog.store.url, migrate_apart=migrate_apart)
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


# The commands register themselves on `main` when their modules are imported.
import sglguard.cli.catalog  # noqa: E402
import sglguard.cli.notices  # noqa: E402
import sglguard.cli.service  # noqa: E402
import sglguard.cli.silence  # noqa: E402, F401
