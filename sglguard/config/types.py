"""Value types of the catalog: durations, thresholds and HTTP URLs."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> timedelta:
    """Turn `30s`, `5m`, `1h`, `250ms` or a number of seconds into a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(
            f"invalid duration {value!r}: expected a number with a unit, e.g. 2s, 5m, 1h")
    if seconds <= 0:
        raise ValueError(f"invalid duration {value!r}: must be greater than zero")
    return timedelta(seconds=seconds)


def parse_duration_or_zero(value: Any) -> timedelta:
    """As parse_duration, and `0` (any unit) for "none"."""
    zero = (isinstance(value, int | float) and not isinstance(value, bool) and value == 0) or (
        isinstance(value, str) and (match := _DURATION.match(value)) is not None
        and float(match.group(1)) == 0)
    return timedelta(0) if zero else parse_duration(value)


def format_duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


_DURATION_SCHEMA = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)\s*$"

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"anyOf": [
        {"type": "string", "pattern": _DURATION_SCHEMA}, {"type": "number", "exclusiveMinimum": 0}],
        "description": "a duration: 250ms, 30s, 5m, 1h, 1d (or seconds as a number)"}),
]

# Where zero means "none" (e.g. no batching): 0s is allowed.
DurationOrZero = Annotated[
    timedelta,
    BeforeValidator(parse_duration_or_zero),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"anyOf": [
        {"type": "string", "pattern": _DURATION_SCHEMA}, {"type": "number", "minimum": 0}],
        "description": "a duration: 0s (none), 250ms, 30s, 5m, 1h (or seconds as a number)"}),
]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_UNIT_BYTES = {"B": 1, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2,
               "GB": 1000**3, "GiB": 1024**3}


def parse_size(value: Any) -> int:
    """Turn `16MiB`, `500KB` or a number of bytes into bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 16MiB or 500KB")
    if isinstance(value, int | float):
        size = float(value)
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        size = float(match.group(1)) * _UNIT_BYTES[match.group(2) or "B"]
    else:
        raise ValueError(f"invalid size {value!r}: expected bytes with a unit, e.g. 16MiB, 500KB")
    if size < 1:
        raise ValueError(f"invalid size {value!r}: must be at least one byte")
    return int(size)


def format_size(value: int) -> str:
    for unit in ("GiB", "MiB", "KiB"):
        if value >= _UNIT_BYTES[unit] and value % _UNIT_BYTES[unit] == 0:
            return f"{value // _UNIT_BYTES[unit]}{unit}"
    return f"{value}B"


ByteSize = Annotated[int, BeforeValidator(parse_size),
                     PlainSerializer(format_size, return_type=str)]

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
_THRESHOLD = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Threshold:
    """A comparison such as `> 50`: the value breaches when the comparison holds."""

    op: str
    bound: float

    def breached(self, value: float) -> bool:
        return _OPERATORS[self.op](value, self.bound)

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}"


def parse_threshold(value: Any) -> Threshold:
    if isinstance(value, Threshold):
        return value
    match = _THRESHOLD.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            f"invalid threshold {value!r}: expected an operator and a number, "
            "e.g. \"> 50\", \">= 0.9\", \"< 10\" (operators: > >= < <= == !=)"
        )
    return Threshold(match.group(1), float(match.group(2)))


ThresholdField = Annotated[
    Threshold,
    BeforeValidator(parse_threshold),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({
        "type": "string", "pattern": r"^\s*(>=|<=|==|!=|>|<)\s*-?\d+(\.\d+)?([eE][-+]?\d+)?\s*$",
        "description": 'an operator and a number: "> 50", ">= 0.9", "< 10" (> >= < <= == !=)'}),
]


_HTTP_URL = re.compile(r"^https?://[^\s/?#]+(/\S*)?$")


def check_http_url(value: Any) -> str:
    """An http(s) URL with a host; a mistake is named in words, with the fix where there is one."""
    if not isinstance(value, str):
        raise ValueError(f"expected a URL such as http://127.0.0.1:30000, got {value!r}")
    if "://" not in value:
        raise ValueError(f"{value!r} has no scheme: write http://{value.lstrip('/')} "
                         "(or https://...)")
    scheme = value.split("://", 1)[0]
    if scheme.lower() not in ("http", "https"):
        raise ValueError(f"{value!r}: the scheme must be http or https, not {scheme!r}")
    if not _HTTP_URL.match(value):
        raise ValueError(f"{value!r} is not a URL sglguard can use: expected "
                         "http(s)://HOST[:PORT][/PATH], with a host and no spaces")
    return value


HttpUrl = Annotated[str, BeforeValidator(check_http_url)]
