"""supervisor.clock: the boot clock the supervisor computes kill deadlines on is the one
the trust watchdog kills by (the watchdog keeps its own copy: it imports only the
standard library)."""

from __future__ import annotations

from supervisor import clock, watchdog


def test_the_supervisor_and_the_watchdog_read_the_same_boot_clock() -> None:
    before = clock.boottime()
    read = watchdog.boottime()
    after = clock.boottime()
    assert before <= read <= after
