"""Database fixtures: every test that asks for `database_url` gets its own empty database.

Loaded as a pytest plugin from tests/conftest.py. Backends:

    sqlite      a file in the test's tmp_path
    postgresql  127.0.0.1:5432, user postgres, trust auth; a fresh `fs_t_<hex>` database
    mariadb     127.0.0.1:3306, root without password; a fresh `fs_t_<hex>` database

A server that cannot be reached is probed once per session (2 s connect timeout). Without it
the test is skipped with the reason shown by `-ra`, unless CI=true: CI must run every backend,
so there the test fails instead.

The plain functions (`create_database`, `drop_database`, `available_backends`,
`require_backend`) let e2e tests provision databases for `supervisor run` subprocesses too.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pymysql
import pytest
from psycopg import sql

BACKENDS = ("sqlite", "postgresql", "mariadb")
SERVERS = {
    "postgresql": ("PostgreSQL", "127.0.0.1", 5432),
    "mariadb": ("MariaDB", "127.0.0.1", 3306),
}
CONNECT_TIMEOUT = 2
PREFIX = "fs_t_"

_probed: dict[str, str | None] = {}  # backend -> None when reachable, else why not


def _pg_admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host="127.0.0.1", port=5432, user="postgres", dbname="postgres",
        connect_timeout=CONNECT_TIMEOUT, autocommit=True,
    )


def _mariadb_admin() -> pymysql.connections.Connection:
    return pymysql.connect(
        host="127.0.0.1", port=3306, user="root", password="",
        connect_timeout=CONNECT_TIMEOUT, autocommit=True,
    )


def unavailable_reason(backend: str) -> str | None:
    """None if the backend's server answers, else a sentence saying why not (cached)."""
    if backend == "sqlite":
        return None
    if backend not in _probed:
        title, host, port = SERVERS[backend]
        try:
            connection = _pg_admin() if backend == "postgresql" else _mariadb_admin()
        except Exception as exc:  # any failure to connect means "not reachable"
            why = " ".join(str(exc).split()) or type(exc).__name__  # one line for -ra
            _probed[backend] = f"{title} not reachable at {host}:{port}: {why}"
        else:
            connection.close()
            _probed[backend] = None
    return _probed[backend]


def available_backends() -> list[str]:
    """The backends whose server is reachable now (SQLite always is)."""
    return [backend for backend in BACKENDS if unavailable_reason(backend) is None]


def require_backend(backend: str) -> None:
    """Skip the calling test if the backend is unreachable; fail it instead when CI=true."""
    reason = unavailable_reason(backend)
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: database tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


def create_database(backend: str, directory: Path | None = None) -> str:
    """Create an empty database and return its SQLAlchemy URL (no password in it).

    For SQLite the file lives in `directory`, or in a new temporary directory that
    `drop_database` removes again.
    """
    name = PREFIX + secrets.token_hex(6)
    if backend == "sqlite":
        folder = directory if directory is not None else Path(tempfile.mkdtemp(prefix=PREFIX))
        return f"sqlite:///{folder}/fleet.db"
    if backend == "postgresql":
        with _pg_admin() as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    if backend == "mariadb":
        connection = _mariadb_admin()
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE `{name}`")
        finally:
            connection.close()
        return f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def drop_database(backend: str, url: str) -> None:
    """Drop a database made by `create_database`, even with connections still open to it."""
    name = url.rsplit("/", 1)[-1]
    if backend == "sqlite":
        folder = Path(url.removeprefix("sqlite:///")).parent
        if folder.name.startswith(PREFIX):  # only a directory create_database made itself
            shutil.rmtree(folder, ignore_errors=True)
        return
    if not name.startswith(PREFIX):
        raise ValueError(f"refusing to drop {name!r}: not a test database")
    if backend == "postgresql":
        with _pg_admin() as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        return
    connection = _mariadb_admin()
    try:
        with connection.cursor() as cursor:
            # DROP DATABASE waits on metadata locks held by open transactions: end them first.
            cursor.execute("SELECT id FROM information_schema.processlist WHERE db = %s", (name,))
            for (thread_id,) in cursor.fetchall():
                with contextlib.suppress(pymysql.MySQLError):  # it may have ended meanwhile
                    cursor.execute(f"KILL {int(thread_id)}")
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        connection.close()


def _database(backend: str, tmp_path: Path) -> Iterator[str]:
    require_backend(backend)
    url = create_database(backend, tmp_path)
    try:
        yield url
    finally:
        drop_database(backend, url)


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def database_backend(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test, one of BACKENDS."""
    return str(request.param)


@pytest.fixture
def database_url(database_backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL to a fresh, empty database on each backend in turn (ids: the backend names)."""
    yield from _database(database_backend, tmp_path)


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    """A URL to a fresh, empty PostgreSQL database."""
    yield from _database("postgresql", tmp_path)


@pytest.fixture
def mariadb_url(tmp_path: Path) -> Iterator[str]:
    """A URL to a fresh, empty MariaDB database."""
    yield from _database("mariadb", tmp_path)
