"""Fleet control on SQL: standing requests, their version, the log, what nodes report
(part of SqlStore).

Invariants:

- every control write (set or clear) changes fs_control, appends one fs_control_log row
  and bumps fs_control_version's one row, in one transaction; the bump is an UPDATE of
  that row, so writers queue on its lock and a reader sees a version only with the
  rows it counts;
- a node's sync reads the version (one row by primary key) and the requests only when
  the version differs from the one it passes: a fleet at rest pays one point read per
  sync;
- what a node reports (its drain acknowledgement, its summary) is one UPDATE of its own
  membership row, sent only when it changed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from supervisor.store import ControlAction, ControlEntry, ControlState, Holder, NodeReport
from supervisor.store.database import Database
from supervisor.store.dialect import clock
from supervisor.store.refusals import fit
from supervisor.store.schema import control, control_log, control_version, members

KINDS = ("pause", "drain", "handover")
CLEARED = {"pause": "resume", "drain": "undrain", "handover": "handover-ended"}
_REASON = 255


class ControlSql:
    """The fleet-control part of SqlStore, on the database it is given."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # --- writes ----------------------------------------------------------------------------

    def control_set(self, kind: str, target: str, group: str, *, user: str, host: str,
                    reason: str, stop_running: bool = False, hold_out: float | None = None,
                    holder_nonce: str | None = None, now: float | None = None
                    ) -> ControlEntry:
        _check_kind(kind)

        def work(conn: Connection) -> ControlEntry:
            at = float(conn.execute(select(clock(now))).scalar_one())
            self._bump(conn)  # first: writers queue here, in one order
            key = _key(kind, target, group)
            conn.execute(delete(control).where(*key))
            row = {"kind": kind, "target": target, "group_name": group,
                   "reason": reason[:_REASON], "actor_user": user[:200],
                   "actor_host": host[:255], "requested_at": at,
                   "stop_running": int(stop_running),
                   "until_at": None if hold_out is None else at + hold_out,
                   "holder_nonce": holder_nonce}
            fit(control, [row])
            conn.execute(insert(control).values(row))
            self._log(conn, at, kind, target, group, user, host, reason)
            return _entry(conn.execute(select(control).where(*key)).one())

        return self._db.run(work)

    def control_clear(self, kind: str, target: str, group: str, *, user: str, host: str,
                      reason: str, now: float | None = None) -> bool:
        _check_kind(kind)

        def work(conn: Connection) -> bool:
            at = float(conn.execute(select(clock(now))).scalar_one())
            self._bump(conn)
            key = _key(kind, target, group)
            found = conn.execute(select(control.c.kind).where(*key)).first() is not None
            conn.execute(delete(control).where(*key))
            self._log(conn, at, CLEARED[kind], target, group, user, host, reason)
            return found

        return self._db.run(work)

    def _bump(self, conn: Connection) -> None:
        conn.execute(update(control_version).where(control_version.c.id == 1)
                     .values(version=control_version.c.version + 1))

    def _log(self, conn: Connection, at: float, action: str, target: str, group: str,
             user: str, host: str, reason: str) -> None:
        row = {"at": at, "action": action, "target": target, "group_name": group,
               "actor_user": user[:200], "actor_host": host[:255],
               "reason": reason[:_REASON]}
        fit(control_log, [row])
        conn.execute(insert(control_log).values(row))

    # --- reads -----------------------------------------------------------------------------

    def state(self, conn: Connection, since: int | None) -> ControlState | None:
        """The control state, or None when its version is `since` (unchanged)."""
        version = int(conn.execute(select(control_version.c.version)
                                   .where(control_version.c.id == 1)).scalar_one())
        return None if version == since else self._read(conn, version)

    def _read(self, conn: Connection, version: int) -> ControlState:
        rows = conn.execute(select(control).order_by(
            control.c.kind, control.c.target, control.c.group_name))
        return ControlState(version, tuple(_entry(row) for row in rows))

    def control_state(self) -> ControlState:
        def work(conn: Connection) -> ControlState:
            version = int(conn.execute(select(control_version.c.version)
                                       .where(control_version.c.id == 1)).scalar_one())
            return self._read(conn, version)

        return self._db.run(work)

    def control_log(self, *, limit: int = 100) -> list[ControlAction]:
        with self._db.txn() as conn:
            rows = conn.execute(select(control_log)
                                .order_by(control_log.c.id.desc()).limit(limit))
            return [ControlAction(float(r.at), r.action, r.target, r.group_name,
                                  r.actor_user, r.actor_host, r.reason) for r in rows]

    def report(self, conn: Connection, holder: Holder, report: NodeReport) -> None:
        """Write what the node reports into its own membership row."""
        conn.execute(update(members).where(members.c.nonce == holder.nonce)
                     .values(drain_state=report.drain or None, summary=report.summary))


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"a control request is one of {KINDS}, not {kind!r}")


def _key(kind: str, target: str, group: str) -> tuple[ColumnElement[bool], ...]:
    return (control.c.kind == kind, control.c.target == target,
            control.c.group_name == group)


def _entry(r: Any) -> ControlEntry:
    return ControlEntry(r.kind, r.target, r.group_name, r.reason, r.actor_user, r.actor_host,
                        float(r.requested_at), bool(r.stop_running),
                        None if r.until_at is None else float(r.until_at), r.holder_nonce)
