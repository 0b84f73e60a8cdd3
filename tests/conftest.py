"""Shared fixtures: settings in a temporary data_dir, free ports, real peers."""

from __future__ import annotations

import dataclasses
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.settings import Settings, load_settings
from tests.daemon_process import system_which


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_tool(name: str) -> str:
    """Path of a real peer program; skip without it, or fail in CI.

    The virtual environment's bin folder is left out (:func:`system_which`).
    """
    path = system_which(name)
    if path is None:
        msg = f"{name} is not installed (apt-get install dcmtk orthanc dicom3tools)"
        if os.environ.get("KI67NODE_REQUIRE_PEERS"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings with data_dir under tmp_path; ``section__key=value`` overrides."""

    def factory(**overrides: Any) -> Settings:
        env = {"KI67NODE_NODE__DATA_DIR": f'"{tmp_path / "data"}"'}
        env["KI67NODE_NODE__PORT"] = "0"
        env["KI67NODE_HTTP__PORT"] = "0"
        env["KI67NODE_HTTP__BIND"] = '"127.0.0.1"'
        for key, value in overrides.items():
            section, _, name = key.partition("__")
            env[f"KI67NODE_{section.upper()}__{name.upper()}"] = _toml(value)
        return load_settings(None, env=env)

    return factory


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def pg_url() -> str:
    url = os.environ.get("KI67NODE_TEST_PG_URL")
    if not url:
        if os.environ.get("KI67NODE_REQUIRE_PEERS"):
            pytest.fail("KI67NODE_TEST_PG_URL is not set (.ci/run starts PostgreSQL)")
        pytest.skip("no PostgreSQL server (set KI67NODE_TEST_PG_URL)")
    return url


def with_destinations(s: Settings, *dests: Any) -> Settings:
    return dataclasses.replace(s, destinations=tuple(dests))


def outbox_of(s: Settings) -> tuple[Path, tuple[Any, ...]]:
    """The first arguments of ``stage_results``, as ``serve`` hands them to a job."""
    return s.data_dir, s.destinations


@pytest.fixture
def fresh_pg_url(pg_url: str) -> Iterator[str]:
    """A new, empty database on the server behind ``pg_url``; dropped after the test."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"ki67node_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on SQLite and on a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ki67node.db'}"
    return str(request.getfixturevalue("fresh_pg_url"))
