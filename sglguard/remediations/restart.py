"""`restart`: stop and start the target's server through its control, then wait for /health."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from sglguard.client import TargetError
from sglguard.controls.base import Control, ControlError
from sglguard.remediations.base import Remediation, RemediationConfig, RemediationError


class RestartConfig(RemediationConfig):
    """Restart the server; success means /health answered 200 within the start-up budget."""

    kind: Literal["restart"]
    health_path: str = "/health"


class _NotReady(Exception):
    pass


def _interruptible(stop: threading.Event) -> Callable[[float], None]:
    """A sleep for tenacity that wakes at once when sglguard shuts down."""

    def sleep(seconds: float) -> None:
        stop.wait(seconds)

    return sleep


class Restart(Remediation[RestartConfig]):
    """Restarts through the target's control and waits out its start-up."""

    kind = "restart"
    config_model = RestartConfig
    requires_control = True

    @property
    def control(self) -> Control[Any]:
        control = self.context.control
        if control is None:
            raise RemediationError(
                f"target {self.context.target.name} has no control: cannot restart it",
                permanent=True,
            )
        return control

    def plan(self) -> list[str]:
        budget = self.control.config.startup_timeout.total_seconds()
        url = f"{self.context.client.base_url}{self.config.health_path}"
        wait = f"wait up to {budget:g} s for GET {url} to answer 200"
        return [*self.control.plan_restart(), wait]

    def execute(self) -> str:
        control = self.control
        try:
            done = control.restart()
        except ControlError as exc:
            raise RemediationError(str(exc), permanent=exc.permanent) from None
        began = time.monotonic()
        self._wait_until_healthy(control)
        return f"{done}; healthy after {time.monotonic() - began:.1f} s"

    def _wait_until_healthy(self, control: Control[Any]) -> None:
        budget = control.config.startup_timeout.total_seconds()
        stop = self.context.stop
        path = self.config.health_path
        deadline = time.monotonic() + budget
        last = ["no answer yet"]

        def probe() -> None:
            if stop.is_set():
                raise RemediationError("interrupted: sglguard is shutting down")
            if (failure := control.start_failure()) is not None:
                raise RemediationError(failure)
            remaining = max(0.1, deadline - time.monotonic())
            try:
                response = self.context.client.request("GET", path, timeout=min(5.0, remaining))
            except TargetError as exc:
                last[0] = str(exc)
                raise _NotReady() from None
            response.close()
            if response.status_code != 200:
                last[0] = f"GET {path} answered {response.status_code}"
                raise _NotReady()

        retrying = Retrying(
            stop=stop_after_delay(budget),
            wait=wait_exponential(multiplier=0.1, max=2.0),
            retry=retry_if_exception_type(_NotReady),
            sleep=_interruptible(stop),
            reraise=True,
        )
        try:
            retrying(probe)
        except _NotReady:
            raise RemediationError(
                f"not healthy within the start-up budget of {budget:g} s (last: {last[0]})"
            ) from None
