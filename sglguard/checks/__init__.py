"""Check kinds and their registry."""

from __future__ import annotations

from sglguard.checks.base import Check, CheckConfig, CheckContext
from sglguard.checks.registry import CHECKS
from sglguard.domain import CheckResult, Measurement, Status

__all__ = [
    "CHECKS",
    "Check",
    "CheckConfig",
    "CheckContext",
    "CheckResult",
    "Measurement",
    "Status",
]
