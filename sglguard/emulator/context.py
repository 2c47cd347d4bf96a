"""What every route needs: launch options, live state, the fault switch, the bound port."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .controller import FaultController
from .dumps import RequestLog
from .faults import Fault
from .options import EmulatorOptions
from .profiles import PROFILES, MetricsProfile
from .snapshot import Snapshot
from .state import TOKENS_PER_GB, EmulatorState

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
    request_log: RequestLog = field(init=False)

    def __post_init__(self) -> None:
        self.request_log = RequestLog({"model_path": self.options.model_path})

    @property
    def model_name(self) -> str:
        # SGLang serves the model under its path unless --served-model-name says otherwise.
        return self.options.model_path

    @property
    def profile(self) -> MetricsProfile:
        return PROFILES[self.options.metrics_version]

    @property
    def version(self) -> str:
        return self.profile.version

    def snapshot(self) -> Snapshot:
        """The state as the endpoints report it, a memory leak's KV tokens included."""
        leaked = int(self.faults.memory_growth_gb() * TOKENS_PER_GB)
        return self.state.snapshot(leaked_tokens=leaked)

    def set_fault(self, fault: Fault | None) -> None:
        kind = None if fault is None else fault.kind
        self.state.set_fault_queue(fault.count if fault is not None and kind == "queue" else 0)
        self.state.set_flag("stalled", kind == "stall")
        self.faults.set(fault)

    def abort(self, rid: str | None) -> int:
        """Abort one request or (rid None) all; the `queue` fault's waiting requests go too."""
        aborted = self.state.abort(rid)
        current = self.faults.current
        if rid is None and current is not None and current.kind == "queue":
            self.faults.set(None)
        return aborted
