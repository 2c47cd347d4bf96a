"""The control kinds sglguard knows, keyed by `kind`."""

from __future__ import annotations

from typing import Any

from sglguard.controls.base import Control, ControlConfig
from sglguard.controls.process import ProcessControl
from sglguard.registry import Registry

CONTROLS: Registry[Control[Any]] = Registry("control")
CONTROLS.register(ProcessControl)

ControlConfig.kinds = CONTROLS.config_models()
