"""The exclusivity probe: a leader worker that proves by itself that it runs alone.

Every instance of one leader worker shares a lock file (PROBE_LOCK) and a log
(PROBE_LOG). On start the probe tries `flock(LOCK_EX | LOCK_NB)` on the lock file.
The kernel drops a flock when the process holding it dies, so a lock still held
when a new instance starts means another instance is alive right now: two
instances of the worker run at once. The probe then records `OVERLAP` at once
(after PROBE_WAIT seconds of silent retries, default 0: none) and keeps trying
every 20 ms; it never exits 0 because of an overlap.

Log lines, each written with one os.write on an O_APPEND descriptor so that lines
of concurrent probes never interleave:

    started  <node> <pid> <token> <time>   before the first try
    acquired <node> <pid> <token> <time>   after the lock was taken
    OVERLAP  <node> <pid> <token> <time>   the lock was held by another live instance
    released <node> <pid> <token> <time>   on SIGTERM/SIGINT, before the lock is let go

`<time>` is time.time() taken after locking and before unlocking, so a recorded
interval lies inside the interval the lock was really held. stdout gets
`probe running token=<T> pid=<P>` once the lock is held. The node comes from
SUPERVISOR_NODE_ID, the token from SUPERVISOR_FENCING_TOKEN (`-` when absent).
"""

from __future__ import annotations

import fcntl
import os
import signal
import time

NODE = os.environ.get("SUPERVISOR_NODE_ID", "?") or "?"
TOKEN = os.environ.get("SUPERVISOR_FENCING_TOKEN", "-") or "-"
PID = os.getpid()
RETRY = 0.02

log_fd = os.open(os.environ["PROBE_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
lock_fd = os.open(os.environ["PROBE_LOCK"], os.O_RDWR | os.O_CREAT, 0o644)
wait = float(os.environ.get("PROBE_WAIT", "0") or 0)


def record(kind: str) -> None:
    os.write(log_fd, f"{kind} {NODE} {PID} {TOKEN} {time.time():.6f}\n".encode())


def try_lock() -> bool:
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def stop(signum: int, _frame: object) -> None:
    if holding:
        record("released")
        os.close(lock_fd)  # lets the lock go; the kernel would do it at exit anyway
    os._exit(0)


holding = False
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
record("started")
deadline = time.monotonic() + wait
overlapped = False
while not try_lock():
    if not overlapped and time.monotonic() >= deadline:
        overlapped = True
        record("OVERLAP")
        print(f"probe OVERLAP token={TOKEN} pid={PID}", flush=True)
    time.sleep(RETRY)
holding = True
record("acquired")
print(f"probe running token={TOKEN} pid={PID}", flush=True)
while True:
    signal.pause()
