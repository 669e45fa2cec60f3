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
from typing import TYPE_CHECKING, NoReturn

import click

from supervisor import __version__
from supervisor.errors import ConfigError
from supervisor.model import Event

if TYPE_CHECKING:
    from supervisor.config import Settings
    from supervisor.spec import NodeSpec

EXIT_INVALID = 2
EXIT_RUNTIME = 1
EXIT_CRASHED = 70  # EX_SOFTWARE: a bug in the supervisor itself

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
    settings = _load(config_path).with_identity(os.environ)
    if conflict:
        _fail(conflict)
    click.echo(tomli_w.dumps(settings.masked()), nl=False)


@main.command("_validate", hidden=True)
@config_option
def validate(config_path: Path) -> None:
    """For `run`: print the validated config as JSON, or its issues as JSON and exit 2."""
    from supervisor.config import load_config, to_plain

    try:
        settings = load_config(config_path).with_identity(os.environ)
    except ConfigError as exc:
        issues = [{"path": i.path, "message": i.message} for i in exc.issues]
        click.echo(json.dumps({"issues": issues}))
        sys.exit(EXIT_INVALID)
    click.echo(json.dumps({"config": to_plain(settings)}))


@main.command()
@config_option
def run(config_path: Path) -> None:
    """Run the workers until SIGTERM/SIGINT; SIGHUP re-reads the file."""
    from supervisor.app import check_modes, load_spec
    from supervisor.logs import configure_logging

    if conflict := _supervisord_conflict():
        _fail(conflict)
    try:
        spec = load_spec(config_path)
        check_modes(spec)
    except ConfigError as exc:
        _fail(_describe(config_path, exc))
    configure_logging(spec.log_format)
    sys.exit(_run(spec, config_path))


def _run(spec: NodeSpec, config_path: Path) -> int:
    from supervisor.runner import use_pidfd_child_watcher

    use_pidfd_child_watcher()
    try:
        return asyncio.run(_serve(spec, config_path))
    except Exception:  # an ExceptionGroup from the root TaskGroup, or worse: a bug
        import logging

        logging.getLogger("supervisor").critical("the supervisor crashed", exc_info=True)
        return EXIT_CRASHED


async def _serve(spec: NodeSpec, config_path: Path) -> int:
    import logging

    from supervisor.app import SideTask, Supervisor
    from supervisor.logs import EventLog

    subscribers: list[Callable[[Event], None]] = [EventLog(spec.log_format)]

    def publish(event: Event) -> None:
        for subscriber in subscribers:
            subscriber(event)

    supervisor = Supervisor(spec, config_path=config_path, publish=publish)
    sides: list[SideTask] = []
    if spec.metrics.enabled:
        from supervisor.http import HealthServer
        from supervisor.metrics import Metrics

        metrics = Metrics()
        subscribers.append(metrics)
        server = HealthServer(spec.metrics.host, spec.metrics.port, metrics.exposition,
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
    logging.getLogger("supervisor").info(
        "node %s in group %s: starting %d workers", spec.node_id, spec.group, len(spec.workers),
    )
    return await supervisor.run(sides)


def _load(config_path: Path) -> Settings:
    from supervisor.config import load_config

    try:
        return load_config(config_path)
    except ConfigError as exc:
        _fail(_describe(config_path, exc))


def _describe(config_path: Path, exc: ConfigError) -> str:
    lines = "\n".join(f"  {issue}" for issue in exc.issues)
    return f"{config_path}: invalid configuration\n{lines}"


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


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_INVALID)
