"""What control kinds share: running a tool, starting a detached server, rewriting launch flags."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from sglguard.client import redact_secrets
from sglguard.controls.base import ControlError

FLAG = re.compile(r"^--[a-z0-9][a-z0-9-]*$")


def read_pidfile(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def write_pidfile(path: Path, pid: int) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(f"{pid}\n")
    temporary.replace(path)


def record_started(child: subprocess.Popen[bytes], pidfile: Path) -> None:
    """Write the started server's pidfile; if that fails, stop the server again, since one that
    sglguard cannot find would be started a second time at the next restart."""
    try:
        write_pidfile(pidfile, child.pid)
    except OSError as exc:
        os.killpg(child.pid, signal.SIGKILL)  # started in its own session: pgid == pid
        child.wait(timeout=10)
        raise ControlError(f"cannot write the pidfile {pidfile}: {exc.strerror or exc}; "
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
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    output = log.open("ab") if log is not None else None
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
