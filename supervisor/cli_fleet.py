"""Fleet-wide control commands, through the database (issue 15): pause, resume, handover,
drain, undrain.

Each writes a control row (store `control_set` / `control_clear`), logged with who asked
(the user and host this client declares: not authenticated) and why; every node reads
it with its next sync and converges within one renew interval (coordination/control.py
says what each request means on a node). The rows live in the database: a pause
survives a restart of the whole fleet.

Exit codes: 0 done; 1 the database unreachable, nothing to hand over, or `drain --wait`
timed out; 2 a worker not in the file, or an option that does not apply to it.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import click

from supervisor.cli_common import (
    EXIT_RUNTIME,
    actor,
    config_option,
    fail,
    load_settings,
    open_store,
    request_trigger,
)
from supervisor.model import Mode, format_utc, parse_leader_lease
from supervisor.spec import NodeSpec, WorkerSpec

if TYPE_CHECKING:
    from supervisor.store.sql import SqlStore

CONTROL_REVISION = "0009"  # the migration that added the control tables
_LEADERS = (Mode.GLOBAL_LEADER, Mode.GROUP_LEADER)
_PAUSABLE = (*_LEADERS, Mode.COORDINATED, Mode.CRON)

group_option = click.option(
    "--group", "group", default="", metavar="GROUP",
    help="Only on the nodes of this group (default: every group).")
reason_option = click.option(
    "--reason", default="", metavar="TEXT", help="Why, recorded with the action.")


def has_control(store: SqlStore) -> bool:
    """Does the database's schema have the fleet-control tables (migration 0009)?"""
    state = store.schema_state()
    return state.newer or (state.revision or "") >= CONTROL_REVISION


def require_control(store: SqlStore) -> None:
    if not has_control(store):
        click.echo(f"error: the schema of {store.masked_url} predates fleet control: run "
                   "`supervisor db upgrade`, or start a node of this release", err=True)
        sys.exit(EXIT_RUNTIME)


def _spec(config_path: Path) -> NodeSpec:
    spec: NodeSpec = load_settings(config_path).to_spec()
    return spec


def _worker(spec: NodeSpec, name: str, config_path: Path) -> WorkerSpec:
    worker = spec.workers.get(name)
    if worker is None:
        known = ", ".join(sorted(spec.workers)) or "none"
        fail(f"unknown worker {name!r}: {config_path} declares {known}")
    return worker


@click.command()
@config_option
@click.argument("worker")
@group_option
@reason_option
@click.option("--stop-running", is_flag=True,
              help="cron: stop the runs in progress too (default: they finish).")
def pause(config_path: Path, worker: str, group: str, reason: str,
          stop_running: bool) -> None:
    """Pause WORKER on every node (or those of --group): a leader stops and releases its
    lease once its child is dead, a coordinated worker's members leave, a cron worker
    claims no tick (each recorded skipped, not missed, and never replayed). Until
    `supervisor resume`, across restarts of the whole fleet."""
    spec = _spec(config_path)
    mode = _worker(spec, worker, config_path).mode
    if mode not in _PAUSABLE:
        fail(f"worker {worker!r} runs on every node ({mode}): it is not paused through the "
             f"database; stop it on a node with `supervisor stop {worker}`")
    if stop_running and mode is not Mode.CRON:
        fail(f"--stop-running applies to cron workers; {worker!r} is {mode}")
    user, host = actor()
    with open_store(config_path) as store:
        require_control(store)
        entry = store.control_set("pause", worker, group, user=user, host=host,
                                  reason=reason, stop_running=stop_running)
    where = f"the nodes of group {group!r}" if group else "every node"
    click.echo(f"paused {worker} on {where} (by {user}@{host}, {format_utc(entry.requested_at)});"
               f" nodes stop it within one renew interval"
               f" ({spec.coordination.renew_interval:g}s)")


@click.command()
@config_option
@click.argument("worker")
@group_option
@reason_option
@click.option("--catch-up", "catch_up", is_flag=True,
              help="A cron worker whose ticks were skipped while paused runs once now, as "
                   "`trigger` runs it (max_run and overlap apply).")
def resume(config_path: Path, worker: str, group: str, reason: str, catch_up: bool) -> None:
    """Lift the pause of WORKER (of --group): it competes, joins or claims again within
    one renew interval. The ticks a cron worker skipped while paused are not replayed,
    unless --catch-up asks for one run now."""
    spec = _spec(config_path)
    worker_spec = _worker(spec, worker, config_path)
    if catch_up and worker_spec.mode is not Mode.CRON:
        fail(f"--catch-up is for cron workers; {worker!r} is {worker_spec.mode}")
    user, host = actor()
    with open_store(config_path) as store:
        require_control(store)
        pause = store.control_state().find("pause", worker, group)
        caught = None
        if catch_up and pause is not None and _skipped_since(store, worker,
                                                             pause.requested_at):
            # Asked for before the pause is lifted: a node reads both in one sync and
            # claims the catch-up run before any tick, rather than seeing the resume,
            # starting a tick, and then the request, which overlap = forbid would skip.
            why = "catch up after the pause" + (f": {reason}" if reason else "")
            caught = request_trigger(store, worker, uuid.uuid4().hex, reason=why,
                                     grace=worker_spec.misfire_grace)
        found = store.control_clear("pause", worker, group, user=user, host=host,
                                    reason=reason)
    scope = f" in group {group!r}" if group else ""
    if found:
        click.echo(f"resumed {worker}{scope}")
    else:
        click.echo(f"{worker} was not paused{scope} (recorded anyway)")
    if caught is not None:
        click.echo(f"catching up: {worker} runs once now (trigger {caught.trigger.id})")
    elif catch_up:
        click.echo(f"nothing to catch up: no tick of {worker} was skipped while paused")


def _skipped_since(store: SqlStore, worker: str, since: float) -> bool:
    """Whether a tick of `worker` at or after `since` was recorded skipped for a pause."""
    return any(run.state == "skipped" and run.tick >= since and run.trigger is None
               and (run.reason or "").startswith("paused")
               for run in store.cron_runs(worker=worker, limit=1000))


@click.command()
@config_option
@click.argument("worker")
@group_option
@reason_option
def handover(config_path: Path, worker: str, group: str, reason: str) -> None:
    """Move WORKER's leadership (of --group, or of every group) off its current node: it
    stops its child, releases the lease once the child is dead and stays out for two
    lease TTLs, so another node takes over; alone, it takes it back after that."""
    spec = _spec(config_path)
    mode = _worker(spec, worker, config_path).mode
    if mode not in _LEADERS:
        fail(f"worker {worker!r} is {mode}: only leader workers (global-leader, "
             "group-leader) have a leader to hand over")
    hold_out = 2 * spec.coordination.lease_ttl
    user, host = actor()
    with open_store(config_path) as store:
        require_control(store)
        led = [(lease.name, lease.holder) for lease in store.leases()
               if lease.holder is not None and lease.seconds_left > 0
               and _leads(lease.name, worker, group)]
        if not led:
            scope = f" in group {group!r}" if group else ""
            click.echo(f"error: nobody leads {worker}{scope} now: nothing to hand over",
                       err=True)
            sys.exit(EXIT_RUNTIME)
        for name, holder in led:
            parsed = parse_leader_lease(name)
            lease_group = "" if parsed is None or parsed[1] is None else parsed[1]
            store.control_set("handover", worker, lease_group, user=user, host=host,
                              reason=reason, hold_out=hold_out, holder_nonce=holder.nonce)
            scope = f" (group {lease_group})" if lease_group else ""
            click.echo(f"{worker}{scope}: node {holder.node_id} (pid {holder.pid}) hands over "
                       f"and stays out for {hold_out:g}s")


def _leads(lease: str, worker: str, group: str) -> bool:
    parsed = parse_leader_lease(lease)
    if parsed is None or parsed[0] != worker:
        return False
    return not group or parsed[1] in (None, group)


@click.command()
@config_option
@click.argument("node")
@reason_option
@click.option("--wait", is_flag=True, help="Return once the node holds nothing.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="With --wait: give up after this long (exit 1). Default: wait for ever.")
def drain(config_path: Path, node: str, reason: str, wait: bool,
          timeout: float | None) -> None:
    """Drain NODE (its node_id): it gives up its leaderships and coordinated slots, claims
    no cron tick and takes no leadership, and keeps running its every-node workers, until
    `supervisor undrain`. With --wait, return once it holds nothing (or is not live)."""
    if timeout is not None and not wait:
        fail("--timeout applies with --wait")
    spec = _spec(config_path)
    user, host = actor()
    with open_store(config_path) as store:
        require_control(store)
        store.control_set("drain", node, "", user=user, host=host, reason=reason)
        live = [m for m in store.members() if m.holder.node_id == node]
        if not live:
            click.echo(f"drain of {node} recorded; no node {node!r} is live now (it stays "
                       "drained when it starts)")
            return
        click.echo(f"draining {node} ({len(live)} process(es) live)")
        if not wait:
            return
        step = min(0.25, spec.coordination.renew_interval / 2)
        give_up = None if timeout is None else time.monotonic() + timeout
        while True:
            states = [m.drain for m in store.members() if m.holder.node_id == node]
            if all(state == "drained" for state in states):
                click.echo(f"{node} holds nothing" if states else f"{node} is not live")
                return
            if give_up is not None and time.monotonic() >= give_up:
                click.echo(f"error: {node} still holds something after {timeout:g}s "
                           f"({', '.join(s or 'not acknowledged' for s in states)})", err=True)
                sys.exit(EXIT_RUNTIME)
            time.sleep(step)


@click.command()
@config_option
@click.argument("node")
@reason_option
def undrain(config_path: Path, node: str, reason: str) -> None:
    """Lift the drain of NODE: it takes leaderships, slots and cron ticks again."""
    user, host = actor()
    with open_store(config_path) as store:
        require_control(store)
        found = store.control_clear("drain", node, "", user=user, host=host, reason=reason)
    click.echo(f"undrained {node}" if found else f"{node} was not draining (recorded anyway)")


COMMANDS = (pause, resume, handover, drain, undrain)
