"""Database fixtures: every test that asks for `database_url` gets its own empty database.

Loaded as a pytest plugin from tests/conftest.py. Backends:

    sqlite      a file in the test's tmp_path
    postgresql  127.0.0.1:5432, user postgres, trust auth; a fresh `fs_t_[gwN_]<hex>` database
    mariadb     127.0.0.1:3306, root without password; a fresh `fs_t_[gwN_]<hex>` database
    pgbouncer   a fresh PostgreSQL database as above, reached through a PgBouncer in transaction
                mode (pool of 5 server connections per database, so they are really shared)
                that this process starts on a free loopback port on first use and stops at
                the end of the session: one per xdist worker. Not in the default parameters
                (BACKENDS); tests opt in with `parametrize("database_backend", [..."pgbouncer"])`.

A server that cannot be reached is probed once per process, so once per xdist worker (2 s
connect timeout), and PgBouncer is started once. Without it the test is skipped with the
reason shown by `-ra`, unless CI=true: CI must run every backend, so there the test fails instead.

Tests run in parallel (pytest-xdist, `make test`), and other checkouts may test against the
same servers at the same time: a database belongs to the test that created it, and only that
test drops it. Names carry the xdist worker (`fs_t_gw1_<hex>`) so a leftover can be traced;
never sweep `fs_t_%` at session start or end, which would drop databases other workers are using.

The plain functions (`create_database`, `drop_database`, `available_backends`,
`require_backend`) let e2e tests provision databases for `supervisor run` subprocesses too.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from psycopg import sql

BACKENDS = ("sqlite", "postgresql", "mariadb")  # the default `database_backend` parameters
ALL_BACKENDS = (*BACKENDS, "pgbouncer")
SERVERS = {
    "postgresql": ("PostgreSQL", "127.0.0.1", 5432),
    "mariadb": ("MariaDB", "127.0.0.1", 3306),
}
CONNECT_TIMEOUT = 2
PREFIX = "fs_t_"

_probed: dict[str, str | None] = {}  # backend -> None when reachable, else why not
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0".. in an xdist worker, else ""


def _pg_admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host="127.0.0.1", port=5432, user="postgres", dbname="postgres",
        connect_timeout=CONNECT_TIMEOUT, autocommit=True,
    )


def _mariadb_admin() -> pymysql.connections.Connection:
    return pymysql.connect(
        host="127.0.0.1", port=3306, user="root", password="",
        connect_timeout=CONNECT_TIMEOUT, autocommit=True,
    )


class PgBouncer:
    """A pgbouncer process in the foreground, transaction pooling in front of 127.0.0.1:5432.

    Any database name is forwarded (the `*` entry), as user postgres, so fresh test databases
    need no configuration. PgBouncer refuses to run as root: as root it runs as postgres, and
    dies with this process (--pdeathsig) rather than outliving a killed test run.
    """

    def __init__(self, pool_size: int = 5, max_clients: int = 1000) -> None:
        """`pool_size` server connections per database (small in tests, so they really are
        shared), at most `max_clients` client connections."""
        self.directory = Path(tempfile.mkdtemp(prefix=f"{PREFIX}pgbouncer_"))
        self.pool_size = pool_size
        self.max_clients = max_clients
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """pgbouncer's own pid (setpriv execs it, so the same process)."""
        return None if self.process is None else self.process.pid

    def show(self, what: str) -> list[dict[str, Any]]:
        """`SHOW <what>` on the admin console (simple query protocol), as dicts."""
        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                             dbname="pgbouncer", autocommit=True,
                             connect_timeout=CONNECT_TIMEOUT) as conn:
            cur = psycopg.ClientCursor(conn)
            cur.execute(f"SHOW {what}")
            names = [d.name for d in cur.description or []]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def start(self) -> None:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).exists():
            raise RuntimeError("pgbouncer is not installed (apt-get install pgbouncer)")
        self.directory.chmod(0o755)  # readable by the postgres user it runs as
        for _ in range(5):  # the free port may be taken by another process before we bind it
            self.port = _free_port()
            if self._try_start(binary):
                return
        raise RuntimeError(f"pgbouncer did not start: {self.log_tail()}")

    def _try_start(self, binary: str) -> bool:
        ini = self.directory / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            "* = host=127.0.0.1 port=5432 user=postgres\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            "auth_type = any\npool_mode = transaction\n"
            f"max_client_conn = {self.max_clients}\ndefault_pool_size = {self.pool_size}\n"
            "admin_users = postgres\nstats_users = postgres\n"
            "log_connections = 0\nlog_disconnections = 0\n"
        )
        ini.chmod(0o644)
        command = [binary, str(ini)]
        if os.geteuid() == 0:
            command = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
                       "--pdeathsig=TERM", *command]
        with (self.directory / "pgbouncer.log").open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # polls a condition: it accepts a real login
            if self.process.poll() is not None:
                return False
            try:
                psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                                dbname="postgres", connect_timeout=CONNECT_TIMEOUT).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        self.stop()
        return False

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return " ".join((self.directory / "pgbouncer.log").read_text().split()[-40:])
        return "no log"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


_bouncer: PgBouncer | None = None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pgbouncer_port() -> int:
    """The port of this process's PgBouncer, started on first use (raises if it cannot)."""
    global _bouncer
    if _bouncer is None:
        bouncer = PgBouncer()
        bouncer.start()
        _bouncer = bouncer
    return _bouncer.port


def listen_url(url: str) -> str:
    """The `database_listen_url` for a node on `url`: "none" through this process's PgBouncer
    (a LISTEN there would hear nothing, so its nodes poll, as the README advises without a
    direct route), else "" (LISTEN on database_url itself, where there is LISTEN at all)."""
    if _bouncer is not None and f"@127.0.0.1:{_bouncer.port}/" in url:
        return "none"
    return ""


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop this process's PgBouncer, if it started one (and forget it)."""
    global _bouncer
    if _bouncer is not None:
        _bouncer.stop()
        shutil.rmtree(_bouncer.directory, ignore_errors=True)
        _bouncer = None


def unavailable_reason(backend: str) -> str | None:
    """None if the backend's server answers, else a sentence saying why not (cached)."""
    if backend == "sqlite":
        return None
    if backend == "pgbouncer":
        if backend not in _probed:
            _probed[backend] = unavailable_reason("postgresql")
            if _probed[backend] is None:
                try:
                    pgbouncer_port()
                except Exception as exc:  # not installed, or it would not start
                    _probed[backend] = f"PgBouncer unavailable: {exc}"
        return _probed[backend]
    if backend not in _probed:
        title, host, port = SERVERS[backend]
        try:
            connection = _pg_admin() if backend == "postgresql" else _mariadb_admin()
        except Exception as exc:  # any failure to connect means "not reachable"
            why = " ".join(str(exc).split()) or type(exc).__name__  # one line for -ra
            _probed[backend] = f"{title} not reachable at {host}:{port}: {why}"
        else:
            connection.close()
            _probed[backend] = None
    return _probed[backend]


def available_backends() -> list[str]:
    """The backends whose server is reachable now (SQLite always is)."""
    return [backend for backend in ALL_BACKENDS if unavailable_reason(backend) is None]


def require_backend(backend: str) -> None:
    """Skip the calling test if the backend is unreachable; fail it instead when CI=true."""
    reason = unavailable_reason(backend)
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: database tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


def create_database(backend: str, directory: Path | None = None) -> str:
    """Create an empty database and return its SQLAlchemy URL (no password in it).

    For SQLite the file lives in `directory`, or in a new temporary directory that
    `drop_database` removes again.
    """
    name = PREFIX + (f"{_WORKER}_" if _WORKER else "") + secrets.token_hex(6)
    if backend == "sqlite":
        folder = directory if directory is not None else Path(tempfile.mkdtemp(prefix=PREFIX))
        return f"sqlite:///{folder}/fleet.db"
    if backend in ("postgresql", "pgbouncer"):
        with _pg_admin() as connection:  # created on the server directly, like any database
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        port = 5432 if backend == "postgresql" else pgbouncer_port()
        return f"postgresql+psycopg://postgres@127.0.0.1:{port}/{name}"
    if backend == "mariadb":
        connection = _mariadb_admin()
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE `{name}`")
        finally:
            connection.close()
        return f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    raise ValueError(f"unknown backend {backend!r}; expected one of {ALL_BACKENDS}")


def drop_database(backend: str, url: str) -> None:
    """Drop a database made by `create_database`, even with connections still open to it."""
    name = url.rsplit("/", 1)[-1]
    if backend == "sqlite":
        folder = Path(url.removeprefix("sqlite:///")).parent
        if folder.name.startswith(PREFIX):  # only a directory create_database made itself
            shutil.rmtree(folder, ignore_errors=True)
        return
    if not name.startswith(PREFIX):
        raise ValueError(f"refusing to drop {name!r}: not a test database")
    if backend in ("postgresql", "pgbouncer"):
        with _pg_admin() as connection:  # FORCE also ends PgBouncer's server connections
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        return
    connection = _mariadb_admin()
    try:
        with connection.cursor() as cursor:
            # DROP DATABASE waits on metadata locks held by open transactions: end them first.
            cursor.execute("SELECT id FROM information_schema.processlist WHERE db = %s", (name,))
            for (thread_id,) in cursor.fetchall():
                with contextlib.suppress(pymysql.MySQLError):  # it may have ended meanwhile
                    cursor.execute(f"KILL {int(thread_id)}")
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        connection.close()


def _database(backend: str, tmp_path: Path) -> Iterator[str]:
    require_backend(backend)
    url = create_database(backend, tmp_path)
    try:
        yield url
    finally:
        drop_database(backend, url)


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def database_backend(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test, one of BACKENDS."""
    return str(request.param)


@pytest.fixture
def database_url(database_backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL to a fresh, empty database on each backend in turn (ids: the backend names)."""
    yield from _database(database_backend, tmp_path)


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    """A URL to a fresh, empty PostgreSQL database."""
    yield from _database("postgresql", tmp_path)


@pytest.fixture
def mariadb_url(tmp_path: Path) -> Iterator[str]:
    """A URL to a fresh, empty MariaDB database."""
    yield from _database("mariadb", tmp_path)
