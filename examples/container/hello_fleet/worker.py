"""Says where it runs, then works until the supervisor asks it to stop."""

import os
import signal
import threading

stop = threading.Event()


def main() -> int:
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    print(f"hello-fleet: {os.environ.get('SUPERVISOR_WORKER')} up on node "
          f"{os.environ.get('SUPERVISOR_NODE_ID')} in group {os.environ.get('SUPERVISOR_GROUP')}",
          flush=True)
    while not stop.wait(float(os.environ.get("TICK_SECONDS", "10"))):
        print("hello-fleet: working", flush=True)
    print("hello-fleet: stopping cleanly", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
