"""The coordination store: the one small protocol every mode is built on.

Contracts (each implementation must pass the same conformance suite):

- Time is the database's. Expiry is computed and compared by the database in the
  statement that needs it; no caller compares its own wall clock with a stored
  timestamp. Methods take an optional `now` only so tests can pin time.
- A lease is a row per name with a holder and a term. The term only grows, across
  release and re-acquire, across every holder and restart of the fleet: it is the
  fencing token. Releasing keeps the row.
- Acquire, renew and release are single guarded statements scoped to holder and
  term; the caller learns the outcome from what the database returns, never from an
  affected-row count. Losing is a return value (`None` / `False`), not an exception.
- Failure to reach the database raises `StoreUnavailable`; a holder that cannot
  renew trusts its lease only until `sent_at + renew_deadline` on its monotonic
  clock, `sent_at` taken before the renewal was sent.
- One `renew_all` call per node per interval covers every lease the node holds and
  its membership row, so the cost per node does not grow with its workers.

The SQL implementation (SQLite, PostgreSQL, MariaDB/MySQL) lives in `store/sql.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class Holder:
    """Who holds something: a node, a process on it, and a random per-start nonce."""

    node_id: str
    pid: int
    nonce: str


@dataclass(frozen=True)
class Lease:
    """A lease as its holder sees it after a successful acquire or renew."""

    name: str
    holder: Holder
    term: int  # the fencing token
    expires_at: datetime  # database time; shown to people, never compared locally


@dataclass(frozen=True)
class Member:
    node_id: str
    group: str
    holder: Holder
    expires_at: datetime


@dataclass(frozen=True)
class CronClaim:
    worker: str
    tick: datetime  # the scheduled instant, UTC; with worker and slot the claim key
    slot: int
    holder: Holder
    token: int


@dataclass(frozen=True)
class RenewalResult:
    """What one batched renewal kept; leases missing from `kept` are lost."""

    kept: Sequence[Lease]
    lost: Sequence[str]


class CoordinationStore(Protocol):
    async def upgrade(self) -> None:
        """Create or migrate the schema; safe when many nodes call it at once."""

    async def lease_acquire(
        self, name: str, holder: Holder, ttl: float, *, now: datetime | None = None
    ) -> Lease | None:
        """Take the lease if it is free or expired, with a new, higher term; else None."""

    async def lease_renew(
        self, lease: Lease, ttl: float, *, now: datetime | None = None
    ) -> Lease | None:
        """Extend a lease still held with the same holder and term; else None (it is lost)."""

    async def lease_release(self, lease: Lease, *, reason: str = "released") -> bool:
        """Free a lease held with this holder and term at once; False if it was not ours."""

    async def renew_all(
        self, holder: Holder, member: Member | None, leases: Sequence[Lease], ttl: float
    ) -> RenewalResult:
        """Renew the membership row and every given lease in one round trip."""

    async def members(self, group: str | None = None) -> Sequence[Member]:
        """Live members (unexpired in database time), of one group or all."""

    async def cron_claim(
        self, worker: str, tick: datetime, max_run: int, holder: Holder, grace: float
    ) -> CronClaim | None:
        """Claim a free slot below max_run for the tick while it is due and within grace."""

    async def close(self) -> None:
        """Release connections."""
