"""The node's local clocks, and which decision reads which.

Two local clocks, no more:
- The event loop's clock (`asyncio.get_running_loop().time()`, CLOCK_MONOTONIC) for
  everything the loop itself waits on or measures: trust timers, sync intervals,
  backoff, restart windows, uptime. Tests pin it with a virtual-clock loop
  (tests/support/clocks.py).
- `boottime()` for kill deadlines: CLOCK_BOOTTIME keeps counting while the machine is
  suspended (CLOCK_MONOTONIC does not), so a laptop or VM thawed after a suspend finds a
  stale renewal's deadline long past instead of trusting it. The trust watchdog
  (supervisor/watchdog.py, a separate process) kills by the same clock; it keeps its own
  copy of this function because it runs as `python -I -S` and imports the standard
  library only. A trusted grant carries both: the loop instant for the hold's timer,
  the boot instant for the child path and the watchdog (coordination/hold.py, Stamp).

Lease expiry is the database's clock, never a local one; the wall clock stamps logs only.
"""

from __future__ import annotations

import time

_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


def boottime() -> float:
    """Seconds on CLOCK_BOOTTIME (monotonic, counting through suspend); elsewhere, the
    monotonic clock."""
    if _BOOTTIME is None:
        return time.monotonic()
    return time.clock_gettime(_BOOTTIME)
