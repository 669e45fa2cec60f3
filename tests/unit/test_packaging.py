"""The database drivers are extras, and a missing one is named with the extra that installs it
(issue 14).

Builds and installs nothing: pyproject.toml is read as text, and a driver is made missing
by blocking its import (`sys.modules[name] = None`, which makes `import name` fail).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from supervisor.errors import DriverMissing
from supervisor.store.drivers import missing_driver

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Dr1ver-Pa55"


def project() -> dict[str, object]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        data: dict[str, object] = tomllib.load(fh)["project"]
    return data


def names(requirements: object) -> set[str]:
    """The distribution names of requirement strings ("psycopg[binary]>=3" -> "psycopg")."""
    assert isinstance(requirements, list)
    return {req.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0]
            .strip().lower() for req in requirements}


def test_the_drivers_are_the_postgres_and_mysql_extras_not_dependencies():
    meta = project()
    extras = meta["optional-dependencies"]
    assert isinstance(extras, dict)
    assert names(extras["postgres"]) == {"psycopg"}
    assert names(extras["mysql"]) == {"pymysql"}
    assert not names(meta["dependencies"]) & {"psycopg", "pymysql"}, "SQLite needs neither"


def test_the_test_extra_pulls_both_drivers_as_the_extras_pin_them():
    extras = project()["optional-dependencies"]
    assert isinstance(extras, dict)
    assert set(extras["postgres"]) | set(extras["mysql"]) <= set(extras["test"])


def test_the_image_installs_both_extras_by_default():
    script = (ROOT / "container" / "install.sh").read_text()
    assert "${EXTRAS-postgres mysql}" in script
    assert '["optional-dependencies"][extra]' in script


@pytest.mark.parametrize(("url", "module", "expected"), [
    (f"postgresql+psycopg://fleet:{PASSWORD}@db/fleet", "psycopg",
     "postgresql+psycopg:// needs the driver psycopg, which is not installed: "
     "pip install 'fleet-supervisor[postgres]'"),
    (f"mysql+pymysql://fleet:{PASSWORD}@db/fleet", "pymysql",
     "mysql+pymysql:// needs the driver pymysql, which is not installed: "
     "pip install 'fleet-supervisor[mysql]'"),
    (f"mariadb+pymysql://fleet:{PASSWORD}@db/fleet", "pymysql", "fleet-supervisor[mysql]"),
    (f"postgresql://fleet:{PASSWORD}@db/fleet", "psycopg2",
     "a postgresql:// URL names no driver, and SQLAlchemy's default for it (psycopg2) is not "
     "installed: write postgresql+psycopg://… and pip install 'fleet-supervisor[postgres]'"),
])
def test_a_missing_driver_is_named_with_the_extra_that_installs_it(
        monkeypatch: pytest.MonkeyPatch, url: str, module: str, expected: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    problem = missing_driver(url)
    assert problem is not None and expected in problem
    assert PASSWORD not in problem


def test_an_installed_driver_and_sqlite_need_nothing():
    assert missing_driver("sqlite:///supervisor.db") is None
    assert missing_driver("sqlite://") is None
    assert missing_driver("postgresql+psycopg://u@db/x") is None  # the test extra has it
    assert missing_driver("mysql+pymysql://u@db/x") is None


def test_the_store_refuses_a_url_whose_driver_is_missing_before_making_an_engine(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.store.sql import SqlStore

    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(DriverMissing, match=r"fleet-supervisor\[postgres\]") as refused:
        SqlStore(f"postgresql+psycopg://fleet:{PASSWORD}@db.invalid/fleet")
    assert PASSWORD not in str(refused.value)


def test_a_driver_that_is_there_but_broken_is_not_called_missing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def broken(name: str, package: str | None = None) -> object:
        if name == "psycopg":
            raise ImportError("no pq wrapper available")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", broken)
    problem = missing_driver("postgresql+psycopg://u@db/x")
    assert problem is not None
    assert "cannot be imported (no pq wrapper available)" in problem
    assert "fleet-supervisor[postgres]" in problem
