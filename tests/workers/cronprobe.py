"""The cron probe: a cron worker that records what each run itself observes.

Each run appends lines to PROBE_LOG (one os.write on an O_APPEND descriptor each, so
lines of concurrent runs never interleave):

    start <node> <pid> <token> <tick> <slot> <time>   first thing
    OVERLAP <node> <pid> <token> <tick> <slot> <time> PROBE_LOCK was held by a live run
    end <node> <pid> <token> <tick> <slot> <time>     last thing (exit or SIGTERM)

With PROBE_LOCK set, the run takes `flock(LOCK_EX | LOCK_NB)` on that file for its
whole life: the kernel drops a flock when its holder dies, so finding it held means
another run of the worker is alive right now (what `overlap = "forbid"` must prevent).
The run lasts CRON_RUN_SECONDS (default 0) and exits CRON_EXIT (default 0).
`<tick>` is SUPERVISOR_CRON_TICK as given (ISO 8601 UTC), `<time>` is time.time().
"""

from __future__ import annotations

import fcntl
import os
import signal
import time

NODE = os.environ.get("SUPERVISOR_NODE_ID", "?") or "?"
TOKEN = os.environ.get("SUPERVISOR_FENCING_TOKEN", "-") or "-"
TICK = os.environ.get("SUPERVISOR_CRON_TICK", "-") or "-"
SLOT = os.environ.get("SUPERVISOR_CRON_SLOT", "-") or "-"
PID = os.getpid()

log_fd = os.open(os.environ["PROBE_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def record(kind: str) -> None:
    os.write(log_fd, f"{kind} {NODE} {PID} {TOKEN} {TICK} {SLOT} {time.time():.6f}\n".encode())


def stop(signum: int, _frame: object) -> None:
    record("end")
    os._exit(143)


def main() -> int:
    signal.signal(signal.SIGTERM, stop)
    record("start")
    lock = os.environ.get("PROBE_LOCK")
    if lock:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            record("OVERLAP")
            fcntl.flock(fd, fcntl.LOCK_EX)  # go on, so the run still has its length
    time.sleep(float(os.environ.get("CRON_RUN_SECONDS", "0") or 0))
    record("end")
    return int(os.environ.get("CRON_EXIT", "0") or 0)


if __name__ == "__main__":
    raise SystemExit(main())
