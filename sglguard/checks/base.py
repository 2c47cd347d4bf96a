"""What every check kind shares: config fields, statuses, results, and the run wrapper."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Literal, Protocol, TypeVar

from pydantic import Field, WithJsonSchema, field_validator, model_validator

from sglguard.bounded import DEFAULT_MAX_ANSWER, budget
from sglguard.client import SGLangClient, TargetError
from sglguard.clock import utcnow
from sglguard.config.base import ConfigModel, KindModel, Name
from sglguard.config.types import ByteSize, Duration, Threshold, ThresholdField, format_duration
from sglguard.domain import CheckResult, Measurement, SamplesUnavailable, Status
from sglguard.logs import log_context
from sglguard.redact import clean, remember

if TYPE_CHECKING:
    from sglguard.config.models import TargetConfig

logger = logging.getLogger(__name__)


class FailureWindow(ConfigModel):
    """`count` non-OK results among the last `within` (Monit's 3 TIMES WITHIN 5 CYCLES)."""

    count: int = Field(ge=1, le=21)
    within: int = Field(ge=1, le=21)

    @model_validator(mode="after")
    def _fits(self) -> FailureWindow:
        if self.count > self.within:
            raise ValueError("count cannot exceed within")
        return self


class Flapping(ConfigModel):
    """Nagios flap detection over the last 21 states: start at `high` %, stop below `low` %."""

    enabled: bool = True
    high: float = Field(default=30.0, gt=0, le=100)
    low: float = Field(default=20.0, gt=0, le=100)

    @model_validator(mode="after")
    def _ordered(self) -> Flapping:
        if self.low > self.high:
            raise ValueError("low cannot exceed high")
        return self


class CheckConfig(KindModel):
    """Fields every check has; a kind's model adds its own."""

    family: ClassVar[str] = "check"
    name: Name
    target: Name
    interval: Duration = timedelta(seconds=30)
    timeout: Duration = timedelta(seconds=10)
    max_answer: ByteSize = Field(
        default=DEFAULT_MAX_ANSWER,
        description="largest answer read from the server, counted after decompression; "
                    "a larger one is an UNKNOWN result")
    jitter: Duration | None = Field(
        default=None, description="each run falls up to this long after its slot, at random; "
                                  "runs keep the interval on average (default 10% of it)"
    )
    failure_threshold: int = Field(default=3, ge=1, le=1000)
    failures: FailureWindow | None = Field(
        default=None, description="X of Y: replaces failure_threshold for intermittent faults")
    flapping: Flapping = Flapping()
    mode: Literal["active", "passive"] | None = Field(
        default=None, description="passive: detect and notify, never remediate (default: "
                                  "the catalog's mode)")
    hold: Duration | None = Field(
        default=None, alias="for",
        description="a breach must hold this long (as Prometheus' `for:`); replaces "
                    "failure_threshold")
    success_threshold: int = Field(default=1, ge=1, le=1000)
    remediate_on_unknown: bool = Field(
        default=False,
        description="run destructive remediations (restart, reduce_concurrency, "
                    "abort_requests) also when the check could not evaluate (UNKNOWN); by "
                    "default they need a measured breach")
    warning: ThresholdField | None = None
    critical: ThresholdField | None = None
    remediate: tuple[Name, ...] = ()
    depends_on: Annotated[tuple[Name, ...], WithJsonSchema({
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})] = Field(
        default=(), description="while one of these checks is not OK, this one is skipped "
                                "(a name, or a list of names)")
    runbook: str | None = Field(
        default=None, description="link (or short text) notifications show for this check")

    @field_validator("depends_on", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> CheckConfig:
        if self.timeout > self.interval * 10:
            raise ValueError("timeout is more than ten intervals: runs would pile up")
        chosen = [name for name, given in (
            ("failure_threshold", "failure_threshold" in self.model_fields_set),
            ("for", self.hold is not None), ("failures", self.failures is not None)) if given]
        if len(chosen) > 1:
            raise ValueError(f"give one of failure_threshold, for, failures (got "
                             f"{', '.join(chosen)})")
        if self.name in self.depends_on:
            raise ValueError("a check cannot depend on itself")
        return self

    @property
    def jitter_seconds(self) -> float:
        jitter = self.jitter if self.jitter is not None else self.interval / 10
        return min(jitter.total_seconds(), self.interval.total_seconds() / 2)


class SampleBook(Protocol):
    """Where checks keep what they saw, for values over a window."""

    def save(self, check: str, at: datetime, data: dict[str, Any], keep: timedelta) -> None: ...

    def earliest_since(self, check: str, since: datetime,
                       before: datetime) -> tuple[datetime, dict[str, Any]] | None: ...

    def latest(self, check: str) -> tuple[datetime, dict[str, Any]] | None: ...


class NoWindowYet(Exception):
    """A windowed value needs an earlier sample than the store has ("no data", not a breach)."""


@dataclass(frozen=True)
class CheckContext:
    """What a check may use: its target, that target's client, the clock, secrets to hide,
    and the sample book for windowed values."""

    target: TargetConfig
    client: SGLangClient
    clock: Callable[[], datetime] = field(default=utcnow)
    secrets: Sequence[str] = ()
    samples: SampleBook | None = None


ConfigT = TypeVar("ConfigT", bound=CheckConfig)


def apply_thresholds(measurement: Measurement, warning: Threshold | None,
                     critical: Threshold | None) -> tuple[Status, str]:
    """Combine the kind's own judgement with the configured thresholds."""
    status = measurement.status if measurement.status is not None else Status.OK
    message = measurement.message
    if status is Status.UNKNOWN or measurement.value is None:
        return status, message
    for level, threshold in ((Status.CRITICAL, critical), (Status.WARNING, warning)):
        if threshold is not None and threshold.breached(measurement.value):
            shown = f"{measurement.value:g}{(' ' + measurement.unit) if measurement.unit else ''}"
            note = f"{shown} {threshold} ({level.label})"
            return max(status, level), f"{message}; {note}" if message else note
    return status, message


class Check(Generic[ConfigT]):
    """Base of check kinds: owns timing, timeouts, exception -> UNKNOWN and redaction."""

    kind: ClassVar[str]
    config_model: ClassVar[type[CheckConfig]]

    def __init__(self, config: ConfigT, context: CheckContext) -> None:
        self.config = config
        self.context = context

    @property
    def client(self) -> SGLangClient:
        return self.context.client

    @property
    def timeout(self) -> float:
        return self.config.timeout.total_seconds()

    def run(self) -> Measurement:
        raise NotImplementedError

    def windowed(self, build: Callable[[dict[str, Any] | None], dict[str, Any]],
                 window: timedelta) -> tuple[float, dict[str, Any], dict[str, Any]]:
        """Save this run's sample, built from the previous one (or None); return the seconds
        since the oldest sample in `window`, that sample, and this one.

        Raises NoWindowYet until the window holds an earlier sample."""
        book = self.context.samples
        if book is None:
            raise NoWindowYet(f"a {format_duration(window)} window needs the store")
        now = self.context.clock()
        try:
            latest = book.latest(self.config.name)
            data = build(latest[1] if latest is not None and latest[0] < now else None)
            baseline = book.earliest_since(self.config.name, now - window, now)
            book.save(self.config.name, now, data, keep=window * 2)
        except SamplesUnavailable as exc:  # sglguard's trouble: no data, not an UNKNOWN server
            raise NoWindowYet(f"{exc}: the {format_duration(window)} window waits for it") \
                from None
        if baseline is None:
            raise NoWindowYet(
                f"collecting samples for the {format_duration(window)} window: "
                "this run is the first in it, a value needs two")
        taken_at, before = baseline
        return (now - taken_at).total_seconds(), before, data

    def execute(self) -> CheckResult:
        """Run once; never raises for a failing target or a bug in the kind."""
        started_at = self.context.clock()
        began = time.perf_counter()
        try:
            # The timeout is the whole run's wall time, whatever the server's pace.
            with log_context(check=self.config.name, target=self.config.target), \
                    budget(self.timeout, self.config.max_answer):
                measurement = self.run()
        except TargetError as exc:
            measurement = Measurement(None, f"could not evaluate: {exc}", Status.UNKNOWN)
        except NoWindowYet as exc:  # "no data": only an unreadable target is UNKNOWN
            measurement = Measurement(None, f"no data: {exc}", Status.OK, counts=False)
        except Exception as exc:
            logger.warning("check %s raised", self.config.name, exc_info=True,
                           extra={"check": self.config.name, "target": self.config.target})
            measurement = Measurement(
                None, f"check failed: {type(exc).__name__}: {exc}", Status.UNKNOWN
            )
        if measurement.value is not None and not math.isfinite(measurement.value):
            # NaN compares false with every threshold: it would pass as OK.
            shown = "; ".join(part for part in (
                f"the value is not a finite number ({measurement.value})",
                measurement.message) if part)
            measurement = Measurement(None, shown, Status.UNKNOWN, measurement.unit)
        duration_ms = (time.perf_counter() - began) * 1000.0
        status, message = apply_thresholds(measurement, self.config.warning, self.config.critical)
        return CheckResult(
            check=self.config.name,
            target=self.config.target,
            status=status,
            value=measurement.value,
            unit=measurement.unit,
            message=self._redact(message),
            duration_ms=round(duration_ms, 3),
            started_at=started_at,
            counts=measurement.counts,
        )

    def _redact(self, text: str) -> str:
        remember(self.context.secrets)
        return clean(text)
