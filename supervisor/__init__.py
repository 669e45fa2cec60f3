"""fleet-supervisor: supervise workers on every node, coordinated through one SQL database.

How it is built (read this first; `help(supervisor)` shows it too)
====================================================================

A node is one `supervisor run` process. It reads a TOML file of workers, starts each
worker's children under the worker's mode, and coordinates with the other nodes through
one SQL database and nothing else. Three ideas carry everything:

1. **Coordination decides, workers obey.** A worker's mode (`coordination/`) grants
   the right to run a child; the worker side (`workers/`) runs the child while the
   grant holds and kills it when the grant is revoked. Nothing in `workers/` knows
   the database; nothing in `coordination/` starts a process.

2. **The database decides who holds what, by its own clock.** A leader's lease, a
   cron run and a coordinated slot are rows with an expiry that the database computes
   and compares in the statement that needs it (`store/`). No node compares its own
   wall clock with a stored time, so a node whose clock is wrong cannot take what
   another holds.

3. **A node trusts what it holds only for a bounded time after it last heard so.**
   Every hold (lease, run, slot) is renewed in the node's one sync; the node trusts it
   until `sent_at + renew_deadline` on its monotonic clock, `sent_at` taken before
   the renewal that succeeded was sent. When trust runs out the child is stopped and
   must be dead `leader_stop_grace` later, which is before the database can give the
   hold to anyone else (`sent_at + lease_ttl`; config validation refuses timings where
   it is not). The deadline is also handed to the trust watchdog, a separate process
   that SIGKILLs the child at that instant even if this process never runs again.

The node sync
-------------

::

        workers/ (obey)                coordination/ (decide)               store/
    +--------------------+  Grant   +---------------------------+       +-----------+
    | long_running.py    |<---------| leader.py   cron.py       |       |           |
    | cronjob.py         | revoked  | coordinated.py            |       | protocol  |
    |   \\-> child.py ---+--+        +-------------+-------------+       | (__init__)|
    +--------------------+  |                     | NodePort (port.py)  |           |
          | deadlines       |        +------------v-------------+  one   | SqlStore  |
          v                 |        | NodeSync (node_sync.py)  |  call  | sql*.py   |
    +--------------+        |        |  leases.py  hold.py      |------->| MemoryStore|
    | trust        |<-------+        |  upkeep.py  quarantine.py|  lane  | memory/   |
    | watchdog     |  kill at        |  dblane.py (one thread,  |        +-----------+
    | (process)    |  deadline       |   one connection)        |
    +--------------+                 +--------------------------+

Once per renew interval (jittered) `NodeSync` makes one `node_sync` call: heartbeat the
node, renew every lease, run and slot it holds, try every lease a worker waits for,
renew its coordinated memberships. One call per node per interval however many workers
it runs; it goes through the node's one database lane (one thread, one connection,
syncs before anything else), bounded by the trust left, and cut (its socket shut down)
when late. Around each sync the node measures the database clock's offset to its own
monotonic clock: cron nodes wake at ticks by that clock.

What a sync returns is applied to the holds (`hold.py`): kept holds move their trust
on, lost ones revoke their grant at once (no grace), holds whose trust ran out revoke
with the stop grace. A row the database refuses is rolled back alone and sits out
(`quarantine.py`); the rest of the sync goes on.

The modes
---------

- `every-node`: grants at once, never revokes (`coordination/__init__.py`).
- `global-leader`, `group-leader` (`leader.py`): the node holding the worker's lease
  runs it; the lease's term is the child's fencing token and only grows.
- `cron` (`cron.py`, `workers/cronjob.py`): every node computes the same ticks
  (`schedule.py`, `cron_dialect.py`) and claims a slot of each tick in the database,
  which allows at most `max_run` per tick; each claimed run is a hold like a lease.
- `coordinated` (`coordinated.py`): members renew a membership row; the holder of the
  worker's coordination lease publishes generations (index and count per member) once
  membership is stable; each index is a slot of a generation, and the database
  refuses a slot while any slot of an older generation is still held (the barrier).

Modes reach the database only through `port.NodePort` (an import-linter contract
keeps it so); they ask for, keep and give up what they hold there.

Operating a node and a fleet
----------------------------

- This node (`control/`): `supervisor run` binds a Unix socket (0600, the peer's uid
  checked) before any worker starts; `supervisor ps|stop|start|restart|signal|logs`
  (`cli_local.py`) talk to it in JSON lines. The Supervisor answers (`app.py`): a stop
  goes the way a reload's does (the lease released once the child is dead), a restart
  restarts the child under the grant it holds, `logs` reads per-worker ring buffers.
- The fleet (`coordination/control.py`, `store/sql_control.py`): `supervisor pause|
  resume|handover|drain|undrain` (`cli_fleet.py`) write control rows; each node reads
  them in its one sync (only when their version moved) and obeys them like any loss of
  a hold: blocked leases are neither tried nor kept (released once the child is dead),
  paused or draining coordinated members leave, paused cron ticks are recorded skipped.
  Each node publishes its workers' roles with its sync, so `status` shows them all.
- `supervisor trigger` (`cli_trigger.py`, `store/sql_triggers.py`): a request row the
  node syncs deliver to the cron modes, claimed like a tick (its runs keyed at tick
  `-id`, apart from every schedule tick).

Words
-----

- **node**: one supervisor process (`NodeSpec` is what its file says: `node_id`,
  `group`, the database, its workers). A node is a live *member* of the fleet while its
  membership row is renewed (`store.NodeMember`).
- **worker**: a `[workers.NAME]` table (`WorkerSpec`); its **children** are the
  processes started for it.
- **grant**: the right to run a child, given by the worker's mode; revoked when lost.
- **hold**: what the database lends a node for a while and the node renews in its sync:
  a **lease**, a cron **run** or a coordinated **slot**.
- **slot**: a numbered place that at most one holder takes. A cron tick has `max_run`
  slots (the child is told its `SUPERVISOR_CRON_SLOT`; a node's own claims of one
  tick are also numbered, up to `max_per_node`); a coordinated generation has `count`
  slots, one per index (a `CoordMember` of a worker key holds the slot of its index).
- **term** / **token**: a lease's term only grows; it is the child's fencing token.

Where things live
-----------------

- Pure: `model.py` (events, names, durations), `errors.py`, `clock.py`, `policy.py`
  (restart backoff), `schedule.py` / `cron_dialect.py`, `tzinfo_source.py`.
- Config: `config.py` validates the TOML (pydantic, in a short-lived child process);
  the running supervisor uses the plain records of `spec.py`.
- Store: `store/__init__.py` is the protocol and its contracts, `store/records.py` what
  it takes and returns; `sql*.py` and `migrations/` are the only SQL; `memory/` is the
  same contracts in memory, held to the same conformance suite. The drivers are extras
  (`[postgres]`, `[mysql]`): `drivers.py` says which one a URL needs, before anything
  starts.
- Processes: `runner.py` (one child: spawn, stream, stop), `processes.py` (pre-exec
  setup, the pid record, PID-1 reaping), `watchdog.py` (the watchdog process) and
  `watchdog_client.py` (its supervisor end), `output.py` (output that never blocks).
- Wiring: `app.py` (the Supervisor: workers to modes, signals, reload, the control
  socket's requests); `cli.py` (the only place that reads argv) with the command modules
  `cli_local.py`, `cli_fleet.py`, `cli_trigger.py` and what they share, `cli_common.py`;
  `metrics.py`, `http.py`, `logs.py` subscribe to events; `fleetview.py` /
  `fleettext.py` are `status` and `history`.

A module imports only from the layers listed after it in pyproject.toml's
import-linter contract.
"""

__version__ = "0.2.0.dev0"
