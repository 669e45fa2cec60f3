"""Fixtures of the store conformance suites: a fresh, upgraded store per test and holders.

The suites (test_store.py, test_store_cron.py, test_store_coord.py) are marked
`conformance`: each of their tests that reaches the store only through the `store`
fixture runs on MemoryStore too (backend "memory", beside every database). A test that
needs a real database asks for `database_url` itself (SQL text, a second SqlStore,
forked racers, migrations), or is marked `sql_only` (it reads SqlStore's engine or
tables): it is never parametrized with "memory", so nothing is skipped there.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from supervisor.store import CoordinationStore, Holder
from supervisor.store.memory import MemoryStore
from supervisor.store.sql import SqlStore
from tests.databases import ALL_BACKENDS
from tests.integration.stores import make_holder

MEMORY = "memory"
_DATABASE_FIXTURES = ("database_url", "pg_url", "mariadb_url")


@pytest.fixture(params=ALL_BACKENDS, ids=ALL_BACKENDS)
def database_backend(request: pytest.FixtureRequest) -> str:
    """Every backend, PgBouncer in transaction mode included: the store's contract holds on all."""
    return str(request.param)


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Add the memory backend to the conformance tests that only talk to `store`: as a
    parametrize mark of their own, which pytest then applies instead of the fixture's
    params (so it runs before pytest's own parametrization)."""
    definition = metafunc.definition
    if (definition.get_closest_marker("conformance") is None
            or definition.get_closest_marker("sql_only") is not None
            or "store" not in metafunc.fixturenames
            or any(name in metafunc.fixturenames for name in _DATABASE_FIXTURES)
            or any(mark.args and mark.args[0] == "database_backend"
                   for mark in definition.iter_markers("parametrize"))):
        return
    backends = [*ALL_BACKENDS, MEMORY]
    definition.add_marker(pytest.mark.parametrize("database_backend", backends, ids=backends))


@pytest.fixture
def store(request: pytest.FixtureRequest, database_backend: str) -> Iterator[CoordinationStore]:
    """A fresh store: MemoryStore for the memory backend, else an upgraded SqlStore on a
    fresh database of the backend."""
    if database_backend == MEMORY:
        yield MemoryStore()
        return
    opened = SqlStore(request.getfixturevalue("database_url"))
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
