"""`restart`: stop and start the target's server through its control, then wait for /health.

Launch flags that reduce_concurrency keeps lowered for the target stay in force."""

from __future__ import annotations

from typing import Any, Literal

from sglguard.controls.base import Control, ControlError
from sglguard.controls.ports import foreign, listeners, local_port
from sglguard.remediations.base import Remediation, RemediationConfig, RemediationError
from sglguard.remediations.health import plan_wait, wait_until_healthy


class RestartConfig(RemediationConfig):
    """Restart the server; success means /health answered 200 within the start-up budget."""

    destructive = True

    kind: Literal["restart"]
    health_path: str = "/health"


def control_of(remediation: Remediation[Any]) -> Control[Any]:
    """The target's control, or a permanent error naming the target that has none."""
    control = remediation.context.control
    if control is None:
        raise RemediationError(
            f"target {remediation.context.target.name} has no control: cannot restart it",
            permanent=True,
        )
    return control


def uses_pidfile(control: Control[Any]) -> bool:
    return getattr(control.config, "pidfile", None) is not None


class Restart(Remediation[RestartConfig]):
    """Restarts through the target's control and waits out its start-up."""

    kind = "restart"
    config_model = RestartConfig
    requires_control = True

    def plan(self) -> list[str]:
        control = control_of(self)
        overrides = self.context.overrides()
        try:
            steps = control.plan_restart(overrides)
        except ControlError as exc:
            raise RemediationError(str(exc), permanent=exc.permanent) from None
        if overrides:
            kept = ", ".join(f"{flag} {value}" for flag, value in overrides.items())
            steps.insert(0, f"keep the launch flags lowered by reduce_concurrency: {kept}")
        return [*steps, plan_wait(self.context, control, self.config.health_path)]

    def execute(self) -> str:
        control = control_of(self)
        port = local_port(self.context.target.url) if uses_pidfile(control) else None
        if port is not None:
            before = control.server_pid()
            squatter = foreign(port, before)
            if squatter is not None:
                raise RemediationError(
                    f"port {port} of {self.context.target.name} is held by "
                    f"{squatter.describe()}, not by the server this control started"
                    f"{f' (pid {before})' if before else ''}: a new server could not listen "
                    "there; stop that process or fix the target's control", permanent=True)
        try:
            done = control.restart(self.context.overrides())
        except ControlError as exc:
            raise RemediationError(str(exc), permanent=exc.permanent) from None
        took = wait_until_healthy(self.context, control, self.config.health_path)
        if port is not None:
            self._answered_by_ours(control, port)
        return f"{done}; healthy after {took:.1f} s"

    @staticmethod
    def _answered_by_ours(control: Control[Any], port: int) -> None:
        """/health passed: it must be the started server (alive, holding the port) that
        answered, not another one."""
        pid = control.server_pid()
        failure = control.start_failure()
        if failure is not None or pid is None:
            raise RemediationError(failure or "the started server left no pid behind")
        squatter = foreign(port, pid)
        if squatter is not None or not listeners(port):
            who = squatter.describe() if squatter else "nobody"
            raise RemediationError(
                f"/health answered, but port {port} is held by {who}, not by the started "
                f"server (pid {pid})", permanent=squatter is not None)
