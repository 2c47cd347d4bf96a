"""A file of lines kept beside the catalog (the backlog's overflow): created 0600, never through
a symbolic link planted in its place, rewritten by rename so a kill leaves it whole."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path


class SpillError(OSError):
    """The spill file cannot be used safely (a symbolic link, not a regular file)."""


def _open(path: Path, flags: int) -> int:
    try:
        descriptor = os.open(path, flags | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SpillError(f"the spill file {path} is a symbolic link: refused") from None
        raise
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise SpillError(f"the spill file {path} is not a regular file: refused")
    return descriptor


class SpillFile:
    """Lines appended in order, read back whole, and cut from the front as they are done."""

    def __init__(self, path: Path, limit_bytes: int) -> None:
        self.path = path
        self.limit_bytes = limit_bytes
        self._descriptor: int | None = None

    def size(self) -> int:
        try:
            return os.lstat(self.path).st_size
        except FileNotFoundError:
            return 0

    def append(self, lines: list[str]) -> bool:
        """Append the lines (each without its newline); False when the bound is reached."""
        data = "".join(f"{line}\n" for line in lines).encode()
        if self.size() + len(data) > self.limit_bytes:
            return False
        if self._descriptor is None:
            self._descriptor = _open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(self._descriptor, data)  # unbuffered: a kill of sglguard loses none of it
        return True

    def read(self) -> list[str]:
        try:
            descriptor = _open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return []
        with os.fdopen(descriptor, "rb") as handle:
            text = handle.read(self.limit_bytes + 1).decode(errors="replace")
        return [line for line in text.split("\n") if line.strip()]

    def keep(self, lines: list[str]) -> None:
        """Replace the file by `lines` (those not yet done); removed when there are none."""
        self.close()
        if not lines:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        temporary = self.path.with_name(self.path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)  # unlink removes a link itself, never what it points to
        descriptor = _open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write("".join(f"{line}\n" for line in lines).encode())
        os.replace(temporary, self.path)

    def close(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None
