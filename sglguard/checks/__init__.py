"""Check kinds and their registry."""

from __future__ import annotations

from sglguard.checks.base import Check, CheckConfig, CheckContext, CheckResult, Measurement, Status
from sglguard.checks.registry import CHECKS

__all__ = [
    "CHECKS",
    "Check",
    "CheckConfig",
    "CheckContext",
    "CheckResult",
    "Measurement",
    "Status",
]
