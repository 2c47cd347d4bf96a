"""`metric`: a Prometheus metric from `/metrics`: instant, or over a window from stored samples."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from functools import cached_property
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sglguard.checks import pages
from sglguard.checks.base import Check, CheckConfig
from sglguard.checks.promql import (
    ALIASES,
    Scrape,
    carry,
    histogram_quantile,
    merge_buckets,
    window_increases,
)
from sglguard.config.base import ConfigModel
from sglguard.config.types import Duration, format_duration
from sglguard.domain import Measurement, Status

Aggregate = Literal["sum", "max", "min", "avg"]
OnAbsent = Literal["zero", "no_data", "unknown", "critical"]
MetricName = Field(pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def _compile_labels(labels: dict[str, str]) -> dict[str, str]:
    for name, pattern in labels.items():
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(
                f"label {name}: invalid regular expression {pattern!r}: {exc}") from None
    return labels


class RatioTo(ConfigModel):
    """The denominator of a ratio: another counter and its label matchers."""

    metric: str = MetricName
    labels: dict[str, str] = Field(default_factory=dict)

    _check_labels = field_validator("labels")(_compile_labels)


class MetricCheckConfig(CheckConfig):
    """A value read from the server's Prometheus metrics."""

    kind: Literal["metric"]
    metric: str = MetricName
    labels: dict[str, str] = Field(
        default_factory=dict, description="label name -> anchored regular expression")
    aggregate: Aggregate = "sum"
    unit: str | None = None
    window: Duration | None = None
    rate: bool = False
    increase: bool = False
    quantile: float | None = Field(default=None, ge=0.0, le=1.0)
    ratio_to: RatioTo | None = None
    change_over: Duration | None = None
    on_absent: OnAbsent | None = Field(
        default=None, description="what a page without the metric (or without a matching "
        "series) means: zero (nothing counted yet; the default of rate, increase and "
        "ratio_to), no_data (not evaluated; the default of the others), unknown, critical")

    _check_labels = field_validator("labels")(_compile_labels)

    @model_validator(mode="after")
    def _one_function(self) -> MetricCheckConfig:
        chosen = [name for name, on in (
            ("rate", self.rate), ("increase", self.increase),
            ("quantile", self.quantile is not None), ("ratio_to", self.ratio_to is not None),
            ("change_over", self.change_over is not None)) if on]
        if len(chosen) > 1:
            raise ValueError(f"choose one of rate, increase, quantile, ratio_to, change_over "
                             f"(got {', '.join(chosen)})")
        if chosen and chosen[0] != "change_over" and self.window is None:
            raise ValueError(f"{chosen[0]} needs a `window:` such as 5m")
        if self.change_over is not None and self.window is not None:
            raise ValueError("change_over is itself the window: remove `window:`")
        if self.window is not None and not chosen:
            raise ValueError("`window:` needs one of rate, increase, quantile, ratio_to")
        if self.on_absent == "zero" and self.quantile is not None:
            raise ValueError("on_absent: zero does not apply to a quantile (a histogram with "
                             "no observations has no quantile): use no_data, unknown or "
                             "critical")
        return self

    @property
    def absent(self) -> OnAbsent:
        """`on_absent`, or the default of this check's function."""
        if self.on_absent is not None:
            return self.on_absent
        counted = self.rate or self.increase or self.ratio_to is not None
        return "zero" if counted else "no_data"

    @property
    def shown_unit(self) -> str:
        if self.unit is not None:
            return self.unit
        if self.rate:
            return "/s"
        if self.ratio_to is not None:
            return "ratio"
        if self.quantile is not None and self.metric.endswith("_seconds"):
            return "s"
        return ""


def aggregate(values: Iterable[float], how: Aggregate) -> float:
    items = list(values)
    if not items:
        return 0.0  # only with on_absent: zero
    if how == "sum":
        return sum(items)
    if how == "max":
        return max(items)
    if how == "min":
        return min(items)
    return sum(items) / len(items)


def _matchers(labels: dict[str, str]) -> dict[str, re.Pattern[str]]:
    return {name: re.compile(pattern) for name, pattern in labels.items()}


class _Missing(Exception):
    """The metric (or a matching series) is not on a page that was read: judged by
    `on_absent`."""


def no_data(message: str, unit: str = "") -> Measurement:
    """Nothing to judge (a histogram with no observations in the window, an undefined ratio,
    an absent metric): recorded, never counted toward a failure threshold or a recovery."""
    return Measurement(None, f"no data: {message}", Status.OK, unit, counts=False)


class MetricCheck(Check[MetricCheckConfig]):
    """Scrapes `/metrics` and evaluates the selected series, now or over a window."""

    kind = "metric"
    config_model = MetricCheckConfig

    @cached_property
    def _matchers(self) -> dict[str, re.Pattern[str]]:
        return _matchers(self.config.labels)

    def run(self) -> Measurement:
        config = self.config
        names = [config.metric] + ([config.ratio_to.metric] if config.ratio_to else [])
        scrape = pages.scrape(self.client, self.context.target, names, self.timeout,
                              self.config.interval.total_seconds())
        try:
            if config.quantile is not None:
                return self._quantile(scrape, config.quantile)
            if config.ratio_to is not None:
                return self._ratio(scrape, config.ratio_to)
            if config.rate or config.increase:
                return self._increase(scrape)
            if config.change_over is not None:
                return self._change(scrape, config.change_over)
            return self._instant(scrape)
        except _Missing as exc:
            return self._absent(str(exc))

    def _absent(self, why: str) -> Measurement:
        how, unit = self.config.absent, self.config.shown_unit
        if self.context.target.role == "gateway" and not self.config.metric.startswith("smg_"):
            why += (f" ({self.config.metric} is not a gateway's metric: a gateway serves smg_* "
                    "families; an SGLang server's are read from the worker's own target)")
        if how == "no_data":
            return no_data(why, unit)
        if how == "zero":
            return self._measure(0.0, f"{why}: counts as 0 (on_absent: zero)")
        status = Status.UNKNOWN if how == "unknown" else Status.CRITICAL
        return Measurement(None, f"{why} (on_absent: {how})", status, unit)

    def _select(self, scrape: Scrape, name: str, matchers: dict[str, re.Pattern[str]],
                ignore: Iterable[str] = ()) -> tuple[str, dict[str, float], str | None]:
        """The name as served, its matching series, and why there are none (or None)."""
        served = scrape.resolve(name)
        if served is None:
            return name, {}, f"metric {name} not found in /metrics"
        series = scrape.select(served, matchers, ignore)
        if not series:
            labels = {key: pattern.pattern for key, pattern in matchers.items()}
            return served, {}, f"no series of {served} matches labels {labels}"
        return served, series, None

    def _series(self, scrape: Scrape, name: str, matchers: dict[str, re.Pattern[str]],
                ignore: Iterable[str] = ()) -> tuple[str, dict[str, float]]:
        served, series, missing = self._select(scrape, name, matchers, ignore)
        if missing is not None:
            raise _Missing(missing)
        return served, series

    def _measure(self, value: float | None, text: str) -> Measurement:
        return Measurement(value, text, Status.OK, self.config.shown_unit)

    def _instant(self, scrape: Scrape) -> Measurement:
        config = self.config
        name, series = self._series(scrape, config.metric, self._matchers)
        value = aggregate(series.values(), config.aggregate)
        return self._measure(
            value, f"{name} {config.aggregate} over {len(series)} series = {value:g}")

    def _window(self) -> timedelta:
        assert self.config.window is not None
        return self.config.window

    def _increase(self, scrape: Scrape) -> Measurement:
        config = self.config
        name, series, missing = self._select(scrape, config.metric, self._matchers)
        # Stored even when absent: the first burst after the series appears is counted.
        elapsed, before, now = self.windowed(lambda prev: carry(prev, series), self._window())
        if missing is not None and config.absent != "zero":
            raise _Missing(missing)
        grown = window_increases(before, now)
        per_series = ({key: value / elapsed for key, value in grown.items()} if config.rate
                      else grown)
        value = aggregate(per_series.values(), config.aggregate)
        what = "rate" if config.rate else "increase"
        note = f"; now {missing} (not counted yet, or gone with a restart)" if missing else ""
        return self._measure(value, f"{what} of {name} over {_span(elapsed)} "
                                    f"({config.aggregate} of {len(grown)} series) = {value:g}"
                                    f"{note}")

    def _ratio(self, scrape: Scrape, ratio: RatioTo) -> Measurement:
        config = self.config
        name, numerator, missing = self._select(scrape, config.metric, self._matchers)
        _, denominator, _ = self._select(scrape, ratio.metric, _matchers(ratio.labels))
        elapsed, before, now = self.windowed(lambda prev: {
            "num": carry(prev and prev.get("num"), numerator),
            "den": carry(prev and prev.get("den"), denominator)}, self._window())
        if missing is not None and config.absent != "zero":
            raise _Missing(missing)
        top = sum(window_increases(before.get("num", {}), now["num"]).values())
        bottom = sum(window_increases(before.get("den", {}), now["den"]).values())
        if bottom <= 0:
            return no_data(f"no {ratio.metric} in the last {_span(elapsed)}: ratio undefined",
                           config.shown_unit)
        value = top / bottom
        return self._measure(value, f"{name} / {ratio.metric} over {_span(elapsed)} = "
                                    f"{top:g} / {bottom:g} = {value:.4g}")

    def _quantile(self, scrape: Scrape, quantile: float) -> Measurement:
        config = self.config
        names = (config.metric, ALIASES.get(config.metric))
        served = next((f"{name}_bucket" for name in names
                       if name is not None and f"{name}_bucket" in scrape.samples),
                      f"{config.metric}_bucket")
        _, buckets, missing = self._select(scrape, served, self._matchers, ignore=("le",))
        if missing is not None and served not in scrape.samples:
            missing = f"histogram {config.metric} not found in /metrics"
        elapsed, before, now = self.windowed(lambda prev: carry(prev, buckets), self._window())
        if missing is not None:
            raise _Missing(missing)
        observed = merge_buckets(window_increases(before, now))
        value = histogram_quantile(quantile, observed)
        count = observed.get(float("inf"), 0.0)
        label = f"p{quantile * 100:g} of {served.removesuffix('_bucket')} over {_span(elapsed)}"
        if value is None:
            return no_data(f"{label}: no observations in the window", config.shown_unit)
        unit = f" {config.shown_unit}" if config.shown_unit else ""
        return self._measure(value, f"{label} = {value:.4g}{unit} ({count:g} observations)")

    def _change(self, scrape: Scrape, window: timedelta) -> Measurement:
        config = self.config
        name, series = self._series(scrape, config.metric, self._matchers)
        value = aggregate(series.values(), config.aggregate)
        elapsed, before, _ = self.windowed(lambda _prev: {"value": value}, window)
        change = value - float(before["value"])
        return self._measure(change, f"{name} {config.aggregate} changed by {change:+g} in "
                                     f"{_span(elapsed)} (now {value:g})")


def _span(seconds: float) -> str:
    return format_duration(timedelta(seconds=round(seconds))) if seconds >= 1 else f"{seconds:.2f}s"
