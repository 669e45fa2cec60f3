"""The runner and the worker loop with real child processes, in-process."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from supervisor.clock import boottime
from supervisor.coordination import Grant
from supervisor.errors import SpawnError
from supervisor.model import ExitReason, Mode, WorkerExited, WorkerStarted, WorkerState
from supervisor.runner import ProcessSpec, spawn
from supervisor.spec import NodeSpec, WorkerSpec
from supervisor.watchdog_client import TrustWatchdog
from supervisor.workers.long_running import WorkerSupervisor
from tests.conftest import PYTHON, WORKERS, pid_alive, wait_until

Lines = list[tuple[str, str]]


def collect() -> tuple[Lines, object]:
    lines: Lines = []
    return lines, lambda stream, line: lines.append((stream, line))


class Watch:
    """A publish/sink target that lets a test await the first item matching a predicate."""

    def __init__(self) -> None:
        self.items: list[object] = []
        self._changed = asyncio.Event()

    def __call__(self, *item: object) -> None:
        self.items.append(item[0] if len(item) == 1 else item)
        self._changed.set()

    async def first(self, predicate: object, within: float = 10.0) -> object:
        async with asyncio.timeout(within):
            while True:
                for item in self.items:
                    if predicate(item):  # type: ignore[operator]
                        return item
                self._changed.clear()
                await self._changed.wait()


def py(code: str) -> tuple[str, ...]:
    return (PYTHON, "-c", code)


def spec(argv: tuple[str, ...], **kwargs: object) -> ProcessSpec:
    return ProcessSpec(argv, dict(os.environ), ".", **kwargs)  # type: ignore[arg-type]


def test_lines_reach_the_sink_by_stream_including_long_and_unterminated_ones():
    code = (
        "import sys; print('one'); print('two', file=sys.stderr); "
        "sys.stdout.write('x' * 200000 + '\\n'); sys.stdout.write('tail')"
    )

    async def main() -> Lines:
        lines, sink = collect()
        proc = await spawn(spec(py(code)), sink)  # type: ignore[arg-type]
        status = await proc.wait()
        assert status.success
        return lines

    lines = asyncio.run(main())
    assert ("stdout", "one") in lines and ("stderr", "two") in lines
    assert lines[-1] == ("stdout", "tail")
    pieces = [line for stream, line in lines if line.startswith("x")]
    assert "".join(pieces) == "x" * 200000 and len(pieces) > 1


def test_a_child_that_ignores_the_stop_signal_is_killed_after_the_grace():
    async def main() -> tuple[int, float]:
        watch = Watch()
        proc = await spawn(spec((PYTHON, str(WORKERS / "stubborn.py"))), watch)
        await watch.first(lambda item: "ready" in item[1])  # its SIGTERM handler is set
        loop = asyncio.get_running_loop()
        started = loop.time()
        status = await proc.stop(grace=0.3)
        return status.returncode, loop.time() - started

    returncode, elapsed = asyncio.run(main())
    assert returncode == -signal.SIGKILL
    assert elapsed >= 0.3


def test_leftover_group_members_are_cleared_when_the_child_exits():
    code = (
        "import os, signal, time\n"
        "if os.fork() == 0:\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "    os.write(1, f'grandchild {os.getpid()}\\n'.encode())\n"
        "    time.sleep(3600)\n"
        "time.sleep(0.2)\n"
        "os._exit(3)\n"
    )

    async def main() -> tuple[int, int]:
        lines, sink = collect()
        proc = await spawn(spec(py(code), stop_timeout=0.5), sink)  # type: ignore[arg-type]
        status = await proc.wait()
        grandchild = int(next(line for _, line in lines if line.startswith("grandchild"))
                         .split()[1])
        return status.returncode, grandchild

    returncode, grandchild = asyncio.run(main())
    assert returncode == 3
    wait_until(lambda: not pid_alive(grandchild), 5, "the grandchild to be killed")


def test_spawn_errors_name_the_program_or_the_directory(tmp_path: Path):
    async def main(argv: tuple[str, ...], cwd: str) -> str:
        with pytest.raises(SpawnError) as caught:
            await spawn(ProcessSpec(argv, {}, cwd), lambda s, line: None)
        return str(caught.value)

    assert "/no/such/program" in asyncio.run(main(("/no/such/program",), str(tmp_path)))
    message = asyncio.run(main((PYTHON, "-c", "pass"), str(tmp_path / "missing")))
    assert str(tmp_path / "missing") in message


class RevocableMode:
    """A scripted mode: grants at once; the test revokes the grant when it likes."""

    mode = Mode.GLOBAL_LEADER

    def __init__(self, stop_grace: float) -> None:
        self.grants: list[Grant] = []
        self.released: list[str] = []
        self.granted = asyncio.Event()
        self.stop_grace = stop_grace

    async def acquire(self) -> Grant:
        grant = Grant(env={"SUPERVISOR_FENCING_TOKEN": str(len(self.grants) + 1)},
                      stop_grace=self.stop_grace)
        self.grants.append(grant)
        self.granted.set()
        return grant

    async def release(self, grant: Grant, reason: str) -> None:
        self.released.append(reason)


def test_a_revoked_grant_stops_the_child_within_the_grant_grace_not_stop_timeout():
    settings = NodeSpec(node_id="n1")
    config = WorkerSpec(command=(PYTHON, str(WORKERS / "stubborn.py")), stop_timeout=300.0)
    events = Watch()

    async def main() -> None:
        mode = RevocableMode(stop_grace=0.3)
        worker = WorkerSupervisor(
            "leader", config, settings, mode=mode, publish=events, watchdog=None,
            base_dir=Path.cwd(), environ=dict(os.environ),
        )
        task = asyncio.create_task(worker.run())
        try:
            started = await events.first(lambda e: isinstance(e, WorkerStarted))
            await events.first(lambda e: "ready" in getattr(e, "line", ""))
            pid = started.pid  # type: ignore[attr-defined]
            mode.granted.clear()
            mode.grants[0].revoked.set()  # lost the right: dead in 0.3 s, not 300 s
            async with asyncio.timeout(10):
                await mode.granted.wait()  # asked for a new grant only after the child ended
            assert not pid_alive(pid)
            assert mode.released == ["lost the lease"]
        finally:
            worker.kill_now()  # never leave a 300 s stop_timeout behind a failed assertion
        async with asyncio.timeout(10):
            assert await task is WorkerState.STOPPED

    asyncio.run(main())
    exits = [e for e in events.items if isinstance(e, WorkerExited)]
    assert exits[0].reason is ExitReason.STOPPED
    assert "SIGKILL" in exits[0].description


def test_the_grant_environment_reaches_the_child():
    settings = NodeSpec(node_id="n1")
    config = WorkerSpec(command=(PYTHON, str(WORKERS / "envdump.py")))
    events = Watch()

    async def main() -> None:
        mode = RevocableMode(stop_grace=1.0)
        worker = WorkerSupervisor(
            "leader", config, settings, mode=mode, publish=events, watchdog=None,
            base_dir=Path.cwd(), environ={"PATH": os.environ.get("PATH", "")},
        )
        task = asyncio.create_task(worker.run())
        await events.first(lambda e: getattr(e, "line", "").startswith("ENV "))
        worker.request_stop()
        await task

    asyncio.run(main())
    line = next(e.line for e in events.items  # type: ignore[attr-defined]
                if getattr(e, "line", "").startswith("ENV "))
    assert '"SUPERVISOR_FENCING_TOKEN": "1"' in line
    assert '"SUPERVISOR_MODE": "every-node"' in line  # the worker's own configured mode


def test_each_child_leads_its_own_session_and_group():
    code = "import os; print(os.getsid(0) == os.getpid() == os.getpgid(0))"

    async def main() -> Lines:
        lines, sink = collect()
        proc = await spawn(spec(py(code)), sink)  # type: ignore[arg-type]
        await proc.wait()
        return lines

    assert asyncio.run(main()) == [("stdout", "True")]


class OneGrant:
    """A scripted mode that hands out one given grant, then waits."""

    mode = Mode.GLOBAL_LEADER

    def __init__(self, grant: Grant) -> None:
        self.grant = grant
        self.handed = 0

    async def acquire(self) -> Grant:
        self.handed += 1
        if self.handed > 1:
            await asyncio.Event().wait()
        return self.grant

    async def release(self, grant: Grant, reason: str) -> None:
        return None


def test_a_stop_in_progress_is_cut_short_by_a_revocation_that_comes_during_it():
    # stop_timeout 300 s and a child that ignores SIGTERM: the stop requested first must
    # still obey the 0.3 s deadline of the revocation that comes after it.
    settings = NodeSpec(node_id="n1")
    config = WorkerSpec(command=(PYTHON, str(WORKERS / "stubborn.py")), stop_timeout=300.0)
    events = Watch()

    async def main() -> float:
        grant = Grant()
        worker = WorkerSupervisor(
            "leader", config, settings, mode=OneGrant(grant), publish=events, watchdog=None,
            base_dir=Path.cwd(), environ=dict(os.environ),
        )
        task = asyncio.create_task(worker.run())
        try:
            await events.first(lambda e: "ready" in getattr(e, "line", ""))
            worker.request_stop()
            await events.first(lambda e: "ready" in getattr(e, "line", ""), within=0.2)
            revoked_at = boottime()
            grant.revoke("the lease is gone", kill_by=revoked_at + 0.3, now=revoked_at)
            await events.first(lambda e: isinstance(e, WorkerExited), within=10)
            return boottime() - revoked_at
        finally:
            worker.kill_now()
            async with asyncio.timeout(10):
                await task

    took = asyncio.run(main())
    assert took < 0.3 + 1.0, f"the child outlived the revocation's deadline by {took - 0.3:.2f}s"


def test_a_child_is_not_started_once_its_trust_has_run_out_until_it_is_renewed():
    # The grant's trust ran out before the start (a backoff or a blocked loop outlasted
    # it, no renewal yet): nothing starts until a renewal comes.
    settings = NodeSpec(node_id="n1")
    config = WorkerSpec(command=(PYTHON, str(WORKERS / "stubborn.py")), stop_timeout=1.0)
    events = Watch()

    async def main() -> tuple[int, int]:
        grant = Grant(trust_until=boottime() - 0.1, trust_grace=0.5)
        worker = WorkerSupervisor(
            "leader", config, settings, mode=OneGrant(grant), publish=events, watchdog=None,
            base_dir=Path.cwd(), environ=dict(os.environ),
        )
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.sleep(0.5)  # an absence can only be watched for a while
            before = sum(isinstance(e, WorkerStarted) for e in events.items)
            grant.renew(boottime() + 60)
            await events.first(lambda e: isinstance(e, WorkerStarted))
            return before, sum(isinstance(e, WorkerStarted) for e in events.items)
        finally:
            worker.kill_now()
            async with asyncio.timeout(10):
                await task

    assert asyncio.run(main()) == (0, 1)


def test_the_watchdog_kills_a_child_by_its_deadline_while_the_loop_is_blocked():
    async def main() -> tuple[float, bool]:
        watchdog = TrustWatchdog()
        await watchdog.start()
        try:
            kill_at = boottime() + 0.3
            proc = await spawn(spec((PYTHON, str(WORKERS / "stubborn.py"))), lambda s, line: None,
                               watchdog=watchdog, kill_at=kill_at)
            # Block the loop (a stalled write, a long pause): only the watchdog can act.
            blocked_until = boottime() + 3.0
            while pid_alive(proc.pid) and boottime() < blocked_until:
                time.sleep(0.01)  # noqa: ASYNC251 -- blocking the loop is the point
            died = boottime() - kill_at
            status = await proc.wait()
            return died, status.signal == signal.SIGKILL and proc.killed_by_watchdog
        finally:
            await watchdog.close()

    late, killed = asyncio.run(main())
    assert killed
    assert -0.05 <= late <= 0.5, f"killed {late:+.2f}s from its deadline"


def test_closing_a_watchdog_slow_to_leave_still_reaps_it_before_the_loop_ends():
    """A starved machine (or a stopped watchdog) must not leave the watchdog unreaped when
    the loop closes: that was "Event loop is closed" at exit on 6 of 200 nodes."""

    async def main() -> int | None:
        watchdog = TrustWatchdog()
        await watchdog.start()
        proc = watchdog._proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGSTOP)  # it cannot read its EOF, let alone exit
        await watchdog.close()
        return proc.returncode

    assert asyncio.run(main()) is not None
