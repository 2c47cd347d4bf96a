"""The control kinds sglguard knows, keyed by `kind` (each module loads when its kind is used)."""

from __future__ import annotations

from typing import Any

from sglguard.controls.base import Control, ControlConfig
from sglguard.registry import Registry

CONTROLS: Registry[Control[Any]] = Registry("control")
CONTROLS.register("process", "sglguard.controls.process:ProcessControl")
CONTROLS.register("systemd", "sglguard.controls.systemd:SystemdControl")
CONTROLS.register("docker", "sglguard.controls.docker:DockerControl")
CONTROLS.register("command", "sglguard.controls.command:CommandControl")

ControlConfig.kinds = CONTROLS.config_models()
