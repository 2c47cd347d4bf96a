"""`metric`: one Prometheus metric from `/metrics`, selected by labels and aggregated."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cached_property
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families
from pydantic import Field, field_validator

from sglguard.checks.base import Check, CheckConfig, Measurement, Status

Aggregate = Literal["sum", "max", "min", "avg"]


class MetricCheckConfig(CheckConfig):
    """A value read from the server's Prometheus metrics."""

    kind: Literal["metric"]
    metric: str = Field(pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
    labels: dict[str, str] = Field(
        default_factory=dict, description="label name -> anchored regular expression"
    )
    aggregate: Aggregate = "sum"
    unit: str = ""

    @field_validator("labels")
    @classmethod
    def _labels_compile(cls, labels: dict[str, str]) -> dict[str, str]:
        for name, pattern in labels.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"label {name}: invalid regular expression {pattern!r}: {exc}"
                ) from None
        return labels


def select_samples(
    text: str, metric: str, matchers: dict[str, re.Pattern[str]]
) -> tuple[list[float], int]:
    """Values of the samples named `metric` whose labels match, and how many had the name."""
    values: list[float] = []
    named = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != metric:
                continue
            named += 1
            if all(
                pattern.fullmatch(sample.labels.get(label, ""))
                for label, pattern in matchers.items()
            ):
                values.append(float(sample.value))
    return values, named


def aggregate(values: Iterable[float], how: Aggregate) -> float:
    items = list(values)
    if how == "sum":
        return sum(items)
    if how == "max":
        return max(items)
    if how == "min":
        return min(items)
    return sum(items) / len(items)


class MetricCheck(Check[MetricCheckConfig]):
    """Scrapes `/metrics` and aggregates the selected series."""

    kind = "metric"
    config_model = MetricCheckConfig

    @cached_property
    def _matchers(self) -> dict[str, re.Pattern[str]]:
        return {name: re.compile(pattern) for name, pattern in self.config.labels.items()}

    def run(self) -> Measurement:
        config = self.config
        text = self.client.metrics_text(timeout=self.timeout)
        values, named = select_samples(text, config.metric, self._matchers)
        if not values:
            why = (
                f"no series of {config.metric} matches labels {config.labels}"
                if named
                else f"metric {config.metric} not found in /metrics"
            )
            return Measurement(None, why, Status.UNKNOWN, config.unit)
        value = aggregate(values, config.aggregate)
        return Measurement(
            value,
            f"{config.metric} {config.aggregate} over {len(values)} series = {value:g}",
            Status.OK,
            config.unit,
        )
