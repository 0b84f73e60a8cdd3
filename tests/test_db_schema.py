"""The Alembic migrations and the SQLAlchemy models describe the same schema,
on SQLite and PostgreSQL (a model change without a migration fails here)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from daemon.db.engine import make_engine, migrate
from daemon.db.models import Base


def test_migrations_match_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate(engine)
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_migrate_is_idempotent(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate(engine)
        migrate(engine)
        with engine.connect() as conn:
            version = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    assert version is not None and version.isdigit()
