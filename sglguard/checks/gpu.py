"""`gpu`: memory, utilization, temperature, power or ECC errors of the GPUs, through NVML."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from sglguard.checks.base import Check, CheckConfig
from sglguard.checks.metric import Aggregate, aggregate, no_data
from sglguard.config.types import Duration, format_duration
from sglguard.domain import Measurement, Status

GpuMetric = Literal["memory_used_mib", "memory_used_ratio", "utilization_percent",
                    "temperature_c", "power_w", "ecc_uncorrected"]
UNITS: dict[str, str] = {
    "memory_used_mib": "MiB", "memory_used_ratio": "ratio", "utilization_percent": "%",
    "temperature_c": "C", "power_w": "W", "ecc_uncorrected": "errors",
}
FORMATS: dict[str, str] = {  # how the message shows a value, unit included
    "memory_used_mib": "{:.0f} MiB", "memory_used_ratio": "{:.3f}",
    "utilization_percent": "{:g}%", "temperature_c": "{:g} C", "power_w": "{:.1f} W",
    "ecc_uncorrected": "{:g} errors",
}
MIB = 1024**2
SHOWN_PROCESSES = 4


class GpuCheckConfig(CheckConfig):
    """One NVML reading per GPU, aggregated across the selected GPUs."""

    kind: Literal["gpu"]
    metric: GpuMetric
    devices: Literal["all"] | tuple[Annotated[int, Field(ge=0)], ...] = Field(
        default="all", description="`all`, or a list of GPU indices as NVML numbers them")
    aggregate: Aggregate = Field(default="max", description="how the GPUs' values combine")
    change_over: Duration | None = Field(
        default=None, description="the value now minus the value this long ago, e.g. GPU "
                                  "memory growth: `change_over: 3m` with `critical: '> 300'`")
    on_unavailable: Literal["unknown", "no_data", "ok", "warning", "critical"] = Field(
        default="unknown",
        description="how a host whose NVML cannot start (no GPU, no driver, a driver/library "
                    "version mismatch) counts; no_data: recorded, never counted")

    @field_validator("devices")
    @classmethod
    def _distinct(cls, devices: Literal["all"] | tuple[int, ...]
                  ) -> Literal["all"] | tuple[int, ...]:
        if devices != "all":
            if not devices:
                raise ValueError("list at least one GPU index, or write `all`")
            if len(set(devices)) != len(devices):
                raise ValueError(f"a GPU index is listed twice: {list(devices)}")
        return devices


class _Unreadable(Exception):
    """An expected NVML failure, with the status it counts as."""

    def __init__(self, message: str, status: Status = Status.UNKNOWN,
                 no_data: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.no_data = no_data


class _Library:
    """Imports pynvml lazily and runs nvmlInit once per process (again after a failure, and
    for a different module object, as a test installs)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: Any = None

    def load(self) -> Any:
        try:
            import pynvml
        except ImportError:
            raise _Unreadable("the pynvml module is not installed (nvidia-ml-py)") from None
        with self.lock:
            if self.started is not pynvml:
                try:
                    pynvml.nvmlInit()
                except pynvml.NVMLError as exc:
                    raise _Unreadable(str(exc)) from None
                self.started = pynvml
        return pynvml


_NVML = _Library()


def nvml_unavailable() -> str | None:
    """Why NVML cannot be used on this host (no GPU, no driver, no pynvml), or None."""
    try:
        _NVML.load()
    except _Unreadable as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class _Reading:
    index: int
    value: float
    detail: str = ""  # shown after the value
    processes: str = ""  # which PIDs hold memory, for the memory metrics


def _memory_used_mib(nvml: Any, handle: Any) -> tuple[float, str]:
    return nvml.nvmlDeviceGetMemoryInfo(handle).used / MIB, ""


def _memory_used_ratio(nvml: Any, handle: Any) -> tuple[float, str]:
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    return memory.used / memory.total, f"({memory.used / MIB:.0f} of {memory.total / MIB:.0f} MiB)"


def _utilization(nvml: Any, handle: Any) -> tuple[float, str]:
    return float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu), ""


def _temperature(nvml: Any, handle: Any) -> tuple[float, str]:
    return float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)), ""


def _power(nvml: Any, handle: Any) -> tuple[float, str]:
    return nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0, ""  # milliwatts


def _ecc(nvml: Any, handle: Any) -> tuple[float, str]:
    return float(nvml.nvmlDeviceGetTotalEccErrors(
        handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC)), ""


READERS: dict[str, Callable[[Any, Any], tuple[float, str]]] = {
    "memory_used_mib": _memory_used_mib, "memory_used_ratio": _memory_used_ratio,
    "utilization_percent": _utilization, "temperature_c": _temperature, "power_w": _power,
    "ecc_uncorrected": _ecc,
}


def _holders(nvml: Any, handle: Any) -> str:
    """The processes holding memory on a GPU, largest first; empty when NVML will not say."""
    try:
        processes = list(nvml.nvmlDeviceGetComputeRunningProcesses(handle))
    except nvml.NVMLError:
        return ""
    processes.sort(key=lambda process: process.usedGpuMemory or 0, reverse=True)
    shown = [f"pid {process.pid}" + (f" {process.usedGpuMemory / MIB:.0f} MiB"
                                     if process.usedGpuMemory is not None else "")
             for process in processes[:SHOWN_PROCESSES]]
    more = len(processes) - SHOWN_PROCESSES
    return ", ".join(shown + ([f"{more} more"] if more > 0 else []))


class GpuCheck(Check[GpuCheckConfig]):
    """Reads one NVML metric of the selected GPUs, now or as a change over a window."""

    kind = "gpu"
    config_model = GpuCheckConfig

    _worker: threading.Thread | None = None
    _worker_since: float = 0.0

    def run(self) -> Measurement:
        config = self.config
        unit = UNITS[config.metric]
        try:
            readings = self._bounded(self._read)
        except _Unreadable as exc:
            if exc.no_data:
                return no_data(str(exc), unit)
            return Measurement(None, str(exc), exc.status, unit)
        value = aggregate((reading.value for reading in readings), config.aggregate)
        shown = self._describe(readings, value)
        if config.change_over is None:
            return Measurement(value, shown, Status.OK, unit)
        elapsed, before, _ = self.windowed(lambda _prev: {"value": value}, config.change_over)
        change = value - float(before["value"])
        span = format_duration(timedelta(seconds=round(elapsed)))
        signed = ("+" if change >= 0 else "") + FORMATS[config.metric].format(change)
        return Measurement(change, f"{config.metric} {config.aggregate} changed by {signed} "
                                   f"in {span} (now {shown})", Status.OK, unit)

    def _bounded(self, read: Callable[[], list[_Reading]]) -> list[_Reading]:
        """Run NVML calls in a worker thread: a driver in trouble can hang them for minutes."""
        if self._worker is not None and self._worker.is_alive():
            raise _Unreadable(f"an NVML call made {time.monotonic() - self._worker_since:.0f} s "
                              "ago has not returned: the GPU driver may be hung")
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["readings"] = read()
            except BaseException as exc:  # handed to the calling thread
                outcome["error"] = exc

        worker = threading.Thread(target=work, name=f"nvml-{self.config.name}", daemon=True)
        self._worker, self._worker_since = worker, time.monotonic()
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            raise _Unreadable(f"NVML did not answer within {self.timeout:g} s: "
                              "the GPU driver may be hung")
        if "error" in outcome:
            raise outcome["error"]
        readings: list[_Reading] = outcome["readings"]
        return readings

    def _read(self) -> list[_Reading]:
        config = self.config
        no_gpu = config.on_unavailable == "no_data"
        unavailable = Status.OK if no_gpu else Status.from_label(config.on_unavailable)
        try:
            nvml = _NVML.load()
        except _Unreadable as exc:
            raise _Unreadable(f"NVML unavailable: {exc}", unavailable, no_gpu) from None
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            raise _Unreadable(f"NVML could not count GPUs: {exc}") from None
        if count == 0:
            raise _Unreadable("NVML unavailable: no GPUs found", unavailable)
        indices = range(count) if config.devices == "all" else config.devices
        missing = [index for index in indices if index >= count]
        if missing:
            raise _Unreadable(
                f"GPU {', '.join(map(str, missing))} not present: this host has {count} "
                f"GPU{'s' if count > 1 else ''} ({', '.join(f'GPU{i}' for i in range(count))})")
        return [self._read_one(nvml, index) for index in indices]

    def _read_one(self, nvml: Any, index: int) -> _Reading:
        metric = self.config.metric
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            value, detail = READERS[metric](nvml, handle)
        except nvml.NVMLError as exc:
            if (metric == "ecc_uncorrected"
                    and getattr(exc, "value", None) == nvml.NVML_ERROR_NOT_SUPPORTED):
                raise _Unreadable(f"ECC not supported on GPU {index}") from None
            raise _Unreadable(f"NVML error reading {metric} of GPU {index}: {exc}") from None
        holders = _holders(nvml, handle) if metric.startswith("memory_") else ""
        return _Reading(index, value, detail, holders)

    def _describe(self, readings: list[_Reading], value: float) -> str:
        config = self.config
        form = FORMATS[config.metric]
        parts = [f"GPU{reading.index} {form.format(reading.value)}"
                 + (f" {reading.detail}" if reading.detail else "") for reading in readings]
        text = ", ".join(parts)
        if len(readings) > 1:
            text += f"; {config.aggregate} {form.format(value)}"
        holders = [f"GPU{reading.index} {reading.processes}"
                   for reading in readings if reading.processes]
        if holders:
            text += f"; memory held by: {'; '.join(holders)}"
        return text
