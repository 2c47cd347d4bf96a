"""Opening the files sglguard trusts (pidfiles, server logs) without following a symbolic link
planted in their place, and only in folders nobody else can write; for whoever needs them (a
control, the process and log checks)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class UnsafeFile(OSError):
    """A file sglguard will not open: a symbolic link, in a folder others can write, or
    unreadable."""


class PidfileError(UnsafeFile):
    """The pidfile cannot be read safely (a symbolic link, no permission)."""


def check_folder(path: Path, what: str) -> None:
    """Refuse a file whose folder others can write: they could swap the file for a link to a
    file of root's, or name another process in it (as systemd refuses unsafe PID files)."""
    folder = path.parent
    try:
        info = os.stat(folder)
    except FileNotFoundError:
        return  # created by sglguard, with its own modes
    except OSError as exc:
        raise UnsafeFile(f"cannot use the folder of the {what} {path}: "
                         f"{exc.strerror or exc}") from None
    if info.st_uid not in (0, os.geteuid()):
        raise UnsafeFile(f"the folder {folder} of the {what} belongs to uid {info.st_uid}: "
                         "refused (it must belong to sglguard's user or root)")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeFile(f"the folder {folder} of the {what} is writable by others than its "
                         f"owner (mode {stat.S_IMODE(info.st_mode):o}): refused")


def refusal(path: Path, what: str, exc: OSError) -> UnsafeFile:
    """What an open with O_NOFOLLOW that failed means."""
    if exc.errno == errno.ELOOP:
        return UnsafeFile(f"the {what} {path} is a symbolic link: refused")
    return UnsafeFile(f"cannot open the {what} {path}: {exc.strerror or exc}")


def open_for_reading(path: Path, what: str) -> int:
    """A descriptor reading `path`, in a folder only its owner can write, never through a
    symbolic link (UnsafeFile); FileNotFoundError when there is no file."""
    check_folder(path, what)
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise refusal(path, what, exc) from None


def read_pidfile(path: Path) -> int | None:
    """The pid in `path`, None if there is none; a symbolic link is refused (PidfileError)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PidfileError(str(refusal(path, "pidfile", exc))) from None
    with os.fdopen(descriptor, "rb") as handle:
        text = handle.read(32).strip()
    return int(text) if text.isdigit() else None
