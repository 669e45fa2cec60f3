"""Commands for this node's workers, through the local control socket (issue 15).

`ps`, `stop`, `start`, `restart`, `signal` and `logs` talk to the `supervisor run` of the
file's node: its socket is found by the rule of supervisor.control.paths, from the file
(`control_socket`, node_id) and the SUPERVISOR_* variables, as `run` finds it.

Exit codes: 0 done; 1 no supervisor runs for that node (or it refused, or runs no child
to signal); 2 invalid input (the file, an unknown worker or signal name).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from supervisor.cli_common import EXIT_RUNTIME, config_option, fail, load_settings
from supervisor.control.client import Connection, ControlBroken, NotRunning
from supervisor.control.paths import SocketPathError, socket_path
from supervisor.control.protocol import (
    BAD_REQUEST,
    UNKNOWN_SIGNAL,
    UNKNOWN_WORKER,
    Request,
)
from supervisor.control.rows import ps_text
from supervisor.errors import ConfigError
from supervisor.model import format_utc, parse_signal

_INVALID = (BAD_REQUEST, UNKNOWN_WORKER, UNKNOWN_SIGNAL)


def _target(config_path: Path) -> tuple[str, Path]:
    """(node_id, socket path) of the file's node, as `supervisor run` resolves them."""
    try:
        settings = load_settings(config_path).with_identity(os.environ, str(config_path))
    except ConfigError as exc:
        fail(str(exc))
    try:
        where = socket_path(settings.control_socket, settings.node_id,
                            base_dir=config_path.resolve().parent, environ=os.environ,
                            uid=os.getuid())
    except SocketPathError as exc:
        fail(str(exc))
    return settings.node_id, where.path


ANSWER_TIMEOUT = 30.0  # seconds for a ps, signal or logs answer (a hung supervisor)

timeout_option = click.option(
    "--timeout", default=ANSWER_TIMEOUT, show_default=True, type=click.FloatRange(min=0.1),
    help="Seconds to wait for the supervisor's answer (then exit 1).")


def _connect(config_path: Path, timeout: float | None = None) -> Connection:
    node_id, path = _target(config_path)
    try:
        return Connection(path, timeout)
    except NotRunning:
        _runtime(f"no supervisor is running for node {node_id} (socket {path})")
    except OSError as exc:
        _runtime(f"cannot connect to the supervisor of node {node_id} (socket {path}): "
                 f"{exc.strerror or exc}")


def _runtime(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_RUNTIME)


def _ask(config_path: Path, request: Request, timeout: float | None = None) -> dict[str, Any]:
    """The supervisor's answer to `request`; a refusal -> its message and exit 1 or 2.
    `timeout`: None for the commands that wait for children to stop."""
    with _connect(config_path, timeout) as connection:
        try:
            answer = connection.ask(request)
        except (ControlBroken, OSError) as exc:
            _runtime(f"the supervisor did not answer: {exc}")
    _check(answer)
    return answer


def _check(answer: dict[str, Any]) -> None:
    if answer.get("ok"):
        return
    message = str(answer.get("message") or answer.get("error") or "refused")
    if answer.get("error") in _INVALID:
        fail(message)
    _runtime(message)


def _print_results(answer: dict[str, Any]) -> None:
    for result in answer.get("results", []):
        click.echo(f"{result['worker']}: {result['message']}")


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@timeout_option
def ps(config_path: Path, as_json: bool, timeout: float) -> None:
    """This node's workers: mode, role now, pid, uptime, restarts, last exit, next tick."""
    answer = _ask(config_path, Request("ps"), timeout)
    rows = answer["workers"]
    if as_json:
        click.echo(json.dumps({"node_id": answer.get("node_id"), "workers": rows}, indent=2))
    else:
        click.echo(ps_text(rows), nl=False)


@click.command()
@config_option
@click.argument("worker")
def stop(config_path: Path, worker: str) -> None:
    """Stop WORKER (or `all`) on this node until `start` (or the supervisor restarts).

    A leader worker gives its lease up once its child is dead; a coordinated one
    leaves the membership; a cron one stops claiming ticks (a run under way is stopped).
    """
    _print_results(_ask(config_path, Request("stop", worker)))


@click.command()
@config_option
@click.argument("worker")
def start(config_path: Path, worker: str) -> None:
    """Start WORKER (or `all`) again after `stop`."""
    _print_results(_ask(config_path, Request("start", worker)))


@click.command()
@config_option
@click.argument("worker")
def restart(config_path: Path, worker: str) -> None:
    """Restart WORKER's child (or `all`), keeping its grant (a leader keeps its lease and
    token); a stopped, exited or given-up worker, and a cron worker, start again."""
    _print_results(_ask(config_path, Request("restart", worker)))


@click.command("signal")
@config_option
@click.argument("worker")
@click.argument("sig", metavar="SIGNAL")
@timeout_option
def signal_(config_path: Path, worker: str, sig: str, timeout: float) -> None:
    """Send SIGNAL (HUP, SIGUSR1, TERM, 9, ...) to the process groups of WORKER's
    running children on this node."""
    try:
        parsed = parse_signal(int(sig) if sig.isdigit() else sig)
    except ValueError as exc:
        fail(str(exc))
    _print_results(_ask(config_path, Request("signal", worker, signal=parsed), timeout))


@click.command()
@config_option
@click.argument("worker")
@click.option("-n", "--lines", default=20, show_default=True,
              type=click.IntRange(0, 10_000), help="How many of the last lines.")
@click.option("-f", "--follow", is_flag=True, help="Then print new lines until Ctrl-C.")
@timeout_option
def logs(config_path: Path, worker: str, lines: int, follow: bool, timeout: float) -> None:
    """The last lines WORKER's children wrote (stdout and stderr), with the time each
    came and its stream; kept in memory by the supervisor (1000 lines per worker)."""
    from supervisor.logs import escape_controls

    def show(item: dict[str, Any]) -> None:
        if "dropped" in item:
            click.echo(f"... {item['dropped']} lines dropped: this reader fell behind",
                       err=True)
            return
        click.echo(f"{format_utc(item['at'])} {item['stream']:<6} "
                   f"{escape_controls(item['line'])}")

    with _connect(config_path, timeout) as connection:
        try:
            answer = connection.ask(Request("logs", worker, lines=lines, follow=follow))
            connection.settimeout(None)  # following: new lines come when they come
        except (ControlBroken, OSError) as exc:
            _runtime(f"the supervisor did not answer: {exc}")
        _check(answer)
        for item in answer["lines"]:
            show(item)
        if follow:
            try:
                for item in connection.stream():
                    show(item)
            except KeyboardInterrupt:
                return
