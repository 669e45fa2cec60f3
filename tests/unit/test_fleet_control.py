"""Fleet control applied by a node: FleetControl's judgement, and the real NodeSync with an
in-memory store on a virtual clock (leases blocked, cron ticks skipped, runs stopped, the
drain acknowledged), as tests/unit/test_cron_mode.py runs cron mode."""

from __future__ import annotations

import asyncio

from supervisor.coordination import Grant
from supervisor.coordination.control import NOT_READ, FleetControl
from supervisor.model import CronClaimed, Event, leader_lease
from supervisor.store import ControlEntry, ControlState, Holder
from tests.support.clocks import run_virtual
from tests.unit.test_cron_mode import (
    EPOCH,
    ME,
    TIMING,
    WORKER,
    InlineKeeper,
    MemoryStore,
    cron_spec,
    node,
    ticks_of,
)

ACTOR = {"user": "alice", "host": "ops-1"}
LEASE = leader_lease("db-writer", None)


def entry(kind: str, target: str, group: str = "", **kw: object) -> ControlEntry:
    return ControlEntry(kind, target, group, "why", "alice", "ops-1", 0.0, **kw)  # type: ignore[arg-type]


# --- FleetControl: what the rows mean for this process -------------------------------------

def test_every_lease_is_blocked_until_the_rows_were_read() -> None:
    control = FleetControl(ME)
    assert control.blocked(LEASE, "db-writer") == NOT_READ
    assert control.cron_blocked("report") == (NOT_READ, False)
    control.synced(ControlState(0), 100.0)
    assert control.blocked(LEASE, "db-writer") is None
    assert control.cron_blocked("report") is None


def test_a_pause_applies_to_every_group_or_to_this_nodes_group() -> None:
    control = FleetControl(ME)  # group "g"
    control.synced(ControlState(1, (entry("pause", "a", "other"), entry("pause", "b", "g"),
                                    entry("pause", "c"))), 100.0)
    assert control.pause_of("a") is None
    assert control.blocked(leader_lease("b", "g"), "b") == "paused by alice@ops-1: why"
    assert control.cron_blocked("b") == ("paused by alice@ops-1: why", False)  # one group
    assert control.cron_blocked("c") == ("paused by alice@ops-1: why", True)  # every group
    assert control.blocked("coord/c", "c") is not None


def test_a_drain_of_this_node_blocks_every_lease_and_every_claim() -> None:
    control = FleetControl(ME)
    control.synced(ControlState(1, (entry("drain", "elsewhere"),)), 100.0)
    assert control.blocked(LEASE, "db-writer") is None
    assert control.drain_state(holding=True) == ""
    control.synced(ControlState(2, (entry("drain", ME.node_id),)), 100.0)
    assert control.blocked(LEASE, "db-writer") == "draining by alice@ops-1: why"
    assert control.cron_blocked("report") == ("draining by alice@ops-1: why", False)
    assert control.drain_state(holding=True) == "acknowledged"
    # a worker paused on every group is recorded skipped by a draining node too
    control.synced(ControlState(3, (entry("drain", ME.node_id), entry("pause", "report"))),
                   100.0)
    assert control.cron_blocked("report") == ("paused by alice@ops-1: why", True)
    assert control.drain_state(holding=False) == "drained"


def test_a_handover_holds_out_only_the_holder_asked_and_only_until_its_end() -> None:
    control = FleetControl(ME)
    rows = (entry("handover", "db-writer", holder_nonce=ME.nonce, until=130.0),
            entry("handover", "other", holder_nonce="someone-else", until=130.0))
    control.synced(ControlState(1, rows), 100.0)
    assert control.blocked(LEASE, "db-writer") == "handed over by alice@ops-1: why"
    assert control.blocked(leader_lease("other", None), "other") is None
    control.synced(None, 130.0)  # unchanged rows; the database clock moved on
    assert control.blocked(LEASE, "db-writer") is None


def test_listeners_hear_each_change_once() -> None:
    control = FleetControl(ME)
    heard: list[int] = []

    def listener() -> None:
        heard.append(control.version)

    control.watch(listener)
    control.watch(listener)
    assert control.synced(ControlState(0), 1.0)  # the first read is a change
    assert not control.synced(None, 2.0)
    assert not control.synced(ControlState(3), 3.0)  # a version, the same rows
    assert control.synced(ControlState(4, (entry("pause", "x"),)), 4.0)
    assert heard == [0, 4]


# --- the node sync: a leader worker --------------------------------------------------------

class Leader:
    """A leader worker's loop on the keeper: wait for the lease, hold it until the grant
    is revoked, then give it up (its child "dies" at once), and again."""

    def __init__(self, keeper: InlineKeeper) -> None:
        self.keeper = keeper
        self.grants: list[Grant] = []
        self.released: list[str] = []
        self.times: list[float] = []  # loop time of each grant and each revocation
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            grant = await self.keeper.wait_for(LEASE, "db-writer", ME.group)
            self.grants.append(grant)
            self.times.append(asyncio.get_running_loop().time())
            await grant.revoked.wait()
            self.times.append(asyncio.get_running_loop().time())
            self.released.append(grant.reason)
            await self.keeper.give_up(LEASE, grant.reason)


async def leader_node(store: MemoryStore, holder: Holder = ME) -> tuple[InlineKeeper, Leader]:
    if holder == ME:
        store.set_now(EPOCH)  # the first node; the next ones share its database clock
    keeper = InlineKeeper(store, holder, TIMING, lambda event: None)  # type: ignore[arg-type]
    keeper.task = asyncio.create_task(keeper.run())  # type: ignore[attr-defined]
    return keeper, Leader(keeper)


def holder_of(store: MemoryStore) -> str | None:
    (state,) = [s for s in store.memory.leases() if s.name == LEASE]
    return None if state.holder is None else state.holder.nonce


def test_a_paused_leader_stops_releases_once_given_up_and_competes_again_on_resume() -> None:
    async def main() -> None:
        store = MemoryStore()
        _, leader = await leader_node(store)
        await store.until(lambda: leader.grants)
        store.memory.control_set("pause", "db-writer", "", reason="migration", **ACTOR)
        paused_at = asyncio.get_running_loop().time()
        await store.until(lambda: leader.released)
        # within one renew interval (with its jitter), the child told to stop as a leader
        assert leader.times[1] - paused_at <= TIMING.renew_interval * 1.1
        assert leader.released == ["paused by alice@ops-1: migration"]
        grant = leader.grants[0]
        assert grant.kill_by is not None
        await store.until(lambda: holder_of(store) is None)
        (term,) = store.memory.terms()
        assert (term.outcome, term.reason) == ("released", "paused by alice@ops-1: migration")
        # paused: several syncs go by and the lease is not tried
        syncs = len(store.attempts("node_sync"))
        await store.until(lambda: len(store.attempts("node_sync")) >= syncs + 4)
        assert holder_of(store) is None and len(leader.grants) == 1
        store.memory.control_clear("pause", "db-writer", "", reason="", **ACTOR)
        resumed_at = asyncio.get_running_loop().time()
        await store.until(lambda: len(leader.grants) == 2)
        assert leader.times[2] - resumed_at <= TIMING.renew_interval * 1.1
        assert holder_of(store) == ME.nonce

    run_virtual(main())


def test_the_lease_stays_renewed_until_the_worker_gives_it_up() -> None:
    # guarantee 4: the revoked grant's child may still be stopping; the lease must not
    # be free for another node meanwhile.
    async def main() -> None:
        store = MemoryStore()
        _, leader = await leader_node(store)
        await store.until(lambda: leader.grants)
        leader.task.cancel()  # a child that takes its time: nobody gives the lease up
        store.memory.control_set("pause", "db-writer", "", reason="", **ACTOR)
        await store.until(lambda: leader.grants[0].revoked.is_set())
        syncs = len(store.attempts("node_sync"))
        await store.until(lambda: len(store.attempts("node_sync")) >= syncs + 5)
        assert holder_of(store) == ME.nonce  # still renewed, 5 syncs later
        (state,) = [s for s in store.memory.leases() if s.name == LEASE]
        assert state.expires_at > store.now()

    run_virtual(main())


def test_a_worker_paused_before_the_node_starts_never_gets_its_lease() -> None:
    async def main() -> None:
        store = MemoryStore()
        store.memory.control_set("pause", "db-writer", "", reason="", **ACTOR)
        _, leader = await leader_node(store)
        await store.until(lambda: len(store.attempts("node_sync")) >= 6)
        assert leader.grants == [] and holder_of(store) is None

    run_virtual(main())


def test_a_handover_hands_the_lease_on_and_a_lone_holder_takes_it_back_later() -> None:
    async def main() -> None:
        store = MemoryStore()
        _, leader = await leader_node(store)
        await store.until(lambda: leader.grants)
        hold_out = 2 * TIMING.lease_ttl
        store.memory.control_set("handover", "db-writer", "", reason="maintenance",
                                 hold_out=hold_out, holder_nonce=ME.nonce, **ACTOR)
        asked = asyncio.get_running_loop().time()
        await store.until(lambda: leader.released)
        assert leader.released == ["handed over by alice@ops-1: maintenance"]
        await store.until(lambda: len(leader.grants) == 2)
        # no other node: it takes the lease back once the hold-out ended (seen in one
        # sync, tried in the next), not before
        back = leader.times[2]
        assert asked + hold_out <= back <= asked + hold_out + 2 * TIMING.renew_interval * 1.1

    run_virtual(main())


def test_a_handover_leaves_the_lease_to_a_node_that_wants_it() -> None:
    other = Holder("n2", "g", 2, "nonce-2")

    async def main() -> None:
        store = MemoryStore()
        _, leader = await leader_node(store)
        await store.until(lambda: leader.grants)
        _, second = await leader_node(store, other)
        store.memory.control_set("handover", "db-writer", "", reason="", hold_out=20.0,
                                 holder_nonce=ME.nonce, **ACTOR)
        await store.until(lambda: second.grants)
        assert holder_of(store) == other.nonce
        assert leader.released and len(leader.grants) == 1

    run_virtual(main())


# --- the node sync: a drain ----------------------------------------------------------------

def test_a_drained_node_acknowledges_then_reports_drained_and_undrain_clears_it() -> None:
    async def main() -> None:
        store = MemoryStore()
        _, leader = await leader_node(store)
        await store.until(lambda: leader.grants)

        def drain() -> str:
            (member,) = store.memory.members()
            return member.drain

        assert drain() == ""
        store.memory.control_set("drain", ME.node_id, "", reason="reboot", **ACTOR)
        await store.until(lambda: drain() == "drained")
        assert leader.released == ["draining by alice@ops-1: reboot"]
        assert holder_of(store) is None
        store.memory.control_clear("drain", ME.node_id, "", reason="", **ACTOR)
        await store.until(lambda: drain() == "" and len(leader.grants) == 2)

    run_virtual(main())


def test_a_drain_is_acknowledged_while_something_is_still_held() -> None:
    async def main() -> None:
        store = MemoryStore()
        keeper, leader = await leader_node(store)
        await store.until(lambda: leader.grants)
        leader.task.cancel()  # the child is slow to stop: the lease is still held
        store.memory.control_set("drain", ME.node_id, "", reason="", **ACTOR)
        await store.until(lambda: store.memory.members()[0].drain == "acknowledged")
        await keeper.give_up(LEASE, "stopped")
        await store.until(lambda: store.memory.members()[0].drain == "drained")

    run_virtual(main())


# --- the node sync: cron -------------------------------------------------------------------

def test_paused_cron_ticks_are_recorded_skipped_and_resume_claims_the_next() -> None:
    async def main() -> tuple[MemoryStore, list[float], list[Event]]:
        store = MemoryStore()
        store.memory.control_set("pause", WORKER, "", reason="migration", **ACTOR)
        n = await node(store, cron_spec(catch_up="latest"), db_now=EPOCH + 4)
        waiting = asyncio.create_task(n.mode.next_runs())
        await store.until(lambda: len([r for r in store.rows if r.state == "skipped"]) == 3)
        store.memory.control_clear("pause", WORKER, "", reason="", **ACTOR)
        async with asyncio.timeout(60):
            grants = await waiting
        await n.stop()
        return store, ticks_of(grants), n.events

    store, got, events = run_virtual(main())
    skipped = sorted(r.tick for r in store.rows if r.state == "skipped")
    assert skipped == [EPOCH + 10, EPOCH + 20, EPOCH + 30]
    assert {r.reason for r in store.rows if r.state == "skipped"} == {
        "paused by alice@ops-1: migration"}
    assert got == [EPOCH + 40]  # the next tick; no skipped tick replayed
    assert store.claims and all(t == EPOCH + 40 for t, _, _ in store.claims)
    paused = [e.tick for e in events if isinstance(e, CronClaimed) and e.result == "paused"]
    assert paused == skipped


def test_a_pause_of_another_group_claims_as_usual() -> None:
    async def main() -> list[float]:
        store = MemoryStore()
        store.memory.control_set("pause", WORKER, "elsewhere", reason="", **ACTOR)
        n = await node(store, cron_spec(), db_now=EPOCH + 4)
        grants = await n.next_runs()
        await n.stop()
        return ticks_of(grants)

    assert run_virtual(main()) == [EPOCH + 10]


def test_a_pause_with_stop_running_stops_the_run_in_progress() -> None:
    async def main() -> tuple[bool, str, bool]:
        store = MemoryStore()
        n = await node(store, cron_spec(), db_now=EPOCH + 4)
        (grant,) = await n.next_runs()
        store.memory.control_set("pause", WORKER, "", reason="", stop_running=True,
                                 **ACTOR)
        await store.until(lambda: grant.revoked.is_set())
        kill_by = grant.kill_by
        await n.stop()
        return grant.revoked.is_set(), grant.reason, kill_by is not None

    assert run_virtual(main()) == (True, "paused by alice@ops-1", True)


def test_a_pause_without_stop_running_lets_the_run_finish() -> None:
    async def main() -> bool:
        store = MemoryStore()
        n = await node(store, cron_spec(), db_now=EPOCH + 4)
        (grant,) = await n.next_runs()
        store.memory.control_set("pause", WORKER, "", reason="", **ACTOR)
        syncs = len(store.attempts("node_sync"))
        await store.until(lambda: len(store.attempts("node_sync")) >= syncs + 3)
        revoked = grant.revoked.is_set()
        await n.stop()
        return revoked

    assert run_virtual(main()) is False




# --- the node's published summary ----------------------------------------------------------

def test_the_summary_is_compact_shows_paused_and_is_cut_to_counts_when_too_long() -> None:
    from supervisor.coordination.control import SUMMARY_LIMIT, summarize

    control = FleetControl(ME)
    control.synced(ControlState(1, (entry("pause", "db-writer"),)), 1.0)
    text = summarize({"web": "running", "db-writer": "waiting", "report": "waiting"}, control)
    assert text == '{"db-writer":"paused","report":"waiting","web":"running"}'
    many = {f"worker-{i:05d}": "running" for i in range(SUMMARY_LIMIT // 10)}
    assert summarize(many, control) == f'{{"(workers)":{{"running":{len(many)}}}}}'


class ReportingStore(MemoryStore):
    """Records the report each node_sync carried (None: none sent)."""

    def __init__(self) -> None:
        super().__init__()
        self.reports: list[object] = []

    def node_sync(self, holder: Holder, **kwargs: object):  # type: ignore[no-untyped-def]
        self.reports.append(kwargs.get("report"))
        return super().node_sync(holder, **kwargs)


def test_the_summary_is_written_with_a_sync_only_when_it_changed() -> None:
    async def main() -> tuple[list[object], str | None]:
        store = ReportingStore()
        keeper, _ = await leader_node(store)
        states = {"web": "running", "db-writer": "waiting"}
        keeper.worker_states = lambda: dict(states)
        await store.until(lambda: len(store.reports) >= 5)
        states["web"] = "backoff"
        count = len(store.reports)
        await store.until(lambda: len(store.reports) >= count + 4)
        (member,) = store.memory.members()
        return store.reports, member.summary

    reports, summary = run_virtual(main())
    sent = [r for r in reports if r is not None]
    summaries = [r.summary for r in sent]  # type: ignore[attr-defined]
    # the first sync, the first with the states, the change: nothing in between
    assert summaries.count('{"db-writer":"waiting","web":"running"}') == 1
    assert summaries.count('{"db-writer":"waiting","web":"backoff"}') == 1
    assert len(sent) <= 3 + 1  # + the lease's grant may land between (waiting -> running)
    assert summary == '{"db-writer":"waiting","web":"backoff"}'


# --- status and history ----------------------------------------------------------------------

def test_status_shows_pauses_drains_handovers_and_each_nodes_workers() -> None:
    from supervisor.fleettext import history_text, status_text
    from supervisor.fleetview import history_data, status_data
    from supervisor.store import ControlAction, NodeMember

    a = NodeMember(Holder("a", "g", 1, "n-a"), 0.0, 110.0, drain="drained",
                   summary='{"web":"running","job":"paused"}')
    b = NodeMember(Holder("b", "g", 2, "n-b"), 0.0, 110.0, summary="not json")
    c = NodeMember(Holder("c", "g", 3, "n-c"), 0.0, 110.0, drain="acknowledged")
    rows = (entry("pause", "job", stop_running=True), entry("drain", "a"),
            entry("drain", "c"), entry("drain", "gone"),
            entry("handover", "db-writer", until=150.0, holder_nonce="n-b"),
            entry("handover", "old", until=50.0, holder_nonce="n-b"))
    data = status_data("sqlite://", 100.0, [a, b, c], [], control=ControlState(3, rows))
    assert data["paused"] == [{"worker": "job", "group": "", "by": "alice@ops-1",
                               "reason": "why", "since": "1970-01-01T00:00:00.000Z",
                               "stop_running": True}]
    assert [(d["node"], d["state"]) for d in data["draining"]] == [
        ("a", "drained"), ("c", "acknowledged"), ("gone", "not live")]
    assert [h["worker"] for h in data["handovers"]] == ["db-writer"]  # "old" ended
    assert [n["workers"] for n in data["nodes"]] == [{"web": "running", "job": "paused"},
                                                     None, None]
    text = status_text(data)
    assert "workers: web running, job paused" in text
    assert "job                          every group, runs stopped  by alice@ops-1" in text
    assert "gone                         not live" in text
    actions = [ControlAction(5.0, "pause", "job", "eu", "bob", "h", "migration")]
    history = history_data([], [], None, [], actions)
    assert history == [{"kind": "control", "at": "1970-01-01T00:00:05.000Z", "action": "pause",
                        "target": "job", "group": "eu", "by": "bob@h", "reason": "migration"}]
    assert history_text(history) == (
        "1970-01-01T00:00:05.000Z  job                      pause (group eu) by bob@h  (migration)")


# --- the node sync: a coordinated worker ---------------------------------------------------

def test_a_paused_coordinated_member_stops_leaves_and_rejoins_on_resume() -> None:
    from supervisor.coordination.coordinated import CoordinatedMode

    async def main() -> None:
        store = MemoryStore()
        keeper, _ = await leader_node(store)
        mode = CoordinatedMode(keeper, "shard", "shard", ME.group, instances=None,
                               stable_window=1.0, publish=lambda event: None)
        async with asyncio.timeout(60):
            grant = await mode.acquire()
        assert grant.env["SUPERVISOR_WORKER_INDEX"] == "0"
        store.memory.control_set("pause", "shard", "", reason="", **ACTOR)
        await store.until(lambda: grant.revoked.is_set())
        assert grant.reason == "paused by alice@ops-1"
        await mode.release(grant, grant.reason)  # the worker loop, its child stopped
        again = asyncio.create_task(mode.acquire())
        await store.until(lambda: not store.memory.coord_view("shard").members)
        syncs = len(store.attempts("node_sync"))
        await store.until(lambda: len(store.attempts("node_sync")) >= syncs + 4)
        view = store.memory.coord_view("shard")
        assert view.members == () and not [s for s in view.slots
                                           if s.holder is not None
                                           and s.expires_at > store.now()]
        assert not again.done()
        store.memory.control_clear("pause", "shard", "", reason="", **ACTOR)
        async with asyncio.timeout(60):
            back = await again
        assert not back.revoked.is_set()
        await mode.close()

    run_virtual(main())
