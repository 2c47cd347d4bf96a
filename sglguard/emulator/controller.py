"""The switch that holds the current fault and answers what it means for each request."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

from .faults import ERRORS_STATUS, Fault, FaultKind

logger = logging.getLogger(__name__)

MIB_PER_GB = 1024.0


class FaultController:
    """Holds the current fault; wakes handlers blocked by it when it changes or the server stops."""

    def __init__(self, on_crash: Callable[[], None], clock: Callable[[], float]) -> None:
        self._cond = threading.Condition()
        self._fault: Fault | None = None
        self._version = 0
        self._stopping = False
        self._timer: threading.Timer | None = None
        self._on_crash = on_crash
        self._clock = clock
        self._set_at = clock()
        self._inference_requests = 0  # seen under the current fault, for `errors`

    @property
    def current(self) -> Fault | None:
        with self._cond:
            return self._fault

    def set(self, fault: Fault | None) -> None:
        with self._cond:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._fault = fault
            self._version += 1
            self._set_at = self._clock()
            self._inference_requests = 0
            if fault is not None and fault.kind == "crash" and not self._stopping:
                # A timer even for 0 s, so the request that set the fault can still be answered.
                self._timer = threading.Timer(fault.seconds, self._on_crash)
                self._timer.daemon = True
                self._timer.start()
            self._cond.notify_all()
        logger.info("emulator fault is now %s", fault if fault is not None else "none")

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._cond.notify_all()

    def is_active(self, kind: FaultKind) -> bool:
        with self._cond:
            return self._is(kind)

    def wait_while_hung(self) -> bool:
        """Block while the fault is `hang`; False when the server stops meanwhile."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopping or not self._is("hang"))
            return not self._stopping

    def delay_if_slow(self) -> bool:
        """Sleep for a `slow` fault's delay; cut short when the fault changes or the server stops.

        Returns False when the server stops meanwhile.
        """
        return self.sleep(self.slow_seconds())

    def sleep(self, seconds: float) -> bool:
        """Sleep, cut short when the fault changes or the server stops; False when stopping."""
        with self._cond:
            if seconds > 0:
                version = self._version
                self._cond.wait_for(
                    lambda: self._stopping or self._version != version, timeout=seconds
                )
            return not self._stopping

    def slow_seconds(self) -> float:
        with self._cond:
            return self._fault.seconds if self._is("slow") and self._fault else 0.0

    def ttft_extra(self) -> float:
        """How much later than usual the first token comes (the `slow_ttft` fault)."""
        with self._cond:
            return self._fault.seconds if self._is("slow_ttft") and self._fault else 0.0

    def error_status(self) -> int:
        """The status an inference request must fail with, or 0; call once per request.

        `errors:F` fails request n (counted from when the fault was set) exactly when
        round-half-up(n * F) exceeds round-half-up((n - 1) * F): after N requests exactly
        round-half-up(N * F) have failed, spread evenly, with no randomness.
        """
        with self._cond:
            fault = self._fault
            if fault is None:
                return 0
            if fault.kind == "error":
                return fault.status
            if fault.kind != "errors":
                return 0
            self._inference_requests += 1
            n = self._inference_requests
            failed = _round_half_up(n * fault.fraction) > _round_half_up((n - 1) * fault.fraction)
            return ERRORS_STATUS if failed else 0

    def memory_growth_gb(self) -> float:
        """GB leaked so far under `memory_growth:RATE` (MiB per minute since the fault was set)."""
        with self._cond:
            if not self._is("memory_growth") or self._fault is None:
                return 0.0
            minutes = max(0.0, self._clock() - self._set_at) / 60.0
            return self._fault.rate * minutes / MIB_PER_GB

    def _is(self, kind: FaultKind) -> bool:
        return self._fault is not None and self._fault.kind == kind


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)
