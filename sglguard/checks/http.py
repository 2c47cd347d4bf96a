"""`http`: one request to the server; the value is the latency in seconds."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from sglguard.checks.base import Check, CheckConfig
from sglguard.client import ConnectionRefused, TargetTimeout
from sglguard.domain import Measurement, Status

# A gateway's /health stays 200 with no worker at all; /readiness is 503 when none is healthy.
GATEWAY_PATH = "/readiness"


class HttpCheckConfig(CheckConfig):
    """An HTTP probe such as `GET /health`."""

    kind: Literal["http"]
    path: str = Field(default="/health", pattern=r"^/",
                      description="default /health; on a `role: gateway` target /readiness")
    method: Literal["GET", "POST", "HEAD"] = "GET"
    expect_status: tuple[int, ...] = (200,)
    on_timeout: Literal["critical", "warning", "unknown"] = Field(
        default="critical",
        description="a timeout may be saturation rather than death; choose how it counts",
    )


class HttpCheck(Check[HttpCheckConfig]):
    """Asks the server one HTTP question and times the answer."""

    kind = "http"
    config_model = HttpCheckConfig

    @property
    def path(self) -> str:
        gateway = self.context.target.role == "gateway"
        return GATEWAY_PATH if gateway and "path" not in self.config.model_fields_set \
            else self.config.path

    def run(self) -> Measurement:
        config, path = self.config, self.path
        began = time.perf_counter()
        try:
            response = self.client.probe(config.method, path, timeout=self.timeout)
        except ConnectionRefused as exc:
            return Measurement(None, str(exc), Status.CRITICAL, "s")
        except TargetTimeout as exc:
            return Measurement(None, str(exc), Status.from_label(config.on_timeout), "s")
        latency = time.perf_counter() - began
        expected = ", ".join(str(code) for code in config.expect_status)
        if response.status not in config.expect_status:
            why = (": the gateway has no healthy worker" if path == GATEWAY_PATH
                   and response.status == 503 and self.context.target.role == "gateway"
                   else "")
            return Measurement(
                latency,
                f"{config.method} {path} answered {response.status} "
                f"(expected {expected}) in {latency:.3f} s{why}",
                Status.CRITICAL,
                "s",
            )
        return Measurement(
            latency,
            f"{config.method} {path} answered {response.status} in {latency:.3f} s",
            Status.OK,
            "s",
        )
