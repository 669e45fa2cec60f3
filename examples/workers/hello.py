"""A tiny worker: says who and where it is, then ticks until asked to stop."""

import os
import signal
import sys
import time

running = True


def stop(signum: int, frame: object) -> None:
    global running
    running = False


signal.signal(signal.SIGTERM, stop)
name = os.environ.get("SUPERVISOR_WORKER", "hello")
token = os.environ.get("SUPERVISOR_FENCING_TOKEN")
print(f"{name}: hello from node {os.environ.get('SUPERVISOR_NODE_ID')} "
      f"in group {os.environ.get('SUPERVISOR_GROUP')} (mode {os.environ.get('SUPERVISOR_MODE')}"
      + (f", fencing token {token})" if token else ")"))
interval = float(os.environ.get("TICK_SECONDS", "5"))
count = 0
while running:
    count += 1
    print(f"tick {count}")
    time.sleep(interval)
print("stopping cleanly", file=sys.stderr)
