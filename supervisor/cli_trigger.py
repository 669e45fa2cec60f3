"""`supervisor trigger WORKER`: run a cron worker once now, through the database (issue 15).

The request is a row of the database (store/sql_triggers.py) with who asked, as this
client declares it (the login user and the host name: declared, not authenticated) and
why; every node that runs the worker reads it in its next node sync and claims a slot of
it as of a tick, so at most `max_run` nodes run it, `overlap` applies, and nobody runs it
after `misfire_grace`. The idempotency key (a fresh UUID, or `--key`) makes a retried
command safe: a second request with the same key runs nothing and says so.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import click

from supervisor.cli_common import (
    EXIT_RUNTIME,
    config_option,
    fail,
    load_settings,
    open_store,
    request_trigger,
)
from supervisor.coordination.control import describe
from supervisor.model import Mode, format_utc

KEY_MAX = 64  # fs_cron_triggers.trigger_key


@click.command()
@config_option
@click.argument("worker")
@click.option("--reason", default=None, help="Why, for the history.")
@click.option("--key", default=None,
              help=f"The idempotency key (at most {KEY_MAX} characters; default: a fresh "
                   "UUID). A second trigger with the same key runs nothing: scripts that "
                   "retry pass their own.")
@click.option("--json", "as_json", is_flag=True, help="Print the trigger as JSON.")
def trigger(config_path: Path, worker: str, reason: str | None, key: str | None,
            as_json: bool) -> None:
    """Run the cron worker WORKER once now, as an extra run, on at most max_run nodes.

    Every node that runs WORKER picks the request up within about one renew interval;
    `overlap` applies as for a tick (forbid: skipped while a run goes on; replace: the
    running one is stopped first), and a request nobody could run within misfire_grace
    is recorded missed. `supervisor history WORKER` shows the run, who asked and why.
    """
    settings = load_settings(config_path)
    spec = settings.workers.get(worker)
    if spec is None:
        fail(f"no worker {worker!r} in {config_path}")
    if spec.mode is not Mode.CRON:
        fail(f"worker {worker!r} is a {spec.mode.value} worker, not a cron worker: only "
             "cron workers can be triggered")
    if key is not None and not 0 < len(key) <= KEY_MAX:
        fail(f"--key must be 1 to {KEY_MAX} characters, not {len(key)}")
    if reason is not None and len(reason) > 255:
        fail(f"--reason is at most 255 characters, not {len(reason)}")
    with open_store(config_path) as store:
        paused = store.control_state().find("pause", worker)
        if paused is not None:  # no node would run it: refused rather than recorded missed
            click.echo(f"error: {worker} is {describe(paused)}: resume it first", err=True)
            sys.exit(EXIT_RUNTIME)
        made = request_trigger(store, worker, key or uuid.uuid4().hex, reason=reason,
                               grace=spec.misfire_grace)
    got = made.trigger
    if as_json:
        click.echo(json.dumps({
            "worker": got.worker, "trigger": got.id, "key": got.key, "created": made.created,
            "requested": format_utc(got.requested_at), "user": got.actor_user,
            "host": got.actor_host, "reason": got.reason}, indent=2))
        return
    said = f" ({got.reason})" if got.reason else ""
    if made.created:
        click.echo(f"triggered {worker}: trigger {got.id}, key {got.key}, by "
                   f"{got.actor_user}@{got.actor_host}{said}")
    else:
        click.echo(f"already requested: {worker} trigger {got.id} with key {got.key}, by "
                   f"{got.actor_user}@{got.actor_host} at {format_utc(got.requested_at)}"
                   f"{said}; nothing new runs")
