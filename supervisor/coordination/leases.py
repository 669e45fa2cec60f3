"""The leases this node holds or waits for, each held for its worker by a trusted `Hold`.

A worker asks for a lease (`wait_for`) and waits; the node sync (`node_sync.py`) sends
every lease held for renewal and every lease waited for to be tried, and hands what
the sync returned to `synced`: a lease acquired becomes a grant for the waiting
worker, a lease kept renews its hold, a lease lost revokes the grant at once. When
the hold's trust runs out the lease is dropped and its grant revoked (hold.py has
the trust model). Each gain and loss is published (`LeadershipGained`,
`LeadershipLost`); each sync's outcome for a held lease too (`LeaseRenewed`).

A lease row that vanished is created again (restored by the store from its history)
before the lease is tried: when a worker first asks, after this node lost the lease,
and every lease TTL while a worker still waits. A lease the database refuses because
of its row sits out the syncs for a while (quarantine.py); its child is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from supervisor.clock import boottime
from supervisor.coordination import Grant
from supervisor.coordination.dblane import RELEASE
from supervisor.coordination.hold import Hold, Stamp
from supervisor.coordination.quarantine import Quarantine
from supervisor.errors import StoreError, StoreRefused
from supervisor.model import Event, LeadershipGained, LeadershipLost, LeaseRenewed
from supervisor.spec import CoordinationSpec
from supervisor.store import CoordinationStore, Lease, SyncRefusal, SyncResult

log = logging.getLogger("supervisor")

# The node sync's bounded store call: call(fn, *args, within=, priority=, **kwargs).
Call = Callable[..., Awaitable[Any]]


@dataclass
class _Want:
    """One lease this node holds or wants, and the hold of the grant handed to its worker
    (the hold's grant is None until the lease is gained, and again once it is revoked)."""

    name: str
    worker: str
    group: str
    hold: Hold = field(init=False)
    wanted: bool = False
    lease: Lease | None = None
    waiter: asyncio.Future[Grant] | None = None
    ensured: bool = False
    blocked_by: str | None = None  # fleet control stopped its child: why (for the release)


class Leases:
    """Every lease this node holds or wants, by name."""

    def __init__(self, store: CoordinationStore, timing: CoordinationSpec,
                 publish: Callable[[Event], None], call: Call, quarantine: Quarantine,
                 wake: Callable[[], None]) -> None:
        self._store = store
        self._timing = timing
        self._publish = publish
        self._call = call
        self._quarantine = quarantine
        self._wake = wake
        self._wants: dict[str, _Want] = {}
        self._next_ensure = 0.0  # when rows of leases still waited for are ensured again
        # Fleet control (control.py): why a lease must be neither tried nor kept now
        # (paused, draining, handed over), by (lease, worker); None: it is free to.
        self.blocked: Callable[[str, str], str | None] = lambda lease, worker: None

    # --- what modes ask for ----------------------------------------------------------------

    async def wait_for(self, name: str, worker: str, group: str) -> Grant:
        want = self._wants.get(name)
        if want is None:
            want = self._wants[name] = _Want(name, worker, group)
            want.hold = Hold(None, self._timing,
                             on_untrusted=functools.partial(self._revoke_untrusted, want))
        want.wanted = True
        want.waiter = asyncio.get_running_loop().create_future()
        self._wake()
        try:
            return await want.waiter
        finally:
            want.waiter = None

    async def give_up(self, name: str, reason: str) -> None:
        want = self._wants.get(name)
        if want is None:
            return
        want.wanted = False
        lease = self._drop(want)
        if lease is None:
            return
        reason, want.blocked_by = want.blocked_by or reason, None
        try:
            remaining = max(0.2, self._timing.renew_deadline)
            await self._call(self._store.lease_release, lease, reason=reason, within=remaining,
                             priority=RELEASE)
        except StoreError as exc:
            log.warning("%s: could not release lease %s (%s); it expires by itself",
                        want.worker, name, exc)
        self._publish(LeadershipLost(want.worker, want.group, name, lease.term, reason))

    async def give_up_all(self, reason: str) -> None:
        for want in list(self._wants.values()):
            if want.lease is not None:
                await self.give_up(want.name, reason)

    # --- what each sync carries ------------------------------------------------------------

    def holding(self) -> bool:
        return any(want.lease for want in self._wants.values())

    def held(self) -> list[Lease]:
        return [want.lease for want in self._wants.values() if want.lease is not None]

    def wanted(self, now: float) -> list[str]:
        """The leases to try: waited for, not held, not left out for a refused row."""
        return [w.name for w in self._wants.values() if w.wanted and w.lease is None
                and w.waiter is not None and not self._quarantine.out("lease", w.name, now)
                and self.blocked(w.name, w.worker) is None]

    def trusts(self) -> list[float]:
        return [w.hold.trust_until for w in self._wants.values() if w.lease]

    async def ensure_rows(self, now: float) -> None:
        """Create the rows of the leases this node waits for: when a worker first asks,
        after this node lost one (its row may be gone), and every lease_ttl while any
        still waits (a row deleted while another node held it: that node may be gone,
        and nobody else would create it again). A node holding all it wants calls none."""
        waiting = [w for w in self._wants.values() if w.wanted and w.lease is None
                   and not self._quarantine.out("lease", w.name, now)]
        due = waiting if now >= self._next_ensure else [w for w in waiting if not w.ensured]
        if not due:
            return
        try:
            await self._call(self._store.lease_ensure, [w.name for w in due],
                             within=self._timing.renew_deadline)
        except StoreRefused:
            await self._ensure_each(due, now)
            return
        except StoreError:
            return  # the sync that follows says why
        for want in due:
            want.ensured = True
        self._next_ensure = now + self._timing.lease_ttl

    async def _ensure_each(self, due: list[_Want], now: float) -> None:
        """The database refused the rows because of one: each on its own, so that only
        the bad one is left out."""
        for want in due:
            try:
                await self._call(self._store.lease_ensure, [want.name],
                                 within=self._timing.renew_deadline)
            except StoreRefused as exc:
                self._quarantine.refused(SyncRefusal("lease", want.name, str(exc)),
                                         want.worker, f"lease {want.name}", now)
                continue
            except StoreError:
                return
            want.ensured = True

    # --- what each sync returned -------------------------------------------------------------

    def synced(self, result: SyncResult, sent: Stamp) -> None:
        for name in result.lost:
            want = self._wants[name]
            want.ensured = False  # its row may be gone: create it again before trying it
            self._revoke(want, "the database no longer shows this node holding it",
                         kill_by=boottime())
        for name, lease in result.kept.items():
            want = self._wants[name]
            want.lease = lease
            want.hold.trust(sent)
            self._publish(LeaseRenewed(want.worker, want.group, True))
        for name, lease in result.acquired.items():
            self._quarantine.passed("lease", name, self._wants[name].worker, f"lease {name}")
            self._gained(self._wants[name], lease, sent)

    def enforce(self) -> None:
        """Fleet control: the grant of each held lease now blocked is revoked, its child
        dead within leader_stop_grace; the lease stays renewed until the worker gives it
        up once the child is dead (never before: guarantee 4)."""
        for want in self._wants.values():
            grant = want.hold.grant
            if want.lease is None or grant is None or grant.revoked.is_set():
                continue
            reason = self.blocked(want.name, want.worker)
            if reason is not None:
                log.info("%s: %s: stopping its child, then releasing lease %s", want.worker,
                         reason, want.name)
                want.blocked_by = reason
                want.hold.hurry(reason)

    def refused(self, refusal: SyncRefusal, reason: str, now: float) -> None:
        """The database refused this lease's row: its child stopped at once, the lease
        left out of syncs for a while."""
        want = self._wants.get(refusal.key)
        if want is None:
            return
        self._quarantine.refused(refusal, want.worker, f"{refusal.kind} {refusal.key}", now)
        want.ensured = False
        self._revoke(want, reason, kill_by=boottime())

    def failed(self, held: list[Lease]) -> None:
        """The sync that carried `held` failed: not renewed this time."""
        for lease in held:
            want = self._wants[lease.name]
            self._publish(LeaseRenewed(want.worker, want.group, False))

    # --- gained and lost -------------------------------------------------------------------

    def _gained(self, want: _Want, lease: Lease, sent: Stamp) -> None:
        if want.waiter is None or want.waiter.done():
            # Nobody waits any more (the worker stopped meanwhile): hand it back.
            asyncio.get_running_loop().create_task(self._release_unwanted(lease))
            return
        want.lease = lease
        grant = Grant(
            env={"SUPERVISOR_FENCING_TOKEN": str(lease.term)},
            stop_grace=self._timing.leader_stop_grace,
            trust_grace=self._timing.leader_stop_grace,
        )
        want.hold.grant = grant
        want.hold.trust(sent)
        self._publish(LeadershipGained(want.worker, want.group, want.name, lease.term))
        want.waiter.set_result(grant)

    async def _release_unwanted(self, lease: Lease) -> None:
        with contextlib.suppress(StoreError):
            await self._call(self._store.lease_release, lease, reason="no longer wanted",
                             within=self._timing.renew_deadline, priority=RELEASE)

    def _revoke_untrusted(self, want: _Want, reason: str, kill_by: float) -> None:
        self._revoke(want, reason, kill_by=kill_by)

    def _revoke(self, want: _Want, reason: str, *, kill_by: float) -> None:
        lease = self._drop(want)
        want.hold.end(reason, kill_by)
        want.hold.grant = None
        if lease is not None:
            self._publish(LeadershipLost(want.worker, want.group, want.name, lease.term, reason))

    def _drop(self, want: _Want) -> Lease | None:
        lease, want.lease = want.lease, None
        want.hold.forget()
        return lease
