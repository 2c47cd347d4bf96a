"""`process`: sglguard itself starts the server as a detached process and tracks its pidfile."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
from pathlib import Path
from typing import Literal

import psutil
from pydantic import Field

from sglguard.config.base import RelativePath
from sglguard.controls.base import Control, ControlConfig, Overrides
from sglguard.controls.launch import (
    apply_flags,
    check_flags,
    record_started,
    server_process,
    shown_command,
    signal_server,
    start_detached,
)
from sglguard.controls.launch import read_pidfile as read_pidfile

logger = logging.getLogger(__name__)


class ProcessControlConfig(ControlConfig):
    """Start/stop the server as a child process, like Monit's `start program`."""

    kind: Literal["process"]
    start: tuple[str, ...] = Field(min_length=1, description="argument list, never a shell line")
    pidfile: RelativePath
    log: RelativePath | None = Field(default=None, description="default: beside the pidfile")
    cwd: RelativePath | None = Field(default=None, description="default: the pidfile's folder")
    env: dict[str, str] = Field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.log if self.log is not None else self.pidfile.with_suffix(".log")

    @property
    def server_log(self) -> Path | None:
        return self.log_path

    @property
    def workdir(self) -> Path:
        return self.cwd if self.cwd is not None else self.pidfile.parent


class ProcessControl(Control[ProcessControlConfig]):
    """Stops the process group named by the pidfile, starts `start` detached, writes the pidfile."""

    kind = "process"
    config_model = ProcessControlConfig

    _child: subprocess.Popen[bytes] | None = None

    supports_overrides = True

    def plan_restart(self, overrides: Overrides | None = None) -> list[str]:
        config = self.config
        process, why = server_process(config.pidfile, config.start)
        grace = config.stop_timeout.total_seconds()
        stop = (
            f"send SIGTERM to the process group of pid {process.pid} (from {config.pidfile}), "
            f"SIGKILL after {grace:g} s"
            if process is not None
            else f"nothing to stop ({why})"
        )
        return [
            stop,
            f"run {self.describe_launch(overrides)} in {config.workdir}, in a new session, "
            f"output appended to {config.log_path}",
            f"write the new pid to {config.pidfile}",
        ]

    def describe_launch(self, overrides: Overrides | None = None) -> str:
        return shown_command(self.arguments(overrides))

    def arguments(self, overrides: Overrides | None = None) -> list[str]:
        """The start argument list with the overridden flags rewritten."""
        return apply_flags(self.config.start, check_flags(overrides))

    def restart(self, overrides: Overrides | None = None) -> str:
        stopped = self.stop()
        pid = self.start(overrides)
        return f"{stopped}; started pid {pid}"

    def stop(self) -> str:
        config = self.config
        process, why = server_process(config.pidfile, config.start)
        if process is None:
            self._reap()
            if "not the server sglguard started" in why:
                logger.warning("target %s: %s; not signalled", self.target.name, why)
                return f"nothing stopped: {why}, not signalled"
            return "nothing was running"
        pid = process.pid
        signal_server(process, signal.SIGTERM)
        grace = config.stop_timeout.total_seconds()
        with contextlib.suppress(psutil.NoSuchProcess):
            try:
                process.wait(timeout=grace)
                self._reap()
                return f"stopped pid {pid} with SIGTERM"
            except psutil.TimeoutExpired:
                signal_server(process, signal.SIGKILL)
                process.wait(timeout=10)
        self._reap()
        return f"stopped pid {pid} (SIGKILL after {grace:g} s)"

    def start(self, overrides: Overrides | None = None) -> int:
        config = self.config
        child = start_detached(self.arguments(overrides), cwd=config.workdir, env=config.env,
                               log=config.log_path)
        self._child = child
        record_started(child, config.pidfile)
        logger.info("target %s: started pid %s", self.target.name, child.pid)
        return child.pid

    def start_failure(self) -> str | None:
        child = self._child
        if child is None or child.poll() is None:
            return None
        return (f"the started process (pid {child.pid}) exited with status {child.returncode}; "
                f"see {self.config.log_path}")

    def _reap(self) -> None:
        if self._child is not None:
            self._child.poll()
