"""Catalog loading: table-driven valid snippets and errors with their paths and lines."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from sglguard.checks.registry import CHECKS
from sglguard.config.loader import ConfigError, load_catalog, parse_catalog
from sglguard.config.types import Threshold, parse_duration, parse_threshold
from sglguard.controls.process import ProcessControlConfig
from sglguard.demo import demo_catalog
from sglguard.remediations.registry import REMEDIATIONS

BASE = """\
version: 1
targets:
  - name: local
    url: http://127.0.0.1:30000
    control: {kind: process, start: [sglang], pidfile: run/local.pid, startup_timeout: 60s}
remediations:
  - {name: restart, kind: restart}
"""


def load(text: str, tmp_path: Path) -> object:
    path = tmp_path / "catalog.yaml"
    path.write_text(textwrap.dedent(text))
    return parse_catalog(path.read_text(), path)


def problems(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(text, tmp_path)
    return caught.value.problems


def test_reference_catalog_validates_exactly_as_written(tmp_path: Path) -> None:
    path = tmp_path / "sglguard.yaml"
    path.write_text(demo_catalog())
    catalog = load_catalog(path)
    assert [check.name for check in catalog.checks] == ["liveness", "queue"]
    liveness = catalog.check("liveness")
    assert liveness.interval == timedelta(seconds=2)
    assert liveness.failure_threshold == 2
    assert liveness.remediate == ("restart",)
    control = catalog.target("local").control
    assert isinstance(control, ProcessControlConfig)
    assert control.pidfile == tmp_path / "sglguard-local.pid"
    assert control.startup_timeout == timedelta(seconds=60)
    assert catalog.store.url == f"sqlite:///{tmp_path.resolve() / 'sglguard-demo.db'}"
    assert catalog.remediation("restart").budget.max == 3


@pytest.mark.parametrize(("store", "database"), [
    ("", "sglguard.db"),
    ("store: {flush_interval: 1s}\n", "sglguard.db"),
    ("store: {url: 'sqlite:///data/results.db'}\n", "data/results.db"),
])
def test_the_sqlite_database_sits_relative_to_the_catalog(tmp_path: Path, store: str,
                                                          database: str) -> None:
    path = tmp_path / "sglguard.yaml"
    path.write_text(f"version: 1\n{store}targets: [{{name: local, url: 'http://127.0.0.1:1'}}]\n")
    assert load_catalog(path).store.url == f"sqlite:///{tmp_path.resolve() / database}"


@pytest.mark.parametrize(("text", "expected"), [
    ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("250ms", 0.25), ("1.5s", 1.5), (2, 2.0),
])
def test_durations_parse(text: object, expected: float) -> None:
    assert parse_duration(text).total_seconds() == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("> 50", Threshold(">", 50)), (">= 0.9", Threshold(">=", 0.9)),
    ("< 10", Threshold("<", 10)), ("<=-1", Threshold("<=", -1)), ("!= 0", Threshold("!=", 0)),
])
def test_thresholds_parse(text: str, expected: Threshold) -> None:
    assert parse_threshold(text) == expected


@pytest.mark.parametrize(("value", "breached"), [(51, True), (50, False), (49, False)])
def test_threshold_breaches_only_past_its_bound(value: float, breached: bool) -> None:
    assert parse_threshold("> 50").breached(value) is breached


ERROR_TABLE = [
    pytest.param(
        "checks:\n  - {name: a, kind: htp, target: local}\n",
        "checks[0] (line 9): unknown check kind 'htp': valid kinds are "
        + ", ".join(sorted(CHECKS)),
        id="unknown-check-kind"),
    pytest.param(
        "checks:\n  - {name: a, kind: http, target: local, intervl: 2s}\n",
        "checks[0].intervl (line 9): unknown key 'intervl' (did you mean 'interval'?)",
        id="unknown-key-suggests"),
    pytest.param(
        "checks:\n  - name: a\n    kind: http\n    target: local\n    interval: soon\n",
        "checks[0].interval (line 12): invalid duration 'soon'", id="bad-duration"),
    pytest.param(
        "checks:\n  - name: a\n    kind: metric\n    target: local\n    metric: m\n"
        "    warning: about 50\n",
        "checks[0].warning (line 13): invalid threshold 'about 50'", id="bad-threshold"),
    pytest.param(
        "checks:\n  - {name: a, kind: http, target: elsewhere}\n",
        "checks[0].target (line 9): unknown target 'elsewhere' (known: local)",
        id="unknown-target"),
    pytest.param(
        "checks:\n  - {name: a, kind: http, target: local, remediate: [reboot]}\n",
        "checks[0].remediate[0] (line 9): unknown remediation 'reboot' (known: restart)",
        id="unknown-remediation"),
    pytest.param(
        "checks:\n  - {name: a, kind: http, target: local}\n  - {name: a, kind: http, "
        "target: local}\n",
        "checks[1].name (line 10): duplicate name 'a' (also checks[0])", id="duplicate-name"),
    pytest.param(
        "notifiers:\n  - {name: ops, urls: ['${SGLGUARD_TEST_UNSET_VAR}']}\n",
        "notifiers[0].urls[0] (line 9): environment variable SGLGUARD_TEST_UNSET_VAR is not set",
        id="unset-variable"),
    pytest.param(
        "checks:\n  - {name: a, kind: metric, target: local, metric: m, aggregate: median}\n",
        "checks[0].aggregate (line 9): Input should be 'sum', 'max', 'min' or 'avg'",
        id="bad-aggregate"),
    pytest.param(
        "checks:\n  - {name: a, kind: http, target: local, depends_on: ghost}\n",
        "checks[0].depends_on[0] (line 9): unknown check 'ghost' (known: a)",
        id="unknown-dependency"),
    pytest.param(
        "checks:\n  - {name: a, kind: http, target: local, depends_on: b}\n"
        "  - {name: b, kind: http, target: local, depends_on: [a]}\n",
        "checks[0].depends_on (line 9): depends_on makes a cycle through 'a'", id="cycle"),
    pytest.param(
        "checks:\n  - {name: a, kind: http, target: local, for: 2m, failure_threshold: 2}\n",
        "checks[0] (line 9): give one of failure_threshold, for, failures (got "
        "failure_threshold, for)", id="for-and-threshold"),
    pytest.param(
        "checks:\n  - {name: a, kind: http, target: local, fore: 2m}\n",
        "checks[0].fore (line 9): unknown key 'fore' (did you mean 'for'?)", id="alias-named"),
    pytest.param(
        "mode: sometimes\n", "mode (line 8): Input should be 'active' or 'passive'",
        id="bad-mode"),
    pytest.param(
        "notifiers:\n  - {name: ops, urls: ['slakc://T1/T2/T3']}\n",
        "notifiers[0].urls[0] (line 9): slakc://...: Apprise has no service with the scheme "
        "'slakc' (did you mean slack://?)", id="apprise-unknown-scheme"),
    pytest.param(
        "notifiers:\n  - {name: ops, urls: ['json://127.0.0.1/ok', 'discord://only-one-part']}\n",
        "notifiers[0].urls[1] (line 9): discord://...: Apprise cannot read this URL: An invalid "
        "Discord Webhook Token (None) was specified (see Apprise's page for discord://)",
        id="apprise-missing-part"),
]


@pytest.mark.parametrize(("extra", "expected"), ERROR_TABLE)
def test_catalog_errors_name_path_line_and_choices(extra: str, expected: str,
                                                   tmp_path: Path) -> None:
    found = problems(BASE + extra, tmp_path)
    assert any(problem.startswith(expected) for problem in found), found


def test_unknown_remediation_kind_names_the_valid_ones(tmp_path: Path) -> None:
    found = problems(BASE.replace("kind: restart}", "kind: reboot}"), tmp_path)
    assert found == ["remediations[0] (line 7): unknown remediation kind 'reboot': "
                     f"valid kinds are {', '.join(sorted(REMEDIATIONS))}"]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = problems("""\
        version: 1
        targets:
          - name: local
            url: http://127.0.0.1:30000
            colour: blue
        checks:
          - {name: a, kind: http, target: nowhere, interval: never}
          - {name: b, kind: metric, target: local}
        """, tmp_path)
    assert len(found) == 4, found
    assert found[0].startswith("targets[0].colour (line 5): unknown key 'colour'")
    assert any("checks[0].interval (line 7)" in item for item in found)
    assert any("checks[0].target (line 7): unknown target 'nowhere'" in item for item in found)
    assert any(item.startswith("checks[1].metric (line 8): Field required") for item in found)


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param(
        "version: 1\ntargets:\n  - name: a\n    url: 'http://x\nchecks: []\nnotifiers: []\n",
        "line 4: not valid YAML: a quoted value opens at line 4, column 10 and is never closed "
        "(found unexpected end of stream at line 7, column 1)", id="unclosed-quote"),
    pytest.param(
        "version: 1\ntargets:\n  - name: [unclosed\n",
        "line 3: not valid YAML: the [ opened at line 3, column 11 is not closed where expected",
        id="unclosed-bracket"),
    pytest.param(
        "version: 1\ntargets:\n\t- name: a\n",
        "line 3: not valid YAML (column 1): a tab character; YAML indents with spaces only",
        id="tab"),
    pytest.param(
        "version: 1\ntargets:\n  - name: a\n   url: http://x\n",
        "line 4: not valid YAML (column 4): this line is not indented like the block it "
        "belongs to, which starts at line 3, column 3", id="indentation"),
    pytest.param(
        "version: 1\ntargets:\n  - name: a: b\n",
        "line 3: not valid YAML (column 12): ': ' inside a plain value; quote the value",
        id="colon-in-value"),
])
def test_yaml_syntax_errors_name_the_line_where_the_mistake_is(text: str, expected: str,
                                                               tmp_path: Path) -> None:
    """PyYAML notices an unclosed quote at the end of the file: its context mark says where the
    quote opens, and that is the line to fix."""
    found = problems(text, tmp_path)
    assert len(found) == 1 and found[0].startswith(expected), found


@pytest.mark.parametrize(("url", "expected"), [
    ("127.0.0.1:30000", "'127.0.0.1:30000' has no scheme: write http://127.0.0.1:30000"),
    ("localhost:30000", "'localhost:30000' has no scheme: write http://localhost:30000"),
    ("ftp://h", "'ftp://h': the scheme must be http or https, not 'ftp'"),
    ("http://", "'http://' is not a URL sglguard can use: expected http(s)://HOST[:PORT][/PATH]"),
])
def test_target_url_mistakes_are_said_with_the_fix(url: str, expected: str,
                                                   tmp_path: Path) -> None:
    found = problems(BASE.replace("url: http://127.0.0.1:30000", f"url: '{url}'"), tmp_path)
    assert len(found) == 1 and found[0].startswith(f"targets[0].url (line 4): {expected}"), found


def test_an_apprise_error_never_shows_the_url_s_secret_parts(tmp_path: Path) -> None:
    found = problems(BASE + "notifiers:\n  - {name: ops, urls: ['slack://s3cret-token']}\n",
                     tmp_path)
    assert found == ["notifiers[0].urls[0] (line 9): slack://...: Apprise cannot read this URL: "
                     "An invalid Slack (first) Token (***) was specified (see Apprise's page "
                     "for slack://)"]


@pytest.mark.parametrize(("first", "expected"), [
    ("", "version (line 1): the catalog has no `version:`; write `version: 1` at its top"),
    ("version: 2\n", "version (line 1): version 2 is not a catalog format this sglguard "
                     "reads: write `version: 1`"),
])
def test_catalog_version_problems_are_said_in_plain_words(first: str, expected: str,
                                                         tmp_path: Path) -> None:
    found = problems(first + BASE.removeprefix("version: 1\n"), tmp_path)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_duplicate_yaml_keys_are_errors(tmp_path: Path) -> None:
    found = problems(BASE + "mode: active\nmode: passive\n", tmp_path)
    assert any("mode (line 9): duplicate key" in item for item in found), found


def test_restart_needs_a_control_on_its_target(tmp_path: Path) -> None:
    found = problems("""\
        version: 1
        targets: [{name: bare, url: http://127.0.0.1:1}]
        checks: [{name: a, kind: http, target: bare, remediate: [restart]}]
        remediations: [{name: restart, kind: restart}]
        """, tmp_path)
    assert found == ["checks[0].remediate[0] (line 3): remediation 'restart' (restart) "
                     "needs a `control:` on target 'bare'"]


def test_environment_variables_and_defaults_are_substituted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGLGUARD_TEST_KEY", "s3cret")
    catalog = load("""\
        version: 1
        targets:
          - name: local
            url: http://${SGLGUARD_TEST_HOST:-127.0.0.1}:30000
            api_key: ${SGLGUARD_TEST_KEY}
        """, tmp_path)
    target = catalog.targets[0]  # type: ignore[attr-defined]
    assert target.url == "http://127.0.0.1:30000"
    assert target.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(catalog)
    assert catalog.secrets() == ("s3cret",)  # type: ignore[attr-defined]


def test_relative_paths_are_taken_from_the_catalog_folder(tmp_path: Path) -> None:
    catalog = load(BASE, tmp_path)
    control = catalog.targets[0].control  # type: ignore[attr-defined]
    assert control.pidfile == tmp_path / "run" / "local.pid"
    assert control.log_path == tmp_path / "run" / "local.log"


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_catalog(tmp_path / "absent.yaml")
