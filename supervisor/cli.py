"""The command line; the only module that reads argv. Commands stay thin.

Exit codes: 0 success; 1 a runtime failure (a critical worker gave up, the metrics
port is taken); 2 invalid input (a config problem or a usage error), never
with a traceback.

`run` never imports pydantic: it has the file validated by a short-lived child
(`supervisor _validate`, hidden), at start and on every SIGHUP.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from supervisor import __version__
from supervisor.cli_common import (
    EXIT_INVALID,
    EXIT_RUNTIME,
    config_option,
    fail,
    load_settings,
    open_store,
)
from supervisor.errors import ConfigError
from supervisor.model import Event, leader_lease

if TYPE_CHECKING:
    from supervisor.output import Output
    from supervisor.spec import NodeSpec

EXIT_CRASHED = 70  # EX_SOFTWARE: a bug in the supervisor itself
EXIT_FLUSH = 2.0  # seconds at most to write out queued output on the way out

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fleet-supervisor")
def main() -> None:
    """Supervise workers on every node, coordinated through one SQL database."""


@main.command()
@config_option
def check(config_path: Path) -> None:
    """Validate the file and print the effective config (secrets masked)."""
    import tomli_w

    conflict = _supervisord_conflict()
    try:
        settings = load_settings(config_path).with_identity(os.environ, str(config_path))
    except ConfigError as exc:
        fail(str(exc))
    if conflict:
        fail(conflict)
    _require_driver(settings.database_url)
    click.echo(tomli_w.dumps(settings.masked()), nl=False)


@main.command("_validate", hidden=True)
@config_option
def validate(config_path: Path) -> None:
    """For `run`: print the validated config as JSON, or its issues as JSON and exit 2."""
    from supervisor.config import load_config, to_plain

    try:
        settings = load_config(config_path).with_identity(os.environ, str(config_path))
    except ConfigError as exc:
        issues = [{"path": i.path, "message": i.message} for i in exc.issues]
        click.echo(json.dumps({"issues": issues}))
        sys.exit(EXIT_INVALID)
    click.echo(json.dumps({"config": to_plain(settings)}))


@main.command()
@config_option
@click.option("--timeout", default=4.0, show_default=True, help="Seconds to wait for an answer.")
def healthcheck(config_path: Path, timeout: float) -> None:
    """Exit 0 if this node's supervisor answers /healthz on the metrics address its file
    (and SUPERVISOR_* variables) configure; for a container's HEALTHCHECK."""
    import urllib.error
    import urllib.request

    try:
        metrics = load_settings(config_path).metrics
    except ConfigError as exc:
        fail(str(exc))
    if not metrics.enabled:
        fail("metrics are disabled ([metrics] enabled = false): there is no /healthz to ask")
    if metrics.port == 0:
        fail("metrics.port is 0 (any free port): there is no fixed address to ask")
    host = "127.0.0.1" if metrics.host in ("0.0.0.0", "") else metrics.host
    host = "::1" if host == "::" else host
    url = f"http://{'[' + host + ']' if ':' in host else host}:{metrics.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            answer.read()
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"unhealthy: {url}: {getattr(exc, 'reason', exc)}", err=True)
        sys.exit(EXIT_RUNTIME)
    click.echo(f"healthy: {url}")


@main.command()
@config_option
def run(config_path: Path) -> None:
    """Run the workers until SIGTERM/SIGINT; SIGHUP re-reads the file."""
    from supervisor.app import load_spec
    from supervisor.logs import configure_logging
    from supervisor.output import Output
    from supervisor.processes import raise_nofile_limit

    # Descriptors for the supervisor's own pipes, children and metrics connections, up to
    # the hard limit; each child gets the soft limit we were started with back (runner.py).
    raise_nofile_limit()
    if conflict := _supervisord_conflict():
        fail(conflict)
    try:
        spec = load_spec(config_path)
    except ConfigError as exc:
        fail(str(exc))
    _require_driver(spec.database_url)
    # From here on nothing writes to stdout or stderr but Output's writer threads: a reader
    # that stops reading must not block the event loop (SPEC.md guarantee 11).
    output = Output.of_process()
    configure_logging(spec.log_format, output, spec.log_level,
                      {"node_id": spec.node_id, "group": spec.group})
    try:
        code = _run(spec, config_path, output)
    finally:
        output.close(EXIT_FLUSH)  # a reader still stalled loses the rest, not the exit
    # Everything is done: children dead and reaped, leases released, output written. Leave
    # now, without the interpreter's finalisation: a daemon thread frozen there (the
    # database lane cut in mid-call, a writer stuck on a stalled reader) may hold a lock a
    # finaliser then waits for. Seen: 1 of 200 nodes stuck "Garbage-collecting" after its
    # stop, until SIGKILL.
    os._exit(code)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def status(config_path: Path, as_json: bool) -> None:
    """The fleet as the database sees it: live nodes (with their release and time-zone
    data, and a warning when the nodes' zone data differ), leaders, terms, time left, each
    coordinated worker's generation and who holds which index, and each cron worker's
    next tick (by the database's clock) and latest ticks."""
    from supervisor.fleettext import status_text
    from supervisor.fleetview import coord_section, cron_section, status_data

    spec: NodeSpec = load_settings(config_path).to_spec()
    with open_store(config_path) as store:
        cli_fleet.require_control(store)  # the node rows' columns of 0009 too
        db_now = store.db_now()
        members = store.members()
        cron = cron_section(spec.workers, db_now, members,
                            lambda worker, limit: store.cron_runs(worker=worker, limit=limit))
        coordinated = coord_section(
            spec.workers, members, store.coord_view,
            lambda worker: {g.worker_key for g in store.coord_generations(worker_key=worker)})
        data = status_data(store.masked_url, db_now, members, store.leases(), cron,
                           coordinated, store.control_state())
    click.echo(json.dumps(data, indent=2) if as_json else status_text(data))


@main.command()
@config_option
@click.argument("worker", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--limit", default=100, show_default=True,
              help="How many rows at most, terms, runs and generations together.")
def history(config_path: Path, worker: str | None, as_json: bool, limit: int) -> None:
    """Cron runs, leadership terms and coordinated generations, newest first (of one
    WORKER, or all).

    A term is placed at the time it was acquired, a cron run at its tick, a generation
    at the time it was published.
    """
    from supervisor.fleettext import history_text
    from supervisor.fleetview import history_data

    with open_store(config_path) as store:
        lease = leader_lease(worker) if worker else None
        terms = store.terms(lease=lease, limit=limit)
        runs = store.cron_runs(worker=worker, limit=limit)
        generations = store.coord_generations(worker_key=worker, limit=limit)
        actions = [a for a in store.control_log(limit=limit) if worker in (None, a.target)
                   ] if cli_fleet.has_control(store) else []
    rows = history_data(terms, runs, limit, generations, actions)
    click.echo(json.dumps(rows, indent=2) if as_json else history_text(rows))


@main.group()
def db() -> None:
    """The database schema."""


@db.command()
@config_option
def upgrade(config_path: Path) -> None:
    """Create or migrate the schema (run does it too; safe when many nodes start at once)."""
    with open_store(config_path, schema=False) as store:
        found = store.upgrade()
    if found.newer:
        click.echo(f"schema of {store.masked_url} is newer than this release and still usable"
                   f" by it ({found.describe()}); left as it is")
    else:
        click.echo(f"schema of {store.masked_url} is up to date (revision {found.revision})")


def _require_driver(database_url: str) -> None:
    """Exit 2 when the URL's driver is not installed, naming the extra that installs it:
    before anything starts, not when a worker first needs the database (and also when
    none does yet: a reload may add one)."""
    from supervisor.store.drivers import missing_driver

    if (problem := missing_driver(database_url)) is not None:
        fail(f"database_url: {problem}")


def _run(spec: NodeSpec, config_path: Path, output: Output) -> int:
    from supervisor.processes import use_pidfd_child_watcher

    use_pidfd_child_watcher()
    try:
        return asyncio.run(_serve(spec, config_path, output))
    except Exception:  # an ExceptionGroup from the root TaskGroup, or worse: a bug
        import logging

        logging.getLogger("supervisor").critical("the supervisor crashed", exc_info=True)
        return EXIT_CRASHED


async def _serve(spec: NodeSpec, config_path: Path, output: Output) -> int:
    import logging

    from supervisor.app import SideTask, Supervisor
    from supervisor.logs import EventLog

    subscribers: list[Callable[[Event], None]] = [EventLog(
        spec.log_format, output=output, context={"node_id": spec.node_id, "group": spec.group})]

    def publish(event: Event) -> None:
        for subscriber in subscribers:
            subscriber(event)

    supervisor = Supervisor(spec, config_path=config_path, publish=publish)
    sides: list[SideTask] = []
    if spec.metrics.enabled:
        from supervisor.http import HealthServer
        from supervisor.metrics import Metrics

        metrics = Metrics(workers=spec.workers, node_id=spec.node_id, group=spec.group)
        output.count_drops(metrics.output_dropped_line)
        subscribers.append(metrics)
        server = HealthServer(spec.metrics.host, spec.metrics.port, metrics.negotiated,
                              ready=supervisor.ready)
        try:
            await server.start()
        except OSError as exc:
            logging.getLogger("supervisor").error(
                "metrics.port: cannot listen on %s:%d: %s", spec.metrics.host,
                spec.metrics.port, exc.strerror or exc,
            )
            return EXIT_RUNTIME
        sides.append(server.serve)
    return await supervisor.run(sides)


def _supervisord_conflict() -> str | None:
    """supervisord's distribution also owns the import name `supervisor`."""
    try:
        dist = importlib.metadata.distribution("supervisor")
    except importlib.metadata.PackageNotFoundError:
        return None
    return (
        f"supervisord (the PyPI distribution 'supervisor' {dist.version}) is installed in this "
        "environment and owns the same import name 'supervisor' as fleet-supervisor; the two "
        "must not share one environment: uninstall it or use a separate virtualenv"
    )


from supervisor import cli_local  # noqa: E402 - this node's commands, after `main` exists

main.add_command(cli_local.ps)
main.add_command(cli_local.stop)
main.add_command(cli_local.start)
main.add_command(cli_local.restart)
main.add_command(cli_local.signal_)
main.add_command(cli_local.logs)

from supervisor.cli_trigger import trigger  # noqa: E402 (a command module: below main)

main.add_command(trigger)
from supervisor import cli_fleet  # noqa: E402 - the commands' modules come after main

main.add_command(cli_fleet.pause)
main.add_command(cli_fleet.resume)
main.add_command(cli_fleet.handover)
main.add_command(cli_fleet.drain)
main.add_command(cli_fleet.undrain)
