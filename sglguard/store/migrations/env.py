"""Alembic environment: runs on the connection sglguard hands it (or the configured URL)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from sglguard.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as new_connection:
        context.configure(connection=new_connection, target_metadata=target_metadata,
                          render_as_batch=new_connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
