"""`command`: your own start and stop argument lists (never a shell line).

Restart runs `stop` to completion (bounded by `stop_timeout`), then starts `start` detached, as the
process control does. With a `pidfile`, sglguard writes the started pid there (your stop command
may use it, e.g. `[pkill, -F, /run/sglang.pid]`) and, after `stop`, waits for that pid to exit.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path
from typing import Literal

import psutil
from pydantic import Field

from sglguard.config.base import RelativePath
from sglguard.controls.base import Control, ControlConfig, ControlError, Overrides
from sglguard.controls.launch import (
    apply_flags,
    check_flags,
    record_started,
    run_tool,
    server_process,
    shown_command,
    start_detached,
)

logger = logging.getLogger(__name__)


class CommandControlConfig(ControlConfig):
    """Start and stop the server with commands of your own, like Monit's start/stop program."""

    kind: Literal["command"]
    start: tuple[str, ...] = Field(min_length=1, description="argument list, run detached")
    stop: tuple[str, ...] = Field(min_length=1, description="argument list, run to completion")
    pidfile: RelativePath | None = Field(default=None, description="where the started pid goes")
    log: RelativePath | None = Field(default=None, description="output of `start`; default: "
                                     "beside the pidfile, else discarded")
    cwd: RelativePath | None = None
    env: dict[str, str] = Field(default_factory=dict)

    @property
    def server_log(self) -> Path | None:
        if self.log is not None:
            return self.log
        return self.pidfile.with_suffix(".log") if self.pidfile is not None else None


class CommandControl(Control[CommandControlConfig]):
    """Runs `stop`, then starts `start` detached with the overridden flags rewritten."""

    kind = "command"
    config_model = CommandControlConfig
    supports_overrides = True

    _child: subprocess.Popen[bytes] | None = None

    @property
    def _log(self) -> Path | None:
        return self.config.server_log

    def arguments(self, overrides: Overrides | None = None) -> list[str]:
        return apply_flags(self.config.start, check_flags(overrides))

    def describe_launch(self, overrides: Overrides | None = None) -> str:
        return shown_command(self.arguments(overrides))

    def plan_restart(self, overrides: Overrides | None = None) -> list[str]:
        config = self.config
        grace = config.stop_timeout.total_seconds()
        steps = [f"run {shown_command(config.stop)} and wait up to {grace:g} s for it"]
        if config.pidfile is not None:
            steps.append(f"wait for the pid in {config.pidfile} to exit")
        where = f" in {config.cwd}" if config.cwd is not None else ""
        output = f"output appended to {self._log}" if self._log else "output discarded"
        steps.append(f"run {self.describe_launch(overrides)}{where}, in a new session, {output}")
        if config.pidfile is not None:
            steps.append(f"write the new pid to {config.pidfile}")
        return steps

    def restart(self, overrides: Overrides | None = None) -> str:
        stopped = self.stop()
        pid = self.start(overrides)
        return f"{stopped}; started pid {pid}"

    def stop(self) -> str:
        config = self.config
        began = time.monotonic()
        grace = config.stop_timeout.total_seconds()
        process = self._started()  # before the stop command, which may remove the pidfile
        run_tool(config.stop, timeout=grace)
        self._reap()
        done = f"ran {shown_command(config.stop)}"
        if process is None:
            return done
        previous = process.pid
        try:
            process.wait(timeout=max(0.0, grace - (time.monotonic() - began)))
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            raise ControlError(f"pid {previous} (from {config.pidfile}) still runs "
                               f"{grace:g} s after {shown_command(config.stop)}") from None
        self._reap()
        return f"{done}; pid {previous} exited"

    def start(self, overrides: Overrides | None = None) -> int:
        config = self.config
        child = start_detached(self.arguments(overrides), cwd=config.cwd, env=config.env,
                               log=self._log)
        self._child = child
        if config.pidfile is not None:
            record_started(child, config.pidfile)
        logger.info("target %s: started pid %s", self.target.name, child.pid)
        return child.pid

    def start_failure(self) -> str | None:
        """A start command that exits 0 may have put the server in the background itself."""
        child = self._child
        if child is None or child.poll() is None or child.returncode == 0:
            return None
        where = f"; see {self._log}" if self._log else ""
        return f"the start command (pid {child.pid}) exited with status {child.returncode}{where}"

    def _started(self) -> psutil.Process | None:
        """The live process the pidfile names, if it is the server sglguard started."""
        if self.config.pidfile is None:
            return None
        process, why = server_process(self.config.pidfile, self.config.start)
        if process is None and "not the server sglguard started" in why:
            logger.warning("target %s: %s; not waited for", self.target.name, why)
        return process

    def _reap(self) -> None:
        if self._child is not None:
            self._child.poll()
