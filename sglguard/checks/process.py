"""`process`: the target's server process (from its pidfile, or found by command line)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import psutil
from pydantic import Field, field_validator

from sglguard.checks.base import Check, CheckConfig
from sglguard.checks.host import Reading, Remembered, describe_span, reading_pair, stale_after
from sglguard.domain import Measurement, Status
from sglguard.pidfiles import read_pidfile

ProcessMetric = Literal["alive", "rss_mib", "cpu_percent", "open_fds", "uptime_s"]
UNITS: dict[str, str] = {"alive": "up", "rss_mib": "MiB", "cpu_percent": "%",
                         "open_fds": "fds", "uptime_s": "s"}
MIB = 1024**2
SHOWN_COMMAND = 400  # characters of a command line in a message; the middle is cut, not the end


class ProcessCheckConfig(CheckConfig):
    """Whether the server process lives, and what it uses."""

    kind: Literal["process"]
    metric: ProcessMetric = "alive"
    match: str | None = Field(
        default=None,
        description="regular expression searched in the command line (joined with spaces); "
                    "the oldest matching process is taken. Default: the pid in the pidfile "
                    "of the target's process control")
    children: bool = Field(
        default=False,
        description="add the child processes (SGLang runs its scheduler and workers as "
                    "children) to rss_mib, cpu_percent and open_fds; shared pages count twice")

    @field_validator("match")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
        return pattern


@dataclass(frozen=True)
class _Found:
    process: psutil.Process | None
    why: str  # how it was found, or why there is none
    unconfigured: bool = False  # nothing says which process: UNKNOWN, whatever the metric


def _command(process: psutil.Process) -> str:
    """The command line for a message. A long one loses its middle: the program's path (a
    virtual environment's, as deep as the checkout) comes first and the arguments that tell
    servers apart come last."""
    try:
        line = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    if len(line) <= SHOWN_COMMAND:
        return line
    half = (SHOWN_COMMAND - 5) // 2
    return f"{line[:half]} ... {line[-half:]}"


def _is_zombie(process: psutil.Process) -> bool:
    return process.status() == psutil.STATUS_ZOMBIE


class ProcessCheck(Check[ProcessCheckConfig]):
    """Finds the server process and reports whether it lives or one of its resources."""

    kind = "process"
    config_model = ProcessCheckConfig

    @cached_property
    def _state(self) -> Remembered:
        return Remembered(self.context.samples, self.config.name, self.context.clock)

    @cached_property
    def _pattern(self) -> re.Pattern[str] | None:
        return re.compile(self.config.match) if self.config.match is not None else None

    def run(self) -> Measurement:
        metric = self.config.metric
        unit = UNITS[metric]
        try:
            found = self._find()
            if found.unconfigured:
                return Measurement(None, found.why, Status.UNKNOWN, unit)
            if found.process is None:
                if metric == "alive":
                    return Measurement(0.0, f"no process: {found.why}", Status.CRITICAL, unit)
                return Measurement(None, f"cannot measure {metric}: no process: {found.why}",
                                   Status.UNKNOWN, unit)
            readers: dict[str, Callable[[psutil.Process], tuple[float, str]]] = {
                "alive": self._alive, "rss_mib": self._rss, "cpu_percent": self._cpu,
                "open_fds": self._fds, "uptime_s": self._uptime,
            }
            value, text = readers[metric](found.process)
        except psutil.NoSuchProcess as exc:
            status = Status.CRITICAL if metric == "alive" else Status.UNKNOWN
            return Measurement(0.0 if metric == "alive" else None,
                               f"no process: pid {exc.pid} exited while being read", status, unit)
        except psutil.AccessDenied as exc:
            return Measurement(None, f"not permitted to read pid {exc.pid} ({metric}): run "
                                     "sglguard as the server's user", Status.UNKNOWN, unit)
        return Measurement(value, f"{text}; {found.why}", Status.OK, unit)

    # --- finding the process -------------------------------------------------------------

    def _find(self) -> _Found:
        if self._pattern is not None:
            return self._by_match(self._pattern)
        pidfile = getattr(self.context.target.control, "pidfile", None)
        if isinstance(pidfile, Path):  # a process or command control that keeps one
            return self._by_pidfile(pidfile)
        return _Found(None, f"cannot tell which process to watch: target "
                            f"{self.context.target.name} has no control with a pidfile; "
                            "set `match:` to find the server by its command line",
                      unconfigured=True)

    def _by_match(self, pattern: re.Pattern[str]) -> _Found:
        own = os.getpid()  # sglguard's own command line may mention the server's
        matches: list[psutil.Process] = []
        for process in psutil.process_iter(["cmdline", "create_time", "status"]):
            info = process.info
            if process.pid == own or not info.get("cmdline"):
                continue
            if info.get("status") == psutil.STATUS_ZOMBIE:
                continue
            if pattern.search(" ".join(info["cmdline"])):
                matches.append(process)
        if not matches:
            return _Found(None, f"no process matches {pattern.pattern!r}")
        oldest = min(matches, key=lambda process: process.info.get("create_time") or 0.0)
        extra = f" (of {len(matches)} matching)" if len(matches) > 1 else ""
        return _Found(oldest, f"pid {oldest.pid}{extra} matches {pattern.pattern!r}")

    def _by_pidfile(self, pidfile: Path) -> _Found:
        try:
            pid = read_pidfile(pidfile)
            written = pidfile.stat().st_mtime if pid is not None else 0.0
        except OSError as exc:
            return _Found(None, f"cannot read pidfile {pidfile}: {exc}")
        if pid is None:
            return _Found(None, f"pidfile {pidfile} is missing or holds no pid")
        try:
            process = psutil.Process(pid)
            if _is_zombie(process):
                return _Found(None, f"pidfile {pidfile} names pid {pid}, which has exited "
                                    "(a zombie)")
            if process.create_time() > written + 1.0:
                return _Found(None, f"pidfile {pidfile} names pid {pid}, which now belongs to "
                                    f"a newer process: {_command(process)}")
        except psutil.NoSuchProcess:
            return _Found(None, f"pidfile {pidfile} names pid {pid}, which is not running")
        return _Found(process, f"pid {pid} from {pidfile}")

    # --- metrics -------------------------------------------------------------------------

    def _tree(self, process: psutil.Process) -> list[psutil.Process]:
        if not self.config.children:
            return [process]
        return [process, *process.children(recursive=True)]

    def _alive(self, process: psutil.Process) -> tuple[float, str]:
        return 1.0, f"alive: {_command(process)}"

    def _rss(self, process: psutil.Process) -> tuple[float, str]:
        tree = self._tree(process)
        total = 0.0
        for member in tree:
            try:
                total += member.memory_info().rss / MIB
            except psutil.NoSuchProcess:
                if member is process:
                    raise
        return total, f"resident memory {total:.0f} MiB{self._counted(tree)}"

    def _fds(self, process: psutil.Process) -> tuple[float, str]:
        tree = self._tree(process)
        total = 0
        for member in tree:
            try:
                total += member.num_fds()
            except psutil.NoSuchProcess:
                if member is process:
                    raise
        return float(total), f"{total} open file descriptors{self._counted(tree)}"

    def _uptime(self, process: psutil.Process) -> tuple[float, str]:
        uptime = max(0.0, time.time() - process.create_time())
        return uptime, f"up {uptime:.0f} s"

    def _counted(self, tree: list[psutil.Process]) -> str:
        return f" over {len(tree)} processes" if len(tree) > 1 else ""

    def _cpu(self, process: psutil.Process) -> tuple[float, str]:
        """Percent of one CPU (100 = one core busy), from CPU time deltas between runs of the
        same process (same pid and start time); a first run reads twice 0.1 s apart."""
        key = f"{process.pid}:{process.create_time()}"

        def read() -> Reading:
            seconds: dict[str, float] = {}
            for member in self._tree(process):
                try:
                    times = member.cpu_times()
                    seconds[f"{member.pid}:{member.create_time()}"] = times.user + times.system
                except psutil.NoSuchProcess:
                    if member is process:
                        raise
            return {"wall": time.time(), "process": key, "cpu": seconds}

        previous = self._state.get()
        if previous is not None and (
                previous.get("process") != key
                or not 0 <= time.time() - previous["wall"] <= stale_after(self.config.interval)):
            previous = None
        first, current = reading_pair(previous, read, self.timeout / 2)
        self._state.put(current)
        # A child started since the first reading spent all its CPU time within the span.
        used = sum(seconds - first["cpu"].get(member, 0.0)
                   for member, seconds in current["cpu"].items())
        span = current["wall"] - first["wall"]
        percent = max(0.0, 100.0 * used / span) if span > 0 else 0.0
        what = f"{len(current['cpu'])} processes" if len(current["cpu"]) > 1 else "process"
        return percent, f"{what} used {percent:.1f}% of a CPU {describe_span(span, previous)}"
