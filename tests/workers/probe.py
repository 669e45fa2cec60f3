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

PROBE_DRAIN (seconds, default 0; with PROBE_DRAIN_ON, only on that node): on
SIGTERM/SIGINT record `draining`, then keep holding the lock this long before
releasing, as a worker with a slow graceful drain would (SIGKILL ends it sooner, and
the kernel lets the lock go). PROBE_CHATTY (bytes, default 0): once the lock is held,
write lines of about this size to stdout, about 5000 a second. PROBE_EXIT
(an exit status): once the lock is held, release it and exit with that status, as a
worker that crashes at once.
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
drain = float(os.environ.get("PROBE_DRAIN", "0") or 0)
if os.environ.get("PROBE_DRAIN_ON", NODE) != NODE:
    drain = 0.0  # only the named node's instances drain slowly
chatty = int(os.environ.get("PROBE_CHATTY", "0") or 0)
crash = os.environ.get("PROBE_EXIT", "")


def record(kind: str) -> None:
    os.write(log_fd, f"{kind} {NODE} {PID} {TOKEN} {time.time():.6f}\n".encode())


def try_lock() -> bool:
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def stop(signum: int, _frame: object) -> None:
    if holding and drain:
        record("draining")
        time.sleep(drain)  # still holding: a slow drain that only SIGKILL cuts short
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
if crash:
    record("released")
    os._exit(int(crash))
line = f"chatty token={TOKEN} pid={PID} ".ljust(max(chatty, 1), "x").encode() + b"\n"
written = 0
while True:
    if chatty:
        os.write(1, line)  # blocks while the supervisor does not read: only this child waits
        written += 1
        if written % 50 == 0:
            time.sleep(0.01)  # about 5000 lines a second: a chatty worker, not a CPU hog
    else:
        signal.pause()
