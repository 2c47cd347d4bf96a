"""The check kinds sglguard knows, keyed by `kind`."""

from __future__ import annotations

from typing import Any

from sglguard.checks.base import Check, CheckConfig
from sglguard.checks.generate import GenerateCheck
from sglguard.checks.gpu import GpuCheck
from sglguard.checks.host import HostCheck
from sglguard.checks.http import HttpCheck
from sglguard.checks.log import LogCheck
from sglguard.checks.metric import MetricCheck
from sglguard.checks.process import ProcessCheck
from sglguard.checks.progress import ProgressCheck
from sglguard.checks.server_info import ServerInfoCheck
from sglguard.checks.structured_output import StructuredOutputCheck
from sglguard.registry import Registry

CHECKS: Registry[Check[Any]] = Registry("check")
CHECKS.register(HttpCheck)
CHECKS.register(MetricCheck)
CHECKS.register(ProgressCheck)
CHECKS.register(ServerInfoCheck)
CHECKS.register(GenerateCheck)
CHECKS.register(StructuredOutputCheck)
CHECKS.register(GpuCheck)
CHECKS.register(HostCheck)
CHECKS.register(ProcessCheck)
CHECKS.register(LogCheck)

CheckConfig.kinds = CHECKS.config_models()
