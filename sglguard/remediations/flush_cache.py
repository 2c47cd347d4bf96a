"""`flush_cache`: drop the server's prefix (radix) cache with POST /flush_cache.

SGLang flushes only when idle: with requests running or waiting it answers 400 ("Flush cache
failed.", or "Timed out waiting for idle state." after waiting `timeout`). That is a failure
saying the server is busy, never a success."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field

from sglguard.client import TargetError
from sglguard.config.types import Duration
from sglguard.remediations.base import Remediation, RemediationConfig, RemediationError

BUSY_MESSAGES = ("Flush cache failed", "Timed out waiting for idle state")


class FlushCacheConfig(RemediationConfig):
    """Flush the prefix cache, waiting up to `timeout` for the server to become idle."""

    kind: Literal["flush_cache"]
    timeout: Duration = Field(default=timedelta(seconds=10),
                              description="how long SGLang waits for an idle moment")


class FlushCache(Remediation[FlushCacheConfig]):
    """POST /flush_cache?timeout=<s> with the admin key when the target has one."""

    kind = "flush_cache"
    config_model = FlushCacheConfig

    @property
    def _wait(self) -> float:
        return self.config.timeout.total_seconds()

    def plan(self) -> list[str]:
        return [f"POST {self.context.client.base_url}/flush_cache?timeout={self._wait:g} "
                "(200: flushed; 400: busy, not flushed)"]

    def execute(self) -> str:
        try:
            answer = self.context.client.flush_cache(self._wait)
        except TargetError as exc:
            raise RemediationError(f"could not flush the cache: {exc}") from None
        if answer.status == 200:
            return "prefix cache flushed"
        if answer.status == 400 and any(text in answer.message for text in BUSY_MESSAGES):
            raise RemediationError(
                f"cache not flushed: the server is busy (requests running or waiting after "
                f"{self._wait:g} s): {answer.message}")
        raise RemediationError(f"POST /flush_cache answered {answer.status}: {answer.message}",
                               permanent=answer.status in (401, 403, 404))
