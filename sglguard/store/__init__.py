"""The store: SQLAlchemy models, queries and Alembic migrations.

Importing the package loads none of them (nor SQLAlchemy): `Store` and `StoreError` load at
first use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sglguard.store.db import Store, StoreError

__all__ = ["Store", "StoreError"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'sglguard.store' has no attribute {name!r}")
    from sglguard.store import db

    return getattr(db, name)
