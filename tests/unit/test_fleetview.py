"""`status` and `history` data from scripted store records: no database, pinned times."""

from __future__ import annotations

from supervisor.config import parse_config
from supervisor.fleettext import history_text, status_text
from supervisor.fleetview import (
    TICKS_SHOWN,
    coord_section,
    coord_status,
    cron_rows_needed,
    cron_section,
    history_data,
    status_data,
    tick_summary,
)
from supervisor.store import (
    CoordAssigned,
    CoordGeneration,
    CoordMember,
    CoordSlot,
    CoordStatus,
    CronRunRecord,
    Holder,
    NodeMember,
    TermRecord,
)

A = Holder("node-a", "blue", 101, "nonce-a")
B = Holder("node-b", "blue", 202, "nonce-b")
T0 = 1_800_000_000.0  # a multiple of 2 s

CONFIG = """
[workers.job]
command = ["true"]
mode = "cron"
cron = "@every 2s"
max_run = 2
overlap = "allow"

[workers.daily]
command = ["true"]
mode = "cron"
cron = "30 4 * * *"
timezone = "Europe/Berlin"

[workers.lead]
command = ["true"]
mode = "global-leader"
"""


def run(token: int, tick: float, slot: int, holder: Holder | None, state: str, *,
        worker: str = "job", claimed: float | None = None, ended: float | None = None,
        code: int | None = None, reason: str | None = None) -> CronRunRecord:
    claimed_at = tick + 0.1 if claimed is None else claimed
    return CronRunRecord(token, worker, tick, slot, holder, state, claimed_at, ended, code,
                         reason)


def reader(records: dict[str, list[CronRunRecord]], asked: list[tuple[str, int]]):
    def read(worker: str, limit: int) -> list[CronRunRecord]:
        asked.append((worker, limit))
        return records.get(worker, [])[:limit]
    return read


def test_cron_section_shows_only_cron_workers_with_their_next_tick_by_the_given_clock():
    workers = parse_config(CONFIG).workers
    asked: list[tuple[str, int]] = []
    section = cron_section(workers, T0 + 0.5, [], reader({}, asked))
    assert [c["worker"] for c in section] == ["daily", "job"]
    job = section[1]
    assert job["next_tick"] == "2027-01-15T08:00:02.000Z" and job["next_in"] == 1.5
    assert (job["schedule"], job["timezone"], job["max_run"], job["overlap"]) == (
        "@every 2s", "UTC", 2, "allow")
    assert job["ticks"] == []
    # 04:30 in Berlin in January is 03:30 UTC, the next day's as 08:00 is past it
    assert section[0]["next_tick"] == "2027-01-16T03:30:00.000Z"
    assert asked == [("daily", cron_rows_needed(workers["daily"])),
                     ("job", (TICKS_SHOWN + 1) * 3)]


def test_ticks_are_grouped_newest_first_with_runs_by_slot_and_tick_level_states():
    workers = parse_config(CONFIG).workers
    records = [
        run(9, T0, 1, B, "running"),
        run(8, T0, 0, A, "running"),
        run(7, T0 - 2, -1, None, "missed", reason="nobody could run it within misfire_grace"),
        run(5, T0 - 4, 0, A, "succeeded", ended=T0 - 4 + 1.6, code=0),
        run(6, T0 - 4, 1, B, "failed", ended=T0 - 4 + 0.6, code=3),
    ]
    members = [NodeMember(A, T0 - 100, T0 + 5)]  # node-b's supervisor is gone
    section = cron_section(workers, T0 + 0.25, members, reader({"job": records}, []))
    ticks = section[1]["ticks"]
    assert [(t["tick"], t["state"]) for t in ticks] == [
        ("2027-01-15T08:00:00.000Z", "running"),
        ("2027-01-15T07:59:58.000Z", "missed"),
        ("2027-01-15T07:59:56.000Z", "failed"),
    ]
    assert [(r["slot"], r["node_id"], r["holder_live"]) for r in ticks[0]["runs"]] == [
        (0, "node-a", True), (1, "node-b", False)]
    assert ticks[1]["runs"] == [] and "misfire_grace" in ticks[1]["reason"]
    done = ticks[2]["runs"]
    assert [(r["state"], r["exit_code"], r["duration"], r["holder_live"]) for r in done] == [
        ("succeeded", 0, 1.5, None), ("failed", 3, 0.5, None)]

    text = status_text(status_data("sqlite:///x.db", T0 + 0.25, members, [], section))
    assert "cron: 2 workers" in text and "next tick 2027-01-15T08:00:02.000Z (in 1.8s)" in text
    assert "missed (nobody could run it within misfire_grace)" in text
    assert "node-b pid 202      running  (its node is gone: will be marked lost)" in text
    assert "failed exit 3 after 0.5s" in text


def test_a_tick_cut_off_by_the_read_limit_is_left_out_and_at_most_five_are_shown():
    workers = parse_config(CONFIG).workers
    limit = cron_rows_needed(workers["job"])
    seven = [run(100 - i, T0 - 2 * (i // 3), i % 3, A, "succeeded", ended=T0)
             for i in range(7 * 3)]
    job = cron_section(workers, T0, [], reader({"job": seven}, []))[1]
    assert len(job["ticks"]) == TICKS_SHOWN
    assert all(len(t["runs"]) == 3 for t in job["ticks"])
    # ticks from when max_run was 6: the read stops inside the third tick, which is left out
    wide = [run(100 - i, T0 - 2 * (i // 7), i % 7, A, "succeeded", ended=T0)
            for i in range(4 * 7)]
    assert limit == 18
    job = cron_section(workers, T0, [], reader({"job": wide}, []))[1]
    assert [len(t["runs"]) for t in job["ticks"]] == [7, 7]


def test_tick_summary_puts_what_needs_attention_first():
    assert tick_summary(["succeeded", "failed", "running"]) == "running"
    assert tick_summary(["succeeded", "lost", "failed"]) == "lost"
    assert tick_summary(["succeeded", "stopped"]) == "stopped"
    assert tick_summary(["succeeded"]) == "succeeded"
    assert tick_summary([]) == "none"


def test_history_merges_terms_by_acquired_at_and_runs_by_tick_newest_first():
    terms = [
        TermRecord("leader/lead", 2, A, T0 - 1, None, None, None),
        TermRecord("leader/lead/blue", 1, B, T0 - 5, T0 - 3, "released", "supervisor stopped"),
    ]
    runs = [
        run(3, T0, 0, A, "running", claimed=T0 + 0.2),
        run(2, T0 - 2, -1, None, "missed", claimed=T0 + 70, ended=T0 + 70,
            reason="nobody could run it within misfire_grace"),
        run(1, T0 - 6, 0, B, "failed", claimed=T0 - 5.9, ended=T0 - 4.4, code=1),
    ]
    rows = history_data(terms, runs)
    assert [(r["kind"], r["at"]) for r in rows] == [
        ("run", "2027-01-15T08:00:00.000Z"),
        ("term", "2027-01-15T07:59:59.000Z"),
        ("run", "2027-01-15T07:59:58.000Z"),
        ("term", "2027-01-15T07:59:55.000Z"),
        ("run", "2027-01-15T07:59:54.000Z"),
    ]
    assert rows[4]["duration"] == 1.5 and rows[4]["exit_code"] == 1
    assert (rows[3]["worker"], rows[3]["group"], rows[3]["outcome"]) == (
        "lead", "blue", "released")
    assert [r["kind"] for r in history_data(terms, runs, limit=2)] == ["run", "term"]
    text = history_text(rows).splitlines()
    assert "run  slot 0   node-a pid -        (supervisor 101) running" in text[0]
    assert "lead" in text[1] and "holding" in text[1]
    assert "tick missed (nobody could run it within misfire_grace)" in text[2]
    assert "failed exit 1 after 1.5s" in text[4]
    assert history_text([]) == "no history yet"


def test_history_shows_the_childs_pid_and_the_supervisors_and_who_triggered_a_run():
    from dataclasses import replace

    from supervisor.store import CronTrigger

    asked = CronTrigger(7, "job", "key-7", T0 - 1, 30.0, "alice", "laptop", "backfill")
    runs = [
        replace(run(5, T0 - 1, 0, A, "succeeded", ended=T0 + 2, code=0), child_pid=4242,
                trigger=asked),
        replace(run(4, T0 - 1.5, -1, None, "skipped", reason="overlap forbidden"),
                trigger=replace(asked, id=6, reason=None)),
        replace(run(3, T0 - 60, 0, B, "succeeded", ended=T0 - 59, code=0), child_pid=77),
    ]
    terms = [TermRecord("leader/lead", 2, A, T0 - 100, None, None, None, 999)]
    rows = history_data(terms, runs)
    first = rows[0]
    assert (first["pid"], first["supervisor_pid"]) == (4242, 101)
    assert first["trigger"] == {"id": 7, "key": "key-7", "user": "alice", "host": "laptop",
                                "reason": "backfill", "requested": "2027-01-15T07:59:59.000Z"}
    assert rows[2]["trigger"] is None and rows[2]["pid"] == 77
    assert (rows[3]["pid"], rows[3]["supervisor_pid"]) == (999, 101)
    text = history_text(rows).splitlines()
    assert "node-a pid 4242     (supervisor 101) succeeded" in text[0]
    assert text[0].endswith("[triggered by alice@laptop: backfill]")
    assert "triggered skipped (overlap forbidden)  [triggered by alice@laptop]" in text[1]
    assert "tick" not in text[1].split("job", 1)[1].split("(")[0]
    assert "[triggered" not in text[2]
    assert "term 2      node-a pid 999      (supervisor 101) holding" in text[3]


# --- coordinated -----------------------------------------------------------------------------

C = Holder("node-c", "red", 303, "nonce-c")
D = Holder("node-d", "blue", 404, "nonce-d")
E = Holder("node-e", "blue", 505, "nonce-e")

COORD_CONFIG = """
[workers.indexer]
command = ["true"]
mode = "coordinated"

[workers.shards]
command = ["true"]
mode = "coordinated"
scope = "group"

[workers.lead]
command = ["true"]
mode = "global-leader"
"""


def slot(key: str, index: int, generation: int, holder: Holder, expires: float) -> CoordSlot:
    return CoordSlot(key, index, generation, holder, expires)


def coord(key: str, generation: int = 0, count: int = 0, *,
          assigned: tuple[tuple[Holder, int | None], ...] = (),
          live: tuple[Holder, ...] = (), slots: tuple[CoordSlot, ...] = (),
          now: float = T0) -> CoordStatus:
    return CoordStatus(
        key, now, generation, count, None if generation == 0 else T0 - 30,
        tuple(CoordAssigned(h, i) for h, i in assigned),
        tuple(CoordMember(h, T0 - 60 + n, T0 + 10) for n, h in enumerate(live)),
        slots)


def test_a_coordinated_key_shows_indexes_slots_joining_and_draining_by_the_given_clock():
    key = "indexer"
    view = coord(key, 3, 3, assigned=((A, 0), (B, 1), (C, 2), (D, None)),
                 live=(A, B, D, E),
                 slots=(slot(key, 0, 3, A, T0 + 5),   # A holds its slot
                        slot(key, 1, 2, C, T0 + 2),   # C still runs generation 2 at index 1
                        slot(key, 2, 2, E, T0 + 3.25),  # E is no longer assigned: draining
                        slot(key, 3, 2, B, T0)))      # expired at db_now: not held
    data = coord_status(view)
    assert set(data) == {"worker", "group", "key", "generation", "count", "published",
                         "members", "joining", "draining"}
    assert (data["worker"], data["group"], data["generation"], data["count"]) == (
        "indexer", None, 3, 3)
    assert data["published"] == "2027-01-15T07:59:30.000Z"
    assert [(m["node_id"], m["pid"], m["index"], m["holding"], m["slot_index"],
             m["slot_generation"], m["live"]) for m in data["members"]] == [
        ("node-a", 101, 0, True, 0, 3, True),
        ("node-b", 202, 1, False, None, None, True),
        ("node-c", 303, 2, True, 1, 2, False),
        ("node-d", 404, "standby", False, None, None, True),
    ]
    assert data["joining"] == [{"node_id": "node-e", "group": "blue", "pid": 505,
                                "since": "2027-01-15T07:59:03.000Z"}]
    assert data["draining"] == [{"node_id": "node-e", "group": "blue", "pid": 505, "index": 2,
                                 "generation": 2, "expires_in": 3.25}]

    text = status_text(status_data("sqlite:///x.db", T0, [], [], coordinated=[data]))
    lines = text.splitlines()
    at = lines.index("coordinated: 1")
    assert lines[at + 1].split() == ["indexer", "generation", "3", "count", "3", "published",
                                     "2027-01-15T07:59:30.000Z"]
    assert lines[at + 2] == "    index 0    node-a pid 101       holds slot 0"
    assert lines[at + 3] == ("    index 1    node-b pid 202       waiting for its slot "
                             "(generation 2 still holds slots)")
    assert lines[at + 4] == ("    index 2    node-c pid 303       holds slot 1 of generation 2 "
                             "(older: stopping) (no longer a live member)")
    assert lines[at + 5] == "    standby    node-d pid 404       standing by"
    assert lines[at + 6] == ("    joining    node-e pid 505       live since "
                             "2027-01-15T07:59:03.000Z, not in a generation yet")
    assert lines[at + 7] == ("    draining   node-e pid 505       holds slot 2 of generation 2 "
                             "(expires in 3.2s)")
    assert lines[at + 8] == ""


def test_with_fixed_instances_all_taken_a_live_member_outside_the_generation_stands_by():
    key = "indexer"
    view = coord(key, 4, 2, assigned=((A, 0), (B, 1), (C, None)), live=(A, B, D),
                 slots=(slot(key, 0, 4, A, T0 + 5), slot(key, 1, 4, B, T0 + 5)))
    data = coord_status(view, instances=2)
    assert data["joining"] == []
    assert [(m["node_id"], m["index"], m["live"]) for m in data["members"]] == [
        ("node-a", 0, True), ("node-b", 1, True), ("node-c", "standby", False),
        ("node-d", "standby", True)]
    # an index whose member is gone: the next generation takes D in, so D is joining
    vacant = coord(key, 4, 2, assigned=((A, 0), (B, 1)), live=(A, D))
    assert [m["node_id"] for m in coord_status(vacant, instances=2)["joining"]] == ["node-d"]
    # without instances (count follows membership) a newcomer always joins
    assert [m["node_id"] for m in coord_status(view)["joining"]] == ["node-d"]


def test_a_key_with_nothing_published_lists_its_live_members_as_joining():
    data = coord_status(coord("shards/blue", live=(A, B)))
    assert (data["group"], data["generation"], data["count"], data["published"]) == (
        "blue", 0, 0, None)
    assert data["members"] == [] and data["draining"] == []
    assert [m["node_id"] for m in data["joining"]] == ["node-a", "node-b"]
    text = status_text(status_data("sqlite:///x.db", T0, [], [], coordinated=[data]))
    assert "  shards@blue" in text and "no generation published yet" in text
    assert text.count("not in a generation yet") == 2


def test_coord_section_reads_one_key_for_global_scope_and_one_per_live_group_for_group():
    workers = parse_config(COORD_CONFIG).workers
    members = [NodeMember(A, T0 - 100, T0 + 5), NodeMember(C, T0 - 100, T0 + 5),
               NodeMember(B, T0 - 90, T0 + 5)]
    gone = "shards/green"  # its nodes are gone but one of them still holds a slot
    views = {
        "indexer": coord("indexer", 1, 3, assigned=((A, 0), (B, 1), (C, 2)), live=(A, B, C)),
        "shards/blue": coord("shards/blue", 2, 2, assigned=((A, 0), (B, 1)), live=(A, B)),
        "shards/red": coord("shards/red", live=(C,)),
        gone: coord(gone, 4, 1, assigned=((E, 0),), slots=(slot(gone, 0, 4, E, T0 + 1),)),
        "shards/old": coord("shards/old", 1, 1, assigned=((D, 0),),
                            slots=(slot("shards/old", 0, 1, D, T0 - 1),)),
    }
    read: list[str] = []

    def read_view(key: str) -> CoordStatus:
        read.append(key)
        return views[key]

    known = {"shards": ["shards/blue", "shards/old", gone, "shards/blue"], "indexer": []}
    section = coord_section(workers, members, read_view, lambda worker: known[worker])
    assert [(c["worker"], c["group"], c["key"]) for c in section] == [
        ("indexer", None, "indexer"),
        ("shards", "blue", "shards/blue"),
        ("shards", "green", "shards/green"),
        ("shards", "red", "shards/red"),
    ]  # shards/old: nothing live any more
    assert sorted(read) == sorted(["indexer", "shards/blue", "shards/red", gone, "shards/old"])
    assert section[2]["draining"] == [] and section[2]["members"][0]["holding"] is True
    assert status_data("sqlite:///x.db", T0, members, [])["coordinated"] == []


def test_history_places_generations_at_their_publish_time_with_members_in_index_order():
    generations = [
        CoordGeneration("shards/blue", 3, 2, (D, A, B), T0 - 1, None, (None, 1, 0)),
        CoordGeneration("indexer", 2, 3, (A, B), T0 - 3, None),  # written without indexes
        CoordGeneration("indexer", 1, 1, (A,), T0 - 7, T0 - 3),
    ]
    terms = [TermRecord("leader/lead", 2, A, T0 - 2, None, None, None)]
    runs = [run(3, T0, 0, A, "running", claimed=T0 + 0.2)]
    rows = history_data(terms, runs, generations=generations)
    assert [(r["kind"], r["at"]) for r in rows] == [
        ("run", "2027-01-15T08:00:00.000Z"),
        ("generation", "2027-01-15T07:59:59.000Z"),
        ("term", "2027-01-15T07:59:58.000Z"),
        ("generation", "2027-01-15T07:59:57.000Z"),
        ("generation", "2027-01-15T07:59:53.000Z"),
    ]
    newest = rows[1]
    assert newest == {
        "kind": "generation", "at": "2027-01-15T07:59:59.000Z", "worker": "shards",
        "group": "blue", "key": "shards/blue", "generation": 3, "count": 2,
        "members": ["node-b", "node-a"], "standby": ["node-d"],
        "published": "2027-01-15T07:59:59.000Z", "ended": None, "duration": None,
    }
    # index 2 had nobody (two live members, instances = 3)
    assert rows[3]["members"] == ["node-a", "node-b", None] and rows[3]["count"] == 3
    assert (rows[4]["ended"], rows[4]["duration"]) == ("2027-01-15T07:59:57.000Z", 4.0)
    assert [r["kind"] for r in history_data(terms, runs, 3, generations)] == [
        "run", "generation", "term"]
    # a tie: terms, then runs, then generations
    tied = history_data(terms, [], generations=[CoordGeneration("indexer", 5, 1, (A,), T0 - 2,
                                                                None)])
    assert [r["kind"] for r in tied] == ["term", "generation"]

    text = history_text(rows).splitlines()
    assert text[1] == ("2027-01-15T07:59:59.000Z  shards@blue              generation 3 count 2: "
                       "node-b, node-a (standby: node-d)  current")
    assert text[3].endswith("generation 2 count 3: node-a, node-b, (vacant)  current")
    assert text[4].endswith("indexer                  generation 1 count 1: node-a  "
                            "superseded after 4.0s")


def test_status_marks_a_triggered_run_with_who_asked():
    from dataclasses import replace

    from supervisor.store import CronTrigger

    asked = CronTrigger(3, "job", "k", T0 + 1, 30.0, "bob", "ops-1", None)
    records = [replace(run(9, T0 + 1, 0, A, "running"), trigger=asked),
               run(8, T0, 0, B, "succeeded", ended=T0 + 0.5, code=0)]
    workers = parse_config(CONFIG).workers
    job = cron_section(workers, T0 + 1.5, [], reader({"job": records}, []))[1]
    first, second = job["ticks"]
    assert first["trigger"]["user"] == "bob" and second["trigger"] is None
    text = status_text(status_data("sqlite:///x.db", T0 + 1.5, [], [], [job]))
    assert "[triggered by bob@ops-1]" in text
