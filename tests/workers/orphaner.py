"""Leaves an orphan behind: a grandchild in its own session that outlives it, then exits 7."""

import os
import sys
import time

pid = os.fork()
if pid == 0:
    os.setsid()  # out of our group, so only the PID-1 reaper can take care of it
    time.sleep(0.5)
    os._exit(0)
print(f"orphan pid={pid}", flush=True)
sys.exit(7)
