"""`host`: CPU, memory, disk and load of the machine sglguard runs on (psutil)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import psutil
from pydantic import Field

from sglguard.checks.base import Check, CheckConfig, SampleBook
from sglguard.config.base import RelativePath
from sglguard.domain import Measurement, Status

HostMetric = Literal["cpu_percent", "memory_percent", "disk_percent", "load1"]
Reading = dict[str, Any]

GIB = 1024**3
# A CPU percentage needs two readings. Later runs compare with the previous run's reading
# (kept here and in the sample book, so separate `sglguard check` invocations work too); a
# run with nothing to compare with reads twice CPU_MIN_SPAN apart: noisier than psutil's
# customary second, but a check must not block a scheduler thread for a second every run.
CPU_MIN_SPAN = 0.1
# Only the newest state row is ever read, and saving never drops it: keep stays small.
STATE_KEEP = timedelta(hours=1)


class Remembered:
    """The newest reading of one check: in the sample book when there is one (so restarts and
    separate invocations see it), else only in memory."""

    def __init__(self, book: SampleBook | None, check: str,
                 clock: Callable[[], datetime]) -> None:
        self.book, self.check, self.clock = book, check, clock
        self.reading: Reading | None = None

    def get(self) -> Reading | None:
        if self.book is None:
            return self.reading
        latest = self.book.latest(self.check)
        return latest[1] if latest is not None else None

    def put(self, reading: Reading) -> None:
        self.reading = reading
        if self.book is not None:
            self.book.save(self.check, self.clock(), reading, keep=STATE_KEEP)


def reading_pair(previous: Reading | None, read: Callable[[], Reading],
                 wait_at_most: float) -> tuple[Reading, Reading]:
    """The previous reading (or a fresh one) and a new one at least CPU_MIN_SPAN later;
    readings carry their wall time under "wall"."""
    first = previous if previous is not None else read()
    current = read()
    gap = current["wall"] - first["wall"]
    if gap < CPU_MIN_SPAN:
        time.sleep(max(0.0, min(CPU_MIN_SPAN - gap, wait_at_most)))
        current = read()
    return first, current


def describe_span(seconds: float, previous: Reading | None) -> str:
    if previous is None:
        return f"over {seconds:.2f} s (first reading)"
    return f"over the {seconds:.1f} s since the previous run"


def stale_after(interval: timedelta) -> float:
    """How old a previous reading may be and still make a current percentage."""
    return max(interval.total_seconds() * 3, 300.0)


def cpu_reading() -> Reading:
    """The host's busy and total CPU seconds since boot, and when they were read."""
    times = psutil.cpu_times()
    # As psutil.cpu_percent does: guest time is already in user time on Linux, and
    # waiting for I/O is idle.
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    busy = total - times.idle - getattr(times, "iowait", 0.0)
    return {"wall": time.time(), "boot": psutil.boot_time(), "busy": busy, "total": total}


class HostCheckConfig(CheckConfig):
    """A resource of the host: CPU busy, memory used, disk used (%), or the 1-minute load."""

    kind: Literal["host"]
    metric: HostMetric
    path: RelativePath = Field(
        default=Path("/"), description="for disk_percent: a path on the file system to measure")


class HostCheck(Check[HostCheckConfig]):
    """Reads one host resource through psutil; CPU from time deltas between runs."""

    kind = "host"
    config_model = HostCheckConfig

    @cached_property
    def _state(self) -> Remembered:
        return Remembered(self.context.samples, self.config.name, self.context.clock)

    def run(self) -> Measurement:
        readers: dict[str, Callable[[], Measurement]] = {
            "cpu_percent": self._cpu, "memory_percent": self._memory,
            "disk_percent": self._disk, "load1": self._load,
        }
        return readers[self.config.metric]()

    def _cpu(self) -> Measurement:
        previous = self._comparable(self._state.get())
        first, current = reading_pair(previous, cpu_reading, self.timeout / 2)
        self._state.put(current)
        spent = current["total"] - first["total"]
        percent = 100.0 * (current["busy"] - first["busy"]) / spent if spent > 0 else 0.0
        percent = min(max(percent, 0.0), 100.0)
        span = describe_span(current["wall"] - first["wall"], previous)
        return Measurement(percent, f"CPU {percent:.1f}% busy {span} ({os.cpu_count()} CPUs)",
                           unit="%")

    def _comparable(self, previous: Reading | None) -> Reading | None:
        if previous is None or previous.get("boot") != psutil.boot_time():
            return None
        age = time.time() - float(previous.get("wall", 0.0))
        if not 0 <= age <= stale_after(self.config.interval):
            return None
        return previous

    def _memory(self) -> Measurement:
        memory = psutil.virtual_memory()
        return Measurement(
            memory.percent,
            f"memory {memory.percent:.1f}% used ({(memory.total - memory.available) / GIB:.1f} "
            f"of {memory.total / GIB:.1f} GiB; {memory.available / GIB:.1f} GiB available)",
            unit="%")

    def _disk(self) -> Measurement:
        path = self.config.path
        try:
            usage = psutil.disk_usage(str(path))
        except FileNotFoundError:
            return Measurement(None, f"disk path {path} not found", Status.UNKNOWN, "%")
        except OSError as exc:
            return Measurement(None, f"cannot read disk usage of {path}: {exc}",
                               Status.UNKNOWN, "%")
        return Measurement(
            usage.percent,
            f"disk at {path} {usage.percent:.1f}% used ({usage.used / GIB:.1f} of "
            f"{usage.total / GIB:.1f} GiB; {usage.free / GIB:.1f} GiB free)",
            unit="%")

    def _load(self) -> Measurement:
        load1, load5, load15 = psutil.getloadavg()
        return Measurement(
            load1, f"load {load1:.2f} {load5:.2f} {load15:.2f} (1/5/15 min) on "
                   f"{os.cpu_count()} CPUs", unit="load")
