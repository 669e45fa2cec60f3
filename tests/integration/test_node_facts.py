"""Each node's release and time-zone data in its membership row, and `status` comparing
them: on every backend, with facts injected through the holder (and one real node)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import insert

from supervisor import __version__
from supervisor.store import Holder, NodeFacts
from supervisor.store.schema import members
from supervisor.store.sql import SqlStore
from tests.conftest import SUPERVISOR_BIN, worker_command
from tests.databases import BACKENDS

TTL = 300.0  # rows stay live for the whole test
SYSTEM_2025B = NodeFacts("0.1.0", "system:/usr/share/zoneinfo", "2025b")
TZDATA_2026F = NodeFacts("0.2.0", "tzdata", "2026f")
TZDATA_2025B = NodeFacts("0.2.0", "tzdata", "2025b")


def join(store: SqlStore, holder: Holder, facts: NodeFacts | None) -> Holder:
    """The holder heartbeats its membership row in, as node_sync does for a node."""
    node = dataclasses.replace(holder, facts=facts)
    store.node_sync(node, held=[], wanted=[], ttl=TTL)
    return node


def join_as_an_older_release(store: SqlStore, holder: Holder) -> None:
    """A row as a node of an older release writes it: without the facts' columns."""
    now = store.db_now()
    with store.engine.begin() as conn:
        conn.execute(insert(members).values(
            nonce=holder.nonce, node_id=holder.node_id, group_name=holder.group,
            pid=holder.pid, started_at=now, heartbeat_at=now, expires_at=now + TTL))


def facts_of(store: SqlStore) -> dict[str, tuple[str | None, str | None, str | None]]:
    return {m.holder.node_id: (m.release, m.tz_source, m.tz_version) for m in store.members()}


def status(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "status.toml"
    cfg.write_text(f'database_url = "{url}"\n\n[workers.job]\ncommand = ["true"]\n'
                   'mode = "cron"\ncron = "0 2 * * *"\ntimezone = "Europe/Berlin"\n')
    done = subprocess.run([str(SUPERVISOR_BIN), "status", *args, "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done


def test_members_returns_each_nodes_release_and_zone_data(store, a, b):
    join(store, a, SYSTEM_2025B)
    join(store, b, TZDATA_2026F)
    assert facts_of(store) == {
        "node-a": ("0.1.0", "system:/usr/share/zoneinfo", "2025b"),
        "node-b": ("0.2.0", "tzdata", "2026f"),
    }


def test_a_node_of_an_older_release_has_no_facts(store, a, b):
    join(store, a, SYSTEM_2025B)
    join_as_an_older_release(store, b)
    assert facts_of(store)["node-b"] == (None, None, None)
    assert facts_of(store)["node-a"] == ("0.1.0", "system:/usr/share/zoneinfo", "2025b")


def test_facts_are_written_when_the_row_is_inserted_not_by_every_heartbeat(store, a):
    node = join(store, a, SYSTEM_2025B)
    join(store, node, TZDATA_2026F)  # same process (nonce): a heartbeat updates times only
    assert facts_of(store) == {"node-a": ("0.1.0", "system:/usr/share/zoneinfo", "2025b")}
    store.node_leave(node)
    join(store, node, TZDATA_2026F)  # a row inserted again takes what the holder says now
    assert facts_of(store) == {"node-a": ("0.2.0", "tzdata", "2026f")}


def test_facts_longer_than_their_columns_are_cut_not_refused(store, a):
    long = "x" * 40
    join(store, a, NodeFacts("1.0.0+" + long, "system:" + long, "2025b" + long))
    release, source, version = facts_of(store)["node-a"]
    assert (release, source, version) == (("1.0.0+" + long)[:32], ("system:" + long)[:32],
                                          ("2025b" + long)[:32])


def test_status_shows_each_nodes_zone_data_and_warns_when_versions_differ(
        tmp_path, database_url, store, a, b, c):
    join(store, a, SYSTEM_2025B)
    join(store, b, TZDATA_2026F)
    join_as_an_older_release(store, c)

    data = json.loads(status(tmp_path, database_url, "--json").stdout)
    nodes = {n["node_id"]: n for n in data["nodes"]}
    assert [(nodes[n]["release"], nodes[n]["tz_source"], nodes[n]["tz_version"])
            for n in ("node-a", "node-b", "node-c")] == [
        ("0.1.0", "system:/usr/share/zoneinfo", "2025b"), ("0.2.0", "tzdata", "2026f"),
        (None, None, None)]
    zone = data["zone_data"]
    assert zone["differ"] is True
    assert zone["versions"] == {"2025b": ["node-a"], "2026f": ["node-b"]}
    assert zone["unknown"] == ["node-c"]
    assert "node-a" in zone["warning"] and "node-b" in zone["warning"]

    out = status(tmp_path, database_url).stdout
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  node-")}
    assert lines["node-a"].endswith("release 0.1.0  tz data 2025b (system:/usr/share/zoneinfo)")
    assert lines["node-b"].endswith("release 0.2.0  tz data 2026f (tzdata)")
    assert lines["node-c"].endswith("release unknown  tz data unknown")
    [warning] = [line.strip() for line in out.splitlines() if "warning" in line]
    assert warning.startswith(
        "warning: live nodes use different time-zone data: "
        "2025b (system:/usr/share/zoneinfo) on node-a; 2026f (tzdata) on node-b. ")
    assert "can fire at different instants on different nodes" in warning
    assert "node-c" not in warning


def test_status_does_not_warn_when_the_versions_agree_whatever_their_source(
        tmp_path, database_url, store, a, b, c):
    join(store, a, SYSTEM_2025B)
    join(store, b, TZDATA_2025B)
    join_as_an_older_release(store, c)  # unknown, not a difference by itself

    data = json.loads(status(tmp_path, database_url, "--json").stdout)
    assert data["zone_data"] == {"differ": False, "versions": {"2025b": ["node-a", "node-b"]},
                                 "unknown": ["node-c"], "warning": None}
    out = status(tmp_path, database_url).stdout
    assert "warning" not in out
    assert "release 0.2.0  tz data 2025b (tzdata)" in out


@pytest.mark.parametrize("database_backend", BACKENDS)
def test_a_running_node_reports_its_release_and_the_zone_data_its_environment_selects(
        supervisor_run, tmp_path, database_url):
    tzdata = pytest.importorskip("tzdata")
    run = supervisor_run(f"""
database_url = "{database_url}"
node_id = "node-a"
[coordination]
lease_ttl = "4s"
renew_interval = "300ms"
renew_deadline = "1500ms"
[metrics]
enabled = false
[workers.lead]
command = {worker_command("stubborn.py")}
mode = "global-leader"
stop_timeout = "1s"
""", env={"PYTHONTZPATH": ""})  # no system directory: zoneinfo reads the tzdata package
    run.expect(r"lead: leader of leader/lead with fencing token 1", after_start=True)
    data = json.loads(status(tmp_path, database_url, "--json").stdout)
    [node] = data["nodes"]
    assert (node["node_id"], node["release"], node["tz_source"], node["tz_version"]) == (
        "node-a", __version__, "tzdata", tzdata.IANA_VERSION)
