"""Read-only access to the node's database: status, metrics, the follow-up list.

A *read engine* (:func:`make_read_engine`) never writes: for SQLite it is
``query_only`` and never issues ``BEGIN IMMEDIATE``, so a status query or a
scrape never takes the write lock the listener needs; for PostgreSQL its
transactions are read-only with a statement timeout. A missing SQLite file is
reported (:func:`database_missing`), never created by a read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

QUERY_TIMEOUT_SECONDS = 5


def safe_url(url: str) -> str:
    """The database URL with its password replaced by ``***``."""
    return make_url(url).render_as_string(hide_password=True)


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL; None for other URLs and ``:memory:``."""
    if not url.startswith("sqlite:///"):
        return None
    raw = url.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(raw) if raw and raw != ":memory:" else None


def database_missing(url: str) -> bool:
    """True when the SQLite database file does not exist yet (read commands never create it)."""
    path = sqlite_path(url)
    return path is not None and not path.is_file()


def make_read_engine(url: str, busy_timeout_ms: int = 30_000) -> Engine:
    """An engine for reads only (status, metrics); see the module docstring."""
    timeout_s = busy_timeout_ms / 1000
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={
                "timeout": min(timeout_s, QUERY_TIMEOUT_SECONDS),
                "check_same_thread": False,
            },
            pool_size=2,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA query_only=ON")
            cur.execute(f"PRAGMA busy_timeout={int(QUERY_TIMEOUT_SECONDS * 1000)}")
            cur.close()

        return engine
    return create_engine(
        url,
        pool_size=2,
        max_overflow=2,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": QUERY_TIMEOUT_SECONDS,
            "options": (
                f"-c statement_timeout={QUERY_TIMEOUT_SECONDS * 1000} "
                "-c default_transaction_read_only=on"
            ),
        },
    )
