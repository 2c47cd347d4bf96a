"""`generate`: a real generation through the server; time to first token or total latency."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import Field, model_validator

from sglguard.checks.base import Check, CheckConfig
from sglguard.client import Generation, TargetError
from sglguard.domain import Measurement, Status


class GenerateCheckConfig(CheckConfig):
    """A small real request, as a user would send it."""

    kind: Literal["generate"]
    endpoint: Literal["generate", "chat"] = Field(
        default="generate", description="`/generate` (streamed) or `/v1/chat/completions`")
    prompt: str = "Reply with the word OK."
    max_new_tokens: int = Field(default=8, ge=1, le=4096)
    measure: Literal["ttft", "total"] = "ttft"
    model: str = Field(default="default", description="the `model` of a chat request")

    @model_validator(mode="after")
    def _ttft_needs_a_stream(self) -> GenerateCheckConfig:
        if self.endpoint == "chat" and self.measure == "ttft":
            raise ValueError("measure: ttft needs endpoint: generate (streamed); "
                             "use measure: total with chat")
        return self


def judge(generation: Generation, what: str) -> str | None:
    """Why a generation failed (error status, abort, empty output), or None."""
    if generation.status != 200:
        return f"{what} answered {generation.status}: {generation.error}"
    if generation.aborted is not None:
        return f"{what} aborted: {generation.aborted}"
    if not generation.text.strip():
        return f"{what} returned empty output"
    return None


def answered(probe: Callable[[], Measurement]) -> Measurement:
    """A probe that cannot get an answer (refused, timed out) has failed: CRITICAL."""
    try:
        return probe()
    except TargetError as exc:
        return Measurement(None, str(exc), Status.CRITICAL, "s")


class GenerateCheck(Check[GenerateCheckConfig]):
    """Sends one generation; CRITICAL on an error status, an abort, empty output or timeout."""

    kind = "generate"
    config_model = GenerateCheckConfig

    def run(self) -> Measurement:
        return answered(self._probe)

    def _probe(self) -> Measurement:
        config = self.config
        if config.endpoint == "chat":
            what = "POST /v1/chat/completions"
            generation = self.client.chat({
                "model": config.model, "max_tokens": config.max_new_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": config.prompt}],
            }, timeout=self.timeout)
        else:
            what = "POST /generate"
            generation = self.client.generate({
                "text": config.prompt, "stream": True,
                "sampling_params": {"max_new_tokens": config.max_new_tokens, "temperature": 0},
            }, timeout=self.timeout)
        failure = judge(generation, what)
        if failure is not None:
            return Measurement(None, failure, Status.CRITICAL, "s")
        value = generation.ttft if config.measure == "ttft" else generation.total
        if value is None:
            return Measurement(None, f"{what}: no token arrived", Status.CRITICAL, "s")
        return Measurement(value, f"{config.measure} {value:.3f} s, total {generation.total:.3f} s,"
                                  f" {len(generation.text)} characters", Status.OK, "s")
