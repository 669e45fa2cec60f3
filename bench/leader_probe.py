"""The bench's exclusivity probe: a global-leader worker that records when it really holds.

Run by the supervisors under bench/failover.py (not by the bench itself). All instances of
the worker share a lock file (PROBE_LOCK) and a log (PROBE_LOG). On start the probe tries
`flock(LOCK_EX | LOCK_NB)`; the kernel drops a flock when its holder dies, so a lock still
held at start means another instance is alive at this instant: an overlap. The probe then
records `OVERLAP` once and keeps trying every 10 ms.

Each line is written with a single os.write on an O_APPEND descriptor (concurrent probes
never interleave): `<kind> <node> <pid> <token> <time.time()>`, kinds `started`,
`acquired` (after the lock was taken), `OVERLAP`, `released` (on SIGTERM/SIGINT, before the
lock is let go). Standard library only; starts fast under `python -I -S`.
"""

import fcntl
import os
import signal
import time

NODE = os.environ.get("SUPERVISOR_NODE_ID") or "?"
TOKEN = os.environ.get("SUPERVISOR_FENCING_TOKEN") or "-"
PID = os.getpid()

log_fd = os.open(os.environ["PROBE_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
lock_fd = os.open(os.environ["PROBE_LOCK"], os.O_RDWR | os.O_CREAT, 0o644)
holding = False


def record(kind: str) -> None:
    os.write(log_fd, f"{kind} {NODE} {PID} {TOKEN} {time.time():.6f}\n".encode())


def stop(_signum: int, _frame: object) -> None:
    if holding:
        record("released")
        os.close(lock_fd)
    os._exit(0)


def try_lock() -> bool:
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
record("started")
overlapped = False
while not try_lock():
    if not overlapped:
        overlapped = True
        record("OVERLAP")
    time.sleep(0.01)
holding = True
record("acquired")
while True:
    signal.pause()
