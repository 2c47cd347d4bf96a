"""Explicit registries keyed by `kind`, shared by checks, controls and remediations.

A kind is registered by the dotted path of its class (`"sglguard.checks.http:HttpCheck"`) and
its module is imported only when that kind is first used, so reading a catalog loads the kinds
it names and no others (nor their libraries: NVML, psutil, docker...)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from importlib import import_module
from typing import Any, Generic, TypeVar, overload

from pydantic import BaseModel

T = TypeVar("T")


class UnknownKindError(KeyError):
    """A kind that no registry entry answers to."""

    def __str__(self) -> str:
        return str(self.args[0])


def _checked(cls: Any, family: str) -> str:
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not isinstance(getattr(cls, "config_model", None), type):
        raise TypeError(f"{getattr(cls, '__name__', cls)} needs `kind` and `config_model` "
                        f"class attributes ({family} registry)")
    return kind


class Registry(Mapping[str, type[T]], Generic[T]):
    """A dict of implementations keyed by kind; registering a kind twice is a bug."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._where: dict[str, str] = {}  # kind -> "module:Class", in registration order
        self._items: dict[str, type[T]] = {}
        self._lock = threading.Lock()

    @overload
    def register(self, cls_or_kind: type[T], where: None = None) -> type[T]: ...
    @overload
    def register(self, cls_or_kind: str, where: str) -> None: ...

    def register(self, cls_or_kind: type[T] | str, where: str | None = None) -> type[T] | None:
        """Add an implementation under its kind, a kind only once: either a class (under its
        `kind` class attribute), or a kind and the `module:Class` path to import at first use."""
        if isinstance(cls_or_kind, str):
            if where is None or ":" not in where:
                raise TypeError(f"{self.family} kind '{cls_or_kind}' needs a 'module:Class' path")
            self._add(cls_or_kind, where)
            return None
        kind = _checked(cls_or_kind, self.family)
        self._add(kind, f"{cls_or_kind.__module__}:{cls_or_kind.__qualname__}")
        self._items[kind] = cls_or_kind
        return cls_or_kind

    def _add(self, kind: str, where: str) -> None:
        if kind in self._where:
            raise ValueError(f"{self.family} kind '{kind}' is registered twice")
        self._where[kind] = where

    def __getitem__(self, kind: str) -> type[T]:
        found = self._items.get(kind)
        if found is not None:
            return found
        if kind not in self._where:
            valid = ", ".join(sorted(self._where))
            raise UnknownKindError(
                f"unknown {self.family} kind '{kind}': valid kinds are {valid}"
            ) from None
        with self._lock:
            return self._load(kind)

    def _load(self, kind: str) -> type[T]:
        if kind in self._items:
            return self._items[kind]
        module, _, name = self._where[kind].partition(":")
        cls: type[T] = getattr(import_module(module), name)
        if _checked(cls, self.family) != kind:
            raise TypeError(f"{self._where[kind]} is registered as {self.family} kind '{kind}' "
                            f"but its kind is '{getattr(cls, 'kind')}'")  # noqa: B009
        self._items[kind] = cls
        return cls

    def __contains__(self, kind: object) -> bool:
        return kind in self._where  # without importing the kind's module

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def loaded(self) -> list[str]:
        """The kinds whose module has been imported so far."""
        return [kind for kind in self._where if kind in self._items]

    def config_models(self) -> Mapping[str, type[BaseModel]]:
        """The config model of each kind, for dispatching catalog entries."""
        return _ConfigModels(self)


class _ConfigModels(Mapping[str, type[BaseModel]]):
    def __init__(self, registry: Registry[T]) -> None:
        self._registry = registry

    def __getitem__(self, kind: str) -> type[BaseModel]:
        model: type[BaseModel] = getattr(self._registry[kind], "config_model")  # noqa: B009
        return model

    def __contains__(self, kind: object) -> bool:
        return kind in self._registry

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry)

    def __len__(self) -> int:
        return len(self._registry)
