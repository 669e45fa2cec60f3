"""The control socket's pure parts: where the socket lives, the protocol's requests, the
log ring buffer and `ps`'s rows (supervisor.control)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from supervisor.control.logbuffer import LogBuffers
from supervisor.control.paths import (
    SUN_PATH_MAX,
    SocketPathError,
    encode_node,
    fitted_name,
    socket_path,
)
from supervisor.control.protocol import (
    BAD_REQUEST,
    UNKNOWN_SIGNAL,
    UNKNOWN_WORKER,
    ProtocolError,
    Request,
    check_worker,
    decode,
    encode,
    parse_request,
)
from supervisor.control.rows import WorkerFacts, format_uptime, ps_row, ps_text, role
from supervisor.model import WorkerOutput

BASE = Path("/etc/fleet")

# --- paths ----------------------------------------------------------------------------------


def test_the_default_is_in_xdg_runtime_dir_named_after_the_node() -> None:
    where = socket_path("", "web-1", base_dir=BASE, environ={"XDG_RUNTIME_DIR": "/run/user/7"},
                        uid=7)
    assert where.path == Path("/run/user/7/fleet-supervisor/web-1.sock")
    assert where.own_dir


def test_without_xdg_the_users_runtime_dir_then_the_temp_dir(tmp_path: Path) -> None:
    (tmp_path / "1000").mkdir()
    found = socket_path("", "a", base_dir=BASE, environ={}, uid=1000, run_user=tmp_path)
    assert found.path == tmp_path / "1000" / "fleet-supervisor" / "a.sock"
    fallback = socket_path("", "a", base_dir=BASE, environ={"XDG_RUNTIME_DIR": ""}, uid=1001,
                           run_user=tmp_path, tmp="/var/tmp")
    assert fallback.path == Path("/var/tmp/fleet-supervisor-1001/a.sock")
    assert fallback.own_dir


def test_a_configured_path_is_taken_as_is_relative_to_the_files_directory() -> None:
    relative = socket_path("run/ctl.sock", "a", base_dir=BASE, environ={}, uid=0)
    assert relative.path == BASE / "run" / "ctl.sock"
    assert not relative.own_dir
    absolute = socket_path("/run/x.sock", "a", base_dir=BASE,
                           environ={"XDG_RUNTIME_DIR": "/r"}, uid=0)
    assert absolute.path == Path("/run/x.sock")


@pytest.mark.parametrize(("node_id", "name"), [
    ("web-1", "web-1"), ("a/b", "a%2Fb"), ("..", "%2E%2E"), (".hidden", "%2Ehidden"),
    ("é", "%C3%A9"), ("a%2Fb", "a%252Fb"),
])
def test_node_ids_become_file_names_that_neither_collide_nor_climb(node_id: str,
                                                                   name: str) -> None:
    assert encode_node(node_id) == name


def test_a_long_node_id_is_cut_and_hashed_to_fit_a_socket_address() -> None:
    directory = Path("/run/user/1000/fleet-supervisor")
    first, second = "n" * 150 + "-1", "n" * 150 + "-2"
    names = {fitted_name(directory, first), fitted_name(directory, second)}
    assert len(names) == 2
    for name in names:
        assert len(os.fsencode(directory / name)) <= SUN_PATH_MAX
        assert name.endswith(".sock")
    escaped = fitted_name(directory, "/" * 150)  # never cut inside a %XX escape
    assert "%" not in escaped.split("~")[0][-2:]
    assert len(os.fsencode(directory / escaped)) <= SUN_PATH_MAX


def test_a_configured_path_too_long_for_a_socket_is_refused() -> None:
    with pytest.raises(SocketPathError, match=r"control_socket: .* bytes; a Unix socket"):
        socket_path("/" + "d" * 120 + "/x.sock", "a", base_dir=BASE, environ={}, uid=0)


# --- protocol -------------------------------------------------------------------------------


def test_requests_parse_and_round_trip() -> None:
    assert parse_request(b'{"cmd": "ps"}\n') == Request("ps")
    stop = parse_request(b'{"cmd": "stop", "worker": "all"}')
    assert stop == Request("stop", "all")
    sig = parse_request(b'{"cmd": "signal", "worker": "web", "signal": "hup"}')
    assert sig.signal is signal.SIGHUP
    assert parse_request(b'{"cmd": "signal", "worker": "w", "signal": 9}').signal \
        is signal.SIGKILL
    logs = Request("logs", "web", lines=5, follow=True)
    assert parse_request(json.dumps(logs.to_json()).encode()) == logs
    assert parse_request(json.dumps(sig.to_json()).encode()) == sig


@pytest.mark.parametrize(("line", "code", "fragment"), [
    (b"not json", BAD_REQUEST, "one line of JSON"),
    (b"[1]", BAD_REQUEST, "JSON object"),
    (b'{"cmd": "reboot"}', BAD_REQUEST, "unknown cmd 'reboot'"),
    (b'{"cmd": "stop"}', BAD_REQUEST, "'worker' must be"),
    (b'{"cmd": "stop", "worker": 3}', BAD_REQUEST, "'worker' must be"),
    (b'{"cmd": "signal", "worker": "all", "signal": "HUP"}', BAD_REQUEST, "name one worker"),
    (b'{"cmd": "signal", "worker": "w"}', BAD_REQUEST, "'signal' must be"),
    (b'{"cmd": "signal", "worker": "w", "signal": "SIGNOPE"}', UNKNOWN_SIGNAL, "SIGNOPE"),
    (b'{"cmd": "logs", "worker": "w", "lines": -1}', BAD_REQUEST, "'lines' must be"),
    (b'{"cmd": "logs", "worker": "w", "lines": true}', BAD_REQUEST, "'lines' must be"),
    (b'{"cmd": "logs", "worker": "w", "follow": "yes"}', BAD_REQUEST, "'follow' must be"),
])
def test_bad_requests_are_refused_with_a_code_and_a_message(line: bytes, code: str,
                                                            fragment: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_request(line)
    assert refused.value.code == code
    assert fragment in refused.value.message
    answer = refused.value.answer()
    assert answer["ok"] is False and answer["error"] == code


def test_an_unknown_worker_is_named_and_the_known_ones_listed() -> None:
    assert check_worker("web", ["web", "cron"], allow_all=True) == ["web"]
    assert check_worker("all", ["web", "cron"], allow_all=True) == ["web", "cron"]
    with pytest.raises(ProtocolError) as refused:
        check_worker("wbe", ["web", "cron"], allow_all=True)
    assert refused.value.code == UNKNOWN_WORKER
    assert "'wbe'" in refused.value.message and "web, cron" in refused.value.message
    assert refused.value.answer()["known"] == ["web", "cron"]
    with pytest.raises(ProtocolError):
        check_worker("all", ["web"], allow_all=False)


def test_answers_are_one_line_each() -> None:
    line = encode({"ok": True, "lines": [{"line": "a\nb"}]})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line)["lines"][0]["line"] == "a\nb"
    with pytest.raises(ValueError):
        decode(b"[]")


# --- the log ring buffer -----------------------------------------------------------------


def test_the_ring_keeps_the_last_lines_by_count_and_by_bytes() -> None:
    clock = iter(range(1000)).__next__
    logs = LogBuffers(max_lines=3, max_bytes=10, clock=lambda: float(clock()))
    for text in ("a", "b", "c", "d"):
        logs(WorkerOutput("web", "stdout", text))
    logs(WorkerOutput("other", "stderr", "x"))
    assert [line.line for line in logs.tail("web", 10)] == ["b", "c", "d"]
    assert [line.line for line in logs.tail("web", 2)] == ["c", "d"]
    assert logs.tail("web", 0) == []
    assert logs.tail("unknown", 5) == []
    logs(WorkerOutput("web", "stderr", "0123456789"))  # 10 bytes alone: the rest goes
    assert [(line.stream, line.line) for line in logs.tail("web", 10)] == \
        [("stderr", "0123456789")]
    assert logs.size("web") == (1, 10)
    assert logs.tail("other", 5)[0].at == 4.0


def test_a_follower_gets_new_lines_and_a_slow_one_is_told_how_many_it_lost() -> None:
    async def scenario() -> list[tuple[int, str]]:
        logs = LogBuffers(follow_queue=2)
        follower = logs.follow("web")
        for text in ("1", "2", "3", "4", "5"):  # 3, 4, 5 find the queue full
            logs(WorkerOutput("web", "stdout", text))
        got = [follower.queue.get_nowait(), follower.queue.get_nowait()]
        logs(WorkerOutput("web", "stdout", "6"))
        got.append(follower.queue.get_nowait())
        logs.unfollow("web", follower)
        logs(WorkerOutput("web", "stdout", "7"))
        assert follower.queue.empty()
        return [(dropped, line.line) for dropped, line in got]

    assert asyncio.run(scenario()) == [(0, "1"), (0, "2"), (3, "6")]


# --- ps rows --------------------------------------------------------------------------------


def facts(**fields: object) -> WorkerFacts:
    base: dict[str, object] = {"name": "w", "mode": "every-node", "state": "running"}
    return WorkerFacts(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(("fields", "expected"), [
    ({"pids": (5,)}, "running"),
    ({"state": "waiting"}, "starting"),
    ({"mode": "global-leader", "granted": True, "pids": (5,)}, "leader"),
    ({"mode": "group-leader", "state": "waiting"}, "follower"),
    ({"mode": "coordinated", "granted": True, "index": 1, "count": 3, "generation": 2},
     "index 1 of 3"),
    ({"mode": "coordinated", "state": "waiting", "index": None, "count": 2, "generation": 4},
     "standby"),
    ({"mode": "coordinated", "state": "waiting"}, "waiting for a slot"),
    ({"mode": "cron", "state": "waiting"}, "waiting for tick"),
    ({"mode": "cron", "pids": (9,)}, "running"),
    ({"state": "backoff", "backoff_until": 0.25}, "backoff until 1970-01-01T00:00:00.250Z"),
    ({"state": "failed"}, "given up"),
    ({"state": "exited"}, "exited"),
    ({"state": "stopped"}, "stopped"),
])
def test_the_role_says_what_the_worker_does_now(fields: dict[str, object],
                                                expected: str) -> None:
    assert role(facts(**fields)) == expected


def test_stopped_and_paused_win_over_what_the_worker_reports() -> None:
    leader = facts(mode="global-leader", granted=True)
    assert role(leader, stopped=True) == "stopped"
    assert role(leader, paused=True) == "paused"


def test_a_row_carries_pids_uptime_restarts_last_exit_and_next_tick() -> None:
    row = ps_row(facts(mode="cron", state="waiting", started_at=90.0, restarts=2,
                       last_exit="exit status 1", last_exit_reason="", last_exit_at=80.0,
                       next_tick=120.0, token="7", pids=(4, 5)), now=100.0)
    assert row["pids"] == [4, 5]
    assert row["uptime"] == 10.0
    assert row["restarts"] == 2
    assert row["last_exit"] == {"status": "exit status 1", "reason": "",
                                "at": "1970-01-01T00:01:20.000Z"}
    assert row["next_tick"] == "1970-01-01T00:02:00.000Z"
    assert row["token"] == "7"
    stopped = ps_row(facts(mode="cron", next_tick=120.0), now=100.0, stopped=True)
    assert stopped["next_tick"] is None and stopped["state"] == "stopped"
    json.dumps(row)  # JSON-ready


def test_only_a_granted_coordinated_worker_shows_an_index() -> None:
    waiting = ps_row(facts(mode="coordinated", state="waiting", index=1, count=2,
                           generation=3), now=0.0)
    assert (waiting["index"], waiting["count"], waiting["generation"]) == (None, None, 3)


def test_the_text_table_has_a_line_per_worker_under_aligned_headers() -> None:
    rows = [ps_row(facts(name="web", pids=(42,), started_at=0.0), now=3723.0),
            ps_row(facts(name="nightly", mode="cron", state="waiting", last_exit="exit status 2",
                         last_exit_reason="ran longer than timeout (1s)"), now=0.0)]
    lines = ps_text(rows).splitlines()
    assert lines[0].split()[:3] == ["WORKER", "MODE", "ROLE"]
    assert lines[1].split()[:5] == ["web", "every-node", "running", "42", "1:02:03"]
    assert "exit status 2 (ran longer than timeout (1s))" in lines[2]
    assert lines[0].index("MODE") == lines[1].index("every-node")
    assert format_uptime(90061.0) == "1d 1:01:01"
    assert format_uptime(None) == "-"
