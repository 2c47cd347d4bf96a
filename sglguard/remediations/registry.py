"""The remediation kinds sglguard knows, keyed by `kind` (each module loads when its kind is
used)."""

from __future__ import annotations

from typing import Any

from sglguard.registry import Registry
from sglguard.remediations.base import Remediation, RemediationConfig

REMEDIATIONS: Registry[Remediation[Any]] = Registry("remediation")
REMEDIATIONS.register("restart", "sglguard.remediations.restart:Restart")
REMEDIATIONS.register("reduce_concurrency",
                      "sglguard.remediations.reduce_concurrency:ReduceConcurrency")
REMEDIATIONS.register("flush_cache", "sglguard.remediations.flush_cache:FlushCache")
REMEDIATIONS.register("abort_requests", "sglguard.remediations.abort_requests:AbortRequests")
REMEDIATIONS.register("drain", "sglguard.remediations.drain:Drain")
REMEDIATIONS.register("webhook", "sglguard.remediations.webhook:Webhook")

RemediationConfig.kinds = REMEDIATIONS.config_models()
