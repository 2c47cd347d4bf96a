"""The store: SQLAlchemy models, queries and Alembic migrations."""

from __future__ import annotations

from sglguard.store.db import Store, StoreError

__all__ = ["Store", "StoreError"]
