"""A worker whose output can be turned loud from outside: for stalled-reader faults.

Writes a line of about CHATTER_BYTES bytes (default 200) to stdout CHATTER_QUIET times
a second (default 2). While the file CHATTER_LOUD exists (the harness creates and
removes it; `{node}` in the path is replaced by SUPERVISOR_NODE_ID) it writes about
CHATTER_RATE lines a second instead (default 5000), as a chatty worker would: enough to
fill a stalled reader's pipe and the supervisor's output queue in seconds. Each line is
one os.write, which blocks only this child while the supervisor does not read. Exits 0
on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import time

NODE = os.environ.get("SUPERVISOR_NODE_ID", "?") or "?"
SIZE = int(os.environ.get("CHATTER_BYTES", "200") or 200)
QUIET = float(os.environ.get("CHATTER_QUIET", "2") or 2)
RATE = float(os.environ.get("CHATTER_RATE", "5000") or 5000)
LOUD = os.environ.get("CHATTER_LOUD", "").replace("{node}", NODE)
BATCH = 50  # lines between looks at the clock and the switch file

signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
line = f"chatter pid={os.getpid()} ".ljust(max(SIZE, 1) - 1, "x").encode() + b"\n"
count = 0
while True:
    if LOUD and os.path.exists(LOUD):
        started = time.monotonic()
        for _ in range(BATCH):
            os.write(1, line)
        count += BATCH
        time.sleep(max(0.0, BATCH / RATE - (time.monotonic() - started)))
    else:
        os.write(1, line)
        count += 1
        time.sleep(1 / QUIET)
