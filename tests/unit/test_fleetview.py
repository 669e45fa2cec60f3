"""`status` and `history` data from scripted store records: no database, pinned times."""

from __future__ import annotations

from supervisor.config import parse_config
from supervisor.fleetview import (
    TICKS_SHOWN,
    cron_rows_needed,
    cron_section,
    history_data,
    history_text,
    status_data,
    status_text,
    tick_summary,
)
from supervisor.store import CronRunRecord, Holder, Member, TermRecord

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
    members = [Member(A, T0 - 100, T0 + 5)]  # node-b's supervisor is gone
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
    assert "run  slot 0   node-a pid 101      running" in text[0]
    assert "lead" in text[1] and "holding" in text[1]
    assert "tick missed (nobody could run it within misfire_grace)" in text[2]
    assert "failed exit 1 after 1.5s" in text[4]
    assert history_text([]) == "no history yet"
