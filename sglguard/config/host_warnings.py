"""What a valid catalog still cannot do on this host: checks that will only report UNKNOWN, a
control that cannot write its pidfile, a gateway probed where it always looks well. Said as
warnings by `validate`; none stops the service (the host may change: a driver installed, the
server started for the first time)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sglguard.config.models import Catalog, TargetConfig
from sglguard.config.notifier_urls import disabled_here
from sglguard.deploy import STATE_DIR

if TYPE_CHECKING:
    from sglguard.checks.log import LogCheckConfig


def host_warnings(catalog: Catalog) -> list[str]:
    targets = {target.name: target for target in catalog.targets}
    warnings = [warning for target in catalog.targets for warning in _control(target)]
    warnings += _gpu(catalog)
    if any(check.kind == "log" for check in catalog.checks):  # only then is its module loaded
        from sglguard.checks.log import LogCheckConfig

        for check in catalog.checks:
            if isinstance(check, LogCheckConfig):
                warnings += _log(check, targets.get(check.target))
    warnings += _gateway_health(catalog)
    for notifier in catalog.notifiers:
        for url in notifier.urls:
            scheme = url.get_secret_value().partition("://")[0]
            if disabled_here(scheme):
                warnings.append(f"notifier {notifier.name}: Apprise cannot send {scheme}:// "
                                "from this host (a library it needs is not installed)")
    return warnings


def _gateway_health(catalog: Catalog) -> list[str]:
    if not any(check.kind == "http" for check in catalog.checks):
        return []
    from sglguard.checks.http import GATEWAY_PATH, HttpCheckConfig

    targets = {target.name: target for target in catalog.targets}
    return [f"check {check.name} (http): GET {check.path} of gateway {check.target} answers "
            f"200 even with no worker left; {GATEWAY_PATH} answers 503 when no worker is "
            "healthy" for check in catalog.checks
            if isinstance(check, HttpCheckConfig) and targets[check.target].role == "gateway"
            and "path" in check.model_fields_set and check.path in ("/health", "/liveness")]


def _gpu(catalog: Catalog) -> list[str]:
    if not any(check.kind == "gpu" for check in catalog.checks):
        return []  # NVML's module is not even loaded
    from sglguard.checks.gpu import GpuCheckConfig, nvml_unavailable

    gpu_checks = [check for check in catalog.checks if isinstance(check, GpuCheckConfig)]
    nvml = nvml_unavailable()
    if nvml is None:
        return []
    return [f"check {check.name} (gpu): NVML is not available on this host ({nvml}); "
            f"it will report {check.on_unavailable.upper()}" for check in gpu_checks]


def _control(target: TargetConfig) -> list[str]:
    pidfile = getattr(target.control, "pidfile", None)
    if not isinstance(pidfile, Path):
        return []
    folder = pidfile.parent
    kind = target.control.kind if target.control is not None else ""
    if not folder.is_dir():
        made = (" (the sglguard unit's StateDirectory= creates it when the service starts)"
                if folder == STATE_DIR else "")
        return [f"target {target.name}: the folder of its pidfile, {folder}, does not exist: "
                f"the {kind} control cannot start the server until it does{made}"]
    if not os.access(folder, os.W_OK):
        return [f"target {target.name}: this user cannot write in {folder}, the folder of its "
                f"pidfile (the service's user may)"]
    return []


def _log(check: LogCheckConfig, target: TargetConfig | None) -> list[str]:
    control = target.control if target is not None else None
    path = check.path or (control.server_log if control is not None else None)
    if path is None or path.is_file():
        return []
    if check.path is None:
        return [f"check {check.name} (log): {path}, the log its target's control writes, does "
                "not exist yet; it appears when the control first starts the server, and the "
                "check reports UNKNOWN until then"]
    return [f"check {check.name} (log): {path} does not exist; the check reports UNKNOWN until "
            "it does"]
