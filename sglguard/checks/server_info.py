"""`server_info`: a number at a path in `/server_info`, e.g. KV cache memory per DP rank."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import Field

from sglguard.checks.base import Check, CheckConfig
from sglguard.checks.metric import Aggregate, aggregate
from sglguard.config.types import Duration
from sglguard.domain import Measurement, Status


class ServerInfoCheckConfig(CheckConfig):
    """A value from `/server_info` (`/get_server_info` on older releases)."""

    kind: Literal["server_info"]
    path: str = Field(pattern=r"^[A-Za-z0-9_*]+(\.[A-Za-z0-9_*]+)*$",
                      description="dotted path; numbers index lists, * takes every item")
    aggregate: Aggregate = Field(default="max", description="across the items a * selects")
    unit: str = ""
    change_over: Duration | None = None


def lookup(document: Any, path: str) -> list[Any]:
    """The values at a dotted path (`internal_states.*.memory_usage.kvcache`)."""
    found = [document]
    for part in path.split("."):
        following: list[Any] = []
        for node in found:
            if part == "*" and isinstance(node, list):
                following.extend(node)
            elif part == "*" and isinstance(node, dict):
                following.extend(node.values())
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                following.append(node[int(part)])
            elif isinstance(node, dict) and part in node:
                following.append(node[part])
        found = following
    return found


class ServerInfoCheck(Check[ServerInfoCheckConfig]):
    """Reads `/server_info` and reports the number at `path`, with the server's version."""

    kind = "server_info"
    config_model = ServerInfoCheckConfig

    def run(self) -> Measurement:
        config = self.config
        info = self.client.server_info(timeout=self.timeout)
        version = str(info.get("version", "unknown"))
        model = info.get("served_model_name") or info.get("model_path")
        if isinstance(model, str) and model:  # the status page shows which model runs
            version = f"{version}, model {model}"
        values = lookup(info, config.path)
        numbers = [float(value) for value in values
                   if isinstance(value, int | float) and not isinstance(value, bool)]
        if not numbers:
            why = (f"{config.path} is not a number ({type(values[0]).__name__})" if values
                   else f"no {config.path} in /server_info")
            return Measurement(None, f"{why} (server {version})", Status.UNKNOWN, config.unit)
        value = aggregate(numbers, config.aggregate)
        shown = f"{config.path} = {value:g} {config.unit}".rstrip()
        if config.change_over is not None:
            return self._change(value, config.change_over, version)
        return Measurement(value, f"{shown} (server {version})", Status.OK, config.unit)

    def _change(self, value: float, window: timedelta, version: str) -> Measurement:
        elapsed, before, _ = self.windowed(lambda _prev: {"value": value}, window)
        change = value - float(before["value"])
        return Measurement(change, f"{self.config.path} changed by {change:+g} "
                                   f"{self.config.unit} in {elapsed:.0f} s (now {value:g}; "
                                   f"server {version})", Status.OK, self.config.unit)
