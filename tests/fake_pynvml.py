"""A stand-in for the `pynvml` module: NVML is the one boundary the GPU tests fake.

It has exactly the functions, constants and error class that `sglguard.checks.gpu` uses,
with pynvml's signatures and units (bytes, milliwatts). A test installs it with
`monkeypatch.setitem(sys.modules, "pynvml", FakeNVML(...))`.
"""

from __future__ import annotations

import threading
import types
from dataclasses import dataclass, field
from typing import ClassVar

MIB = 1024**2


class NVMLError(Exception):
    """As pynvml's: carries the NVML return code in `value`."""

    MESSAGES: ClassVar[dict[int, str]] = {
        2: "Invalid Argument", 3: "Not Supported", 9: "Driver Not Loaded",
        12: "NVML Shared Library Not Found", 18: "Driver/library version mismatch",
    }

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return self.MESSAGES.get(self.value, f"NVML error {self.value}")


@dataclass
class FakeGpu:
    """What one GPU reports."""

    used_mib: float = 1000.0
    total_mib: float = 81559.0
    utilization: int = 0
    temperature: int = 40
    power_mw: int = 70000
    ecc: int | None = 0  # None: ECC not supported
    processes: list[tuple[int, float]] = field(default_factory=list)  # (pid, MiB)


@dataclass
class _Memory:
    used: int
    total: int


@dataclass
class _Utilization:
    gpu: int


@dataclass
class _Process:
    pid: int
    usedGpuMemory: int | None  # pynvml's name


class FakeNVML(types.ModuleType):
    """A module object whose NVML state the test changes between runs."""

    NVMLError = NVMLError
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_TEMPERATURE_GPU = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0

    def __init__(self, *gpus: FakeGpu, init_error: int | None = None) -> None:
        super().__init__("pynvml")
        self.gpus = list(gpus)
        self.init_error = init_error
        self.init_calls = 0
        self.hang = threading.Event()  # set: every device query blocks until `release` is set
        self.release = threading.Event()

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise NVMLError(self.init_error)

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        if self.hang.is_set():
            self.release.wait(10)
        if not 0 <= index < len(self.gpus):
            raise NVMLError(2)
        return self.gpus[index]

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> _Memory:
        return _Memory(int(handle.used_mib * MIB), int(handle.total_mib * MIB))

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> _Utilization:
        return _Utilization(handle.utilization)

    def nvmlDeviceGetTemperature(self, handle: FakeGpu, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return handle.temperature

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        return handle.power_mw

    def nvmlDeviceGetTotalEccErrors(self, handle: FakeGpu, error_type: int, counter: int) -> int:
        assert (error_type, counter) == (self.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                         self.NVML_VOLATILE_ECC)
        if handle.ecc is None:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return handle.ecc

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeGpu) -> list[_Process]:
        return [_Process(pid, int(mib * MIB)) for pid, mib in handle.processes]
