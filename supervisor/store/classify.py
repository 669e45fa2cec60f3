"""Driver errors -> the store's error types (supervisor/errors.py), once for every database.

The only place that reads what a driver raised: psycopg's SQLSTATE (or, for a failed
connection, which has none, its server's English text), PyMySQL's error number, sqlite3's
message. Everything above the store sees types only:

- a failed connection -> `TooManyClients`, `AuthenticationFailed`, `DatabaseMissing`, or
  else `StoreUnavailable`, each with a fixed phrase an operator acts on;
- unreachable, timed out, a server shutting down -> `StoreUnavailable`;
- a deadlock victim -> `Deadlock`, which the store retries and never lets out as such;
- a row the database refuses (a constraint, a value out of range) -> recognised by
  `refusal_cause`, so node_sync can set that row apart (store/refusals.py);
- anything else -> `StoreError`.

Invariant: a message is built from the masked URL and these fixed phrases only, never from
the driver's text, which may name the user, the host or the password; a refusal's reason
(`refusal_reason`) is the database's own words about a row, with the password cut out.
"""

from __future__ import annotations

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from supervisor.errors import (
    AuthenticationFailed,
    DatabaseMissing,
    StoreError,
    StoreRefused,
    StoreUnavailable,
    TooManyClients,
)


class Deadlock(StoreError):
    """The database chose this transaction as a deadlock victim; it is safe to retry."""


def translate(exc: DBAPIError, masked_url: str) -> StoreError:
    """The store's error for a driver error that reached the seam."""
    kind = type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__
    if is_deadlock(exc):
        return Deadlock(f"database {masked_url} aborted a deadlock ({kind})")
    failure = connect_failure(exc.orig)
    if failure is not None:
        error, cause = failure
        return error(f"database {masked_url} unreachable: {cause} ({kind})")
    if exc.connection_invalidated or is_unreachable(exc):
        return StoreUnavailable(f"database {masked_url} unreachable ({kind})")
    return StoreError(f"database error on {masked_url} ({kind})")


_MYSQL_UNREACHABLE = {2003, 2006, 2013, 2055, 1205, 1927, 3024}  # no route, gone, lost, timeouts
_MYSQL_DEADLOCK = {1213}


def is_unreachable(exc: DBAPIError) -> bool:
    """The server could not be reached or did not answer in time (not: a bad query)."""
    orig = exc.orig
    module = type(orig).__module__
    if module.startswith("psycopg"):
        sqlstate = getattr(orig, "sqlstate", None) or ""
        # No SQLSTATE: the connection failed or timed out; 57014 statement timeout,
        # 55P03 lock timeout, 57P01-3 the server is shutting down, 08xxx connection.
        return sqlstate == "" or sqlstate[:2] == "08" or sqlstate in (
            "57014", "55P03", "57P01", "57P02", "57P03")
    if module.startswith("pymysql") and orig is not None:
        return bool(orig.args) and orig.args[0] in _MYSQL_UNREACHABLE
    if module.startswith("sqlite3"):
        text_ = str(orig).lower()
        return "locked" in text_ or "unable to open" in text_ or "disk i/o" in text_
    return isinstance(orig, OSError | TimeoutError)


def is_deadlock(exc: DBAPIError) -> bool:
    orig = exc.orig
    module = type(orig).__module__
    if module.startswith("psycopg"):
        return getattr(orig, "sqlstate", None) in ("40P01", "40001")
    if module.startswith("pymysql") and orig is not None:
        return bool(orig.args) and orig.args[0] in _MYSQL_DEADLOCK
    return False


# Why a connection could not be made, as a type and in words an operator acts on. psycopg
# carries no SQLSTATE for a failed connection, so its server's (English) text is matched;
# PyMySQL gives the error number. Only these fixed phrases reach the log, never the
# driver's text, which may name the user or the host.
_Failure = tuple[type[StoreUnavailable], str]
_REFUSES = "the server refuses new connections: "
_PG_CONNECT_FAILURES: tuple[tuple[str, _Failure], ...] = (
    ("too many clients", (TooManyClients, _REFUSES + "too many clients "
                                                     "(max_connections is reached)")),
    ("too many connections for role", (TooManyClients, _REFUSES + "the role's connection "
                                                                  "limit is reached")),
    ("too many connections for database", (TooManyClients, _REFUSES + "the database's "
                                                                      "connection limit is "
                                                                      "reached")),
    ("remaining connection slots are reserved", (TooManyClients, _REFUSES + "only reserved "
                                                                            "slots are left")),
    ("password authentication failed", (AuthenticationFailed, "authentication failed (wrong "
                                                              "password)")),
    ("no pg_hba.conf entry", (AuthenticationFailed, "authentication refused (no pg_hba.conf "
                                                    "entry for this client)")),
    ('fatal:  role "', (AuthenticationFailed, "authentication failed (the role does not "
                                              "exist)")),
    ('fatal:  database "', (DatabaseMissing, "the database does not exist")),
    ("connection refused", (StoreUnavailable, "nothing accepts connections there "
                                              "(connection refused)")),
    ("failed to resolve host", (StoreUnavailable, "the host name does not resolve")),
    ("timeout expired", (StoreUnavailable, "no answer within the connect timeout")),
    ("the database system is starting up", (StoreUnavailable, "the server is starting up")),
    ("the database system is shutting down", (StoreUnavailable, "the server is shutting "
                                                                "down")),
)
_MYSQL_USER_LIMIT: _Failure = (TooManyClients, _REFUSES + "the user's max_user_connections "
                                                          "is reached")
_MYSQL_DENIED: _Failure = (AuthenticationFailed, "authentication failed (access denied)")
_MYSQL_CONNECT_FAILURES: dict[int, _Failure] = {
    1040: (TooManyClients, _REFUSES + "too many connections (max_connections is reached)"),
    1203: _MYSQL_USER_LIMIT,
    1226: _MYSQL_USER_LIMIT,
    1045: _MYSQL_DENIED,
    1698: _MYSQL_DENIED,
    1044: (AuthenticationFailed, "access to the database denied"),
    1049: (DatabaseMissing, "the database does not exist"),
    2003: (StoreUnavailable, "nothing accepts connections there (refused, unresolvable or "
                             "no answer)"),
    2005: (StoreUnavailable, "the host name does not resolve"),
    2013: (StoreUnavailable, "the connection was lost while connecting"),
}


def connect_failure(orig: BaseException | None) -> _Failure | None:
    """Why the driver could not connect (too many clients, authentication, a missing
    database, nothing listening...) as the error type and its phrase, or None when
    `orig` is not a failed connection."""
    module = type(orig).__module__
    if module.startswith("psycopg") and getattr(orig, "sqlstate", None) is None:
        text_ = str(orig).lower()
        if not text_.startswith(("connection failed", "failed to resolve", "connection to")):
            return None
        for phrase, failure in _PG_CONNECT_FAILURES:
            if phrase in text_ and (not phrase.startswith("fatal:")
                                    or "does not exist" in text_):
                return failure
        return None
    if module.startswith("pymysql") and orig is not None and orig.args:
        return _MYSQL_CONNECT_FAILURES.get(orig.args[0])
    return None


# MySQL/MariaDB numbers of a refused row that PyMySQL does not class as Integrity- or
# DataError: 1690 a value out of range in an expression (BIGINT term + 1), 3819 (MySQL)
# and 4025 (MariaDB) a CHECK constraint, 1644 a trigger's SIGNAL, 1292/1366/1265 a value
# the column cannot take.
_MYSQL_REFUSED = {1690, 3819, 4025, 1644, 1292, 1366, 1265, 1264, 1406, 1048, 1062, 1451,
                  1452}
_REASON_MAX = 300


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
