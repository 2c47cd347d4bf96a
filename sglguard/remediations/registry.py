"""The remediation kinds sglguard knows, keyed by `kind`."""

from __future__ import annotations

from typing import Any

from sglguard.registry import Registry
from sglguard.remediations.abort_requests import AbortRequests
from sglguard.remediations.base import Remediation, RemediationConfig
from sglguard.remediations.drain import Drain
from sglguard.remediations.flush_cache import FlushCache
from sglguard.remediations.reduce_concurrency import ReduceConcurrency
from sglguard.remediations.restart import Restart
from sglguard.remediations.webhook import Webhook

REMEDIATIONS: Registry[Remediation[Any]] = Registry("remediation")
REMEDIATIONS.register(Restart)
REMEDIATIONS.register(ReduceConcurrency)
REMEDIATIONS.register(FlushCache)
REMEDIATIONS.register(AbortRequests)
REMEDIATIONS.register(Drain)
REMEDIATIONS.register(Webhook)

RemediationConfig.kinds = REMEDIATIONS.config_models()
