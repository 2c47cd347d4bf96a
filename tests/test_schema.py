"""The catalog's JSON Schema: every kind's own fields, and real catalogs validate against it."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel

from sglguard.checks.registry import CHECKS
from sglguard.cli import main
from sglguard.config.loader import load_catalog
from sglguard.config.schema import MODELINE, SCHEMA_FILE, catalog_schema
from sglguard.controls.registry import CONTROLS
from sglguard.registry import Registry
from sglguard.remediations.registry import REMEDIATIONS

CATALOGS = sorted(path.name for path in resources.files("sglguard.config").iterdir()
                  if path.name.endswith(".yaml"))
FAMILIES: dict[str, Registry[Any]] = {
    "CheckConfig": CHECKS, "ControlConfig": CONTROLS, "RemediationConfig": REMEDIATIONS}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    found = catalog_schema()
    jsonschema.Draft202012Validator.check_schema(found)
    return found


def errors(schema: dict[str, Any], document: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{list(error.absolute_path)}: {error.message}"
            for error in validator.iter_errors(document)]


@pytest.mark.parametrize("name", CATALOGS)
def test_the_shipped_catalogs_validate_against_the_schema(schema: dict[str, Any],
                                                          name: str) -> None:
    text = resources.files("sglguard.config").joinpath(name).read_text()
    assert errors(schema, yaml.safe_load(text)) == []


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_is_a_union_of_its_kinds_on_kind(schema: dict[str, Any],
                                                     family: str) -> None:
    registry = FAMILIES[family]
    union = schema["$defs"][family]
    assert union["discriminator"]["propertyName"] == "kind"
    assert set(union["discriminator"]["mapping"]) == set(registry)
    for kind in registry:
        model: type[BaseModel] = registry[kind].config_model
        own = schema["$defs"][model.__name__]
        assert own["properties"]["kind"] == {"const": kind, "title": "Kind", "type": "string"}
        names = {field.alias or name for name, field in model.model_fields.items()}
        assert set(own["properties"]) == names, kind
        assert own["additionalProperties"] is False


def test_field_descriptions_and_durations_read_as_a_catalog_writes_them(
        schema: dict[str, Any]) -> None:
    http = schema["$defs"]["HttpCheckConfig"]["properties"]
    assert http["interval"]["default"] == "30s"
    assert "depends_on" in http and "skipped" in http["depends_on"]["description"]
    assert schema["$defs"]["CheckConfig"]["oneOf"]
    hold = http["for"]["anyOf"][0]
    assert jsonschema.Draft202012Validator(hold).is_valid("2m")
    assert not jsonschema.Draft202012Validator(hold).is_valid("2 minutes")


@pytest.mark.parametrize(("check", "problem"), [
    ({"name": "a", "kind": "metric", "target": "t", "metric": "m", "expect_status": 200},
     "expect_status"),  # another kind's field
    ({"name": "a", "kind": "http", "target": "t", "interval": "soon"}, "soon"),
    ({"name": "a", "kind": "metric", "target": "t", "metric": "m", "warning": "above 5"},
     "above 5"),
    ({"name": "a", "kind": "telepathy", "target": "t"}, "telepathy"),
])
def test_the_schema_rejects_what_the_loader_rejects(schema: dict[str, Any],
                                                    check: dict[str, Any], problem: str) -> None:
    document = {"version": 1, "targets": [{"name": "t", "url": "http://127.0.0.1:1"}],
                "checks": [check]}
    found = errors(schema, document)
    assert found and any(problem in text for text in found), found


def test_schema_command_prints_it_and_writes_it(tmp_path: Path) -> None:
    printed = CliRunner().invoke(main, ["schema"], catch_exceptions=False)
    assert printed.exit_code == 0
    assert json.loads(printed.output) == catalog_schema()
    written = CliRunner().invoke(main, ["schema", "--output", str(tmp_path / "s.json")])
    assert written.exit_code == 0
    assert json.loads((tmp_path / "s.json").read_text()) == catalog_schema()


def test_init_writes_the_modeline_and_the_schema_beside_the_catalog(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "sglguard.yaml"
    result = CliRunner().invoke(main, ["init", "--path", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert path.read_text().splitlines()[0] == MODELINE
    assert MODELINE.endswith(f"$schema={SCHEMA_FILE}")
    assert json.loads((path.parent / SCHEMA_FILE).read_text()) == catalog_schema()
    assert load_catalog(path).checks  # the modeline is a comment: the catalog still loads
