"""Alembic environment: the engine is passed in by daemon.db.engine.migrate."""

from __future__ import annotations

from alembic import context

from daemon.db.models import Base

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
