"""A node that cannot connect says why, in words an operator acts on (and never the
password): too many clients, authentication, a missing database, nothing listening.
Against the real servers; each cause is produced for real, not mocked."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator

import psycopg
import pymysql
import pytest

from supervisor.errors import (
    AuthenticationFailed,
    DatabaseMissing,
    StoreUnavailable,
    TooManyClients,
)
from supervisor.store.sql import SqlStore
from tests.databases import require_backend

SECRET = "s3cret-Pa55"


def failed(url: str) -> StoreUnavailable:
    """What the store raised for a call it could not connect for."""
    store = SqlStore(url, timeout=2.0)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            store.db_now()
    finally:
        store.close()
    return caught.value


def failure(url: str) -> str:
    message = str(failed(url))
    assert SECRET not in message
    return message


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def limited_role() -> Iterator[str]:
    """A PostgreSQL role allowed no connection at all: the server refuses it for being
    over its limit, the same refusal (SQLSTATE 53300) as max_connections reached."""
    require_backend("postgresql")
    name = f"fs_t_limited_{secrets.token_hex(4)}"
    admin = psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres",
                            autocommit=True)
    admin.execute(f"CREATE ROLE {name} LOGIN CONNECTION LIMIT 0")
    try:
        yield name
    finally:
        admin.execute(f"DROP ROLE {name}")
        admin.close()


def test_postgresql_over_its_connection_limit_is_named(limited_role: str) -> None:
    message = failure(f"postgresql+psycopg://{limited_role}:{SECRET}@127.0.0.1:5432/postgres")
    assert "the server refuses new connections" in message


def test_postgresql_missing_database_and_role_are_named() -> None:
    require_backend("postgresql")
    missing = f"fs_t_missing_{secrets.token_hex(4)}"
    assert "the database does not exist" in failure(
        f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:5432/{missing}")
    assert "the role does not exist" in failure(
        f"postgresql+psycopg://{missing}:{SECRET}@127.0.0.1:5432/postgres")


def test_nothing_listening_is_named_on_both_servers() -> None:
    port = free_port()
    assert "connection refused" in failure(
        f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:{port}/postgres")
    assert "nothing accepts connections" in failure(
        f"mysql+pymysql://root:{SECRET}@127.0.0.1:{port}/test")


def test_mariadb_missing_database_and_refused_login_are_named() -> None:
    require_backend("mariadb")
    missing = f"fs_t_missing_{secrets.token_hex(4)}"
    assert "the database does not exist" in failure(
        f"mysql+pymysql://root@127.0.0.1:3306/{missing}")
    assert "authentication failed" in failure(
        f"mysql+pymysql://{missing}:{SECRET}@127.0.0.1:3306/test")


@pytest.fixture
def user_at_its_limit() -> Iterator[str]:
    """A MariaDB user allowed one connection, which is in use: a URL for one more."""
    require_backend("mariadb")
    name = f"fs_t_lim_{secrets.token_hex(3)}"
    admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE USER '{name}'@'%' WITH MAX_USER_CONNECTIONS 1")
        first = pymysql.connect(host="127.0.0.1", user=name, password="")  # uses up the one
        try:
            yield f"mysql+pymysql://{name}@127.0.0.1:3306/"
        finally:
            first.close()
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP USER '{name}'@'%'")
        admin.close()


def test_mariadb_over_a_connection_limit_is_named(user_at_its_limit: str) -> None:
    message = failure(user_at_its_limit)
    assert "the server refuses new connections" in message


# The same causes as types: what is above the store tells them apart without reading text.


def test_postgresql_connection_failures_are_typed(limited_role: str) -> None:
    missing = f"fs_t_missing_{secrets.token_hex(4)}"
    base = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1"
    assert isinstance(failed(
        f"postgresql+psycopg://{limited_role}:{SECRET}@127.0.0.1:5432/postgres"),
        TooManyClients)
    assert isinstance(failed(f"{base}:5432/{missing}"), DatabaseMissing)
    assert isinstance(failed(
        f"postgresql+psycopg://{missing}:{SECRET}@127.0.0.1:5432/postgres"),
        AuthenticationFailed)
    assert type(failed(f"{base}:{free_port()}/postgres")) is StoreUnavailable


def test_mariadb_connection_failures_are_typed(user_at_its_limit: str) -> None:
    assert isinstance(failed(user_at_its_limit), TooManyClients)
    missing = f"fs_t_missing_{secrets.token_hex(4)}"
    assert isinstance(failed(f"mysql+pymysql://root@127.0.0.1:3306/{missing}"),
                      DatabaseMissing)
    assert isinstance(failed(f"mysql+pymysql://{missing}:{SECRET}@127.0.0.1:3306/test"),
                      AuthenticationFailed)
    assert type(failed(f"mysql+pymysql://root:{SECRET}@127.0.0.1:{free_port()}/test")) \
        is StoreUnavailable
