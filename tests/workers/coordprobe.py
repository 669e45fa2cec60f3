"""The coordinated probe: each instance proves by itself that it overlaps nobody.

In PROBE_DIR each instance of generation g with index i:
- holds `idx-<i>.lock` exclusively (LOCK_EX | LOCK_NB) for its whole life: found held,
  another live instance has the same index (of any generation);
- holds a read lock on `gen-<g>.lock` for its whole life (an open-file-description
  lock, F_OFD_SETLK, dropped by the kernel when the process dies), and on start asks
  the kernel (F_OFD_GETLK, which takes no lock) whether any read lock is held on
  `gen-<h>.lock` for every older h < g: if one is, an instance of an older generation
  is still alive while this one of a newer generation starts. Asking takes no lock,
  so two new instances checking at the same instant cannot mistake each other's
  check for a live old instance (taking LOCK_EX to check could).

With PROBE_SCOPE set (scope = "group": each group's key is a worker of its own), the
lock files are per scope: `<scope>-idx-<i>.lock`, `<scope>-gen-<g>.lock`.

Lines appended to PROBE_DIR/log, one os.write each:
    start <node> <pid> <generation> <index> <count> <time>
    OVERLAP <node> <pid> <generation> <index> <count> <time> <what>
    draining <node> <pid> <generation> <index> <count> <time>   (on SIGTERM, PROBE_DRAIN)
    end <node> <pid> <generation> <index> <count> <time>        (on SIGTERM)

PROBE_DRAIN (seconds, default 0; with PROBE_DRAIN_ON, only on that node): on SIGTERM
keep every lock this long before ending, as a worker with a slow graceful drain would;
only SIGKILL cuts it short.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import time

DIR = os.environ["PROBE_DIR"]
NODE = os.environ.get("SUPERVISOR_NODE_ID", "?") or "?"
GEN = int(os.environ.get("SUPERVISOR_GENERATION", "0") or 0)
INDEX = int(os.environ.get("SUPERVISOR_WORKER_INDEX", "-1") or -1)
COUNT = int(os.environ.get("SUPERVISOR_WORKER_COUNT", "0") or 0)
PID = os.getpid()
SCOPE = os.environ.get("PROBE_SCOPE", "")
PREFIX = f"{SCOPE}-" if SCOPE else ""
DRAIN = float(os.environ.get("PROBE_DRAIN", "0") or 0)
if os.environ.get("PROBE_DRAIN_ON", NODE) != NODE:
    DRAIN = 0.0  # only the named node's instances drain slowly
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


FLOCK = "hhqqi4x"  # struct flock on Linux: type, whence, start, len, pid


def hold_read(name: str) -> bool:
    fd = os.open(os.path.join(DIR, name), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(FLOCK, fcntl.F_RDLCK, os.SEEK_SET,
                                                       0, 0, 0))
    except OSError:
        os.close(fd)
        return False
    return True


def read_held(name: str) -> bool:
    fd = os.open(os.path.join(DIR, name), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, struct.pack(FLOCK, fcntl.F_WRLCK, os.SEEK_SET,
                                                             0, 0, 0))
    finally:
        os.close(fd)
    kind: int = struct.unpack(FLOCK, got)[0]
    return kind != fcntl.F_UNLCK


def stop(signum: int, _frame: object) -> None:
    if DRAIN:
        record("draining")
        time.sleep(DRAIN)  # still holding every lock
    record("end")
    os._exit(0)


signal.signal(signal.SIGTERM, stop)
record("start")
if lock(f"{PREFIX}idx-{INDEX}.lock", fcntl.LOCK_EX) is None:
    record("OVERLAP", f"index {INDEX} held by another live instance")
if not hold_read(f"{PREFIX}gen-{GEN}.lock"):
    record("OVERLAP", f"cannot hold generation {GEN}'s lock")
for older in range(1, GEN):
    if read_held(f"{PREFIX}gen-{older}.lock"):
        record("OVERLAP", f"an instance of generation {older} is still alive")
while True:
    time.sleep(3600)
