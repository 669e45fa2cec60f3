"""Rows the database refuses: keeping one from failing the rest of a node's sync, and
refusing a value too long for its column before any database sees it. Imported only by
the SQL store modules; which driver errors are refusals is store/classify.py's to say.

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

from supervisor.errors import StoreRefused
from supervisor.store import SyncRefusal
from supervisor.store.classify import refusal_cause, refusal_reason

T = TypeVar("T")


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
