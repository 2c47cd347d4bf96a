"""Installing sglguard as a system service: the packaged systemd unit, the env file, the polkit
rule for the `systemd` control and a catalog whose state lives under /var/lib/sglguard."""

from __future__ import annotations

import grp
import json
import os
import shutil
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

STATE_DIR = Path("/var/lib/sglguard")
CONFIG_DIR = Path("/etc/sglguard")
UNIT_PATH = Path("/etc/systemd/system/sglguard.service")
POLKIT_PATH = Path("/etc/polkit-1/rules.d/50-sglguard.rules")
USER = "sglguard"
PACKAGED_PROGRAM = "/opt/sglguard/venv/bin/sglguard"  # the unit's ExecStart as shipped


def _packaged(name: str) -> str:
    return resources.files("sglguard.deploy").joinpath(name).read_text(encoding="utf-8")


def this_program() -> str:
    """The absolute path of the `sglguard` program of this installation (a venv's or pipx's
    bin folder holds it beside the interpreter); the packaged default when none is found."""
    beside = Path(sys.executable).parent / "sglguard"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside.absolute())
    found = shutil.which("sglguard")
    return str(Path(found).absolute()) if found else PACKAGED_PROGRAM


def unit_text(program: str) -> str:
    """The packaged unit, running `program`."""
    return _packaged("sglguard.service").replace(PACKAGED_PROGRAM, program)


def polkit_rule(units: list[str]) -> str:
    """The polkit rule that lets the sglguard user start, stop and restart `units`."""
    named = [unit if "." in unit else f"{unit}.service" for unit in units]
    return (_packaged("50-sglguard.rules").replace("@USER@", USER)
            .replace("@UNITS@", json.dumps(named)))


def env_text() -> str:
    return _packaged("env")


# Where the example catalog puts state beside itself, the system catalog uses /var/lib/sglguard:
# /etc/sglguard is read-only under the unit (ProtectSystem=full).
def system_catalog(program: str) -> str:
    """The example catalog with absolute state paths and an absolute start program."""
    text = resources.files("sglguard.config").joinpath("catalog.example.yaml").read_text()
    changes = [
        ("url: sqlite:///sglguard.db  ", f"url: sqlite:///{STATE_DIR}/sglguard.db"),
        ("start: [sglguard, emulator,", f"start: [{program}, emulator,"),
        ("pidfile: sglguard-local.pid",
         f"pidfile: {STATE_DIR}/sglang.pid\n      log: {STATE_DIR}/sglang.log   "
         "# the server's output; the log check reads it"),
        ("${SGLANG_API_KEY}  # sent as", f"${{SGLANG_API_KEY}}  # in {CONFIG_DIR}/env; sent as"),
    ]
    for old, new in changes:
        if old not in text:
            raise RuntimeError(f"the example catalog no longer holds {old!r}")
        text = text.replace(old, new, 1)
    heading = (f"# System catalog written by `sglguard init --system`: the store, the pidfile and "
               f"the server's log\n# live in {STATE_DIR} (the unit's StateDirectory); secrets "
               f"go in {CONFIG_DIR}/env as KEY=value lines.\n")
    return heading + text


@dataclass(frozen=True)
class Written:
    """One file of a system installation and what was done with it."""

    path: Path
    mode: int
    kept: bool  # it existed and --force was not given


def install_system(root: Path, *, program: str, units: list[str],
                   force: bool = False) -> list[Written]:
    """Write the catalog, env file, unit and polkit rule under `root` ("/" on a real host).
    Existing files are kept unless `force`. Raises OSError when a file cannot be written."""
    files = [
        (CONFIG_DIR / "sglguard.yaml", system_catalog(program), 0o640),
        (CONFIG_DIR / "env", env_text(), 0o600),
        (UNIT_PATH, unit_text(program), 0o644),
        (POLKIT_PATH, polkit_rule(units), 0o644),
    ]
    group = _service_group() if root == Path("/") and os.geteuid() == 0 else None
    config_dir = _under(root, CONFIG_DIR)
    config_dir.mkdir(parents=True, exist_ok=True)
    config_dir.chmod(0o750)
    if group is not None:
        os.chown(config_dir, 0, group)
    done: list[Written] = []
    for path, text, mode in files:
        where = _under(root, path)
        if where.exists() and not force:
            done.append(Written(where, mode, kept=True))
            continue
        where.parent.mkdir(parents=True, exist_ok=True)
        temporary = where.with_name(where.name + ".new")
        # Created with its final mode: the env file is never readable by others, even briefly.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        temporary.chmod(mode)
        if group is not None and path.name == "sglguard.yaml":
            os.chown(temporary, 0, group)
        temporary.replace(where)
        done.append(Written(where, mode, kept=False))
    return done


def _under(root: Path, path: Path) -> Path:
    return root / path.relative_to("/")


def _service_group() -> int | None:
    try:
        return grp.getgrnam(USER).gr_gid
    except KeyError:
        return None


def next_steps(root: Path, program: str) -> list[str]:
    """What the operator runs after `init --system`, in order."""
    catalog = CONFIG_DIR / "sglguard.yaml"
    steps = [
        f"id {USER} || useradd --system --home-dir {STATE_DIR} --shell /usr/sbin/nologin {USER}",
        f"chgrp {USER} {CONFIG_DIR} {catalog}   # the service reads its catalog as {USER}",
        f"edit {catalog}: the target's url and control, which checks to keep "
        "(README: \"Watch a real SGLang server\"); secrets as KEY=value lines in "
        f"{CONFIG_DIR}/env, named as ${{KEY}} in the catalog",
        f"{program} --env-file {CONFIG_DIR}/env validate --config {catalog}",
        "systemctl daemon-reload && systemctl enable --now sglguard",
        "journalctl -u sglguard -f   # exit status 2 = a configuration error: fix, validate, "
        "`systemctl restart sglguard`",
    ]
    if root != Path("/"):
        steps.insert(0, f"copy the files under {root} to the same paths on the host")
    if program.startswith(("/root/", "/home/")):
        steps.insert(0, f"{program} is under a home folder the {USER} user may not be able to "
                        "read: install sglguard in /opt (a virtual environment) or with "
                        "`pipx install --global`, then run `init --system --force` again")
    return steps
