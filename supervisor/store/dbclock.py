"""The database's clock in SQL, per dialect, and the claim stamps writes are read back by.

Imported only by the SQL store modules.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import Double, literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement


class _DbNow(FunctionElement[float]):
    """The database's clock as epoch seconds (DOUBLE)."""

    type = Double()
    inherit_cache = True


@compiles(_DbNow, "postgresql")
def _pg_now(element: _DbNow, compiler: Any, **kw: Any) -> str:
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"


@compiles(_DbNow, "mysql")
@compiles(_DbNow, "mariadb")
def _mysql_now(element: _DbNow, compiler: Any, **kw: Any) -> str:
    return "(UNIX_TIMESTAMP(UTC_TIMESTAMP(6)) + 0e0)"


@compiles(_DbNow, "sqlite")
def _sqlite_now(element: _DbNow, compiler: Any, **kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


def _now(now: float | None) -> ColumnElement[float]:
    """Pinned time for tests, else the database's clock in the statement itself."""
    return literal(now, Double()) if now is not None else _DbNow()


def _claim() -> str:
    return secrets.token_hex(16)
