"""`systemd`: the server is a systemd unit; sglguard runs `systemctl` (an argument list, no shell).

Changed launch flags (reduce_concurrency) reach the server through a drop-in that sets one
environment variable per flag, `--max-running-requests` -> `SGLANG_MAX_RUNNING_REQUESTS`, written
to `/etc/systemd/system/UNIT.d/sglguard-concurrency.conf` (then `systemctl daemon-reload`). The
unit must use the variable, with its own default, e.g.:

    [Service]
    Environment=SGLANG_MAX_RUNNING_REQUESTS=256
    ExecStart=/usr/bin/python3 -m sglang.launch_server --model-path ... \\
        --max-running-requests ${SGLANG_MAX_RUNNING_REQUESTS}

When every lowered level is restored, sglguard removes the drop-in again.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Literal

from pydantic import Field

from sglguard.config.base import RelativePath
from sglguard.controls.base import Control, ControlConfig, ControlError, Overrides
from sglguard.controls.launch import check_flags, env_name, run_tool

logger = logging.getLogger(__name__)

DROPIN_NAME = "sglguard-concurrency.conf"


class SystemdControlConfig(ControlConfig):
    """Restart and stop a systemd unit with `systemctl`."""

    kind: Literal["systemd"]
    unit: str = Field(pattern=r"^[A-Za-z0-9:_.@\\-]+$", description="e.g. sglang.service")
    systemctl: str = Field(default="systemctl", description="the systemctl program")
    dropin_dir: RelativePath | None = Field(
        default=None, description="default: /etc/systemd/system/UNIT.d")

    @property
    def unit_name(self) -> str:
        """The unit with its type suffix (a bare name means a service)."""
        return self.unit if "." in self.unit else f"{self.unit}.service"

    @property
    def dropin(self) -> Path:
        folder = self.dropin_dir or Path("/etc/systemd/system") / f"{self.unit_name}.d"
        return folder / DROPIN_NAME


def dropin_text(overrides: Overrides) -> str:
    lines = ["# Written by sglguard (reduce_concurrency); removed when the levels are restored.",
             "[Service]"]
    lines += [f"Environment={env_name(flag)}={value}" for flag, value in overrides.items()]
    return "\n".join(lines) + "\n"


class SystemdControl(Control[SystemdControlConfig]):
    """`systemctl restart UNIT`; launch flags through an environment drop-in."""

    kind = "systemd"
    config_model = SystemdControlConfig
    supports_overrides = True

    def _systemctl(self, *args: str) -> list[str]:
        return [self.config.systemctl, *args]

    def plan_restart(self, overrides: Overrides | None = None) -> list[str]:
        steps = []
        change = self._dropin_change(check_flags(overrides))
        if change is not None:
            steps += [change[1], f"run {shlex.join(self._systemctl('daemon-reload'))}"]
        return [*steps, f"run {shlex.join(self._systemctl('restart', self.config.unit_name))}"]

    def describe_launch(self, overrides: Overrides | None = None) -> str:
        flags = check_flags(overrides)
        if not flags:
            return f"the unit as configured (no {self.config.dropin})"
        return f"{self.config.dropin}: " + " | ".join(dropin_text(flags).splitlines()[1:])

    def restart(self, overrides: Overrides | None = None) -> str:
        done = []
        change = self._dropin_change(check_flags(overrides))
        if change is not None:
            self._apply(change[0])
            self._run(self._systemctl("daemon-reload"))
            done.append(change[1])
        self._run(self._systemctl("restart", self.config.unit_name), self._restart_timeout)
        return "; ".join([*done, f"restarted {self.config.unit_name}"])

    def stop(self) -> str:
        self._run(self._systemctl("stop", self.config.unit_name))
        return f"stopped {self.config.unit_name}"

    def start_failure(self) -> str | None:
        try:
            state = self._run(self._systemctl(
                "show", "--property=ActiveState", "--value", self.config.unit_name)).strip()
        except ControlError:
            return None  # cannot tell: the health probe decides
        if state == "failed":
            return (f"{self.config.unit_name} is in the failed state "
                    f"(see journalctl -u {self.config.unit_name})")
        return None

    @property
    def _restart_timeout(self) -> float:
        return (self.config.stop_timeout + self.config.startup_timeout).total_seconds()

    def _run(self, argv: list[str], timeout: float | None = None) -> str:
        limit = timeout if timeout is not None else self.config.stop_timeout.total_seconds() + 30
        return run_tool(argv, timeout=limit)

    def _dropin_change(self, flags: dict[str, str]) -> tuple[str | None, str] | None:
        """(new content or None to remove, the plan step), or None when nothing changes."""
        path = self.config.dropin
        try:
            current: str | None = path.read_text()
        except FileNotFoundError:
            current = None
        except OSError as exc:
            raise ControlError(f"cannot read {path}: {exc}") from None
        if not flags:
            return None if current is None else (None, f"remove {path}")
        wanted = dropin_text(flags)
        if current == wanted:
            return None
        shown = " | ".join(wanted.splitlines()[1:])
        return wanted, f"write {path}: {shown}"

    def _apply(self, content: str | None) -> None:
        path = self.config.dropin
        try:
            if content is None:
                path.unlink(missing_ok=True)
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(path.name + ".tmp")
            temporary.write_text(content)
            temporary.replace(path)
        except PermissionError:
            raise ControlError(f"no permission to change {path} (sglguard needs to be able to "
                               "write the unit's drop-in folder)", permanent=True) from None
        except OSError as exc:
            raise ControlError(f"cannot change {path}: {exc}") from None
        logger.info("target %s: %s %s", self.target.name,
                    "removed" if content is None else "wrote", path)
