"""The exception tree. Pure: imports nothing from the project.

    SupervisorError
    ├── ConfigError          the config file or an override is invalid; carries every issue
    ├── SpawnError           a worker's program could not be started
    └── StoreError           the coordination store failed (translated at the SQL seam)
        ├── DriverMissing    the database URL's driver is not installed (names the extra)
        ├── StoreUnavailable the database could not be reached in time
        │   ├── TooManyClients       the server refuses new connections (a connection limit)
        │   ├── AuthenticationFailed the server refuses this login (password, role, access)
        │   └── DatabaseMissing      the server has no database of that name
        ├── StoreRefused     the database refused a write because of a row
        ├── SchemaMissing    the database has no schema of ours
        └── SchemaNewer      the schema needs a newer release than this one

Losing an election is a return value, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass


class SupervisorError(Exception):
    """Root of every error this package raises on purpose."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file: where it is (a dotted key path) and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(SupervisorError):
    """The configuration is refused whole; `issues` names every problem found."""

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        lines = "\n".join(f"  {issue}" for issue in issues)
        super().__init__(f"{source}: invalid configuration\n{lines}")


class SpawnError(SupervisorError):
    """The operating system refused to start a worker's program."""


class StoreError(SupervisorError):
    """The coordination store failed; the cause is chained with `raise ... from`."""


class DriverMissing(StoreError):
    """The driver the database URL needs is not installed here; the message names the
    extra of fleet-supervisor that installs it. An install problem: nothing starts."""


class StoreUnavailable(StoreError):
    """The database could not be reached, or did not answer within the time allowed."""


class TooManyClients(StoreUnavailable):
    """The server refuses new connections: max_connections, or a role's, user's or
    database's own connection limit, is reached."""


class AuthenticationFailed(StoreUnavailable):
    """The server refuses this login: a wrong password, an unknown role or user, no
    pg_hba.conf entry, or no right to the database."""


class DatabaseMissing(StoreUnavailable):
    """The server answers, but has no database of the name in the URL."""


class StoreRefused(StoreError):
    """The database refused a write because of a row (a constraint it would break, a value
    out of range): trying the same write again changes nothing until the row is mended."""


class SchemaMissing(StoreError):
    """The database has no schema of ours (never upgraded, or another database)."""


class SchemaNewer(StoreError):
    """The schema was migrated by a release newer than this one, which it does not admit."""

    def __init__(self, *, revision: str, min_release: str | None, release: str) -> None:
        self.revision = revision
        self.min_release = min_release
        self.release = release
        needs = f", needs at least {min_release}" if min_release else ""
        super().__init__(
            f"the database schema is newer than this supervisor (revision {revision}{needs};"
            f" this is {release}): upgrade the supervisor")
