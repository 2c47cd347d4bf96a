"""Alembic environment: runs on the connection sglguard hands it."""

from __future__ import annotations

from alembic import context

from sglguard.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("sglguard runs its migrations on its own connection (Store.open)")
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
