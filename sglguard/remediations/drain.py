"""`drain`: take the target out of an SGLang gateway (smg / sglang-router) before the
remediations after it in the chain (a restart), and add it back once the chain succeeded.

`api: workers` (the gateway's REST API): the worker's id comes from `GET /workers` (matched by
url), `DELETE /workers/{id}` drains and removes it, `POST /workers {"url": ...}` adds it back.
`api: legacy` (the old router): `POST /remove_worker?url=` and `POST /add_worker?url=`.
The re-adding happens in `after_chain(succeeded=True)`; after a failed chain the worker stays out
of the gateway, so that no traffic reaches a server that is still sick."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, SecretStr

from sglguard.client import Answer, SGLangClient, TargetError
from sglguard.config.types import Duration, HttpUrl
from sglguard.remediations.base import Remediation, RemediationConfig, RemediationError


class DrainConfig(RemediationConfig):
    """Remove the target from a gateway; add it back after the chain succeeded."""

    kind: Literal["drain"]
    gateway: HttpUrl = Field(description="the gateway's URL")
    api: Literal["workers", "legacy"] = "workers"
    worker_url: str | None = Field(default=None, pattern=r"^\S+://\S+$",
                                   description="the target as the gateway knows it; "
                                   "default: the target's url")
    api_key: SecretStr | None = Field(default=None, description="the gateway's (admin) key")
    timeout: Duration = Field(default=timedelta(seconds=30),
                              description="how long the worker may take to leave the gateway")


def _same(a: Any, b: str) -> bool:
    return isinstance(a, str) and a.rstrip("/") == b.rstrip("/")


class Drain(Remediation[DrainConfig]):
    """Removes the worker from the gateway; `after_chain` adds it back."""

    kind = "drain"
    config_model = DrainConfig

    @property
    def worker_url(self) -> str:
        return self.config.worker_url or self.context.target.url

    @property
    def legacy(self) -> bool:
        return self.config.api == "legacy"

    def gateway(self) -> SGLangClient:
        key = self.config.api_key
        return SGLangClient(self.config.gateway, api_key=key.get_secret_value() if key else None,
                            timeout=min(10.0, self.config.timeout.total_seconds()))

    def plan(self) -> list[str]:
        base, url = self.config.gateway.rstrip("/"), self.worker_url
        if self.legacy:
            return [f"POST {base}/remove_worker?url={url}",
                    f"after the chain succeeded: POST {base}/add_worker?url={url}"]
        wait = self.config.timeout.total_seconds()
        return [f"GET {base}/workers to find the id of the worker with url {url}",
                f"DELETE {base}/workers/{{id}}, then wait up to {wait:g} s for it to leave",
                f'after the chain succeeded: POST {base}/workers {{"url": "{url}"}}']

    def execute(self) -> str:
        with _errors(f"drain {self.worker_url}"), closing(self.gateway()) as gateway:
            if self.legacy:
                self._expect(gateway.remove_worker(self.worker_url, legacy=True), "remove_worker")
                return f"removed {self.worker_url} from {self.config.gateway} (legacy API)"
            worker = self._find(gateway)
            if worker is None:
                return f"{self.worker_url} is not in {self.config.gateway}: already drained"
            self._expect(gateway.remove_worker(worker), f"DELETE /workers/{worker}")
            self._wait_gone(gateway)
        return f"drained {self.worker_url} from {self.config.gateway}"

    def after_chain(self, succeeded: bool) -> str | None:
        if not succeeded:
            return (f"left {self.worker_url} out of {self.config.gateway}: "
                    "the remediation chain did not succeed")
        with _errors(f"re-add {self.worker_url}"), closing(self.gateway()) as gateway:
            if self.legacy:
                self._expect(gateway.add_worker(self.worker_url, legacy=True), "add_worker")
            elif self._find(gateway) is not None:
                return f"{self.worker_url} is already in {self.config.gateway}"
            else:
                self._expect(gateway.add_worker(self.worker_url), "POST /workers")
        return f"added {self.worker_url} back to {self.config.gateway}"

    def _find(self, gateway: SGLangClient) -> str | None:
        """The worker's id (the URL itself in releases whose entries have no id)."""
        for item in gateway.workers():
            if _same(item.get("url"), self.worker_url):
                return str(item.get("id") or item["url"])
        return None

    def _wait_gone(self, gateway: SGLangClient) -> None:
        """DELETE is accepted (202) and carried out in the background."""
        deadline = time.monotonic() + self.config.timeout.total_seconds()
        while self._find(gateway) is not None:
            if time.monotonic() > deadline or self.context.stop.wait(0.2):
                raise RemediationError(f"{self.worker_url} is still in {self.config.gateway} "
                                       f"{self.config.timeout.total_seconds():g} s after DELETE")

    def _expect(self, answer: Answer, call: str) -> None:
        if not answer.ok:
            raise RemediationError(f"gateway {self.config.gateway}: {call} answered "
                                   f"{answer.status}: {answer.message}",
                                   permanent=answer.status in (401, 403, 405))


@contextmanager
def _errors(what: str) -> Iterator[None]:
    """A gateway that cannot be asked is a (retryable) remediation failure."""
    try:
        yield
    except TargetError as exc:
        raise RemediationError(f"could not {what}: {exc}") from None
