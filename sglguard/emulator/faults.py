"""Failure modes the emulator can act out, as parsed from text such as ``slow:2``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

FaultKind = Literal[
    "hang",
    "slow",
    "crash",
    "error",
    "queue",
    "slow_ttft",
    "bad_output",
    "stall",
    "errors",
    "memory_growth",
]

VALID_MODES = (
    "hang, slow:SECONDS, crash[:SECONDS], error:STATUS, queue:N, slow_ttft:SECONDS, "
    "bad_output, stall, errors:FRACTION, memory_growth:MIB_PER_MIN"
)

# Words that mean "no fault" wherever a fault is given as text.
CLEAR_WORDS = frozenset({"", "none", "off", "clear"})

ERRORS_STATUS = 503  # what the `errors:FRACTION` fault answers


@dataclass(frozen=True)
class Fault:
    """One failure mode, as parsed from text such as ``slow:2.5`` or ``error:503``."""

    kind: FaultKind
    seconds: float = 0.0  # delay of `slow` and `slow_ttft`, time to live of `crash`
    status: int = 0  # HTTP status of `error`
    count: int = 0  # waiting requests of `queue`
    fraction: float = 0.0  # share of inference requests that `errors` fails
    rate: float = 0.0  # MiB per minute of `memory_growth`

    def __str__(self) -> str:
        renderers: dict[FaultKind, Callable[[], str]] = {
            "hang": lambda: "hang",
            "slow": lambda: f"slow:{self.seconds:g}",
            "crash": lambda: f"crash:{self.seconds:g}" if self.seconds else "crash",
            "error": lambda: f"error:{self.status}",
            "queue": lambda: f"queue:{self.count}",
            "slow_ttft": lambda: f"slow_ttft:{self.seconds:g}",
            "bad_output": lambda: "bad_output",
            "stall": lambda: "stall",
            "errors": lambda: f"errors:{self.fraction:g}",
            "memory_growth": lambda: f"memory_growth:{self.rate:g}",
        }
        return renderers[self.kind]()


def _bad(text: str, why: str) -> ValueError:
    return ValueError(f"bad fault {text!r}: {why}; valid modes are {VALID_MODES}")


def _number(text: str, arg: str, name: str, high: float = math.inf) -> float:
    try:
        value = float(arg)
    except ValueError:
        raise _bad(text, f"{name} must be a number, not {arg!r}") from None
    if not math.isfinite(value) or value < 0:
        raise _bad(text, f"{name} must be a finite number >= 0")
    if value > high:
        raise _bad(text, f"{name} must be between 0 and {high:g}")
    return value


def _integer(text: str, arg: str, name: str, low: int, high: int) -> int:
    try:
        value = int(arg)
    except ValueError:
        raise _bad(text, f"{name} must be an integer, not {arg!r}") from None
    if not low <= value <= high:
        raise _bad(text, f"{name} must be between {low} and {high}")
    return value


def _bare(kind: FaultKind) -> Callable[[str, str | None], Fault]:
    def parse(text: str, arg: str | None) -> Fault:
        if arg is not None:
            raise _bad(text, f"{kind} takes no argument")
        return Fault(kind)

    return parse


_PLACEHOLDERS = {
    "slow": "SECONDS",
    "error": "STATUS",
    "queue": "N",
    "slow_ttft": "SECONDS",
    "errors": "FRACTION",
    "memory_growth": "MIB_PER_MIN",
}


def _needs(arg: str | None, text: str, example: str) -> str:
    if arg is None:
        name = example.partition(":")[0]
        raise _bad(text, f"{name} needs {_PLACEHOLDERS[name]}, as in {example}")
    return arg


def _parse_slow(text: str, arg: str | None) -> Fault:
    return Fault("slow", seconds=_number(text, _needs(arg, text, "slow:2"), "SECONDS"))


def _parse_crash(text: str, arg: str | None) -> Fault:
    return Fault("crash", seconds=0.0 if arg is None else _number(text, arg, "SECONDS"))


def _parse_error(text: str, arg: str | None) -> Fault:
    arg = _needs(arg, text, "error:503")
    return Fault("error", status=_integer(text, arg, "STATUS", 400, 599))


def _parse_queue(text: str, arg: str | None) -> Fault:
    arg = _needs(arg, text, "queue:50")
    return Fault("queue", count=_integer(text, arg, "N", 0, 10_000_000))


def _parse_slow_ttft(text: str, arg: str | None) -> Fault:
    arg = _needs(arg, text, "slow_ttft:2")
    return Fault("slow_ttft", seconds=_number(text, arg, "SECONDS"))


def _parse_errors(text: str, arg: str | None) -> Fault:
    arg = _needs(arg, text, "errors:0.1")
    return Fault("errors", fraction=_number(text, arg, "FRACTION", high=1.0))


def _parse_memory_growth(text: str, arg: str | None) -> Fault:
    arg = _needs(arg, text, "memory_growth:100")
    return Fault("memory_growth", rate=_number(text, arg, "MIB_PER_MIN"))


_PARSERS: dict[str, Callable[[str, str | None], Fault]] = {
    "hang": _bare("hang"),
    "slow": _parse_slow,
    "crash": _parse_crash,
    "error": _parse_error,
    "queue": _parse_queue,
    "slow_ttft": _parse_slow_ttft,
    "bad_output": _bare("bad_output"),
    "stall": _bare("stall"),
    "errors": _parse_errors,
    "memory_growth": _parse_memory_growth,
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
