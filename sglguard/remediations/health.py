"""Waiting out a (re)started server's start-up: /health must answer 200 within the budget."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from sglguard.client import TargetError
from sglguard.controls.base import Control
from sglguard.remediations.base import RemediationContext, RemediationError


class _NotReady(Exception):
    pass


def _interruptible(stop: threading.Event) -> Callable[[float], None]:
    """A sleep for tenacity that wakes at once when sglguard shuts down."""

    def sleep(seconds: float) -> None:
        stop.wait(seconds)

    return sleep


def wait_until_healthy(context: RemediationContext, control: Control[Any], path: str) -> float:
    """Poll `path` until it answers 200; the seconds it took. RemediationError when the budget
    (the control's startup_timeout) runs out, the started server has gone, or sglguard stops."""
    budget = control.config.startup_timeout.total_seconds()
    stop = context.stop
    began = time.monotonic()
    deadline = began + budget
    last = ["no answer yet"]

    def probe() -> None:
        if stop.is_set():
            raise RemediationError("interrupted: sglguard is shutting down")
        if (failure := control.start_failure()) is not None:
            raise RemediationError(failure)
        remaining = max(0.1, deadline - time.monotonic())
        try:
            response = context.client.request("GET", path, timeout=min(5.0, remaining))
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
    return time.monotonic() - began


def plan_wait(context: RemediationContext, control: Control[Any], path: str) -> str:
    budget = control.config.startup_timeout.total_seconds()
    return f"wait up to {budget:g} s for GET {context.client.base_url}{path} to answer 200"
