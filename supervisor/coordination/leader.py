"""Leader modes: one node per lease runs the worker.

`global-leader` runs one instance fleet-wide, `group-leader` one per group: the worker's
nodes compete for its lease (`model.lease_name`), and only the node holding it runs the
child. The mode only asks its node (`port.NodePort`) for the lease and gives it back
when the child has stopped; the node sync (node_sync.py, leases.py) acquires and renews
it, and revokes the grant when the lease is lost or its trust runs out (hold.py). The
grant carries the lease's term as the child's fencing token
(`SUPERVISOR_FENCING_TOKEN`): a later holder always has a higher one.
"""

from __future__ import annotations

import logging

from supervisor.coordination import Grant
from supervisor.coordination.port import NodePort
from supervisor.errors import StoreError
from supervisor.model import Mode

log = logging.getLogger("supervisor")


class LeaderMode:
    """`global-leader` / `group-leader`: the worker runs only while this node holds its lease."""

    def __init__(self, node: NodePort, mode: Mode, lease: str, worker: str,
                 group: str) -> None:
        self.mode = mode
        self._node = node
        self._lease = lease
        self._worker = worker
        self._group = group

    async def acquire(self) -> Grant:
        return await self._node.wait_for(self._lease, self._worker, self._group)

    async def release(self, grant: Grant, reason: str) -> None:
        await self._node.give_up(self._lease, reason)

    async def child_started(self, pid: int) -> None:
        """Record the child's pid on this node's term (history shows it); best effort."""
        try:
            await self._node.lease_child(self._lease, pid)
        except StoreError as exc:
            log.info("%s: could not record the pid of its child (%s)", self._worker, exc)
