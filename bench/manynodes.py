"""Benchmark: the database side of a thousand nodes, behind PgBouncer.

    .venv/bin/python bench/manynodes.py [--nodes 1000] [--procs 4] [--seconds 60]

A thousand real supervisor processes (about 60 MiB each) do not fit this machine, so this
bench keeps the database side real and packs the nodes: --procs Python processes each run
nodes/procs nodes in one event loop, and every node is the supervisor's own coordination
core, unchanged: a `NodeSync` with its one database lane on a `SqlStore` of its own (one
client connection each), the default timings (lease_ttl 10 s, renew_interval 1 s,
renew_deadline 5 s), every node waiting for one global lease `leader/w` and one lease of
its group `leader/g/<group>` (10 groups). Only the child processes are missing: a node
that gains a lease just holds it. bench/scale.py measures real `supervisor run` processes
(up to 200 here).

Set-up: a scratch database on 127.0.0.1:5432 (dropped at the end) and PgBouncer in
transaction mode in front of it (bench/scale.py's), `max_client_conn` nodes + 50,
`default_pool_size` --pool (default 20), nodes with `database_listen_url = "none"` (they
poll). Once every node has synced once, it measures over --seconds:

- transactions per second (pg_stat_database xact_commit + xact_rollback) and rows written;
- the server's CPU (its processes' utime + stime from /proc) and PgBouncer's, per second;
- server connections (pg_stat_activity for the database) and client connections;
- node_sync latency p50 / p99 / max as each node's loop saw it (queue, lane and round
  trip: on this 2-core machine the node processes themselves compete for the CPU, so this
  is an upper bound for what a node with a core of its own sees);
- failed syncs, and nodes whose trust ran out (a held lease revoked) during the window;
- then failover: the process holding `leader/w` drops that node abruptly (its task
  cancelled, its connection shut, nothing released) and the time until another node
  gains the lease is reported (bounded by lease_ttl + renew_interval).

Exit status 1 when a node never connected, a lease was revoked in the window, or the
failover did not happen within 15 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pgfleet import pg_admin, scratch_database
from scale import PgBouncer  # the tests' own (tests/databases.py)

GROUPS = 10


# --- one process of nodes -------------------------------------------------------------


async def nodes_main(url: str, first: int, count: int) -> None:
    from supervisor.coordination.leader import LeaderMode
    from supervisor.coordination.node_sync import NodeSync, new_holder
    from supervisor.model import DatabaseCall, LeadershipGained, LeadershipLost, Mode
    from supervisor.spec import CoordinationSpec
    from supervisor.store.sql import SqlStore

    timing = CoordinationSpec()
    out = sys.stdout
    syncs: list[float] = []
    failed = 0
    revoked = 0
    measuring = False
    keepers: dict[str, tuple[NodeSync, asyncio.Task[None], SqlStore]] = {}
    holding_global: list[str] = []
    waiting: list[asyncio.Task[Any]] = []

    def say(**fields: Any) -> None:
        out.write(json.dumps(fields) + "\n")
        out.flush()

    def listener(node: str):
        def hear(event: Any) -> None:
            nonlocal failed, revoked
            if isinstance(event, DatabaseCall) and event.operation == "node_sync":
                if measuring:
                    if event.ok:
                        syncs.append(event.seconds)
                    else:
                        failed += 1
            elif isinstance(event, LeadershipGained):
                if event.lease == "leader/w":
                    holding_global.append(node)
                    say(gained=node, at=time.time())
            elif isinstance(event, LeadershipLost) and measuring and node in keepers:
                revoked += 1
        return hear

    async def run_node(index: int) -> None:
        node = f"n{index:04d}"
        group = f"g{index % GROUPS}"
        store = SqlStore(url, timeout=timing.renew_deadline, listen_url="none")
        keeper = NodeSync(store, new_holder(node, group), timing, listener(node),
                             upgrade=False)
        task = asyncio.create_task(keeper.run())
        keepers[node] = (keeper, task, store)
        for lease in ("leader/w", f"leader/g/{group}"):
            mode = LeaderMode(keeper, Mode.GLOBAL_LEADER, lease, lease, group)
            waiting.append(asyncio.create_task(mode.acquire()))

    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_command() -> None:
        line = sys.stdin.readline()
        loop.call_soon_threadsafe(commands.put_nowait, line.strip() or "quit")

    for index in range(first, first + count):
        await run_node(index)
        await asyncio.sleep(0.005)  # spread the first syncs
    while True:
        connected = sum(1 for keeper, _, _ in keepers.values()
                        if keeper.state.last_success is not None)
        if connected == count:
            break
        await asyncio.sleep(0.2)
    say(connected=count)
    while True:
        await loop.run_in_executor(None, read_command)
        command = await commands.get()
        if command == "measure":
            syncs.clear()
            failed = revoked = 0
            measuring = True
        elif command == "report":
            measuring = False
            say(syncs=syncs, failed=failed, revoked=revoked)
        elif command == "drop-holder":
            node = holding_global[-1] if holding_global else None
            if node is not None and node in keepers:
                _, task, store = keepers.pop(node)
                store.interrupt()
                task.cancel()  # dies without a word: nothing released, no step-down
                say(dropped=node, at=time.time())
            else:
                say(dropped=None, at=time.time())
        else:
            os._exit(0)  # no goodbyes: the database is dropped with force anyway


# --- the conductor ---------------------------------------------------------------------


def server_ticks() -> int:
    """utime + stime of every PostgreSQL server process (the postmaster's children)."""
    with open("/var/run/postgresql/15-main.pid") as fh:
        postmaster = int(fh.readline())
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(entry) == postmaster or int(fields[1]) == postmaster:
                total += int(fields[11]) + int(fields[12])
    return total


def proc_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def db_counters(dbname: str) -> tuple[int, int, int]:
    with pg_admin() as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback, tup_inserted + tup_updated + tup_deleted,"
            " (SELECT count(*) FROM pg_stat_activity WHERE datname = %s)"
            " FROM pg_stat_database WHERE datname = %s", (dbname, dbname)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def conduct(args: argparse.Namespace) -> int:
    hz = os.sysconf("SC_CLK_TCK")
    with scratch_database("fs_many") as dbname:
        direct = f"postgresql+psycopg://postgres@127.0.0.1:5432/{dbname}"
        subprocess.run([sys.executable, "-c",
                        "import sys; from supervisor.store.sql import SqlStore; "
                        "s = SqlStore(sys.argv[1]); s.upgrade(); s.close()", direct],
                       check=True, cwd=Path(__file__).resolve().parent.parent)
        bouncer = PgBouncer(pool_size=args.pool, max_clients=args.nodes + 50)
        bouncer.start()
        procs: list[subprocess.Popen[str]] = []
        try:
            url = f"postgresql+psycopg://postgres@127.0.0.1:{bouncer.port}/{dbname}"
            per = -(-args.nodes // args.procs)
            started = time.monotonic()
            for i in range(args.procs):
                first, count = i * per, min(per, args.nodes - i * per)
                procs.append(subprocess.Popen(
                    [sys.executable, __file__, "--child", url, str(first), str(count)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1))
            gained: list[tuple[str, float]] = []

            def read(proc: subprocess.Popen[str], key: str) -> dict[str, Any]:
                assert proc.stdout is not None
                while True:
                    line = proc.stdout.readline()
                    if not line:
                        raise RuntimeError(f"a node process ended early ({proc.poll()})")
                    message = json.loads(line)
                    if "gained" in message:
                        gained.append((message["gained"], message["at"]))
                    if key in message:
                        return message

            def tell(command: str) -> None:
                for proc in procs:
                    assert proc.stdin is not None
                    proc.stdin.write(command + "\n")
                    proc.stdin.flush()

            for proc in procs:
                read(proc, "connected")
            print(f"{args.nodes} nodes in {args.procs} processes connected through PgBouncer "
                  f"in {time.monotonic() - started:.1f}s")
            time.sleep(args.settle)
            x0, w0, _ = db_counters(dbname)
            s0, b0 = server_ticks(), proc_ticks(bouncer.pid or 0)
            n0 = sum(proc_ticks(p.pid) for p in procs)
            t0 = time.monotonic()
            tell("measure")
            time.sleep(args.seconds)
            tell("report")
            reports = [read(proc, "syncs") for proc in procs]
            elapsed = time.monotonic() - t0
            x1, w1, server_conns = db_counters(dbname)
            s1, b1 = server_ticks(), proc_ticks(bouncer.pid or 0)
            n1 = sum(proc_ticks(p.pid) for p in procs)
            clients = sum(int(row["cl_active"]) + int(row["cl_waiting"])
                          for row in bouncer.show("POOLS") if row["database"] == dbname)
            syncs = [s for r in reports for s in r["syncs"]]
            failed = sum(r["failed"] for r in reports)
            revoked = sum(r["revoked"] for r in reports)
            # failover: the holder of leader/w dies without a word
            holder_proc = None
            if gained:
                last = gained[-1][0]
                index = int(last[1:])
                holder_proc = procs[index // per]
            failover = None
            if holder_proc is not None:
                assert holder_proc.stdin is not None
                before = len(gained)
                holder_proc.stdin.write("drop-holder\n")
                holder_proc.stdin.flush()
                dropped = read(holder_proc, "dropped")
                deadline = time.monotonic() + 15
                while len(gained) == before and time.monotonic() < deadline:
                    import select
                    ready, _, _ = select.select([p.stdout for p in procs], [], [], 0.5)
                    for stream in ready:
                        line = stream.readline()
                        if line and "gained" in (message := json.loads(line)):
                            gained.append((message["gained"], message["at"]))
                if len(gained) > before:
                    failover = gained[before][1] - dropped["at"]
        finally:
            for proc in procs:
                with contextlib.suppress(Exception):
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(5)
            bouncer.stop()
            shutil.rmtree(bouncer.directory, ignore_errors=True)
    txn = (x1 - x0) / elapsed
    print(f"window {elapsed:.0f}s, default timings, PostgreSQL 15 default settings, "
          f"PgBouncer transaction mode, pool {args.pool}")
    print(f"  transactions/s      {txn:8.1f}  ({txn / args.nodes:.2f} per node)")
    print(f"  rows written/s      {(w1 - w0) / elapsed:8.1f}")
    print(f"  server CPU          {(s1 - s0) / hz / elapsed * 100:8.1f} % of one core")
    print(f"  PgBouncer CPU       {(b1 - b0) / hz / elapsed * 100:8.1f} % of one core")
    print(f"  node processes CPU  {(n1 - n0) / hz / elapsed * 100:8.1f} % of one core "
          f"({(n1 - n0) / hz / elapsed / args.nodes * 1000:.2f} ms/s per node)")
    print(f"  server connections  {server_conns:8d}  (client connections {clients})")
    if syncs:
        print(f"  node_sync           p50 {statistics.median(syncs) * 1000:.1f} ms, "
              f"p99 {pct(syncs, 0.99) * 1000:.1f} ms, max {max(syncs) * 1000:.1f} ms "
              f"({len(syncs)} syncs, {failed} failed)")
    print(f"  leases revoked      {revoked:8d}")
    print(f"  failover            {'none' if failover is None else f'{failover:.2f} s'} "
          "(holder dropped without a word -> next node gains leader/w)")
    ok = bool(syncs) and revoked == 0 and failover is not None and failover < 15
    return 0 if ok else 1


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        asyncio.run(nodes_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--pool", type=int, default=20, help="PgBouncer default_pool_size")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=5.0)
    return conduct(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
