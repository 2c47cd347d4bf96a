"""What every control kind shares: how sglguard stops and starts a target's server."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from pydantic import Field

from sglguard.config.base import KindModel
from sglguard.config.types import Duration

if TYPE_CHECKING:
    from sglguard.config.models import TargetConfig


class ControlConfig(KindModel):
    """Fields every control has; a kind's model adds its own."""

    family: ClassVar[str] = "control"
    startup_timeout: Duration = Field(
        default=timedelta(minutes=10),
        description="how long a (re)started server may take to answer /health with 200",
    )
    stop_timeout: Duration = Field(
        default=timedelta(seconds=30), description="grace between SIGTERM and SIGKILL"
    )

    @property
    def server_log(self) -> Path | None:
        """The file the server's output goes to when this control starts it (a `log` check
        without `path` reads it); None when the server logs elsewhere (journal, docker)."""
        return None


class ControlError(Exception):
    """Stopping or starting failed; `permanent` when trying again cannot help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


ControlT = TypeVar("ControlT", bound=ControlConfig)


Overrides = Mapping[str, str]
"""Launch flags to set on a (re)start, e.g. `{"--max-running-requests": "128"}`: the whole set
sglguard keeps lowered for the target; empty or None means the launch settings as configured."""


class Control(Generic[ControlT]):
    """Base of control kinds: plan, stop and start one target's server."""

    kind: ClassVar[str]
    config_model: ClassVar[type[ControlConfig]]
    supports_overrides: ClassVar[bool] = False  # can restart with changed launch flags

    def __init__(self, config: ControlT, target: TargetConfig) -> None:
        self.config = config
        self.target = target

    def plan_restart(self, overrides: Overrides | None = None) -> list[str]:
        """The steps a restart takes, exactly as they would be run."""
        raise NotImplementedError

    def restart(self, overrides: Overrides | None = None) -> str:
        """Stop, then start with `overrides` in force; returns what was done.
        Raises ControlError."""
        raise NotImplementedError

    def describe_launch(self, overrides: Overrides | None = None) -> str:
        """How the server is launched with these overrides (argument list, drop-in content)."""
        raise ControlError(f"the {self.kind} control cannot change launch flags", permanent=True)

    def stop(self) -> str:
        """Stop the server if it runs; returns what was done. Raises ControlError."""
        raise NotImplementedError

    def start_failure(self) -> str | None:
        """Why the server just started has already gone, or None while it may still come up."""
        return None

    def server_pid(self) -> int | None:
        """The server's pid, for controls that keep a pidfile (None for the others: systemd
        and docker know their own processes)."""
        from sglguard.controls.launch import read_pidfile

        pidfile = getattr(self.config, "pidfile", None)
        return read_pidfile(pidfile) if pidfile is not None else None
