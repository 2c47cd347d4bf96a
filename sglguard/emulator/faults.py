"""Failure modes the emulator can act out, and the switch that holds the current one."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)

FaultKind = Literal["hang", "slow", "crash", "error", "queue"]

VALID_MODES = "hang, slow:SECONDS, crash[:SECONDS], error:STATUS, queue:N"

# Words that mean "no fault" wherever a fault is given as text.
CLEAR_WORDS = frozenset({"", "none", "off", "clear"})


@dataclass(frozen=True)
class Fault:
    """One failure mode, as parsed from text such as ``slow:2.5`` or ``error:503``."""

    kind: FaultKind
    seconds: float = 0.0  # delay of `slow`, time to live of `crash`
    status: int = 0  # HTTP status of `error`
    count: int = 0  # waiting requests of `queue`

    def __str__(self) -> str:
        renderers: dict[FaultKind, Callable[[], str]] = {
            "hang": lambda: "hang",
            "slow": lambda: f"slow:{self.seconds:g}",
            "crash": lambda: f"crash:{self.seconds:g}" if self.seconds else "crash",
            "error": lambda: f"error:{self.status}",
            "queue": lambda: f"queue:{self.count}",
        }
        return renderers[self.kind]()


def _bad(text: str, why: str) -> ValueError:
    return ValueError(f"bad fault {text!r}: {why}; valid modes are {VALID_MODES}")


def _seconds(text: str, arg: str) -> float:
    try:
        value = float(arg)
    except ValueError:
        raise _bad(text, f"SECONDS must be a number, not {arg!r}") from None
    if not math.isfinite(value) or value < 0:
        raise _bad(text, "SECONDS must be a finite number >= 0")
    return value


def _integer(text: str, arg: str, name: str, low: int, high: int) -> int:
    try:
        value = int(arg)
    except ValueError:
        raise _bad(text, f"{name} must be an integer, not {arg!r}") from None
    if not low <= value <= high:
        raise _bad(text, f"{name} must be between {low} and {high}")
    return value


def _parse_hang(text: str, arg: str | None) -> Fault:
    if arg is not None:
        raise _bad(text, "hang takes no argument")
    return Fault("hang")


def _parse_slow(text: str, arg: str | None) -> Fault:
    if arg is None:
        raise _bad(text, "slow needs SECONDS, as in slow:2")
    return Fault("slow", seconds=_seconds(text, arg))


def _parse_crash(text: str, arg: str | None) -> Fault:
    return Fault("crash", seconds=0.0 if arg is None else _seconds(text, arg))


def _parse_error(text: str, arg: str | None) -> Fault:
    if arg is None:
        raise _bad(text, "error needs STATUS, as in error:503")
    return Fault("error", status=_integer(text, arg, "STATUS", 400, 599))


def _parse_queue(text: str, arg: str | None) -> Fault:
    if arg is None:
        raise _bad(text, "queue needs N, as in queue:50")
    return Fault("queue", count=_integer(text, arg, "N", 0, 10_000_000))


_PARSERS: dict[str, Callable[[str, str | None], Fault]] = {
    "hang": _parse_hang,
    "slow": _parse_slow,
    "crash": _parse_crash,
    "error": _parse_error,
    "queue": _parse_queue,
}


def parse_fault(text: str) -> Fault:
    """Parse fault text such as ``slow:2``; raise ValueError naming the valid modes."""
    name, sep, arg = text.strip().partition(":")
    parser = _PARSERS.get(name.strip().lower())
    if parser is None:
        raise ValueError(f"unknown fault {text!r}: valid modes are {VALID_MODES}")
    return parser(text, arg.strip() if sep else None)


def parse_optional_fault(text: str | None) -> Fault | None:
    """Like parse_fault, but None and words such as ``none`` mean no fault."""
    if text is None or text.strip().lower() in CLEAR_WORDS:
        return None
    return parse_fault(text)


class FaultController:
    """Holds the current fault; wakes handlers blocked by it when it changes or the server stops."""

    def __init__(self, on_crash: Callable[[], None]) -> None:
        self._cond = threading.Condition()
        self._fault: Fault | None = None
        self._version = 0
        self._stopping = False
        self._timer: threading.Timer | None = None
        self._on_crash = on_crash

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

    def wait_while_hung(self) -> bool:
        """Block while the fault is `hang`; False when the server stops meanwhile."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopping or not self._is("hang"))
            return not self._stopping

    def delay_if_slow(self) -> bool:
        """Sleep for a `slow` fault's delay; cut short when the fault changes or the server stops.

        Returns False when the server stops meanwhile.
        """
        with self._cond:
            fault, version = self._fault, self._version
            if fault is None or fault.kind != "slow":
                return not self._stopping
            self._cond.wait_for(
                lambda: self._stopping or self._version != version, timeout=fault.seconds
            )
            return not self._stopping

    def slow_seconds(self) -> float:
        with self._cond:
            return self._fault.seconds if self._is("slow") and self._fault else 0.0

    def error_status(self) -> int:
        with self._cond:
            return self._fault.status if self._is("error") and self._fault else 0

    def _is(self, kind: FaultKind) -> bool:
        return self._fault is not None and self._fault.kind == kind
