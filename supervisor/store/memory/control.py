"""Fleet control in memory: standing requests, their version and the log (part of
MemoryStore; the same contracts as store/sql_control.py)."""

from __future__ import annotations

from supervisor.store import ControlAction, ControlEntry, ControlState, NodeReport
from supervisor.store.memory.leases import MemberRow

KINDS = ("pause", "drain", "handover")
CLEARED = {"pause": "resume", "drain": "undrain", "handover": "handover-ended"}


class ControlTables:
    """The requests by (kind, target, group), the version and the log."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str, str], ControlEntry] = {}
        self.version = 0
        self.log: list[ControlAction] = []

    def set(self, kind: str, target: str, group: str, *, user: str, host: str, reason: str,
            stop_running: bool, hold_out: float | None, holder_nonce: str | None,
            clock: float) -> ControlEntry:
        _check_kind(kind)
        entry = ControlEntry(kind, target, group, reason[:255], user[:200], host[:255], clock,
                             stop_running, None if hold_out is None else clock + hold_out,
                             holder_nonce)
        self.entries[(kind, target, group)] = entry
        self._logged(clock, kind, target, group, user, host, reason)
        return entry

    def clear(self, kind: str, target: str, group: str, *, user: str, host: str,
              reason: str, clock: float) -> bool:
        _check_kind(kind)
        found = self.entries.pop((kind, target, group), None) is not None
        self._logged(clock, CLEARED[kind], target, group, user, host, reason)
        return found

    def _logged(self, clock: float, action: str, target: str, group: str, user: str,
                host: str, reason: str) -> None:
        self.version += 1
        self.log.append(ControlAction(clock, action, target, group, user[:200], host[:255],
                                      reason[:255]))

    def state(self, since: int | None) -> ControlState | None:
        if since == self.version:
            return None
        return ControlState(self.version, tuple(self.entries[key] for key in sorted(self.entries)))

    def history(self, limit: int) -> list[ControlAction]:
        return list(reversed(self.log))[:limit]


def report(row: MemberRow | None, report: NodeReport) -> None:
    """Write what a node reports into its membership row."""
    if row is not None:
        row.drain, row.summary = report.drain, report.summary


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"a control request is one of {KINDS}, not {kind!r}")
