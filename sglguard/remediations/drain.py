"""`drain`: take the target out of an SGLang gateway (smg / sglang-router) before the
remediations after it in the chain (a restart); it goes back in only once it is well.

`api: workers` (the gateway's REST API): the worker is found in `GET /workers` by its URL (host
names and ports normalised: `localhost` is `127.0.0.1`), its whole registration is saved in the
store, then `DELETE /workers/{id}` drains it. Before the chain goes on, drain waits (up to
`wait_idle`) until no request is in flight on it: the gateway's `load` while it still lists the
worker, then the server's own count (`GET /v1/loads`), since the gateway drops a draining
worker from its list after a few seconds whether or not requests are still running.
`api: legacy` (the old router): `POST /remove_worker?url=` and `POST /add_worker?url=`.

The worker is re-added, registered as it was, after the chain's verification passed, or when
the target's incident resolves, or by hand (`sglguard undrain TARGET`): see `drained`."""

from __future__ import annotations

import time
from contextlib import closing
from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, SecretStr

from sglguard.client import SGLangClient, TargetError
from sglguard.config.types import Duration, HttpUrl
from sglguard.remediations import drained
from sglguard.remediations.base import Remediation, RemediationConfig, RemediationError
from sglguard.remediations.gateway import (
    GatewayDown,
    asking,
    describe,
    find,
    load_of,
    permanent,
    registration,
)


class DrainConfig(RemediationConfig):
    """Remove the target from a gateway; it is re-added once the target is well."""

    kind: Literal["drain"]
    gateway: HttpUrl = Field(description="the gateway's URL")
    api: Literal["workers", "legacy"] = "workers"
    worker_url: str | None = Field(default=None, pattern=r"^\S+://\S+$",
                                   description="the target as the gateway knows it; "
                                   "default: the target's url")
    api_key: SecretStr | None = Field(default=None, description="the gateway's (admin) key")
    timeout: Duration = Field(default=timedelta(seconds=30),
                              description="how long the worker may take to leave (or rejoin) "
                              "the gateway")
    wait_idle: Duration = Field(default=timedelta(seconds=60),
                                description="how long to wait for the requests in flight on "
                                "the worker to finish before the chain goes on")
    if_gateway_down: Literal["proceed", "fail"] = Field(
        default="proceed", description="when the gateway cannot be asked: go on with the "
        "chain (the restart) with the worker still registered, or fail")


class Drain(Remediation[DrainConfig]):
    """Removes the worker from the gateway, saving its registration to re-add it later."""

    kind = "drain"
    config_model = DrainConfig

    @property
    def worker_url(self) -> str:
        return self.config.worker_url or self.context.target.url

    @property
    def legacy(self) -> bool:
        return self.config.api == "legacy"

    def access(self) -> drained.GatewayAccess:
        key = self.config.api_key
        return drained.GatewayAccess(self.config.gateway, self.legacy,
                                     key.get_secret_value() if key else None,
                                     self.config.timeout)

    def plan(self) -> list[str]:
        base, url = self.config.gateway.rstrip("/"), self.worker_url
        back = ("re-added once well (verified, incident resolved, or `sglguard undrain "
                f"{self.context.target.name}`)")
        if self.legacy:
            return [f"POST {base}/remove_worker?url={url}",
                    f"{back}: POST {base}/add_worker?url={url}"]
        idle = self.config.wait_idle.total_seconds()
        return [f"GET {base}/workers to find the worker with url {url} and save its "
                "registration", f"DELETE {base}/workers/{{id}}, then wait up to {idle:g} s "
                "for its requests in flight to finish",
                f"{back}: POST {base}/workers with the saved registration"]

    def execute(self) -> str:
        try:
            with closing(self.access().client()) as gateway:
                if self.legacy:
                    return self._legacy(gateway)
                return self._drain(gateway)
        except GatewayDown as exc:
            if self.config.if_gateway_down == "fail":
                raise RemediationError(str(exc)) from None
            return (f"{exc}; the chain goes on with {self.worker_url} still registered "
                    "(if_gateway_down: proceed)")

    def after_chain(self, succeeded: bool) -> str | None:
        row = drained.owed(self.context.store, self.context.target.name, self.config.gateway,
                           self.worker_url) if self.context.store is not None else None
        if row is None:
            return None
        how = "after verification, when the incident resolves" if succeeded else \
            "when the incident resolves (the chain did not succeed)"
        return (f"{self.worker_url} stays out of {self.config.gateway} until it is well: "
                f"re-added {how}, or by `sglguard undrain {self.context.target.name}`")

    def _legacy(self, gateway: SGLangClient) -> str:
        with asking(self.config.gateway, "POST /remove_worker"):
            answer = gateway.remove_worker(self.worker_url, legacy=True)
        self._expect(answer, "POST /remove_worker")
        self._record({"url": self.worker_url}, state="out")
        return f"removed {self.worker_url} from {self.config.gateway} (legacy API)"

    def _drain(self, gateway: SGLangClient) -> str:
        store, name = self.context.store, self.context.target.name
        with asking(self.config.gateway, "GET /workers"):
            entries = gateway.workers()
        entry = find(entries, self.worker_url)
        if entry is None:
            if store is not None and drained.owed(store, name, self.config.gateway,
                                                  self.worker_url) is not None:
                return (f"{self.worker_url} is already out of {self.config.gateway} "
                        "(an earlier drain took it out)")
            urls = ", ".join(str(item.get("url")) for item in entries) or "none"
            raise RemediationError(f"{self.worker_url} is not a worker of "
                                   f"{self.config.gateway} (its workers: {urls})",
                                   permanent=True)
        body = registration(entry)
        row_id = self._record(body, state="draining")
        try:
            with asking(self.config.gateway, "DELETE /workers"):
                answer = gateway.remove_worker(str(entry.get("id") or entry["url"]))
            self._expect(answer, f"DELETE /workers/{entry.get('id')}")
        except BaseException:
            if row_id is not None and store is not None:
                drained.forget(store, row_id)
            raise
        said = f"drained {entry['url']} ({describe(body)}) from {self.config.gateway}"
        try:
            in_flight, waited = self._wait_idle(gateway, str(entry["url"]), load_of(entry))
        except GatewayDown as exc:  # after DELETE: the worker is on its way out all the same
            if row_id is not None and store is not None:
                drained.update(store, row_id, state="out")
            return f"{said}; then the gateway stopped answering: {exc}"
        if row_id is not None and store is not None:
            drained.update(store, row_id, state="out", in_flight=in_flight)
        if in_flight:
            return (f"{said}; {in_flight} request(s) still in flight after {waited:.1f} s "
                    f"(wait_idle {self.config.wait_idle.total_seconds():g} s)")
        return f"{said}; no request in flight after {waited:.1f} s"

    def _record(self, body: dict[str, Any], *, state: str) -> int | None:
        store = self.context.store
        if store is None:
            return None
        row_id = drained.record(store, target=self.context.target.name,
                                remediation=self.config.name, gateway=self.config.gateway,
                                body=body, incident_id=self.context.incident_id,
                                at=self.context.clock())
        if state != "draining":
            drained.update(store, row_id, state=state)
        return row_id

    def _wait_idle(self, gateway: SGLangClient, url: str, load: int) -> tuple[int, float]:
        """Until the gateway has dropped the worker and nothing runs on it any more, or
        `wait_idle` is spent: (requests still in flight, seconds waited)."""
        began = time.monotonic()
        idle_by = began + self.config.wait_idle.total_seconds()
        gone_by = began + self.config.timeout.total_seconds()
        listed = True
        while listed:
            with asking(self.config.gateway, "GET /workers"):
                entry = find(gateway.workers(), url)
            listed = entry is not None
            if entry is not None:
                load = load_of(entry)
                if time.monotonic() > gone_by:
                    raise RemediationError(
                        f"{url} is still in {self.config.gateway} "
                        f"{self.config.timeout.total_seconds():g} s after DELETE")
                if self.context.stop.wait(0.2):
                    return load, time.monotonic() - began
        # The gateway no longer lists the worker but still proxies what it had sent there:
        # from here on the server's own count says when they are done.
        while load > 0 and time.monotonic() < idle_by:
            try:
                load = self.context.client.running_requests()
            except TargetError:
                break  # the sick server cannot say: the gateway's last count stands
            if load == 0 or self.context.stop.wait(0.2):
                break
        return load, time.monotonic() - began

    def _expect(self, answer: Any, call: str) -> None:
        if answer.ok:
            return
        error = permanent(answer.status, self.config.gateway, call, answer.message)
        if error is None and answer.status >= 500:
            raise GatewayDown(f"gateway {self.config.gateway}: {call} answered "
                              f"{answer.status}: {answer.message}")
        raise error or RemediationError(f"gateway {self.config.gateway}: {call} answered "
                                        f"{answer.status}: {answer.message}")
