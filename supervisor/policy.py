"""Restart decisions: pure functions of a worker's exit history and an injected now.

The first restart after a crash is immediate; later ones wait a capped,
exponentially growing, jittered delay. A child that stayed up for
`backoff.reset` seconds resets the count. By default a worker is never given
up on; with `max_restarts > 0` it is failed once that many restarts fall
within `restart_window` seconds.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from supervisor.fields import Limits, Seconds
from supervisor.model import RestartPolicy


@dataclass(frozen=True)
class Backoff:
    """A worker's `backoff` table; its fields are the file's keys (see supervisor.spec)."""

    initial: Seconds = 1.0
    max: Seconds = 60.0
    factor: Annotated[float, Limits(ge=1.0)] = 2.0
    # a delay is drawn from [d * (1 - jitter), d]
    jitter: Annotated[float, Limits(ge=0.0, le=1.0)] = 0.2
    reset: Seconds = 30.0  # uptime after which a child counts as healthy again

    def delay(self, attempt: int, draw: float) -> float:
        """The wait before restart number `attempt` (1-based); `draw` is uniform in [0, 1)."""
        if attempt <= 1:
            return 0.0
        try:
            base = min(self.max, self.initial * self.factor ** (attempt - 2))
        except OverflowError:  # 2.0 ** 1100, after ~1000 quick failures in a row: the cap
            base = self.max
        return base * (1.0 - self.jitter * draw)


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    delay: float = 0.0
    attempt: int = 0
    give_up: bool = False


class RestartTracker:
    """Remembers one worker's recent exits and decides what happens after the next one."""

    def __init__(
        self,
        policy: RestartPolicy,
        backoff: Backoff,
        max_restarts: int = 0,
        window: float = 300.0,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self.backoff = backoff
        self.max_restarts = max_restarts
        self.window = window
        self._draw = draw
        self._attempt = 0
        self._restarts: deque[float] = deque()

    @property
    def attempt(self) -> int:
        """Consecutive quick exits so far; 0 once a child has stayed up long enough."""
        return self._attempt

    def on_exit(self, *, success: bool, uptime: float, now: float) -> RestartDecision:
        """Decide about a child that ended on its own (not one the supervisor stopped)."""
        if uptime >= self.backoff.reset:
            self._attempt = 0
        if self.policy is RestartPolicy.NEVER or (
            self.policy is RestartPolicy.ON_FAILURE and success
        ):
            return RestartDecision(restart=False, attempt=self._attempt)
        if self._limit_reached(now):
            return RestartDecision(restart=False, attempt=self._attempt, give_up=True)
        self._attempt += 1
        if self.max_restarts > 0:  # with no limit nothing prunes this deque: keep it empty
            self._restarts.append(now)
        delay = self.backoff.delay(self._attempt, self._draw())
        return RestartDecision(restart=True, delay=delay, attempt=self._attempt)

    def _limit_reached(self, now: float) -> bool:
        if self.max_restarts <= 0:
            return False
        while self._restarts and self._restarts[0] <= now - self.window:
            self._restarts.popleft()
        return len(self._restarts) >= self.max_restarts
