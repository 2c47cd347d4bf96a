"""The control kinds sglguard knows, keyed by `kind`."""

from __future__ import annotations

from typing import Any

from sglguard.controls.base import Control, ControlConfig
from sglguard.controls.command import CommandControl
from sglguard.controls.docker import DockerControl
from sglguard.controls.process import ProcessControl
from sglguard.controls.systemd import SystemdControl
from sglguard.registry import Registry

CONTROLS: Registry[Control[Any]] = Registry("control")
CONTROLS.register(ProcessControl)
CONTROLS.register(SystemdControl)
CONTROLS.register(DockerControl)
CONTROLS.register(CommandControl)

ControlConfig.kinds = CONTROLS.config_models()
