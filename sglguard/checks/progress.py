"""`progress`: a hang is requests running while no token is decoded (no 20 s /health wait).

It runs on its own signal: where `/metrics` cannot be read it reports "no data" (never a
failure: a server that does not answer is liveness's to page for), so it needs no
`depends_on` and still fires on a live server whose decode counter stops while requests run."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

from pydantic import Field

from sglguard.checks import pages
from sglguard.checks.base import Check, CheckConfig, NoWindowYet
from sglguard.checks.metric import no_data
from sglguard.checks.promql import Scrape, carry, window_increases
from sglguard.client import TargetError
from sglguard.config.types import Duration
from sglguard.domain import Measurement, Status

# Only the total of each rank: with priority scheduling the gauges are also split by priority.
_TOTALS = {"priority": re.compile("")}


class ProgressCheckConfig(CheckConfig):
    """Decoded tokens must advance over `window` whenever requests are running."""

    kind: Literal["progress"]
    window: Duration = Field(default=timedelta(minutes=1))
    tokens_metric: str = Field(
        default="sglang:realtime_tokens_total",
        description="moves on every decode step (SGLang 0.5.23), so one long generation is "
                    "progress")
    tokens_labels: dict[str, str] = Field(default_factory=lambda: {"mode": "decode"})
    prefill_labels: dict[str, str] = Field(
        default_factory=lambda: {"mode": "prefill_compute"},
        description="on a PD prefill worker (engine_type=\"prefill\"), which never decodes, "
                    "its prefill steps are its progress")
    fallback_metric: str | None = Field(
        default="sglang:generation_tokens_total",
        description="used only where tokens_metric is not served: it moves when a request "
                    "finishes, so a generation longer than the window looks like a hang")
    running_metric: str = "sglang:num_running_reqs"


class ProgressCheck(Check[ProgressCheckConfig]):
    """CRITICAL when the decode counter has not moved over the window while requests run."""

    kind = "progress"
    config_model = ProgressCheckConfig

    def run(self) -> Measurement:
        config = self.config
        names = [config.tokens_metric, config.running_metric]
        if config.fallback_metric:
            names.append(config.fallback_metric)
        try:
            scrape = pages.scrape(self.client, self.context.target, names, self.timeout,
                                  self.config.interval.total_seconds())
        except TargetError as exc:
            # A server that does not answer is the liveness check's to judge (one outage, one
            # page): progress needs no `depends_on`, and judges only a server it can read.
            return no_data(f"cannot read /metrics ({exc}): nothing to judge progress by",
                           "tokens")
        running_series = scrape.select(config.running_metric, _TOTALS)
        if not running_series:
            return no_data(f"metric {config.running_metric} not found in /metrics", "tokens")
        chosen = (config.prefill_labels if _prefill_worker(scrape, config.tokens_metric)
                  else config.tokens_labels)
        labels = {name: re.compile(pattern) for name, pattern in chosen.items()}
        decoded = scrape.select(config.tokens_metric, labels)
        finished = (scrape.select(config.fallback_metric, {}) if config.fallback_metric
                    else {})
        # Both are carried (absent = nothing counted yet), so a switch inside the window and
        # the first tokens after a series appears are both counted.
        elapsed, before, now = self.windowed(lambda prev: {
            "decode": carry(prev and prev.get("decode"), decoded),
            "finished": carry(prev and prev.get("finished"), finished)}, config.window)
        if elapsed < config.window.total_seconds() / 2:  # too short to call anything a hang
            raise NoWindowYet(f"collecting samples: {elapsed:.0f} s of the "
                              f"{config.window.total_seconds():g} s window so far")
        served = config.tokens_metric in scrape.samples or not config.fallback_metric
        source, which = (("decode", config.tokens_metric) if served
                         else ("finished", config.fallback_metric))
        generated = sum(window_increases(before.get(source, {}), now[source]).values())
        running = sum(running_series.values())
        span = f"{elapsed:.0f} s"
        if running > 0 and generated <= 0:
            return Measurement(generated, f"hung: no token generated in {span} while "
                                          f"{running:g} requests are running ({which})",
                               Status.CRITICAL, "tokens")
        state = f"{running:g} requests running" if running > 0 else "idle"
        return Measurement(generated, f"{generated:g} tokens in {span} ({which}), {state}",
                           Status.OK, "tokens")


def _prefill_worker(scrape: Scrape, metric: str) -> bool:
    series = scrape.samples.get(metric, ())
    return bool(series) and all(labels.get("engine_type") == "prefill" for labels, _ in series)
