"""Hostile files on the host: catalogs others can write, YAML alias bombs, symlinked pidfiles
and logs, an unrelated process behind the pidfile."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner

from sglguard.checks.base import Check, CheckConfig, CheckContext, Status
from sglguard.checks.registry import CHECKS
from sglguard.cli import main
from sglguard.client import SGLangClient
from sglguard.config.loader import ConfigError, load_catalog
from sglguard.config.models import TargetConfig
from sglguard.controls.base import ControlError
from sglguard.controls.launch import read_pidfile
from sglguard.controls.process import ProcessControl, ProcessControlConfig
from sglguard.store import Store

from conftest import PYTHON, wait_for

CATALOG = """\
version: 1
targets:
  - {name: local, url: "http://127.0.0.1:1"}
checks:
  - {name: liveness, kind: http, target: local}
"""

BOMB = """\
version: 1
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_a_world_writable_catalog_is_refused_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "sglguard.yaml"
    path.write_text(CATALOG)
    path.chmod(0o666)
    with pytest.raises(ConfigError, match="writable by every user: refused"):
        load_catalog(path)
    result = CliRunner().invoke(main, ["validate", "--config", str(path)])
    assert result.exit_code == 2
    assert "writable by every user" in result.output
    path.chmod(0o644)
    assert load_catalog(path).checks[0].name == "liveness"


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    path = tmp_path / "sglguard.yaml"
    path.write_text(BOMB)
    with pytest.raises(ConfigError, match="aliases expand to more than 100000 values"):
        load_catalog(path)


def test_modest_aliases_still_load(tmp_path: Path) -> None:
    path = tmp_path / "sglguard.yaml"
    path.write_text(CATALOG.replace("{name: liveness,", "{interval: &every 5s, name: liveness,")
                    + "  - {interval: *every, name: again, kind: http, target: local}\n")
    catalog = load_catalog(path)
    assert [check.interval.total_seconds() for check in catalog.checks] == [5.0, 5.0]


def test_an_oversized_catalog_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sglguard.yaml"
    path.write_text(CATALOG + "# " + "x" * (1024 * 1024) + "\n")
    with pytest.raises(ConfigError, match="larger than 1024 KiB: refused"):
        load_catalog(path)


# --- pidfiles, logs and the processes they name ---------------------------------------------

SERVER = "import time; time.sleep(120)"


def process_control(tmp_path: Path, **fields: Any) -> ProcessControl:
    target = TargetConfig.model_validate(
        {"name": "local", "url": "http://127.0.0.1:1",
         "control": {"kind": "process", "start": [PYTHON, "-c", SERVER],
                     "pidfile": str(tmp_path / "run" / "local.pid"), "stop_timeout": "5s",
                     **fields}},
        context={"base_dir": tmp_path})
    assert isinstance(target.control, ProcessControlConfig)
    return ProcessControl(target.control, target)


@pytest.fixture
def unrelated() -> Iterator[subprocess.Popen[bytes]]:
    """A shell with two children, in a session of its own: not the server."""
    shell = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)
    wait_for(lambda: len(psutil.Process(shell.pid).children()) == 2)
    yield shell
    os.killpg(shell.pid, signal.SIGKILL)
    shell.wait()


def group_alive(shell: subprocess.Popen[bytes]) -> bool:
    process = psutil.Process(shell.pid)
    return process.is_running() and len(process.children()) == 2


def test_an_unrelated_process_behind_the_pidfile_is_never_signalled(
        tmp_path: Path, unrelated: subprocess.Popen[bytes]) -> None:
    control = process_control(tmp_path)
    (tmp_path / "run").mkdir(mode=0o700)
    (tmp_path / "run" / "local.pid").write_text(f"{unrelated.pid}\n")

    assert "is not the server sglguard started: its command line is not the control's " \
           "start: sh -c" in control.plan_restart()[0]
    done = control.stop()
    assert done.startswith(f"nothing stopped: pid {unrelated.pid}")
    assert "not signalled" in done
    time.sleep(0.2)  # a signal, had one been sent, would have landed by now
    assert group_alive(unrelated)


def test_a_process_much_older_than_its_pidfile_is_not_the_server(tmp_path: Path) -> None:
    control = process_control(tmp_path)
    (tmp_path / "run").mkdir(mode=0o700)
    older = subprocess.Popen([PYTHON, "-c", SERVER], start_new_session=True)
    try:
        pidfile = tmp_path / "run" / "local.pid"
        pidfile.write_text(f"{older.pid}\n")
        later = time.time() + 300  # as if the pidfile were written 5 minutes after it started
        os.utime(pidfile, (later, later))
        assert re.search(r"it started 30\d s before the pidfile was written, not signalled",
                         control.stop())
        assert older.poll() is None
    finally:
        older.kill()
        older.wait()


def test_the_server_sglguard_started_is_stopped_with_its_group(tmp_path: Path) -> None:
    control = process_control(tmp_path)
    pid = control.start()
    assert control.stop() == f"stopped pid {pid} with SIGTERM"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_pidfile_and_log_are_created_private_and_never_through_links(tmp_path: Path) -> None:
    victim = tmp_path / "root-only" / "crontab"
    victim.parent.mkdir()
    victim.write_text("original\n")
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    (run / "local.pid.tmp").symlink_to(victim)  # planted where the pidfile is written first
    control = process_control(tmp_path)
    pid = control.start()
    try:
        pidfile, log = run / "local.pid", run / "local.log"
        assert victim.read_text() == "original\n"
        assert not pidfile.is_symlink() and read_pidfile(pidfile) == pid
        assert stat.S_IMODE(pidfile.stat().st_mode) == 0o640
        assert stat.S_IMODE(log.stat().st_mode) == 0o640
    finally:
        control.stop()


def test_a_symlinked_pidfile_or_log_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("12345\n")
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    (run / "local.pid").symlink_to(victim)
    control = process_control(tmp_path)
    with pytest.raises(ControlError, match=r"pidfile .*local.pid is a symbolic link: refused"):
        control.stop()
    (run / "local.pid").unlink()
    (run / "local.log").symlink_to(victim)
    with pytest.raises(ControlError, match=r"log .*local.log is a symbolic link: refused"):
        control.start()
    assert victim.read_text() == "12345\n"


def test_a_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o777)
    control = process_control(tmp_path)
    with pytest.raises(ControlError, match=r"is writable by others than its owner "
                                           r"\(mode 777\): refused"):
        control.start()
    (run / "local.pid").write_text("1\n")  # a forged pidfile: never read, never signalled
    with pytest.raises(ControlError, match=r"folder .*run of the pidfile is writable by others"):
        control.stop()


def test_a_folder_of_another_user_is_refused_for_the_pidfile(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a folder to another user")
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    os.chown(run, 65534, 65534)  # nobody's: that user could swap the pidfile for a link
    control = process_control(tmp_path)
    with pytest.raises(ControlError, match=r"belongs to uid 65534: refused"):
        control.start()
    with pytest.raises(ControlError, match=r"belongs to uid 65534: refused"):
        control.stop()


def log_check(path: Path) -> Check[Any]:
    model = CheckConfig.model_validate({"name": "errors", "target": "local", "kind": "log",
                                        "path": str(path), "patterns": ["Traceback"],
                                        "critical": "> 0"})
    target = TargetConfig(name="local", url="http://127.0.0.1:1")
    return CHECKS["log"](model, CheckContext(target, SGLangClient(target.url)))


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file of root's that a log check must never show."""
    path = tmp_path / "root-only" / "shadow"
    path.parent.mkdir(mode=0o700)
    path.write_text("Traceback: root:$6$secret-hash\n")
    return path


def test_a_symlinked_log_is_refused_by_the_log_check(tmp_path: Path, victim: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    log = logs / "server.log"
    log.write_text("Traceback: an old crash\n")
    check = log_check(log)
    assert check.execute().status is Status.OK  # the first run: watching from the end
    log.unlink()
    log.symlink_to(victim)  # swapped for a link between runs
    with victim.open("a") as handle:
        handle.write("Traceback: root:$6$another-secret\n")
    result = check.execute()
    assert result.status is Status.UNKNOWN
    assert re.search(r"the log file .*server\.log is a symbolic link: refused", result.message)
    assert "secret" not in result.message


def test_a_log_in_a_folder_others_can_write_is_refused_by_the_log_check(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    logs.chmod(0o777)
    (logs / "server.log").write_text("Traceback\n")
    result = log_check(logs / "server.log").execute()
    assert result.status is Status.UNKNOWN
    assert re.search(r"the folder .*logs of the log file is writable by others than its owner "
                     r"\(mode 777\): refused", result.message), result.message


def test_a_rotated_log_planted_as_a_link_is_not_read(tmp_path: Path, victim: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    log = logs / "server.log"
    log.write_text("")
    check = log_check(log)
    check.execute()
    log.unlink()
    (logs / "server.log.1").symlink_to(victim)  # where the rotated file's rest is read
    log.write_text("a new line\n")
    result = check.execute()
    assert (result.status, result.value) == (Status.OK, 0.0), result.message
    assert "secret" not in result.message


def test_the_database_file_is_created_0600(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'sglguard.db'}")
    try:
        assert stat.S_IMODE((tmp_path / "sglguard.db").stat().st_mode) == 0o600
    finally:
        store.close()
