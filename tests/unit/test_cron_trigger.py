"""CronMode and `supervisor trigger`: a trigger reaches the node in its node sync and is
claimed like a tick, with the real NodeSync and the in-memory store on a virtual clock
(the harness of test_cron_mode.py)."""

from __future__ import annotations

import asyncio
import contextlib

from supervisor.coordination.cron import RunGrant
from supervisor.store import CronTrigger
from tests.support.clocks import run_virtual
from tests.unit.test_cron_mode import (
    EPOCH,
    TIMING,
    WORKER,
    MemoryStore,
    Node,
    cron_spec,
    node,
)

HOURLY = "@every 3600s"  # no tick anywhere near: what runs is the trigger


def request(store: MemoryStore, key: str = "k1", reason: str | None = "backfill") -> CronTrigger:
    return store.memory.cron_trigger(WORKER, key, actor_user="alice", actor_host="laptop",
                                     reason=reason, grace=25.0).trigger


async def started(n: Node) -> tuple[float, list[RunGrant]]:
    grants = await n.next_runs(within=3600.0)
    return n.store.now(), grants


def test_a_trigger_runs_within_a_renew_interval_while_the_next_tick_is_an_hour_away() -> None:
    async def main() -> tuple[CronTrigger, float, list[RunGrant], list[object]]:
        store = MemoryStore()
        n = await node(store, cron_spec(cron=HOURLY), db_now=EPOCH + 5)
        await store.until(lambda: store.attempts("node_sync"))
        asked = request(store)
        at, grants = await started(n)
        rows = store.rows
        await n.stop()
        return asked, at - asked.requested_at, grants, rows

    asked, took, grants, rows = run_virtual(main())
    assert took <= TIMING.renew_interval * 1.1 + 0.01
    [grant] = grants
    assert grant.run.trigger == asked.id and grant.run.tick == asked.requested_at
    assert grant.env["SUPERVISOR_CRON_TRIGGER"] == str(asked.id)
    assert grant.env["SUPERVISOR_FENCING_TOKEN"] == str(grant.run.token)
    [row] = rows
    assert row.trigger is not None and row.trigger.actor_user == "alice"


def test_a_node_claims_a_trigger_once_though_it_stays_open_for_other_nodes() -> None:
    async def main() -> tuple[list[RunGrant], int, int]:
        store = MemoryStore()
        n = await node(store, cron_spec(cron=HOURLY, max_run=2), db_now=EPOCH + 5)
        request(store)
        _, grants = await started(n)
        syncs = len(store.attempts("node_sync"))
        waiting = asyncio.create_task(n.mode.next_runs())
        await store.until(lambda: len(store.attempts("node_sync")) >= syncs + 5)
        assert not waiting.done()  # delivered again (one slot left), never claimed again
        waiting.cancel()
        claims = len(store.attempts("cron_claim_trigger"))
        await n.stop()
        return grants, claims, len(store.rows)

    grants, claims, rows = run_virtual(main())
    assert len(grants) == 1 and claims == 1 and rows == 1


def test_a_triggered_run_records_its_childs_pid_and_the_schedule_goes_on() -> None:
    async def main() -> tuple[list[RunGrant], list[RunGrant], list[object]]:
        store = MemoryStore()
        n = await node(store, cron_spec(), db_now=EPOCH + 1)  # ticks every 10 s
        request(store)
        first = await n.next_runs()
        for grant in first:
            await n.mode.finish(grant, "succeeded", 0, None, child_pid=4242)
        second = await n.next_runs()
        rows = store.rows
        await n.stop()
        return first, second, rows

    first, second, rows = run_virtual(main())
    assert [g.run.trigger is not None for g in first] == [True]
    assert [g.run.trigger for g in second] == [None]  # the next schedule tick
    assert second[0].run.tick == EPOCH + 10
    by_token = {r.token: r for r in rows}
    assert by_token[first[0].run.token].child_pid == 4242
    assert by_token[first[0].run.token].state == "succeeded"


def test_a_trigger_under_forbid_while_a_run_goes_on_is_skipped_not_run() -> None:
    async def main() -> tuple[list[str], list[object]]:
        store = MemoryStore()
        store.seed(EPOCH, state="running", expires_at=EPOCH + 3600)  # another node's run
        n = await node(store, cron_spec(cron=HOURLY, overlap="forbid"), db_now=EPOCH + 5)
        asked = request(store)
        waiting = asyncio.create_task(n.mode.next_runs())
        await store.until(lambda: store.attempts("cron_claim_trigger"))
        await store.until(lambda: any(r.slot == -1 for r in store.rows))
        rows = store.rows
        assert not waiting.done()
        waiting.cancel()
        await n.stop()
        return [asked.worker], rows

    _, rows = run_virtual(main())
    skipped = [r for r in rows if r.slot == -1]
    assert [(r.state, r.trigger is not None) for r in skipped] == [("skipped", True)]


def test_a_leader_records_its_latest_childs_pid_on_its_term_only_while_it_holds_it() -> None:
    from supervisor.coordination.leader import LeaderMode
    from supervisor.coordination.node_sync import NodeSync
    from supervisor.model import Mode
    from supervisor.spec import CoordinationSpec
    from supervisor.store import Holder
    from supervisor.store.memory import MemoryStore as Store

    timing = CoordinationSpec(lease_ttl=2.0, renew_interval=0.05, renew_deadline=0.3)
    me = Holder("n1", "g", 1, "nonce-1")

    async def main() -> list[int | None]:
        store = Store()
        keeper = NodeSync(store, me, timing, lambda event: None)
        task = asyncio.create_task(keeper.run())
        mode = LeaderMode(keeper, Mode.GLOBAL_LEADER, "leader/w", "w", "g")
        async with asyncio.timeout(5):
            grant = await mode.acquire()
        seen = [store.terms(lease="leader/w")[0].child_pid]
        await mode.child_started(4242)
        await mode.child_started(4343)  # restarted within the term: the latest
        seen.append(store.terms(lease="leader/w")[0].child_pid)
        await mode.release(grant, "stopped")
        await mode.child_started(1)  # no longer held: nothing recorded
        seen.append(store.terms(lease="leader/w")[0].child_pid)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await keeper.close()
        return seen

    assert asyncio.run(main()) == [None, 4343, 4343]


def test_a_draining_node_leaves_a_trigger_to_the_others_and_claims_it_once_undrained() -> None:
    async def main() -> tuple[int, int, list[RunGrant]]:
        store = MemoryStore()
        n = await node(store, cron_spec(cron=HOURLY), db_now=EPOCH + 5)
        me = n.keeper.holder.node_id
        store.memory.control_set("drain", me, "", user="alice", host="laptop", reason="")
        await store.until(lambda: n.keeper.fleet.draining() is not None)
        request(store)
        syncs = len(store.attempts("node_sync"))
        waiting = asyncio.create_task(n.mode.next_runs())
        await store.until(lambda: len(store.attempts("node_sync")) >= syncs + 5)
        claims_while_draining = len(store.attempts("cron_claim_trigger"))
        done_while_draining = int(waiting.done())
        store.memory.control_clear("drain", me, "", user="alice", host="laptop", reason="")
        grants = await waiting
        await n.stop()
        return claims_while_draining, done_while_draining, grants

    claims, done, grants = run_virtual(main())
    assert claims == 0 and done == 0  # delivered each sync, never claimed while draining
    [grant] = grants
    assert grant.run.trigger is not None
