"""What control kinds share: running a tool, starting a detached server, rewriting launch flags."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from sglguard import pidfiles
from sglguard.client import redact_secrets
from sglguard.controls.base import ControlError

FLAG = re.compile(r"^--[a-z0-9][a-z0-9-]*$")


PIDFILE_MODE = 0o640
LOG_MODE = 0o640
# The pidfile is written right after the server is started: a process that started much
# earlier than its pidfile was written is not the one sglguard started.
STARTED_BEFORE_WRITTEN = 30.0


def safe_folder(path: Path, what: str) -> None:
    """Refuse a file whose folder others can write (see pidfiles.check_folder)."""
    try:
        pidfiles.check_folder(path, what)
    except pidfiles.UnsafeFile as exc:
        raise ControlError(str(exc), permanent=True) from None


def read_pidfile(path: Path) -> int | None:
    """The pid in `path`, None if there is none; a symbolic link is refused (ControlError)."""
    try:
        return pidfiles.read_pidfile(path)
    except pidfiles.PidfileError as exc:
        raise ControlError(str(exc), permanent=True) from None


def write_pidfile(path: Path, pid: int) -> None:
    """Write `pid` to `path` through a new temporary file (never through a link), mode 0640."""
    safe_folder(path, "pidfile")
    temporary = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)  # a leftover, or a planted link: removed, never followed
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         PIDFILE_MODE)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(f"{pid}\n")
    os.replace(temporary, path)  # replaces a link at `path` itself, not what it points to


def open_log(path: Path) -> int:
    """A descriptor appending to the log `path` (created 0640), never through a link."""
    safe_folder(path, "log")
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, LOG_MODE)
    except OSError as exc:
        raise ControlError(str(pidfiles.refusal(path, "log", exc)), permanent=True) from None


def server_process(pidfile: Path, start: Sequence[str]) -> tuple[psutil.Process | None, str]:
    """The live process the pidfile names if it is the server sglguard started; else None and
    why. Its owner, its start time against the pidfile's and its command line against the
    control's `start` must all agree: a pidfile may be stale, or forged by whoever can write
    it."""
    safe_folder(pidfile, "pidfile")
    pid = read_pidfile(pidfile)
    if pid is None:
        return None, f"no pid in {pidfile}"
    try:
        written = os.stat(pidfile, follow_symlinks=False)
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None, f"pid {pid} has exited"
        created = process.create_time()
        owner = process.uids().real
        cmdline = process.cmdline()
    except FileNotFoundError:
        return None, f"no pid in {pidfile}"
    except psutil.NoSuchProcess:
        return None, f"pid {pid} (from {pidfile}) is not running"
    except psutil.AccessDenied:
        return None, f"pid {pid} (from {pidfile}) cannot be inspected: not sglguard's"
    me = os.geteuid()
    if written.st_uid != me:
        problem = f"the pidfile belongs to uid {written.st_uid}, not sglguard's ({me})"
    elif owner != me:
        problem = f"it runs as uid {owner}, not as sglguard's ({me})"
    elif created > written.st_mtime + 1.0:
        problem = "it started after the pidfile was written (the pid was reused)"
    elif created < written.st_mtime - STARTED_BEFORE_WRITTEN:
        problem = (f"it started {written.st_mtime - created:.0f} s before the pidfile was "
                   "written")
    elif not runs_command(cmdline, start):
        problem = f"its command line is not the control's start: {shown_command(cmdline)[:200]}"
    else:
        return process, f"pid {pid}"
    return None, f"pid {pid} (from {pidfile}) is not the server sglguard started: {problem}"


def runs_command(cmdline: Sequence[str], start: Sequence[str]) -> bool:
    """Whether a command line runs the program of `start` (directly, or as a script under its
    interpreter), with the same `-m module` where `start` has one."""
    if not cmdline or not start:
        return False
    program = resolve_program(start[0])
    wanted = {Path(start[0]).name, Path(program).name, Path(os.path.realpath(program)).name}
    seen = set()
    for part in cmdline[:2]:
        seen.add(Path(part).name)
        if os.sep in part:
            seen.add(Path(os.path.realpath(part)).name)
    if not wanted & seen:
        return False
    if len(start) > 2 and start[1] == "-m":
        return any(cmdline[index:index + 2] == ["-m", start[2]]
                   for index in range(len(cmdline) - 1))
    return True


def signal_server(process: psutil.Process, signum: signal.Signals) -> None:
    """Signal a server sglguard started: its process group when it leads one (started in a
    session of its own), else the process alone."""
    pid = process.pid
    try:
        if os.getpgid(pid) == pid and pid != os.getpgid(0):
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        raise ControlError(f"not allowed to signal pid {pid} (it belongs to another user)",
                           permanent=True) from None


def record_started(child: subprocess.Popen[bytes], pidfile: Path) -> None:
    """Write the started server's pidfile; if that fails, stop the server again, since one that
    sglguard cannot find would be started a second time at the next restart."""
    try:
        write_pidfile(pidfile, child.pid)
    except (OSError, ControlError) as exc:
        os.killpg(child.pid, signal.SIGKILL)  # started in its own session: pgid == pid
        child.wait(timeout=10)
        reason = str(exc) if isinstance(exc, ControlError) else (exc.strerror or str(exc))
        raise ControlError(f"cannot write the pidfile {pidfile}: {reason}; "
                           "the started process was stopped", permanent=True) from None


def resolve_program(program: str) -> str:
    """A bare name from PATH, else beside this Python (a virtualenv that is not activated)."""
    if os.sep in program:
        return program
    found = shutil.which(program) or shutil.which(program, path=str(Path(sys.executable).parent))
    return found or program


def apply_flags(argv: Sequence[str], overrides: Mapping[str, str] | None) -> list[str]:
    """`argv` with each `--flag` of `overrides` set to its value: `--flag value` and
    `--flag=value` are rewritten in place, a flag that is not there is appended."""
    result = list(argv)
    for flag, value in (overrides or {}).items():
        for index, arg in enumerate(result):
            if arg == flag and index + 1 < len(result):
                result[index + 1] = value
                break
            if arg.startswith(flag + "="):
                result[index] = f"{flag}={value}"
                break
        else:
            result += [flag, value]
    return result


def shown_command(argv: Sequence[str]) -> str:
    """The argument list as a shell would read it, `--api-key` values hidden (plans are printed
    and stored)."""
    shown: str = redact_secrets(shlex.join(argv))
    return shown


def env_name(flag: str) -> str:
    """The environment variable a systemd unit reads a flag's value from:
    `--max-running-requests` -> `SGLANG_MAX_RUNNING_REQUESTS`."""
    return "SGLANG_" + flag.lstrip("-").replace("-", "_").upper()


def run_tool(argv: Sequence[str], *, timeout: float) -> str:
    """Run a tool (systemctl, docker, a stop command) to completion, never through a shell;
    its stdout, or ControlError with its stderr."""
    command = shown_command(argv)
    try:
        done = subprocess.run(
            [resolve_program(argv[0]), *argv[1:]], stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except FileNotFoundError:
        raise ControlError(f"command not found: {argv[0]}", permanent=True) from None
    except subprocess.TimeoutExpired:
        raise ControlError(f"`{command}` did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise ControlError(f"could not run `{command}`: {exc}") from None
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip() or "no output")[-500:]
        raise ControlError(f"`{command}` exited with status {done.returncode}: {said}")
    return done.stdout


def start_detached(argv: Sequence[str], *, cwd: Path | None, env: Mapping[str, str],
                   log: Path | None) -> subprocess.Popen[bytes]:
    """Start `argv` in a new session (it outlives sglguard), output appended to `log`."""
    output = os.fdopen(open_log(log), "ab") if log is not None else None
    try:
        return subprocess.Popen(
            [resolve_program(argv[0]), *argv[1:]], cwd=cwd, env={**os.environ, **env},
            stdin=subprocess.DEVNULL, stdout=output or subprocess.DEVNULL,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
        )
    except FileNotFoundError:
        raise ControlError(f"start command not found: {argv[0]}", permanent=True) from None
    except OSError as exc:
        raise ControlError(f"could not run {argv[0]}: {exc}") from None
    finally:
        if output is not None:
            output.close()


def check_flags(overrides: Mapping[str, str] | None) -> dict[str, str]:
    """The overrides as a dict; a key that is not a `--long-flag` is a bug of the caller."""
    flags = dict(overrides or {})
    for flag in flags:
        if not FLAG.match(flag):
            raise ValueError(f"not a launch flag: {flag!r} (expected --name-with-dashes)")
    return flags
