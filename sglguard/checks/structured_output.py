"""`structured_output`: a constrained generation whose answer is validated here."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sglguard.checks.base import Check, CheckConfig
from sglguard.checks.generate import answered, judge
from sglguard.domain import Measurement, Status


class StructuredOutputCheckConfig(CheckConfig):
    """A generation constrained by `json_schema` or `regex`, checked against it."""

    kind: Literal["structured_output"]
    json_schema: dict[str, Any] | None = None
    regex: str | None = None
    prompt: str = "Describe the server's health as JSON."
    max_new_tokens: int = Field(default=128, ge=1, le=8192)
    stream: bool = Field(default=False, description="streamed, to see abort chunks as they come")

    @field_validator("json_schema")
    @classmethod
    def _schema_is_valid(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            import jsonschema

            try:
                jsonschema.Draft202012Validator.check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"json_schema is not a valid JSON Schema: {exc.message}"
                                 ) from None
        return schema

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"regex does not compile: {exc}") from None
        return pattern

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputCheckConfig:
        if (self.json_schema is None) == (self.regex is None):
            raise ValueError("give exactly one of json_schema or regex")
        return self


class StructuredOutputCheck(Check[StructuredOutputCheckConfig]):
    """CRITICAL when the server refuses the constraint, aborts, or answers off-schema."""

    kind = "structured_output"
    config_model = StructuredOutputCheckConfig

    def run(self) -> Measurement:
        return answered(self._probe)

    def _probe(self) -> Measurement:
        config = self.config
        params: dict[str, Any] = {"max_new_tokens": config.max_new_tokens, "temperature": 0}
        if config.json_schema is not None:
            params["json_schema"] = json.dumps(config.json_schema)  # SGLang wants a string
        else:
            params["regex"] = config.regex
        generation = self.client.generate(
            {"text": config.prompt, "sampling_params": params, "stream": config.stream},
            timeout=self.timeout)
        if generation.status == 400 and "compile" in (generation.error or "").lower():
            return Measurement(None, f"the server refused the constraint: {generation.error}",
                               Status.CRITICAL, "s")
        failure = judge(generation, "POST /generate")
        if failure is not None:
            return Measurement(None, failure, Status.CRITICAL, "s")
        problem = self._invalid(generation.text)
        if problem is not None:
            text = generation.text
            shown = text if len(text) <= 120 else text[:117] + "..."
            return Measurement(generation.total, f"invalid output: {problem} (output: {shown!r})",
                               Status.CRITICAL, "s")
        what = "matches the schema" if config.json_schema is not None else "matches the regex"
        return Measurement(generation.total, f"output {what} in {generation.total:.3f} s",
                           Status.OK, "s")

    def _invalid(self, text: str) -> str | None:
        config = self.config
        if config.regex is not None:
            return None if re.fullmatch(config.regex, text) else "does not fully match the regex"
        try:
            answer = json.loads(text)
        except json.JSONDecodeError as exc:
            return f"not JSON ({exc.msg} at character {exc.pos})"
        import jsonschema  # only catalogs with structured checks pay for it
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(config.json_schema or {}).iter_errors(answer))
        if error is None:
            return None
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        return f"{where}: {error.message}"
