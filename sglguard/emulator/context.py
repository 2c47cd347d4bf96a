"""What every route needs: launch options, live state, the fault switch, the bound port."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .faults import Fault, FaultController
from .options import EmulatorOptions
from .state import EmulatorState

VERSION = "0.5.23"

# SGLANG_HEALTH_CHECK_TIMEOUT: how long /health waits for output before answering 503.
HEALTH_CHECK_TIMEOUT_S = 20.0


@dataclass
class EmulatorContext:
    """Shared by the request handlers of one emulated server."""

    options: EmulatorOptions
    state: EmulatorState
    faults: FaultController
    port: int = 0
    health_check_timeout: float = HEALTH_CHECK_TIMEOUT_S
    launched_at: float = field(default_factory=time.time)

    @property
    def model_name(self) -> str:
        # SGLang serves the model under its path unless --served-model-name says otherwise.
        return self.options.model_path

    def set_fault(self, fault: Fault | None) -> None:
        queued = fault.count if fault is not None and fault.kind == "queue" else 0
        self.state.set_fault_queue(queued)
        self.faults.set(fault)

    def abort(self, rid: str | None) -> int:
        """Abort one request or (rid None) all; the `queue` fault's waiting requests go too."""
        aborted = self.state.abort(rid)
        current = self.faults.current
        if rid is None and current is not None and current.kind == "queue":
            self.faults.set(None)
        return aborted
