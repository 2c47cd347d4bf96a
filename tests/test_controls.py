"""Control kinds: the exact commands systemd/docker controls run, the command control with real
child processes, launch-flag rewriting, and `sglguard remediate --dry-run` printing them.

Fake boundary, where there is one: the `systemctl` or `docker` executable, replaced by a small
script in tmp_path that records its argument list (the control's `systemctl:`/`docker:` path
points at it). Nothing else is faked."""

from __future__ import annotations

import json
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sglguard.cli import main
from sglguard.config.models import Catalog
from sglguard.controls.base import Control, ControlError
from sglguard.controls.launch import apply_flags, env_name, read_pidfile
from sglguard.controls.registry import CONTROLS

from conftest import PYTHON, pid_alive, wait_for

FAKE_TOOL = """#!{python}
import json, pathlib, sys
here = pathlib.Path(__file__).parent
name = pathlib.Path(sys.argv[0]).name
with open(here / (name + ".calls"), "a") as calls:
    calls.write(json.dumps(sys.argv[1:]) + "\\n")
answers = here / (name + ".answers.json")
for prefix, (code, out, err) in (json.loads(answers.read_text()) if answers.exists() else []):
    if " ".join(sys.argv[1:]).startswith(prefix):
        sys.stdout.write(out)
        sys.stderr.write(err)
        sys.exit(code)
"""


class FakeTool:
    """A stand-in executable (`systemctl`, `docker`) that records each argument list."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / name
        self.path.write_text(FAKE_TOOL.format(python=sys.executable))
        self.path.chmod(self.path.stat().st_mode | stat.S_IXUSR)

    def answer(self, prefix: str, code: int, out: str = "", err: str = "") -> None:
        """Calls whose arguments start with `prefix` print `out`/`err` and exit with `code`."""
        file = self.path.with_name(self.path.name + ".answers.json")
        rules = json.loads(file.read_text()) if file.exists() else []
        file.write_text(json.dumps([[prefix, [code, out, err]], *rules]))

    def calls(self) -> list[list[str]]:
        file = self.path.with_name(self.path.name + ".calls")
        if not file.exists():
            return []
        return [json.loads(line) for line in file.read_text().splitlines()]


def control_of(make_catalog: Callable[[str], Catalog], control: str) -> Control[Any]:
    catalog = make_catalog(f"""\
        version: 1
        targets:
          - name: local
            url: http://127.0.0.1:1
            control: {control}
        """)
    target = catalog.targets[0]
    assert target.control is not None
    return CONTROLS[target.control.kind](target.control, target)


@pytest.fixture
def systemctl(tmp_path: Path) -> FakeTool:
    return FakeTool(tmp_path, "systemctl")


@pytest.fixture
def docker(tmp_path: Path) -> FakeTool:
    return FakeTool(tmp_path, "docker")


@pytest.mark.parametrize(("argv", "overrides", "expected"), [
    (["sglang", "--max-running-requests", "256", "--port", "1"],
     {"--max-running-requests": "128"}, ["sglang", "--max-running-requests", "128", "--port", "1"]),
    (["sglang", "--max-running-requests=256"], {"--max-running-requests": "128"},
     ["sglang", "--max-running-requests=128"]),
    (["sglang", "--port", "1"], {"--max-running-requests": "64"},
     ["sglang", "--port", "1", "--max-running-requests", "64"]),
    (["sglang", "--max-running-requests"], {"--max-running-requests": "8"},
     ["sglang", "--max-running-requests", "--max-running-requests", "8"]),
    (["sglang", "--mem-fraction-static", "0.9"],
     {"--mem-fraction-static": "0.8", "--max-queued-requests": "100"},
     ["sglang", "--mem-fraction-static", "0.8", "--max-queued-requests", "100"]),
    (["sglang", "--port", "1"], None, ["sglang", "--port", "1"]),
], ids=["space", "equals", "appended", "dangling-flag", "several", "none"])
def test_flags_are_rewritten_in_place_or_appended(argv: list[str], overrides: dict[str, str],
                                                  expected: list[str]) -> None:
    assert apply_flags(argv, overrides) == expected


def test_flag_names_map_to_unit_environment_variables() -> None:
    assert env_name("--max-running-requests") == "SGLANG_MAX_RUNNING_REQUESTS"
    assert env_name("--mem-fraction-static") == "SGLANG_MEM_FRACTION_STATIC"


def test_systemd_restart_and_stop_run_systemctl_with_exact_arguments(
        make_catalog: Callable[[str], Catalog], systemctl: FakeTool) -> None:
    """Fake boundary: the systemctl executable."""
    control = control_of(make_catalog, f"{{kind: systemd, unit: sglang, systemctl: "
                                       f"{systemctl.path}}}")
    assert control.plan_restart() == [f"run {systemctl.path} restart sglang.service"]
    assert control.restart() == "restarted sglang.service"
    assert control.stop() == "stopped sglang.service"
    assert systemctl.calls() == [["restart", "sglang.service"], ["stop", "sglang.service"]]


def test_systemd_failure_is_a_control_error_with_stderr(
        make_catalog: Callable[[str], Catalog], systemctl: FakeTool) -> None:
    """Fake boundary: the systemctl executable (exits 5 like a missing unit)."""
    systemctl.answer("restart", 5, err="Failed to restart sglang.service: Unit not found.\n")
    control = control_of(make_catalog, f"{{kind: systemd, unit: sglang.service, "
                                       f"systemctl: {systemctl.path}}}")
    with pytest.raises(ControlError, match=r"exited with status 5: Failed to restart "
                                           r"sglang.service: Unit not found."):
        control.restart()


def test_systemd_overrides_go_through_a_drop_in_that_is_removed_at_the_end(
        make_catalog: Callable[[str], Catalog], systemctl: FakeTool, tmp_path: Path) -> None:
    """Fake boundary: the systemctl executable; the drop-in is a real file in tmp_path."""
    control = control_of(make_catalog, f"{{kind: systemd, unit: sglang, systemctl: "
                                       f"{systemctl.path}, dropin_dir: units}}")
    dropin = tmp_path / "units" / "sglguard-concurrency.conf"
    lowered = {"--max-running-requests": "128"}
    plan = control.plan_restart(lowered)
    assert plan == [f"write {dropin}: [Service] | Environment=SGLANG_MAX_RUNNING_REQUESTS=128",
                    f"run {systemctl.path} daemon-reload",
                    f"run {systemctl.path} restart sglang.service"]
    control.restart(lowered)
    assert "[Service]\nEnvironment=SGLANG_MAX_RUNNING_REQUESTS=128\n" in dropin.read_text()
    control.restart(lowered)  # unchanged: no reload
    control.restart({})
    assert not dropin.exists()
    assert systemctl.calls() == [["daemon-reload"], ["restart", "sglang.service"],
                                 ["restart", "sglang.service"],
                                 ["daemon-reload"], ["restart", "sglang.service"]]


def test_systemd_unit_in_the_failed_state_is_a_start_failure(
        make_catalog: Callable[[str], Catalog], systemctl: FakeTool) -> None:
    """Fake boundary: the systemctl executable."""
    control = control_of(make_catalog, f"{{kind: systemd, unit: sglang, systemctl: "
                                       f"{systemctl.path}}}")
    systemctl.answer("show", 0, out="activating\n")
    assert control.start_failure() is None
    systemctl.answer("show", 0, out="failed\n")
    assert "sglang.service is in the failed state" in (control.start_failure() or "")
    assert systemctl.calls()[-1] == ["show", "--property=ActiveState", "--value",
                                     "sglang.service"]


def test_docker_restart_and_stop_run_the_cli_with_the_stop_timeout(
        make_catalog: Callable[[str], Catalog], docker: FakeTool) -> None:
    """Fake boundary: the docker executable (no Docker engine runs here)."""
    control = control_of(make_catalog, f"{{kind: docker, container: sglang-0, "
                                       f"docker: {docker.path}, stop_timeout: 45s}}")
    assert control.plan_restart() == [f"run {docker.path} restart --time 45 sglang-0"]
    assert control.restart() == "restarted container sglang-0"
    assert control.stop() == "stopped container sglang-0"
    assert docker.calls() == [["restart", "--time", "45", "sglang-0"],
                              ["stop", "--time", "45", "sglang-0"]]
    docker.answer("inspect", 0, out="exited 137\n")
    assert "container sglang-0 is exited (exit code 137" in (control.start_failure() or "")


def test_docker_refuses_changed_launch_flags_permanently(
        make_catalog: Callable[[str], Catalog], docker: FakeTool) -> None:
    """Fake boundary: the docker executable (which must never be called here)."""
    control = control_of(make_catalog, f"{{kind: docker, container: c, docker: {docker.path}}}")
    with pytest.raises(ControlError, match="cannot restart c with changed launch flags") as caught:
        control.restart({"--max-running-requests": "128"})
    assert caught.value.permanent and docker.calls() == []


SERVER = ("import pathlib, sys, time; pathlib.Path(sys.argv[1]).write_text(' '.join(sys.argv)); "
          "time.sleep(120)")
KILL = "import os, signal, sys; os.kill(int(open(sys.argv[1]).read()), signal.SIGTERM)"


def test_command_control_stops_then_starts_detached_with_rewritten_flags(
        make_catalog: Callable[[str], Catalog], tmp_path: Path) -> None:
    """Real child processes: `start` writes its argv to a file, `stop` kills the pidfile's pid."""
    marker, pidfile = tmp_path / "argv", tmp_path / "server.pid"
    start = [PYTHON, "-c", SERVER, str(marker), "--max-running-requests", "256"]
    control = control_of(make_catalog, json.dumps({
        "kind": "command", "start": start, "stop": [PYTHON, "-c", KILL, str(pidfile)],
        "pidfile": "server.pid", "stop_timeout": "5s"}))
    first = control.start()  # type: ignore[attr-defined]
    wait_for(marker.exists)
    marker.unlink()
    done = control.restart({"--max-running-requests": "128"})
    second = read_pidfile(pidfile)
    try:
        assert f"pid {first} exited; started pid {second}" in done
        assert not pid_alive(first) and second is not None and pid_alive(second)
        assert wait_for(marker.exists) and marker.read_text().endswith(
            "--max-running-requests 128")
    finally:
        control.stop()
    assert not pid_alive(second)


def test_command_control_plan_names_every_command(
        make_catalog: Callable[[str], Catalog], tmp_path: Path) -> None:
    control = control_of(make_catalog, json.dumps({
        "kind": "command", "start": ["sglang-serve", "--port", "30000"],
        "stop": ["sglang-stop", "--now"], "pidfile": "s.pid", "stop_timeout": "20s"}))
    assert control.plan_restart({"--max-running-requests": "64"}) == [
        "run sglang-stop --now and wait up to 20 s for it",
        f"wait for the pid in {tmp_path / 's.pid'} to exit",
        "run sglang-serve --port 30000 --max-running-requests 64, in a new session, output "
        f"appended to {tmp_path / 's.log'}",
        f"write the new pid to {tmp_path / 's.pid'}",
    ]


def test_command_control_stop_that_fails_or_hangs_is_a_control_error(
        make_catalog: Callable[[str], Catalog]) -> None:
    failing = control_of(make_catalog, json.dumps({
        "kind": "command", "start": ["true"],
        "stop": [PYTHON, "-c", "import sys; sys.exit('no such server')"]}))
    with pytest.raises(ControlError, match="exited with status 1: no such server"):
        failing.restart()
    hanging = control_of(make_catalog, json.dumps({
        "kind": "command", "start": ["true"], "stop": [PYTHON, "-c", "import time; time.sleep(30)"],
        "stop_timeout": "0.3s"}))
    with pytest.raises(ControlError, match=r"did not finish within 0\.3 s"):
        hanging.stop()


def test_command_start_that_exits_non_zero_is_a_start_failure(
        make_catalog: Callable[[str], Catalog]) -> None:
    control = control_of(make_catalog, json.dumps({
        "kind": "command", "start": [PYTHON, "-c", "raise SystemExit(4)"], "stop": ["true"]}))
    control.restart()
    message = wait_for(control.start_failure, timeout=5)
    assert "exited with status 4" in message


def test_process_control_plans_the_rewritten_start_arguments(
        make_catalog: Callable[[str], Catalog], tmp_path: Path) -> None:
    control = control_of(make_catalog, json.dumps({
        "kind": "process", "start": ["sglang", "--max-running-requests=256"],
        "pidfile": "p.pid"}))
    assert control.describe_launch({"--max-running-requests": "128"}) == (
        "sglang --max-running-requests=128")
    assert "run sglang --max-running-requests=128 in" in control.plan_restart(
        {"--max-running-requests": "128"})[1]


def test_remediate_dry_run_prints_the_systemctl_command(tmp_path: Path,
                                                        systemctl: FakeTool) -> None:
    """Fake boundary: the systemctl executable (never called by a dry run)."""
    path = tmp_path / "sglguard.yaml"
    path.write_text(f"""\
version: 1
targets:
  - name: local
    url: http://127.0.0.1:1
    control: {{kind: systemd, unit: sglang, systemctl: {systemctl.path}}}
remediations:
  - {{name: restart, kind: restart}}
""")
    result = CliRunner(env={"COLUMNS": "300"}).invoke(  # long tmp paths: no wrapping
        main, ["remediate", "restart", "--dry-run", "--config", str(path)],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"1. run {systemctl.path} restart sglang.service" in result.output
    assert systemctl.calls() == []


def test_plans_hide_api_keys_in_start_arguments(make_catalog: Callable[[str], Catalog]) -> None:
    control = control_of(make_catalog, json.dumps({
        "kind": "process", "start": ["sglang", "--api-key", "k3y", "--admin-api-key=adm1n"],
        "pidfile": "p.pid"}))
    shown = " ".join(control.plan_restart({"--max-running-requests": "64"}))
    assert "k3y" not in shown and "adm1n" not in shown
    assert "--api-key *** --admin-api-key=*** --max-running-requests 64" in shown


def test_a_pidfile_that_cannot_be_written_stops_the_started_server(tmp_path: Path) -> None:
    """A server sglguard cannot find again is not left running (it would be started twice)."""
    from sglguard.config.loader import parse_catalog
    from sglguard.controls.base import ControlError
    from sglguard.controls.registry import CONTROLS

    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "local.pid").mkdir()  # a folder where the pidfile should go
    path = tmp_path / "sglguard.yaml"
    path.write_text(
        "version: 1\ntargets:\n  - name: local\n    url: http://127.0.0.1:1\n"
        f"    control: {{kind: process, start: [{PYTHON!r}, -c, 'import time; time.sleep(60)'],"
        " pidfile: locked/local.pid}\n")
    catalog = parse_catalog(path.read_text(), path)
    target = catalog.targets[0]
    assert target.control is not None
    control = CONTROLS[target.control.kind](target.control, target)
    with pytest.raises(ControlError, match="cannot write the pidfile") as caught:
        control.start()  # type: ignore[attr-defined]
    assert caught.value.permanent
    child = control._child  # type: ignore[attr-defined]
    assert child is not None and child.poll() is not None
