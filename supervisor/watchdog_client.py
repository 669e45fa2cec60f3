"""The supervisor's end of the trust watchdog (supervisor/watchdog.py, a process of its own).

Invariants:
- The watchdog, in a session of its own, holds every live process group with the
  instant (boot clock) it must be dead by, SIGKILLs a group whose instant passes
  whatever the supervisor is doing (blocked, starved, stopped), and SIGKILLs them all
  when the supervisor's end of its pipe closes, however the supervisor died; this also
  catches grandchildren, which PDEATHSIG does not.
- A child registers its own group with the watchdog from its pre-exec hook, before it
  runs a line of its program (`new_token` gives the pipe and the token for that): no
  window in which it runs unknown to the watchdog.
- Writes go through the loop's pipe transport, which buffers rather than blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import sys
from collections.abc import Callable
from pathlib import Path

from supervisor.processes import forget, spawning

_WATCHDOG = Path(__file__).with_name("watchdog.py")


class TrustWatchdog:
    """The supervisor's side of the trust watchdog (supervisor/watchdog.py).

    Each child gets a token; `deadline(token, t)` tells the watchdog the boot-clock
    instant by which its group must be dead (inf: only when the supervisor dies), and
    `drop(token)` forgets it once the group is gone. Writes go through the loop's pipe
    transport, which buffers rather than blocks. `lost` is set when the watchdog
    itself ends while the supervisor still runs: nothing enforces deadlines then, and
    the supervisor must stop its trusted children and step down (`on_lost`).
    """

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._tokens = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self.killed: dict[int, float] = {}  # token -> how late the watchdog killed it
        self.lost = asyncio.Event()
        self.on_lost: Callable[[str], None] | None = None

    async def start(self) -> None:
        with spawning() as record:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", str(_WATCHDOG),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
            record(self._proc.pid)
        self._reader = asyncio.get_running_loop().create_task(self._read(self._proc),
                                                              name="watchdog")

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def new_token(self, deadline: float) -> tuple[int, int] | None:
        """A token for a child about to be spawned, with its first deadline; and the
        pipe's descriptor for the child's own `bind` line. None if no watchdog runs."""
        fd = self._fd()
        if fd is None:
            return None
        token = next(self._tokens)
        self.deadline(token, deadline)
        return fd, token

    def deadline(self, token: int, when: float) -> None:
        self._send(f"set {token} {'inf' if math.isinf(when) else f'{when:.6f}'}\n")

    def drop(self, token: int) -> None:
        self.killed.pop(token, None)
        self._send(f"drop {token}\n")

    def _fd(self) -> int | None:
        if self._proc is None or self._proc.stdin is None or self.lost.is_set():
            return None
        pipe = self._proc.stdin.transport.get_extra_info("pipe")
        return None if pipe is None else int(pipe.fileno())

    def _send(self, line: str) -> None:
        if self._proc is not None and self._proc.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._proc.stdin.write(line.encode())

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        if proc.stdout is None:  # start() asks for a pipe: only a broken start gets here
            raise RuntimeError("the trust watchdog has no stdout pipe to read")
        async for raw in proc.stdout:
            words = raw.decode(errors="replace").split()
            if len(words) == 4 and words[0] == "killed":
                self.killed[int(words[1])] = float(words[3])
        code = await proc.wait()
        if not self._closing:
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            self.lost.set()
            if self.on_lost is not None:
                self.on_lost(f"the trust watchdog (pid {proc.pid}) ended ({how})")

    async def close(self) -> None:
        """A clean end: every group has been dropped, so the watchdog kills nothing."""
        if self._proc is None:
            return
        self._closing = True
        proc, self._proc = self._proc, None
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout=2.0)
        except TimeoutError:
            # Slow to leave (a starved or stopped machine): it has nothing left to kill, so
            # end it, and reap it before the loop closes (else asyncio's transport is
            # finalised on a closed loop: "Event loop is closed" at exit).
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        forget(proc.pid)
