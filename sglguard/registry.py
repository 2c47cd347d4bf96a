"""Explicit registries keyed by `kind`, shared by checks, controls and remediations."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class UnknownKindError(KeyError):
    """A kind that no registry entry answers to."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Mapping[str, type[T]], Generic[T]):
    """A dict of implementations keyed by kind; registering a kind twice is a bug."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._items: dict[str, type[T]] = {}

    def register(self, cls: type[T]) -> type[T]:
        """Add an implementation under its `kind` class attribute; a kind only once."""
        kind = getattr(cls, "kind", None)
        if not isinstance(kind, str) or not isinstance(getattr(cls, "config_model", None), type):
            raise TypeError(f"{cls.__name__} needs `kind` and `config_model` class attributes")
        if kind in self._items:
            raise ValueError(f"{self.family} kind '{kind}' is registered twice")
        self._items[kind] = cls
        return cls

    def __getitem__(self, kind: str) -> type[T]:
        try:
            return self._items[kind]
        except KeyError:
            valid = ", ".join(sorted(self._items))
            raise UnknownKindError(
                f"unknown {self.family} kind '{kind}': valid kinds are {valid}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def config_models(self) -> Mapping[str, type[BaseModel]]:
        """The config model of each kind, for dispatching catalog entries."""
        return _ConfigModels(self)


class _ConfigModels(Mapping[str, type[BaseModel]]):
    def __init__(self, registry: Registry[T]) -> None:
        self._registry = registry

    def __getitem__(self, kind: str) -> type[BaseModel]:
        model: type[BaseModel] = getattr(self._registry[kind], "config_model")  # noqa: B009
        return model

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry)

    def __len__(self) -> int:
        return len(self._registry)
