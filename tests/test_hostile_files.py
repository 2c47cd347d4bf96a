"""Hostile files on the host: catalogs others can write, YAML alias bombs, symlinked pidfiles
and logs, an unrelated process behind the pidfile."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sglguard.cli import main
from sglguard.config.loader import ConfigError, load_catalog

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
