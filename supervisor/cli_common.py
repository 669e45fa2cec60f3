"""What the command modules share: the -c option, loading the file, opening its database,
and failing with the right exit code and no traceback.

Exit codes: 0 success; 1 a runtime failure (the database unreachable, no supervisor
running); 2 invalid input (a config problem or a usage error).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from supervisor.errors import ConfigError, DriverMissing, StoreError, StoreUnavailable

if TYPE_CHECKING:
    from supervisor.config import Settings
    from supervisor.store import TriggerRequest
    from supervisor.store.sql import SqlStore

EXIT_INVALID = 2
EXIT_RUNTIME = 1

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    envvar="SUPERVISOR_CONFIG",
    default="supervisor.toml",
    show_default="$SUPERVISOR_CONFIG, then ./supervisor.toml",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The TOML file that declares the workers.",
)



@contextlib.contextmanager
def open_store(config_path: Path, *, schema: bool = True) -> Iterator[SqlStore]:
    """The file's database for one command; unreachable, no schema or a schema for a later
    release -> a message and exit 1. `schema`: the command needs the schema to exist."""
    from supervisor.store.sql import SqlStore

    settings = load_settings(config_path)
    try:
        store = SqlStore(settings.database_url, timeout=settings.coordination.renew_deadline)
        try:
            if schema:
                store.require_schema()  # SchemaMissing, SchemaNewer
            yield store
        finally:
            store.close()
    except StoreError as exc:
        store_failed(exc)


def store_failed(exc: StoreError) -> NoReturn:
    if isinstance(exc, DriverMissing):  # an install problem, like a config one: exit 2
        fail(f"database_url: {exc}")
    click.echo(f"error: {exc}", err=True)
    sys.exit(EXIT_RUNTIME)



def load_settings(config_path: Path) -> Settings:
    from supervisor.config import load_config

    try:
        return load_config(config_path)
    except ConfigError as exc:
        fail(str(exc))



def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_INVALID)


def actor() -> tuple[str, str]:
    """(user, host) as this client declares them: recorded with a control action, not
    authenticated."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's arbitrary user)
        user = f"uid {os.getuid()}"
    return user, socket.gethostname()


TRIGGER_ATTEMPTS = 3  # a request whose answer was lost is sent again, with the same key


def request_trigger(store: SqlStore, worker: str, key: str, *, reason: str | None,
                    grace: float, attempts: int = TRIGGER_ATTEMPTS) -> TriggerRequest:
    """Ask for one extra run of `worker`, retrying with the same idempotency key when the
    database does not answer: a request that was written but whose answer was lost is
    then found again (`created` False), never made twice."""
    user, host = actor()
    for attempt in range(1, attempts + 1):
        try:
            return store.cron_trigger(worker, key, actor_user=user, actor_host=host,
                                      reason=reason, grace=grace)
        except StoreUnavailable:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")  # pragma: no cover
