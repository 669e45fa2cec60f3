"""The coordinated probe: each instance proves by itself that it overlaps nobody.

In PROBE_DIR each instance of generation g with index i:
- holds `idx-<i>.lock` exclusively (LOCK_EX | LOCK_NB) for its whole life: found held,
  another live instance has the same index (of any generation);
- holds `gen-<g>.lock` shared (LOCK_SH) for its whole life, and on start tries
  `gen-<h>.lock` exclusively for every older h < g: found held, an instance of an
  older generation is still alive while this one of a newer generation starts.

Lines appended to PROBE_DIR/log, one os.write each:
    start <node> <pid> <generation> <index> <count> <time>
    OVERLAP <node> <pid> <generation> <index> <count> <time> <what>
    end <node> <pid> <generation> <index> <count> <time>        (on SIGTERM)
"""

from __future__ import annotations

import fcntl
import os
import signal
import time

DIR = os.environ["PROBE_DIR"]
NODE = os.environ.get("SUPERVISOR_NODE_ID", "?") or "?"
GEN = int(os.environ.get("SUPERVISOR_GENERATION", "0") or 0)
INDEX = int(os.environ.get("SUPERVISOR_WORKER_INDEX", "-1") or -1)
COUNT = int(os.environ.get("SUPERVISOR_WORKER_COUNT", "0") or 0)
PID = os.getpid()
log_fd = os.open(os.path.join(DIR, "log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def record(kind: str, what: str = "") -> None:
    line = f"{kind} {NODE} {PID} {GEN} {INDEX} {COUNT} {time.time():.6f} {what}".rstrip()
    os.write(log_fd, (line + "\n").encode())


def lock(name: str, how: int) -> int | None:
    fd = os.open(os.path.join(DIR, name), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def stop(signum: int, _frame: object) -> None:
    record("end")
    os._exit(0)


signal.signal(signal.SIGTERM, stop)
record("start")
if lock(f"idx-{INDEX}.lock", fcntl.LOCK_EX) is None:
    record("OVERLAP", f"index {INDEX} held by another live instance")
if lock(f"gen-{GEN}.lock", fcntl.LOCK_SH) is None:
    record("OVERLAP", f"generation {GEN} locked by a newer instance's check")
for older in range(1, GEN):
    fd = lock(f"gen-{older}.lock", fcntl.LOCK_EX)
    if fd is None:
        record("OVERLAP", f"an instance of generation {older} is still alive")
    else:
        os.close(fd)
while True:
    time.sleep(3600)
