"""Base of every catalog model: frozen, strict about keys, and clear about unknown ones."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=128)]


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if value.is_absolute() or base is None:
        return value
    return Path(base) / value


RelativePath = Annotated[Path, AfterValidator(_resolve_path)]
"""A path that, when relative, is taken relative to the catalog file."""


def _plain(message: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def _unknown_key_error(error: Any, valid: list[str]) -> InitErrorDetails:
    key = str(error["loc"][-1])
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    message = f"unknown key '{key}'{hint}; valid keys: {', '.join(valid)}"
    return {
        "type": PydanticCustomError("unknown_key", message),
        "loc": error["loc"],
        "input": error["input"],
    }


class ConfigModel(BaseModel):
    """Frozen catalog model whose unknown keys are reported with the valid ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="wrap")
    @classmethod
    def _name_unknown_keys(cls, data: Any, handler: Any) -> Any:
        try:
            return handler(data)
        except ValidationError as exc:
            valid = sorted(field.alias or name for name, field in cls.model_fields.items())
            details: list[InitErrorDetails] = []
            for error in exc.errors():
                if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
                    details.append(_unknown_key_error(error, valid))
                else:
                    # Re-raised as custom errors: pydantic only rebuilds its own types by name.
                    details.append({
                        "type": PydanticCustomError(error["type"], _plain(error["msg"])),
                        "loc": error["loc"],
                        "input": error["input"],
                    })
            raise ValidationError.from_exception_data(exc.title, details) from None


class KindModel(ConfigModel):
    """Base of a config model chosen by its `kind` key from a registry."""

    kinds: ClassVar[Mapping[str, type[BaseModel]]] = {}
    family: ClassVar[str] = "item"
    kind: str

    @model_validator(mode="wrap")
    @classmethod
    def _dispatch_on_kind(cls, data: Any, handler: Any, info: ValidationInfo) -> Any:
        if "kinds" not in cls.__dict__ or not isinstance(data, Mapping):
            return handler(data)
        kind = data.get("kind")
        model = cls.kinds.get(kind) if isinstance(kind, str) else None
        if model is None:
            valid = ", ".join(sorted(cls.kinds))
            if kind is None:
                raise PydanticCustomError(
                    "missing_kind", f"missing 'kind': valid {cls.family} kinds are {valid}"
                )
            raise PydanticCustomError(
                "unknown_kind", f"unknown {cls.family} kind '{kind}': valid kinds are {valid}"
            )
        return model.model_validate(data, context=info.context)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """A family base (one with `kinds`) is, for editors, the discriminated union of its
        kinds' models on `kind`: each kind with its own fields, `kind` written once."""
        if "kinds" not in cls.__dict__ or not cls.kinds:
            return handler(core_schema)
        models = tuple(cls.kinds[kind] for kind in sorted(cls.kinds))
        union: TypeAdapter[Any] = TypeAdapter(
            Annotated[Union[models], Field(discriminator="kind")])  # type: ignore[arg-type]  # noqa: UP007
        return handler(union.core_schema)
