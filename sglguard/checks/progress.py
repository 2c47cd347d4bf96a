"""`progress`: a hang is requests running while no token is generated (no 20 s /health wait)."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field

from sglguard.checks.base import Check, CheckConfig, Measurement, NoWindowYet, Status
from sglguard.checks.promql import Scrape, carry, window_increases
from sglguard.config.types import Duration


class ProgressCheckConfig(CheckConfig):
    """Generated tokens must advance over `window` whenever requests are running."""

    kind: Literal["progress"]
    window: Duration = Field(default=timedelta(minutes=1))
    tokens_metric: str = "sglang:generation_tokens_total"
    running_metric: str = "sglang:num_running_reqs"


class ProgressCheck(Check[ProgressCheckConfig]):
    """CRITICAL when the token counter has not moved over the window while requests run."""

    kind = "progress"
    config_model = ProgressCheckConfig

    def run(self) -> Measurement:
        config = self.config
        scrape = Scrape.parse(self.client.metrics_text(timeout=self.timeout),
                              only=(config.tokens_metric, config.running_metric))
        tokens = scrape.select(config.tokens_metric, {})
        running_series = scrape.select(config.running_metric, {})
        if not tokens or not running_series:
            missing = config.tokens_metric if not tokens else config.running_metric
            return Measurement(None, f"metric {missing} not found in /metrics",
                               Status.UNKNOWN, "tokens")
        running = sum(running_series.values())
        elapsed, before, now = self.windowed(lambda prev: carry(prev, tokens), config.window)
        if elapsed < config.window.total_seconds() / 2:  # too short to call anything a hang
            raise NoWindowYet(f"collecting samples: {elapsed:.0f} s of the "
                              f"{config.window.total_seconds():g} s window so far")
        generated = sum(window_increases(before, now).values())
        span = f"{elapsed:.0f} s"
        if running > 0 and generated <= 0:
            return Measurement(generated, f"hung: no token generated in {span} while "
                                          f"{running:g} requests are running", Status.CRITICAL,
                               "tokens")
        state = f"{running:g} requests running" if running > 0 else "idle"
        return Measurement(generated, f"{generated:g} tokens in {span}, {state}", Status.OK,
                           "tokens")
