"""`--log-format json`: one object per line, with the check, target and incident."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sglguard.checks.base import Check, CheckContext, Measurement, Status
from sglguard.checks.http import HttpCheckConfig
from sglguard.client import SGLangClient
from sglguard.config.models import Catalog
from sglguard.logs import JsonFormatter, log_context

from conftest import PYTHON


def test_json_lines_carry_the_context_and_extra_fields() -> None:
    record = logging.LogRecord("sglguard.engine", logging.WARNING, __file__, 1,
                               "incident #%s opened: %s", (7, 'say "hi"'), None)
    with log_context(check="liveness", target="local"), log_context(incident=7):
        inside = json.loads(JsonFormatter().format(record))
    outside = json.loads(JsonFormatter().format(record))
    assert inside["message"] == 'incident #7 opened: say "hi"'
    assert (inside["check"], inside["target"], inside["incident"]) == ("liveness", "local", 7)
    assert inside["level"] == "warning" and inside["logger"] == "sglguard.engine"
    assert "check" not in outside
    record.check = "queue"  # extra={"check": ...} on the call wins
    with log_context(check="liveness"):
        assert json.loads(JsonFormatter().format(record))["check"] == "queue"


class Broken(Check[HttpCheckConfig]):
    """A kind whose run has a bug (the base class turns it into UNKNOWN and logs it)."""

    kind = "broken"
    config_model = HttpCheckConfig

    def run(self) -> Measurement:
        raise RuntimeError("bug")


def test_a_check_that_raises_is_logged_with_its_check_and_target(
        make_catalog: Callable[[str], Catalog], caplog: pytest.LogCaptureFixture) -> None:
    catalog = make_catalog("""\
        version: 1
        targets: [{name: local, url: "http://127.0.0.1:1"}]
        checks: [{name: live, kind: http, target: local}]
        """)
    check = Broken(catalog.check("live"), CheckContext(  # type: ignore[arg-type]
        target=catalog.target("local"), client=SGLangClient("http://127.0.0.1:1")))
    with caplog.at_level(logging.WARNING, logger="sglguard.checks.base"):
        assert check.execute().status is Status.UNKNOWN
    line = json.loads(JsonFormatter().format(caplog.records[0]))
    assert (line["check"], line["target"], line["message"]) == ("live", "local",
                                                                 "check live raised")
    assert "RuntimeError: bug" in line["exception"]


def test_the_cli_writes_json_lines_with_log_format_json(tmp_path: Path) -> None:
    catalog = tmp_path / "sglguard.yaml"
    catalog.write_text('version: 1\ntargets: [{name: local, url: "http://127.0.0.1:1"}]\n')
    done = subprocess.run([PYTHON, "-m", "sglguard", "--log-format", "json", "--log-level",
                           "info", "check", "--config", str(catalog)],
                          capture_output=True, text=True, timeout=60, check=False)
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert any("migrating schema" in line["message"] for line in lines), done.stderr
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
