"""Reading a pidfile, for whoever needs the pid (a control, the process check), without
following a symbolic link planted in its place."""

from __future__ import annotations

import errno
import os
from pathlib import Path


class PidfileError(OSError):
    """The pidfile cannot be read safely (a symbolic link, no permission)."""


def read_pidfile(path: Path) -> int | None:
    """The pid in `path`, None if there is none; a symbolic link is refused (PidfileError)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PidfileError(f"the pidfile {path} is a symbolic link: refused") from None
        raise PidfileError(f"cannot open the pidfile {path}: {exc.strerror or exc}") from None
    with os.fdopen(descriptor, "rb") as handle:
        text = handle.read(32).strip()
    return int(text) if text.isdigit() else None
