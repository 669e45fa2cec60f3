"""Which driver a database URL needs, and the extra of fleet-supervisor that installs it.

SQLite needs no driver of its own (the standard library's sqlite3). PostgreSQL's psycopg
and MariaDB/MySQL's PyMySQL are extras (`fleet-supervisor[postgres]`, `[mysql]`), so a
node may lack the one its URL names. That is said before anything starts, as an
install problem with the command that fixes it, not left to surface as an ImportError
from deep inside SQLAlchemy once a worker first needs the database.

Imports no SQLAlchemy: `run` and `check` ask before the database stack is loaded.
Invariant: a message names the URL's scheme only, never the URL (it may hold a password).
"""

from __future__ import annotations

import importlib

from supervisor.errors import DriverMissing

# scheme -> (module SQLAlchemy imports for it, the extra that installs it, the form to write)
_DRIVERS: dict[str, tuple[str, str, str]] = {
    "postgresql+psycopg": ("psycopg", "postgres", "postgresql+psycopg://"),
    "mysql+pymysql": ("pymysql", "mysql", "mysql+pymysql://"),
    "mariadb+pymysql": ("pymysql", "mysql", "mariadb+pymysql://"),
    # No driver named: SQLAlchemy's defaults, which fleet-supervisor does not install.
    "postgresql": ("psycopg2", "postgres", "postgresql+psycopg://"),
    "mysql": ("MySQLdb", "mysql", "mysql+pymysql://"),
    "mariadb": ("MySQLdb", "mysql", "mariadb+pymysql://"),
}


def missing_driver(url: str) -> str | None:
    """Why `url`'s driver cannot be used here, naming the extra to install; None when it
    can (or when the URL is SQLite's, or names a driver this module does not know)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    known = _DRIVERS.get(scheme)
    if known is None:
        return None
    module, extra, form = known
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:  # the driver is there, something it needs is not
            return _broken(scheme, module, exc, extra)
    except ImportError as exc:
        return _broken(scheme, module, exc, extra)
    else:
        return None
    install = f"pip install 'fleet-supervisor[{extra}]'"
    if form != scheme + "://":
        return (f"a {scheme}:// URL names no driver, and SQLAlchemy's default for it "
                f"({module}) is not installed: write {form}… and {install}")
    return f"{scheme}:// needs the driver {module}, which is not installed: {install}"


def _broken(scheme: str, module: str, exc: ImportError, extra: str) -> str:
    return (f"{scheme}:// needs the driver {module}, which cannot be imported ({exc}): "
            f"reinstall it with pip install --force-reinstall 'fleet-supervisor[{extra}]'")


def require_driver(url: str) -> None:
    """Raise DriverMissing when `url`'s driver cannot be used here (`missing_driver`)."""
    problem = missing_driver(url)
    if problem is not None:
        raise DriverMissing(problem)
