"""Clocks for unit tests: a clock that moves only when told to, and an event loop whose
clock jumps to its next timer instead of waiting for it.

Production code has no fakes: it reads the event loop's clock, or the boot clock
(`supervisor.clock.boottime`) for kill deadlines; tests pin time through these.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class FakeClock:
    """A `() -> float` clock that reads `now`, which the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _JumpingSelector(selectors.DefaultSelector):
    """Never waits for a timer: moves the virtual clock to it instead."""

    clock: VirtualClockLoop

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("virtual clock: nothing is scheduled and nothing is ready")
        self.clock.advance(timeout)
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock: when nothing is ready it jumps to the next timer,
    so minutes pass in milliseconds and every instant is exact.

    Its clock starts at 0 and stays small: asyncio runs a timer due at `now` only if
    `now + clock resolution (1 ns)` rounds above it, which fails near epoch values."""

    def __init__(self) -> None:
        self._now = 0.0
        selector = _JumpingSelector()
        selector.clock = self
        super().__init__(selector)

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to its end on a VirtualClockLoop."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(main)
