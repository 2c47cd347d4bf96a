"""`docker`: the server runs in a container; sglguard restarts it with the Docker CLI.

A container's command line is fixed when it is created, so this control cannot restart with
changed launch flags (reduce_concurrency): recreate the container yourself for that.
"""

from __future__ import annotations

import shlex
from typing import Literal

from pydantic import Field

from sglguard.controls.base import Control, ControlConfig, ControlError, Overrides
from sglguard.controls.launch import check_flags, run_tool

# What `docker inspect` shows for a container whose process has gone.
GONE_STATES = frozenset({"exited", "dead"})


class DockerControlConfig(ControlConfig):
    """Restart and stop one container through the Docker CLI (`podman` works as well)."""

    kind: Literal["docker"]
    container: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="name or id")
    docker: str = Field(default="docker", description="the docker program")


class DockerControl(Control[DockerControlConfig]):
    """`docker restart --time N CONTAINER`, N being the stop timeout."""

    kind = "docker"
    config_model = DockerControlConfig

    @property
    def _grace(self) -> str:
        return str(max(0, round(self.config.stop_timeout.total_seconds())))

    def _restart_argv(self) -> list[str]:
        return [self.config.docker, "restart", "--time", self._grace, self.config.container]

    def plan_restart(self, overrides: Overrides | None = None) -> list[str]:
        self._refuse(overrides)
        return [f"run {shlex.join(self._restart_argv())}"]

    def restart(self, overrides: Overrides | None = None) -> str:
        self._refuse(overrides)
        limit = (self.config.stop_timeout + self.config.startup_timeout).total_seconds()
        run_tool(self._restart_argv(), timeout=limit)
        return f"restarted container {self.config.container}"

    def stop(self) -> str:
        run_tool([self.config.docker, "stop", "--time", self._grace, self.config.container],
                 timeout=self.config.stop_timeout.total_seconds() + 30)
        return f"stopped container {self.config.container}"

    def start_failure(self) -> str | None:
        argv = [self.config.docker, "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}",
                self.config.container]
        try:
            state, _, code = run_tool(argv, timeout=30).strip().partition(" ")
        except ControlError:
            return None  # cannot tell: the health probe decides
        if state in GONE_STATES:
            return (f"container {self.config.container} is {state} (exit code {code or '?'}; "
                    f"see {self.config.docker} logs {self.config.container})")
        return None

    def _refuse(self, overrides: Overrides | None) -> None:
        if check_flags(overrides):
            raise ControlError(
                f"the docker control cannot restart {self.config.container} with changed launch "
                f"flags ({', '.join(check_flags(overrides))}): a container's command is fixed "
                "when it is created", permanent=True)
