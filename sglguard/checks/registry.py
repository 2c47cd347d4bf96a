"""The check kinds sglguard knows, keyed by `kind` (each module loads when its kind is used)."""

from __future__ import annotations

from typing import Any

from sglguard.checks.base import Check, CheckConfig
from sglguard.registry import Registry

CHECKS: Registry[Check[Any]] = Registry("check")
CHECKS.register("http", "sglguard.checks.http:HttpCheck")
CHECKS.register("metric", "sglguard.checks.metric:MetricCheck")
CHECKS.register("progress", "sglguard.checks.progress:ProgressCheck")
CHECKS.register("server_info", "sglguard.checks.server_info:ServerInfoCheck")
CHECKS.register("generate", "sglguard.checks.generate:GenerateCheck")
CHECKS.register("structured_output", "sglguard.checks.structured_output:StructuredOutputCheck")
CHECKS.register("gpu", "sglguard.checks.gpu:GpuCheck")
CHECKS.register("host", "sglguard.checks.host:HostCheck")
CHECKS.register("process", "sglguard.checks.process:ProcessCheck")
CHECKS.register("log", "sglguard.checks.log:LogCheck")

CheckConfig.kinds = CHECKS.config_models()
