"""Structured output on /generate: json_schema, regex, ebnf and structural_tag."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .wire import BadRequest

CONSTRAINT_KEYS = ("json_schema", "regex", "ebnf", "structural_tag")
SCHEMA_TYPES = frozenset({"object", "string", "integer", "number", "boolean", "array", "null"})

# Strings tried in turn against a regex; enough for the trivially simple patterns clients use.
_REGEX_GUESSES = (
    "yes",
    "no",
    "true",
    "false",
    "A",
    "a",
    "0",
    "1",
    "42",
    "123",
    "hello",
    "Paris",
    "2024-01-01",
    "user@example.com",
    "123-456-7890",
    "",
)


class GrammarError(Exception):
    """A schema or regex the grammar backend cannot compile; the message is SGLang's."""


@dataclass(frozen=True)
class Constraint:
    """A validated output constraint: its kind, the raw text and, for regex, the pattern."""

    kind: str
    text: str
    pattern: re.Pattern[str] | None = None
    schema: Any = None


def _serde_type(value: Any) -> str:
    """How serde (which SGLang's request parsing echoes) names a JSON value of the wrong type."""
    if isinstance(value, dict):
        return "map"
    if isinstance(value, list):
        return "sequence"
    if isinstance(value, bool):
        return f"boolean `{json.dumps(value)}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    return "null"


def read_constraint(params: Mapping[str, Any]) -> Constraint | None:
    """Validate the constraint in `sampling_params`; BadRequest or GrammarError when it is bad."""
    given = [key for key in CONSTRAINT_KEYS if params.get(key) is not None]
    for key in given:
        if not isinstance(params[key], str):
            expected = f"invalid type: {_serde_type(params[key])}, expected a string"
            raise BadRequest({"error": expected})
    if len(given) > 1:
        message = "Only one of regex, json_schema, ebnf or structural_tag can be set."
        raise BadRequest({"error": {"message": message}})
    if not given:
        return None
    kind = given[0]
    return _COMPILERS.get(kind, _compile_plain)(kind, params[kind])


def _compile_plain(kind: str, text: str) -> Constraint:
    return Constraint(kind, text)


def _compile_regex(kind: str, text: str) -> Constraint:
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise GrammarError(f"Failed to compile regex grammar: {exc}") from None
    return Constraint(kind, text, pattern=pattern)


def _compile_json_schema(kind: str, text: str) -> Constraint:
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GrammarError(f"Failed to compile json_schema grammar: {exc}") from None
    if not isinstance(schema, dict | bool):
        raise GrammarError("Failed to compile json_schema grammar: a schema must be an object")
    if isinstance(schema, dict):
        _check_types(schema)
    return Constraint(kind, text, schema=schema)


def _check_types(schema: Mapping[str, Any]) -> None:
    types = schema.get("type")
    names = types if isinstance(types, list) else [types] if types is not None else []
    for name in names:
        if name not in SCHEMA_TYPES:
            raise GrammarError(f"Failed to compile json_schema grammar: unknown type {name!r}")


_COMPILERS: dict[str, Callable[[str, str], Constraint]] = {
    "regex": _compile_regex,
    "json_schema": _compile_json_schema,
}


def constrained_text(constraint: Constraint, words: list[str]) -> str:
    """Output that satisfies the constraint where it is simple enough, else plain words."""
    if constraint.pattern is not None:
        return _regex_text(constraint.pattern, words)
    if constraint.kind == "json_schema":
        value = _sample(constraint.schema, iter(words * 8), depth=0)
        return json.dumps(value)
    return " ".join(words)


def _regex_text(pattern: re.Pattern[str], words: list[str]) -> str:
    source = pattern.pattern
    unescaped = re.sub(r"\\(.)", r"\1", source)
    alternatives = [part.strip("()") for part in source.strip("^$()").split("|")]
    for guess in (unescaped, *alternatives, *words, *_REGEX_GUESSES):
        if pattern.fullmatch(guess):
            return guess
    return " ".join(words)


def _sample(schema: Any, words: Iterator[str], depth: int) -> Any:
    """A value valid against simple schemas: typed properties, enums, consts, arrays."""
    if not isinstance(schema, dict) or depth > 5:
        return {}
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    types = schema.get("type")
    if isinstance(types, list):
        types = next((t for t in types if t != "null"), "null")
    if types is None and "properties" in schema:
        types = "object"
    if types == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {key: _sample(sub, words, depth + 1) for key, sub in properties.items()}
    if types == "array":
        count = schema.get("minItems", 1)
        count = count if isinstance(count, int) and 0 <= count <= 8 else 1
        return [_sample(schema.get("items", {}), words, depth + 1) for _ in range(count)]
    return _scalar(types, schema, words)


def _scalar(kind: Any, schema: Mapping[str, Any], words: Iterator[str]) -> Any:
    if kind == "string":
        return next(words, "text")
    if kind in ("integer", "number"):
        value: float = 42 if kind == "integer" else 3.5
        low, high = schema.get("minimum"), schema.get("maximum")
        if isinstance(low, int | float) and value < low:
            value = low
        if isinstance(high, int | float) and value > high:
            value = high
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return {}


def violating_text(constraint: Constraint, words: list[str]) -> str:
    """What a model that ignores the constraint says (the `bad_output` fault): JSON cut short,
    or text the regex cannot fully match. Other constraint kinds get plain words anyway."""
    good = constrained_text(constraint, words)
    if constraint.kind == "json_schema":
        # Cut-off JSON, as when a model runs out of tokens mid-object; scalars that stay valid
        # when cut (42 -> 4) get the chatty markdown fence models like to add instead.
        candidates = [good[:-1], f"```json\n{good}\n```"]
        return next(text for text in candidates if not _is_json(text))
    if constraint.pattern is not None:
        tail = " ".join(words[:3]) or "and more"
        candidates = [f"{good} {tail}", f"{good}\n", good[:-1], "\n", "\x00"]
        for text in candidates:
            if not constraint.pattern.fullmatch(text):
                return text
    return good  # a pattern that matches everything cannot be violated


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True
