"""Fixtures of the store conformance suites: a fresh, upgraded store per test and holders."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from supervisor.store import Holder
from supervisor.store.sql import SqlStore
from tests.databases import ALL_BACKENDS
from tests.integration.stores import make_holder


@pytest.fixture(params=ALL_BACKENDS, ids=ALL_BACKENDS)
def database_backend(request: pytest.FixtureRequest) -> str:
    """Every backend, PgBouncer in transaction mode included: the store's contract holds on all."""
    return str(request.param)


@pytest.fixture
def store(database_url: str) -> Iterator[SqlStore]:
    opened = SqlStore(database_url)
    try:
        opened.upgrade()
        yield opened
    finally:
        opened.close()


@pytest.fixture
def a() -> Holder:
    return make_holder("node-a")


@pytest.fixture
def b() -> Holder:
    return make_holder("node-b")


@pytest.fixture
def c() -> Holder:
    return make_holder("node-c")


@pytest.fixture
def d() -> Holder:
    return make_holder("node-d")
