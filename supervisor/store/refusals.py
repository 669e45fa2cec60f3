"""Rows the database refuses: telling them from an unreachable database, and keeping one
from failing the rest of a node's sync. Imported only by the SQL store modules.

A refusal is the database saying no to one write because of one row: a constraint it
would break (a unique key, a CHECK, a trigger's rule), a value out of range. Retrying
the same write changes nothing, and it says nothing about the node's other leases, runs
and coordinated slots; an unreachable or timed out database is no refusal and fails the
whole call, as before.

`node_sync` is one transaction for everything a node holds. It runs without savepoints
(the steady state costs nothing more); only when a refusal failed it does it run again
`Apart`: each lease, run and coordinated key in a savepoint of its own, the refused ones
rolled back alone and reported, the rest committed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Table
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from supervisor.errors import StoreError, StoreRefused
from supervisor.store import SyncRefusal

T = TypeVar("T")

# MySQL/MariaDB numbers of a refused row that PyMySQL does not class as Integrity- or
# DataError: 1690 a value out of range in an expression (BIGINT term + 1), 3819 (MySQL)
# and 4025 (MariaDB) a CHECK constraint, 1644 a trigger's SIGNAL, 1292/1366/1265 a value
# the column cannot take.
_MYSQL_REFUSED = {1690, 3819, 4025, 1644, 1292, 1366, 1265, 1264, 1406, 1048, 1062, 1451,
                  1452}
_REASON_MAX = 300


class RowRefused(StoreRefused):
    """A row the store itself found unusable (a term the driver cannot carry)."""


def fit(table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Refuse a string longer than its column, on every database, before it is written.

    The databases do not all refuse it themselves: SQLite keeps any length, MariaDB's
    INSERT IGNORE (the insert-if-absent of lease rows, cron runs and coordinated rows)
    turns strict mode's "data too long" into a warning and stores the value cut, and
    PostgreSQL and MariaDB cut trailing spaces past a VARCHAR's length without a word
    (the SQL standard's rule). A name cut to fit would be another name."""
    for row in rows:
        for key, value in row.items():
            length = getattr(table.c[key].type, "length", None)
            if isinstance(value, str) and length is not None and len(value) > length:
                shown = value if len(value) <= 60 else value[:57] + "..."
                raise RowRefused(f"{table.name}.{key} {shown!r} is {len(value)} characters,"
                                 f" longer than the column's {length}")


def refusal_cause(exc: BaseException) -> BaseException | None:
    """The refusal behind `exc` (a translated StoreError, or the driver's error), or None
    when `exc` is not a refused row (unreachable, a deadlock, a bug)."""
    if isinstance(exc, StoreRefused):
        return exc
    cause = exc.__cause__ if isinstance(exc, StoreError) else exc
    if not isinstance(cause, DBAPIError):
        return None
    if isinstance(cause, IntegrityError | DataError):
        return cause
    orig = cause.orig
    module = type(orig).__module__
    if module.startswith("psycopg"):
        sqlstate = getattr(orig, "sqlstate", None) or ""
        # 22: data exception, 23: integrity constraint, P0001: a trigger's RAISE
        return cause if sqlstate[:2] in ("22", "23") or sqlstate == "P0001" else None
    if module.startswith("pymysql") and orig is not None and orig.args:
        return cause if orig.args[0] in _MYSQL_REFUSED else None
    return None


def refusal_reason(cause: BaseException, secret: str | None) -> str:
    """The database's words for a refusal, on one line: the driver's class and message
    (the constraint, the value), with the password cut out should it ever appear."""
    if isinstance(cause, StoreRefused):
        text = str(cause)
    else:
        orig = getattr(cause, "orig", None) or cause
        diag = getattr(orig, "diag", None)
        primary = getattr(diag, "message_primary", None) if diag is not None else None
        if primary:  # PostgreSQL: the message, and the key or value it is about
            detail = getattr(diag, "message_detail", None)
            text = primary + (f" ({detail})" if detail else "")
        elif getattr(orig, "args", None) and len(orig.args) > 1:  # PyMySQL: (errno, text)
            text = f"{orig.args[1]} (error {orig.args[0]})"
        else:
            text = str(orig)
        text = f"{type(orig).__name__}: {text}"
    text = " ".join(text.split())
    if secret:
        text = text.replace(secret, "***")
    return text if len(text) <= _REASON_MAX else text[:_REASON_MAX - 3] + "..."


class Apart:
    """A sync run again part by part: each part in a savepoint of its own; a part the
    database refuses is rolled back alone and recorded, and the others go on."""

    def __init__(self, secret: str | None) -> None:
        self._secret = secret
        self.refused: list[SyncRefusal] = []

    @contextlib.contextmanager
    def part(self, conn: Connection, kind: str, key: str) -> Iterator[None]:
        try:
            with conn.begin_nested():
                yield
        except Exception as exc:
            cause = refusal_cause(exc)
            if cause is None:
                raise
            self.refused.append(SyncRefusal(kind, key, refusal_reason(cause, self._secret)))


def in_parts(items: Sequence[T], apart: Apart | None) -> list[list[T]]:
    """All items in one part (one statement for all of them), or one part per item."""
    if not items:
        return []
    return [list(items)] if apart is None else [[item] for item in items]


@contextlib.contextmanager
def guarded(apart: Apart | None, conn: Connection, kind: str, key: str) -> Iterator[None]:
    """As one with the whole sync (a refusal fails it), or `apart`, in a savepoint."""
    if apart is None:
        yield
        return
    with apart.part(conn, kind, key):
        yield
