"""One trusted hold: a lease, a cron run or a coordinated slot this node holds for a child.

Whatever the database lends this node for a while (a leader's lease, a claimed cron
run, a coordinated slot) is held the same way: renewed in the node's one sync
(`node_sync.py`), trusted only as long as the last renewal that succeeded allows, and
taken from the child (its `Grant` revoked) when the hold ends.

Trust, the invariant everything rests on: a holder trusts a hold only until
`sent_at + renew_deadline` on its monotonic clock, `sent_at` taken before the
renewal that succeeded was sent (a `Stamp`). When trust runs out the grant is revoked
and the child must be dead `leader_stop_grace` seconds later, before
`sent_at + lease_ttl`, the earliest instant the database can hand the hold to anyone
else (config validation refuses timings where this does not hold). A hold the database
says is lost is revoked with no grace at all, and so is one whose trust ran out long
ago (a process thawed after a freeze: the kill deadline is on the boot clock). Every
database call is bounded by a timeout no longer than the trust that is left (the node
sync's job).

Each grant also carries its trust on the boot clock (`sent_boot + renew_deadline`,
read beside `sent_at`): the child path hands `trust_until + leader_stop_grace` to the
trust watchdog, a separate process that SIGKILLs the child then even if this loop
never runs again (blocked, starved, stopped). A renewal moves it on.

How a hold ends: trust runs out (`could not renew ... within renew_deadline`, dead by
the trust deadline), the database says it is lost (`lose`: dead at once), or someone
asks it to stop soon (`hurry`: dead within `leader_stop_grace`, as a leader stops).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from supervisor.clock import boottime
from supervisor.coordination import Grant
from supervisor.spec import CoordinationSpec

K = TypeVar("K")
I = TypeVar("I")  # noqa: E741 - the held item: a CronRun or a CoordSlot

# (loop time, boot time) taken just before sending a call whose success is trusted.
Stamp = tuple[float, float]

# What to do when trust runs out: (reason, kill_by on the boot clock).
Untrusted = Callable[[str, float], None]


class Hold:
    """The trust in one grant's hold: until when, its timer, and how it ends.

    A lease's hold outlives its grants (`grant` is None between them); a run's or a
    slot's has its one grant for life."""

    def __init__(self, grant: Grant | None, timing: CoordinationSpec, what: str = "",
                 on_untrusted: Untrusted | None = None) -> None:
        self.grant = grant
        self.trust_until = 0.0  # loop time
        self._timing = timing
        self._what = what  # "run", "slot", or "" (a lease), for the reason
        self._on_untrusted = self.end if on_untrusted is None else on_untrusted
        self._timer: asyncio.TimerHandle | None = None

    def trust(self, sent: Stamp) -> None:
        """A renewal (or the claim) sent at `sent` succeeded: trusted until
        renew_deadline after it, on the loop clock and, in the grant, the boot clock."""
        deadline = self._timing.renew_deadline
        self.trust_until = sent[0] + deadline
        if self.grant is not None:
            self.grant.trust_grace = self._timing.leader_stop_grace
            self.grant.renew(sent[1] + deadline)
        self.forget()
        self._timer = asyncio.get_running_loop().call_at(self.trust_until, self._expired)

    def forget(self) -> None:
        """No longer watched: its trust timer stops (the grant is left as it is)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def end(self, reason: str, kill_by: float) -> None:
        """Take the grant away: its child dead by `kill_by` (boot clock)."""
        if self.grant is not None:
            self.grant.revoke(reason, kill_by=kill_by, now=boottime())

    def lose(self, reason: str) -> None:
        """The database says it is gone: no longer renewed, its child killed at once."""
        self.forget()
        now = boottime()
        if self.grant is not None:
            self.grant.revoke(reason, kill_by=now, now=now)

    def hurry(self, reason: str) -> None:
        """Asked to stop: its child dead within leader_stop_grace (never slower than
        trust allows); still renewed until it is dropped."""
        now = boottime()
        if self.grant is not None:
            self.grant.revoke(reason, kill_by=now + self._timing.leader_stop_grace, now=now)

    def _expired(self) -> None:
        self._timer = None
        what = f" the {self._what}" if self._what else ""
        # Dead by trust + grace on the boot clock: a loop thawed late kills at once.
        kill_by = boottime() if self.grant is None else self.grant.trust_deadline()
        self._on_untrusted(f"could not renew{what} within renew_deadline "
                           f"({self._timing.renew_deadline:g}s)", kill_by)


@dataclass
class Held(Generic[I]):
    """A cron run or a coordinated slot, as the database last returned it, and its hold."""

    item: I
    hold: Hold


class HeldTable(Generic[K, I]):
    """The runs (or the slots) this node holds, by key: each sent in every sync, renewed
    by what the sync kept, lost by what it lost."""

    def __init__(self, timing: CoordinationSpec, what: str) -> None:
        self._timing = timing
        self._what = what
        self._held: dict[K, Held[I]] = {}

    def __bool__(self) -> bool:
        return bool(self._held)

    def keep(self, key: K, item: I, grant: Grant, sent: Stamp) -> None:
        """Hold `item` for `grant` from now on, trusted from the claim sent at `sent`."""
        held = self._held[key] = Held(item, Hold(grant, self._timing, self._what))
        held.hold.trust(sent)

    def drop(self, key: K) -> None:
        """No longer held (its child stopped and it was given back): not renewed."""
        held = self._held.pop(key, None)
        if held is not None:
            held.hold.forget()

    def get(self, key: K) -> Held[I] | None:
        return self._held.get(key)

    def items(self) -> list[I]:
        return [held.item for held in self._held.values()]

    def trusts(self) -> list[float]:
        return [held.hold.trust_until for held in self._held.values()]

    def renewed(self, key: K, item: I, sent: Stamp) -> None:
        held = self._held.get(key)
        if held is not None:
            held.item = item
            held.hold.trust(sent)

    def lost(self, key: K, reason: str) -> None:
        held = self._held.pop(key, None)
        if held is not None:
            held.hold.lose(reason)
