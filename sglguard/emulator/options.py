"""Launch settings of an emulated SGLang server."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .profiles import DEFAULT_METRICS_VERSION, METRICS_VERSIONS

MAX_LOAD_RPS = 1000.0
DISAGGREGATION_MODES = ("null", "prefill", "decode")


@dataclass(frozen=True)
class EmulatorOptions:
    """Launch settings of one emulated SGLang server (the flags a real one would get)."""

    host: str = "127.0.0.1"
    port: int = 30000  # 0 = pick a free port
    model_path: str = "emulated/Llama-3.1-8B-Instruct"
    max_running_requests: int = 256
    api_key: str | None = None
    startup_delay: float = 0.0  # /health, /health_generate, /ready, /ping answer 503 meanwhile
    fault: str | None = None  # fault at start, same syntax as run-time faults
    health_latency: float = 1.0  # real SGLang runs a 1-token generation: >= ~1 s
    load: float = 0.0  # synthetic requests per second served internally, 0 = none
    metrics_version: str = DEFAULT_METRICS_VERSION  # "0.5.23" or "legacy" (the docs' sample)
    dp_size: int = 1  # data-parallel ranks: one scheduler (and one series per family) each
    enable_priority_scheduling: bool = False
    default_priority_value: int | None = None  # given to requests sent without a priority
    disaggregation_mode: str = "null"  # "prefill" or "decode": one role of a PD pair
    skip_server_warmup: bool = False  # else one /generate warms the server up as it starts
    decode_speed: float = 0.0  # tokens/s of one request held running; 0: answered at once

    @property
    def engine_type(self) -> str:
        return self.disaggregation_mode if self.disaggregation_mode != "null" else "unified"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {self.port}")
        if self.max_running_requests < 1:
            raise ValueError(
                f"max_running_requests must be at least 1, not {self.max_running_requests}"
            )
        if not 1 <= self.dp_size <= 64:
            raise ValueError(f"dp_size must be between 1 and 64, not {self.dp_size}")
        if self.disaggregation_mode not in DISAGGREGATION_MODES:
            valid = ", ".join(DISAGGREGATION_MODES)
            raise ValueError(f"disaggregation_mode must be one of {valid}, "
                             f"not {self.disaggregation_mode!r}")
        for name in ("startup_delay", "health_latency", "load", "decode_speed"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {value}")
        if self.load > MAX_LOAD_RPS:
            raise ValueError(f"load must be at most {MAX_LOAD_RPS:g} requests/s, not {self.load}")
        if self.metrics_version not in METRICS_VERSIONS:
            valid = ", ".join(METRICS_VERSIONS)
            given = self.metrics_version
            raise ValueError(f"metrics_version must be one of {valid}, not {given!r}")
