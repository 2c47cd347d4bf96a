"""Samples kept per check so windowed values survive restarts and separate invocations."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import DBAPIError

from sglguard.domain import SamplesUnavailable
from sglguard.store.db import Store
from sglguard.store.models import CheckSampleRow


class StoreSamples:
    """The sample book of the check kinds, kept in the store. A store that cannot be reached
    raises SamplesUnavailable: sglguard's own trouble, never a result about the server."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @contextmanager
    def _reached(self) -> Iterator[None]:
        try:
            yield
        except DBAPIError as exc:
            raise SamplesUnavailable(f"the store is unavailable ({type(exc.orig).__name__})") \
                from None

    def save(self, check: str, at: datetime, data: dict[str, Any], keep: timedelta) -> None:
        """Record one sample; samples older than `keep` before `at` are dropped."""
        with self._reached(), self.store.session() as session:
            session.add(CheckSampleRow(check_name=check, taken_at=at, data=json.dumps(data)))
            session.execute(delete(CheckSampleRow).where(
                CheckSampleRow.check_name == check, CheckSampleRow.taken_at < at - keep))

    def earliest_since(self, check: str, since: datetime,
                       before: datetime) -> tuple[datetime, dict[str, Any]] | None:
        """The oldest sample taken in [since, before), or None."""
        with self._reached(), self.store.session() as session:
            row = session.scalars(
                select(CheckSampleRow).where(
                    CheckSampleRow.check_name == check,
                    CheckSampleRow.taken_at >= since,
                    CheckSampleRow.taken_at < before,
                ).order_by(CheckSampleRow.taken_at, CheckSampleRow.id).limit(1)
            ).first()
            return (row.taken_at, json.loads(row.data)) if row is not None else None

    def latest(self, check: str) -> tuple[datetime, dict[str, Any]] | None:
        with self._reached(), self.store.session() as session:
            row = session.scalars(
                select(CheckSampleRow).where(CheckSampleRow.check_name == check)
                .order_by(CheckSampleRow.taken_at.desc(), CheckSampleRow.id.desc()).limit(1)
            ).first()
            return (row.taken_at, json.loads(row.data)) if row is not None else None
