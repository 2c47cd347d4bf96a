"""`log`: new lines of a log file that match regular expressions, counted since the last run."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import BinaryIO, Literal

from pydantic import Field, field_validator

from sglguard.checks.base import Check, CheckConfig
from sglguard.checks.host import Reading, Remembered
from sglguard.config.base import RelativePath
from sglguard.domain import Measurement, Status
from sglguard.pidfiles import UnsafeFile, open_for_reading

UNIT = "lines"
MAX_READ = 8 * 1024**2  # per run; a burst larger than this is caught up by later runs
SHOWN_LINE = 200


class LogCheckConfig(CheckConfig):
    """Counts lines appended to a log file since the last run that match any pattern."""

    kind: Literal["log"]
    path: RelativePath | None = Field(
        default=None, description="the log file, relative to the catalog's folder; default: the "
                                  "log the target's process or command control writes the "
                                  "server's output to")
    patterns: tuple[str, ...] = Field(
        min_length=1, description="regular expressions searched in each new line, such as "
                                  "'CUDA out of memory', 'watchdog timeout', 'Traceback'")

    @field_validator("patterns")
    @classmethod
    def _compile(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for index, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"patterns[{index}]: invalid regular expression "
                                 f"{pattern!r}: {exc}") from None
        return patterns


@dataclass
class _Scan:
    """What one run read: matches per pattern, the first matching line, notes for the message."""

    counts: dict[str, int]
    matched: int = 0
    first: str | None = None
    read: int = 0
    notes: list[str] = field(default_factory=list)


def _start_of_last_line(handle: BinaryIO, size: int) -> int:
    """Where the unfinished last line starts (size when the file ends with a newline):
    a first run counts that line once it is finished."""
    start = max(0, size - 65536)
    handle.seek(start)
    tail = handle.read(size - start)
    if not tail or tail.endswith(b"\n"):
        return size
    newline = tail.rfind(b"\n")
    return start + newline + 1 if newline >= 0 else (0 if start == 0 else size)


class LogCheck(Check[LogCheckConfig]):
    """Reads what was appended to the log since the last run (following rotation and
    truncation) and counts the lines that match."""

    kind = "log"
    config_model = LogCheckConfig

    @cached_property
    def _state(self) -> Remembered:
        return Remembered(self.context.samples, self.config.name, self.context.clock)

    @cached_property
    def _patterns(self) -> list[re.Pattern[str]]:
        return [re.compile(pattern) for pattern in self.config.patterns]

    @cached_property
    def path(self) -> Path | None:
        """The file read: `path`, else the target control's log (checked at load time)."""
        if self.config.path is not None:
            return self.config.path
        control = self.context.target.control
        return control.server_log if control is not None else None

    def run(self) -> Measurement:
        path = self.path
        if path is None:
            return Measurement(None, f"no log to read: give `path:` (target "
                                     f"{self.context.target.name}'s control keeps no log)",
                               Status.UNKNOWN, UNIT)
        try:
            # As the pidfiles: never through a link, nor in a folder others can write (as
            # root, a planted link would show lines of any file in results and notifications).
            handle = os.fdopen(open_for_reading(path, "log file"), "rb")
        except FileNotFoundError:
            if self.config.path is None:
                # the control's log: it appears when the control first starts the server (a
                # server started some other way writes none; its liveness speaks for it)
                return Measurement(None, f"no data: {path} does not exist yet (the target's "
                                         "control writes it when it starts the server)",
                                   Status.OK, UNIT, counts=False)
            return Measurement(None, f"log file {path} not found", Status.UNKNOWN, UNIT)
        except UnsafeFile as exc:
            return Measurement(None, str(exc), Status.UNKNOWN, UNIT)
        except OSError as exc:
            return Measurement(None, f"cannot read log file {path}: {exc}", Status.UNKNOWN, UNIT)
        with handle:
            info = os.fstat(handle.fileno())
            identity = {"dev": info.st_dev, "ino": info.st_ino}
            previous = self._state.get()
            if previous is None:
                offset = _start_of_last_line(handle, info.st_size)
                self._state.put({**identity, "offset": offset})
                return Measurement(0.0, f"first run: watching {path} from its end "
                                        f"({offset} bytes of history skipped)", Status.OK, UNIT)
            scan = _Scan({pattern.pattern: 0 for pattern in self._patterns})
            offset = self._start(previous, identity, info.st_size, scan)
            offset = self._read(handle, offset, info.st_size, scan)
        self._state.put({**identity, "offset": offset})
        return Measurement(float(scan.matched), self._message(scan), Status.OK, UNIT)

    def _start(self, previous: Reading, identity: Reading, size: int, scan: _Scan) -> int:
        """Where to read the current file from, after reading a rotated file's remainder."""
        offset = int(previous.get("offset", 0))
        if (previous.get("dev"), previous.get("ino")) != (identity["dev"], identity["ino"]):
            self._read_rotated(previous, offset, scan)
            scan.notes.append("the file was replaced (rotated): read the new one from its start")
            return 0
        if size < offset:
            scan.notes.append("the file was truncated: read from its start")
            return 0
        return offset

    def _read_rotated(self, previous: Reading, offset: int, scan: _Scan) -> None:
        old = Path(f"{self.path}.1")
        try:
            with os.fdopen(open_for_reading(old, "rotated log file"), "rb") as handle:
                info = os.fstat(handle.fileno())
                if (info.st_dev, info.st_ino) != (previous.get("dev"), previous.get("ino")):
                    return
                self._read(handle, min(offset, info.st_size), info.st_size, scan)
        except OSError:
            return

    def _read(self, handle: BinaryIO, offset: int, size: int, scan: _Scan) -> int:
        """Count whole new lines from offset; return the offset after the last whole line."""
        budget = MAX_READ - scan.read
        handle.seek(offset)
        data = handle.read(max(0, min(size - offset, budget)))
        end = data.rfind(b"\n") + 1
        if end == 0 and len(data) == budget and budget > 0:
            end = len(data)  # one line longer than a whole run's budget: skip it, do not stall
            scan.notes.append(f"skipped {len(data)} bytes of a line without end")
        scan.read += end
        self._count(data[:end].decode("utf-8", errors="replace"), scan)
        if offset + len(data) < size and len(data) == budget:
            left = (size - offset - end) / 1024**2
            scan.notes.append(f"read the {MAX_READ // 1024**2} MiB limit, {left:.1f} MiB left "
                              "for the next run")
        return offset + end

    def _count(self, text: str, scan: _Scan) -> None:
        # Split on newlines only: progress bars end their updates with a bare "\r".
        for line in text.split("\n")[:-1]:
            hits = [pattern.pattern for pattern in self._patterns if pattern.search(line)]
            if not hits:
                continue
            scan.matched += 1
            for pattern in hits:
                scan.counts[pattern] += 1
            if scan.first is None:
                scan.first = line if len(line) <= SHOWN_LINE else line[:SHOWN_LINE - 3] + "..."

    def _message(self, scan: _Scan) -> str:
        path = self.path
        if scan.matched == 0:
            text = f"no new matching lines in {path} ({scan.read} new bytes)"
        else:
            counts = ", ".join(f"{pattern!r}: {count}"
                               for pattern, count in scan.counts.items() if count)
            plural = "line matches" if scan.matched == 1 else "lines match"
            text = f"{scan.matched} new {plural} in {path} ({counts}); first: {scan.first!r}"
        return "; ".join([text, *scan.notes])
