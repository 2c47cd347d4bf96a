"""`metric`: a Prometheus metric from `/metrics`: instant, or over a window from stored samples."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from functools import cached_property
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sglguard.checks.base import Check, CheckConfig, Measurement, Status
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

Aggregate = Literal["sum", "max", "min", "avg"]
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
        return self

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
    """The metric is not there: UNKNOWN with a reason."""


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
        scrape = Scrape.parse(self.client.metrics_text(timeout=self.timeout), only=names)
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
            return Measurement(None, str(exc), Status.UNKNOWN, config.shown_unit)

    def _series(self, scrape: Scrape, name: str, matchers: dict[str, re.Pattern[str]],
                ignore: Iterable[str] = ()) -> tuple[str, dict[str, float]]:
        served = scrape.resolve(name)
        if served is None:
            raise _Missing(f"metric {name} not found in /metrics")
        series = scrape.select(served, matchers, ignore)
        if not series:
            labels = {key: pattern.pattern for key, pattern in matchers.items()}
            raise _Missing(f"no series of {served} matches labels {labels}")
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
        name, series = self._series(scrape, config.metric, self._matchers)
        elapsed, before, now = self.windowed(lambda prev: carry(prev, series), self._window())
        grown = window_increases(before, now)
        per_series = ({key: value / elapsed for key, value in grown.items()} if config.rate
                      else grown)
        value = aggregate(per_series.values(), config.aggregate)
        what = "rate" if config.rate else "increase"
        return self._measure(value, f"{what} of {name} over {_span(elapsed)} "
                                    f"({config.aggregate} of {len(series)} series) = {value:g}")

    def _ratio(self, scrape: Scrape, ratio: RatioTo) -> Measurement:
        config = self.config
        name = scrape.resolve(config.metric)
        if name is None:
            raise _Missing(f"metric {config.metric} not found in /metrics")
        numerator = scrape.select(name, self._matchers)  # none matching: none counted yet
        denominator_name = scrape.resolve(ratio.metric)
        denominator = (scrape.select(denominator_name, _matchers(ratio.labels))
                       if denominator_name else {})
        if not denominator:
            raise _Missing(f"metric {ratio.metric} (the denominator) not found in /metrics")
        elapsed, before, now = self.windowed(lambda prev: {
            "num": carry(prev and prev.get("num"), numerator),
            "den": carry(prev and prev.get("den"), denominator)}, self._window())
        top = sum(window_increases(before.get("num", {}), now["num"]).values())
        bottom = sum(window_increases(before.get("den", {}), now["den"]).values())
        if bottom <= 0:
            return self._measure(None, f"no {ratio.metric} in the last {_span(elapsed)}: "
                                       "ratio undefined")
        value = top / bottom
        return self._measure(value, f"{name} / {ratio.metric} over {_span(elapsed)} = "
                                    f"{top:g} / {bottom:g} = {value:.4g}")

    def _quantile(self, scrape: Scrape, quantile: float) -> Measurement:
        config = self.config
        names = (config.metric, ALIASES.get(config.metric))
        served = next((f"{name}_bucket" for name in names
                       if name is not None and f"{name}_bucket" in scrape.samples), None)
        if served is None:
            raise _Missing(f"histogram {config.metric} not found in /metrics")
        _, buckets = self._series(scrape, served, self._matchers, ignore=("le",))
        elapsed, before, now = self.windowed(lambda prev: carry(prev, buckets), self._window())
        observed = merge_buckets(window_increases(before, now))
        value = histogram_quantile(quantile, observed)
        count = observed.get(float("inf"), 0.0)
        label = f"p{quantile * 100:g} of {served.removesuffix('_bucket')} over {_span(elapsed)}"
        if value is None:
            return self._measure(None, f"{label}: no observations in the window")
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
