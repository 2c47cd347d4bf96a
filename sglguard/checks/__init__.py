"""Check kinds (one module each) and their registry (`checks.registry`).

Importing the package loads none of them: its names load at first use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sglguard.checks.base import Check, CheckConfig, CheckContext
    from sglguard.checks.registry import CHECKS
    from sglguard.domain import CheckResult, Measurement, Status

__all__ = ["CHECKS", "Check", "CheckConfig", "CheckContext", "CheckResult", "Measurement",
           "Status"]
_FROM = {"CHECKS": "sglguard.checks.registry", "Check": "sglguard.checks.base",
         "CheckConfig": "sglguard.checks.base", "CheckContext": "sglguard.checks.base",
         "CheckResult": "sglguard.domain", "Measurement": "sglguard.domain",
         "Status": "sglguard.domain"}


def __getattr__(name: str) -> Any:
    if name not in _FROM:
        raise AttributeError(f"module 'sglguard.checks' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(_FROM[name]), name)
