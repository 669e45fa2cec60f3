"""Parts of a node's sync the database refused because of a row (`store.SyncRefusal`).

The store already rolled the refused part back alone and synced the rest. Here each
refusal is told once, as an ERROR naming the worker, what was refused and the
database's reason, and its part is kept out of the syncs for a while: a bad row stays
bad until someone mends it, and trying it in every sync would make every sync fail
once before it went through apart. It is tried again every `retry` seconds, and told
once more, as INFO, when the database takes it again.
"""

from __future__ import annotations

import logging

from supervisor.store import SyncRefusal

log = logging.getLogger("supervisor")


class Quarantine:
    """Refused parts of the sync, by (kind, key), with when to try each again."""

    def __init__(self, retry: float) -> None:
        self.retry = retry
        self._out: dict[tuple[str, str], tuple[str, float]] = {}  # -> (reason, until)

    def refused(self, refusal: SyncRefusal, worker: str, what: str, now: float, *,
                keep_out: bool = True) -> None:
        """Tell it (once per reason) and, with `keep_out`, leave it out until now + retry."""
        key = (refusal.kind, refusal.key)
        told = self._out.get(key)
        if told is None or told[0] != refusal.reason:
            again = (f"it is tried again every {self.retry:g}s" if keep_out
                     else "it is not tried again")
            log.error("%s: the database refuses %s (%s); this worker is kept out while the "
                      "node's other workers sync on; %s", worker, what, refusal.reason, again)
        if keep_out:
            self._out[key] = (refusal.reason, now + self.retry)

    def out(self, kind: str, key: str, now: float) -> bool:
        """Whether the part is left out of the sync now (refused less than retry ago)."""
        told = self._out.get((kind, key))
        return told is not None and now < told[1]

    def passed(self, kind: str, key: str, worker: str, what: str) -> None:
        """The database took the part again: tell it if it had been refused."""
        if self._out and self._out.pop((kind, key), None) is not None:
            log.info("%s: the database accepts %s again", worker, what)
