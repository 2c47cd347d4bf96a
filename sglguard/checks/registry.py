"""The check kinds sglguard knows, keyed by `kind`."""

from __future__ import annotations

from typing import Any

from sglguard.checks.base import Check, CheckConfig
from sglguard.checks.http import HttpCheck
from sglguard.checks.metric import MetricCheck
from sglguard.registry import Registry

CHECKS: Registry[Check[Any]] = Registry("check")
CHECKS.register(HttpCheck)
CHECKS.register(MetricCheck)

CheckConfig.kinds = CHECKS.config_models()
