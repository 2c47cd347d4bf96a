"""The catalog's JSON Schema, for editors (yaml-language-server) and other tools.

Built from the catalog models: each family with a registry (checks, controls, remediations) is
a discriminated union on `kind`, so every kind's own fields are known, with their descriptions.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic.json_schema import GenerateJsonSchema

from sglguard.config.models import Catalog
from sglguard.config.types import Threshold, format_duration

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FILE = "sglguard.schema.json"
MODELINE = f"# yaml-language-server: $schema={SCHEMA_FILE}"


class _CatalogSchema(GenerateJsonSchema):
    """Defaults written as a catalog writes them (`30s`, `"> 50"`), not as ISO 8601."""

    def encode_default(self, dft: Any) -> Any:
        if isinstance(dft, timedelta):
            return format_duration(dft)
        if isinstance(dft, Threshold):
            return str(dft)
        return super().encode_default(dft)


def catalog_schema() -> dict[str, Any]:
    """The JSON Schema of a catalog file, as written (before `${VAR}` is replaced)."""
    schema = Catalog.model_json_schema(mode="validation", schema_generator=_CatalogSchema)
    schema.pop("title", None)
    return {"$schema": SCHEMA_DIALECT, "title": "sglguard catalog", **schema}
