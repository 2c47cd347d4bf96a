"""The remediation kinds sglguard knows, keyed by `kind`."""

from __future__ import annotations

from typing import Any

from sglguard.registry import Registry
from sglguard.remediations.base import Remediation, RemediationConfig
from sglguard.remediations.restart import Restart

REMEDIATIONS: Registry[Remediation[Any]] = Registry("remediation")
REMEDIATIONS.register(Restart)

RemediationConfig.kinds = REMEDIATIONS.config_models()
