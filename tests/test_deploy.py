"""Installing on a host: `init --system` into a temporary root, the packaged unit and polkit rule,
`deploy-unit`, and the exit statuses the unit relies on."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sglguard.checks.log import LogCheckConfig
from sglguard.cli import main
from sglguard.config.loader import load_catalog
from sglguard.controls.process import ProcessControlConfig
from sglguard.deploy import this_program

from conftest import PYTHON, free_port


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env=env).invoke(main, list(args), catch_exceptions=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_system_writes_catalog_env_unit_and_polkit_rule_with_their_modes(
    tmp_path: Path
) -> None:
    result = invoke("init", "--system", "--root", str(tmp_path), "--server-unit", "sglang-a")

    assert result.exit_code == 0, result.output
    catalog_path = tmp_path / "etc/sglguard/sglguard.yaml"
    env = tmp_path / "etc/sglguard/env"
    unit = tmp_path / "etc/systemd/system/sglguard.service"
    rule = tmp_path / "etc/polkit-1/rules.d/50-sglguard.rules"
    assert (mode(catalog_path), mode(env), mode(unit), mode(rule)) == (0o640, 0o600, 0o644, 0o644)
    assert mode(tmp_path / "etc/sglguard") == 0o750
    for path in (catalog_path, env, unit, rule):
        assert f"wrote {path} (mode {mode(path):04o})" in result.output
    # What to run next, validate before starting.
    assert "next:" in result.output
    assert (f"{this_program()} --env-file /etc/sglguard/env validate --config "
            "/etc/sglguard/sglguard.yaml" in result.output
            and "systemctl daemon-reload && systemctl enable --now sglguard" in result.output)
    assert result.output.index("validate --config") < result.output.index("enable --now")


def test_init_system_catalog_keeps_its_state_under_var_lib(tmp_path: Path) -> None:
    """/etc/sglguard is read-only under the unit: every path the service writes is absolute,
    under /var/lib/sglguard, and the server's program path does not depend on systemd's PATH."""
    invoke("init", "--system", "--root", str(tmp_path))

    catalog = load_catalog(tmp_path / "etc/sglguard/sglguard.yaml")

    assert catalog.store.url == "sqlite:////var/lib/sglguard/sglguard.db"
    control = catalog.targets[0].control
    assert isinstance(control, ProcessControlConfig)
    assert control.pidfile == Path("/var/lib/sglguard/sglang.pid")
    assert control.server_log == Path("/var/lib/sglguard/sglang.log")
    assert control.start[0] == this_program() and Path(control.start[0]).is_absolute()
    logs = [item for item in catalog.checks if isinstance(item, LogCheckConfig)]
    assert logs and all(item.path is None for item in logs)  # the control's log, by reference


def test_init_system_unit_runs_this_sglguard_and_stops_retrying_on_config_errors(
    tmp_path: Path
) -> None:
    invoke("init", "--system", "--root", str(tmp_path))
    unit = (tmp_path / "etc/systemd/system/sglguard.service").read_text()

    assert f"ExecStart={this_program()} run --config /etc/sglguard/sglguard.yaml" in unit
    assert "\nRestartPreventExitStatus=2\n" in unit
    assert "\nEnvironmentFile=-/etc/sglguard/env\n" in unit
    assert "\nStateDirectory=sglguard\n" in unit
    # `deploy-unit` prints the same unit, for installs without the package's files at hand.
    assert invoke("deploy-unit").output == unit
    shown = invoke("deploy-unit", "--program", "/opt/x/bin/sglguard").output
    assert "ExecStart=/opt/x/bin/sglguard run --config" in shown


def test_polkit_rule_names_the_server_units_and_only_the_sglguard_user(tmp_path: Path) -> None:
    invoke("init", "--system", "--root", str(tmp_path), "--server-unit", "sglang-a",
           "--server-unit", "sglang-b.service")
    rule = (tmp_path / "etc/polkit-1/rules.d/50-sglguard.rules").read_text()

    assert 'subject.user !== "sglguard"' in rule
    assert 'var units = ["sglang-a.service", "sglang-b.service"];' in rule
    assert '"org.freedesktop.systemd1.manage-units"' in rule
    assert '"org.freedesktop.systemd1.reload-daemon"' in rule
    printed = invoke("deploy-unit", "--polkit", "--server-unit", "sglang-a",
                     "--server-unit", "sglang-b.service").output
    assert printed == rule
    if shutil.which("node"):  # the rule is JavaScript that polkit evaluates: it must parse
        script = tmp_path / "rule.js"
        script.write_text(rule)
        parsed = subprocess.run(["node", "--check", str(script)], capture_output=True,
                                text=True, timeout=30)
        assert parsed.returncode == 0, parsed.stderr


def test_init_system_keeps_existing_files_unless_forced(tmp_path: Path) -> None:
    invoke("init", "--system", "--root", str(tmp_path))
    env = tmp_path / "etc/sglguard/env"
    env.write_text("SGLANG_API_KEY=s3cret\n")

    again = invoke("init", "--system", "--root", str(tmp_path))
    assert again.exit_code == 0
    assert f"kept (exists; --force replaces it) {env} (mode 0600)" in again.output
    assert env.read_text() == "SGLANG_API_KEY=s3cret\n"
    invoke("init", "--system", "--root", str(tmp_path), "--force")
    assert "s3cret" not in env.read_text() and mode(env) == 0o600


def test_init_system_into_an_unwritable_root_is_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = invoke("init", "--system", "--root", str(blocker / "root"))
    assert result.exit_code == 2
    assert "cannot write" in result.output and "Traceback" not in result.output
    assert invoke("init", "--system", "--path", "x.yaml").exit_code == 2


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (apt-get install systemd)")
def test_installed_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    invoke("init", "--system", "--root", str(tmp_path))
    unit = tmp_path / "etc/systemd/system/sglguard.service"

    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                              text=True, timeout=60)

    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "sglguard.service" not in verified.stderr  # no warning about the unit either


def test_the_unit_ships_as_package_data() -> None:
    from importlib import resources

    files = resources.files("sglguard.deploy")
    assert files.joinpath("sglguard.service").is_file()
    assert files.joinpath("50-sglguard.rules").is_file() and files.joinpath("env").is_file()
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    for pattern in ("deploy/*.service", "deploy/*.rules", "deploy/env"):
        assert json.dumps(pattern) in pyproject


# --- the exit statuses the unit relies on ----------------------------------------------------

def run_service(catalog: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "sglguard", "run", "--config", str(catalog)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def test_run_on_a_bad_catalog_exits_2_and_says_to_validate(tmp_path: Path) -> None:
    catalog = tmp_path / "sglguard.yaml"
    catalog.write_text("version: 1\ntargets: [{name: a, url: 'ftp://x'}]\n")

    done = run_service(catalog, INVOCATION_ID="0123456789abcdef")

    assert done.returncode == 2
    assert f"check it with `sglguard validate --config {catalog}`" in done.stderr
    assert "systemd does not restart sglguard after a configuration error" in done.stderr


def test_run_on_a_store_that_cannot_be_created_exits_2(tmp_path: Path) -> None:
    """The case of relative paths under a read-only /etc: a configuration error, not retried."""
    (tmp_path / "not-a-folder").write_text("")
    catalog = tmp_path / "sglguard.yaml"
    catalog.write_text("version: 1\nstore: {url: 'sqlite:///not-a-folder/sglguard.db'}\n"
                       "targets: [{name: a, url: 'http://127.0.0.1:1'}]\n")

    done = run_service(catalog)

    assert done.returncode == 2, done.stderr
    assert "cannot open store" in done.stderr and "sglguard validate" in done.stderr


def test_run_on_a_database_server_not_answering_yet_exits_1_to_be_started_again(
    tmp_path: Path
) -> None:
    catalog = tmp_path / "sglguard.yaml"
    catalog.write_text(f"version: 1\nstore: {{url: 'postgresql+psycopg://sglguard@127.0.0.1:"
                       f"{free_port()}/sglguard'}}\ntargets: [{{name: a, url: 'http://127.0.0.1:1'}}]\n")

    done = run_service(catalog)

    assert done.returncode == 1, done.stderr
    assert "cannot open store" in done.stderr and "starts sglguard again" in done.stderr


def test_env_file_gives_commands_run_by_hand_the_services_variables(tmp_path: Path) -> None:
    """As the unit's EnvironmentFile= does: comments, quotes, `export`; a bad line is named."""
    catalog = tmp_path / "sglguard.yaml"
    catalog.write_text("version: 1\ntargets:\n  - name: a\n    url: http://127.0.0.1:1\n"
                       "    api_key: ${SGLGUARD_TEST_KEY}\n"
                       "notifiers: [{name: n, urls: ['${SGLGUARD_TEST_URL}']}]\n")
    env = tmp_path / "env"
    env.write_text("# secrets\n; also a comment\n\nSGLGUARD_TEST_KEY=\"k3y with space\"\n"
                   "export SGLGUARD_TEST_URL='json://127.0.0.1:9/x'\n")
    clean = {key: value for key, value in os.environ.items() if not key.startswith("SGLGUARD_TEST")}

    def validate(*before: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "sglguard", *before, "validate", "--config",
                               str(catalog)], capture_output=True, text=True, timeout=60,
                              env=clean)

    without = validate()
    assert without.returncode == 2 and "SGLGUARD_TEST_KEY is not set" in without.stderr
    done = validate("--env-file", str(env))
    assert done.returncode == 0, done.stderr
    assert "k3y" not in done.stdout + done.stderr
    env.write_text("SGLGUARD_TEST_KEY=ok\nnot a line\n")
    bad = validate("--env-file", str(env))
    assert bad.returncode == 2 and f"{env} line 2: expected KEY=value" in bad.stderr
